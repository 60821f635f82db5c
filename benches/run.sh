#!/usr/bin/env bash
# Runs every benchmark in one go and prints the Markdown tables used in docs/BENCHMARKS.md.
#   benches/run.sh [--sizes 1000,10000,100000[,1000000]] [--ingest-secs 10]
# Set DATABASE_URL=postgres://... to add the PostgreSQL rows.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v h2load >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq nghttp2-client
fi
exec cargo bench --bench pipeline -- "$@"
