#!/bin/sh
# Regenerates the TEST-ONLY development credentials in this directory:
#   ca.pem                          development CA (20 years); its key is deleted once the
#                                   server certificate is signed, so nothing else can be minted under it
#   server.pem / server.key         simulator TLS certificate (localhost, 127.0.0.1, ::1), signed by the CA
#   AuthKey_SIMKEY0001.p8           APNs token-auth key (PKCS#8, EC P-256); key id SIMKEY0001, team id SIMTEAM001
#   AuthKey_SIMKEY0002.p8           a second APNs key, for tests of several identities; key id SIMKEY0002, team id SIMTEAM002
#   fcm-service-account.json        FCM service account (RSA 2048) whose token_uri is the simulator's default
#   fcm-service-account-2.json      a second service account, in project $PROJECT_ID-2
#
# Usage: certs/generate.sh [output-dir]   (default: the directory holding this script)
# Needs openssl (1.1.1 or 3.x). Never use these files against Apple or Google.
set -eu

DIR=${1:-$(dirname "$0")}
FCM_PORT=${FCM_PORT:-2198}
PROJECT_ID=${PROJECT_ID:-pushbridge-sim}
DAYS=7300

cd "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Development CA.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -out ca.pem \
  -subj "/O=pushbridge/CN=pushbridge development CA (test only)" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

# Simulator server certificate.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -out "$tmp/server.csr" -subj "/O=pushbridge/CN=localhost"
cat > "$tmp/server.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days "$DAYS" -sha256 -extfile "$tmp/server.ext" -out server.pem

# APNs token-auth keys, in the format Apple hands out (AuthKey_<key id>.p8).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out AuthKey_SIMKEY0001.p8
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out AuthKey_SIMKEY0002.p8

# FCM service accounts, in the format the Firebase console hands out.
# service_account FILE PROJECT_ID NUMBER
service_account() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/fcm.key" 2>/dev/null
  key_json=$(awk '{printf "%s\\n", $0}' "$tmp/fcm.key")
  cat > "$1" <<JSON
{
  "type": "service_account",
  "project_id": "$2",
  "private_key_id": "sim-key-000$3",
  "private_key": "$key_json",
  "client_email": "pushbridge-sim@$2.iam.gserviceaccount.com",
  "client_id": "10000000000000000000$3",
  "auth_uri": "https://localhost:$FCM_PORT/auth",
  "token_uri": "https://localhost:$FCM_PORT/token",
  "auth_provider_x509_cert_url": "https://localhost:$FCM_PORT/certs",
  "client_x509_cert_url": "https://localhost:$FCM_PORT/certs/$2"
}
JSON
}
service_account fcm-service-account.json "$PROJECT_ID" 1
service_account fcm-service-account-2.json "$PROJECT_ID-2" 2
rm -f ca.key
echo "test credentials written to $DIR"
