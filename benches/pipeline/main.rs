//! End-to-end benchmarks, measured side by side in one run (absolute numbers on a shared
//! machine are noise; ratios are the result):
//!
//! - delivery: one event fanned out to N devices (half APNs, half FCM), through the simulator
//!   over TLS HTTP/2, against the simulator's raw capacity measured with h2load;
//! - ingest: signed webhooks accepted per second against an unsigned, no-store endpoint of
//!   the same binary, plus latency at a fixed 5k/s;
//! - transactional: N signed webhooks posted by 32 clients, each for its own user with one
//!   device, timed from the first POST to the last delivery;
//! - fairness: app B's single notifications while app A's large fan-out is delivered;
//! - scheduled: N jobs due at 09:00 local in 24 zones, released zone by zone on a shifted
//!   clock;
//! - latency: the same fan-out with the simulator answering each send late (a provider's
//!   round trip, 100 ms ± 50 ms by default), with `worker.concurrency = 256` (the old fixed
//!   limit) and with the default (the limit follows the connections' advertised streams),
//!   side by side; the default is also run with no added latency, its CPU bound, and
//!   reported against the smaller of that and its in-flight bound.
//!
//! `cargo bench --bench pipeline -- --sizes 1000,10000,100000 [--ingest-secs 10]
//! [--h2load-requests 500000] [--sim-latency-ms 100] [--sim-jitter-ms 50] [--latency-sizes 20000]
//! [--transactional-events 4000] [--fairness-sizes 100000]
//! [--scheduled-jobs 1000000] [--only delivery|ingest|latency|transactional|fairness|scheduled]`
//! `DATABASE_URL=postgres://...` adds a PostgreSQL column. See docs/BENCHMARKS.md.

mod delivery;
mod fairness;
mod import;
mod ingest;
mod scheduled;
mod setup;
mod transactional;

use clap::{Parser, ValueEnum};

use delivery::{delivery, h2load_raw, Scenario};
use fairness::fairness;
use ingest::ingest;
use scheduled::scheduled;
use transactional::{transactional, Arrival};

/// The benchmark's flags; a missing or malformed value is an error, not a default.
#[derive(Parser, Debug)]
#[command(about = "End-to-end delivery and ingest benchmarks")]
struct Args {
    /// Fan-out sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<u64>,
    /// Seconds each ingest measurement runs.
    #[arg(long, default_value_t = 10)]
    ingest_secs: u64,
    /// Requests h2load sends to measure the simulator's raw capacity.
    #[arg(long, default_value_t = 500_000)]
    h2load_requests: u64,
    /// Simulator latency of the latency part, mean milliseconds per send.
    #[arg(long, default_value_t = 100)]
    sim_latency_ms: u64,
    /// Spread of the latency part's simulator latency: each send takes the mean ± this.
    #[arg(long, default_value_t = 50)]
    sim_jitter_ms: u64,
    /// Fan-out sizes of the latency part, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    latency_sizes: Vec<u64>,
    /// App A's fan-out size in the fairness part, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    fairness_sizes: Vec<u64>,
    /// Webhooks of the transactional part, comma-separated sizes.
    #[arg(long, value_delimiter = ',', default_value = "4000")]
    transactional_events: Vec<u64>,
    /// Events per second of the transactional part's fixed-rate runs (0: none).
    #[arg(long, default_value_t = 1000)]
    transactional_rate: u64,
    /// Jobs of the scheduled-release part, comma-separated sizes.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    scheduled_jobs: Vec<u64>,
    /// Run only this part (default: all).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A part of the benchmark that `--only` selects.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// One event fanned out to N devices.
    Delivery,
    /// Signed webhooks accepted per second.
    Ingest,
    /// The fan-out at a provider round trip, old fixed limit against the default.
    Latency,
    /// Many small signed webhooks, one user and one device each.
    Transactional,
    /// One app's single sends during another app's large fan-out.
    Fairness,
    /// Jobs waiting for 09:00 local in 24 zones, released zone by zone.
    Scheduled,
    /// 1M devices imported as NDJSON (SQLite).
    Import,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut backends = vec!["sqlite"];
    if std::env::var("DATABASE_URL").is_ok_and(|u| u.starts_with("postgres")) {
        backends.push("postgres");
    }
    println!(
        "# pushbridge benchmarks ({} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let run = |part: Part| args.only.is_none_or(|o| o == part);
    let raw = if run(Part::Delivery) {
        h2load_raw(args.h2load_requests).await?
    } else {
        None
    };
    let raw = raw.map(|(rate, cpu_us)| {
        println!(
            "simulator raw capacity (h2load -n {} -c 2 -m 100, APNs endpoint): {rate:.0} req/s, \
             simulator CPU {cpu_us:.0} µs/request\n",
            args.h2load_requests
        );
        rate
    });
    match raw {
        Some(_) => {}
        None => println!("simulator raw capacity: not measured (h2load missing)\n"),
    }

    if run(Part::Delivery) {
        println!("## Delivery: one event to N devices (half APNs, half FCM), TLS HTTP/2 through the simulator\n");
        println!("| backend | devices | total s | fan-out s | notifications/s | bridge/raw | p50 ms | p99 ms | bridge peak RSS MB | bridge CPU µs/notif. | simulator CPU µs/notif. |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for backend in &backends {
            for &n in &args.sizes {
                let r = delivery(backend, n, Scenario::FAST).await?;
                let rate = r.devices as f64 / r.secs;
                let ratio = raw.map_or("–".to_string(), |raw| format!("{:.2}", rate / raw));
                let per = |cpu: f64| cpu / r.devices as f64 * 1e6;
                println!(
                    "| {backend} | {} | {:.2} | {:.2} | {:.0} | {ratio} | {} | {} | {:.0} | {:.0} | {:.0} |",
                    r.devices,
                    r.secs,
                    r.fanout_secs,
                    rate,
                    r.p50_ms,
                    r.p99_ms,
                    r.peak_rss_mb,
                    per(r.bridge_cpu),
                    per(r.sim_cpu)
                );
            }
        }
    }
    if run(Part::Transactional) {
        println!(
            "\n## Transactional events: {} closed-loop clients, or a fixed rate; each event for its own user with one device\n",
            32
        );
        println!("| backend | arrival | load | events | all accepted s | last delivered s | events/s end to end | p50 ms | p99 ms | process CPU µs/event (bridge + clients) |");
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        let rate = (args.transactional_rate > 0).then_some(args.transactional_rate);
        let loads: Vec<Option<u64>> = std::iter::once(None).chain(rate.map(Some)).collect();
        for backend in &backends {
            for arrival in [Arrival::Webhooks, Arrival::DirectSends] {
                for (&n, &load) in args
                    .transactional_events
                    .iter()
                    .flat_map(|n| loads.iter().map(move |l| (n, l)))
                {
                    let r = transactional(backend, n, arrival, load).await?;
                    let load = match load {
                        None => "32 clients".to_string(),
                        Some(per_sec) => format!("fixed {per_sec}/s"),
                    };
                    println!(
                        "| {backend} | {} | {load} | {} | {:.2} | {:.2} | {:.0} | {} | {} | {:.0} |",
                        arrival.label(),
                        r.events,
                        r.accepted_secs,
                        r.secs,
                        r.events as f64 / r.secs,
                        r.p50_ms,
                        r.p99_ms,
                        r.process_cpu / r.events as f64 * 1e6
                    );
                }
            }
        }
    }
    if run(Part::Fairness) {
        println!("\n## Fairness: app B sends one notification every 100 ms while app A's fan-out is delivered\n");
        println!("| backend | A's devices | A's fan-out s | B's sends | B p50 ms | B p99 ms | B max ms | B p99 before its job ms | B p99 queued ms | B p99 answer to record ms | B p99 to record ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for backend in &backends {
            for &n in &args.fairness_sizes {
                let r = fairness(backend, n).await?;
                println!(
                    "| {backend} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.fan_out,
                    r.fan_out_secs,
                    r.probes,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.p99_dispatch_ms,
                    r.p99_queue_ms,
                    r.p99_record_ms,
                    r.p99_recorded_ms
                );
            }
        }
    }
    if run(Part::Scheduled) {
        println!("\n## Scheduled release: jobs due at 09:00 local in 24 zones, each zone's due time in turn\n");
        println!("| backend | jobs | fan-out s | zones | jobs per zone | sent early | first sent after due ms (p50 / max) | last sent after due ms (p50 / max) |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for backend in &backends {
            for &n in &args.scheduled_jobs {
                let r = scheduled(backend, n).await?;
                let pick = |f: fn(&scheduled::Release) -> u64| {
                    let mut v: Vec<u64> = r.releases.iter().map(f).collect();
                    v.sort_unstable();
                    (v[v.len() / 2], v.last().copied().unwrap_or(0))
                };
                let (first_p50, first_max) = pick(|x| x.first_ms);
                let (last_p50, last_max) = pick(|x| x.last_ms);
                println!(
                    "| {backend} | {} | {:.1} | {} | {} | {} | {first_p50} / {first_max} | {last_p50} / {last_max} |",
                    r.jobs,
                    r.fanout_secs,
                    r.releases.len(),
                    r.releases.first().map_or(0, |x| x.jobs),
                    r.early
                );
            }
        }
    }
    if args.only == Some(Part::Import) {
        return import::report(&["sqlite"], 1_000_000).await;
    }
    if run(Part::Latency) {
        latency(&backends, &args).await?;
    }
    if !run(Part::Ingest) {
        return Ok(());
    }
    println!("\n## Ingest: signed Standard Webhooks, 202 after the event is committed\n");
    println!("| backend | load | accepted/s | vs ceiling | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for backend in &backends {
        let (ceiling, signed, fixed) = ingest(backend, args.ingest_secs).await?;
        println!(
            "| {backend} | ceiling: GET /healthz, 64 clients | {:.0} | 1.00 | {:.2} | {:.2} |",
            ceiling.rate, ceiling.p50_ms, ceiling.p99_ms
        );
        println!(
            "| {backend} | signed webhooks, 64 clients | {:.0} | {:.2} | {:.2} | {:.2} |",
            signed.rate,
            signed.rate / ceiling.rate,
            signed.p50_ms,
            signed.p99_ms
        );
        println!(
            "| {backend} | signed webhooks, fixed 5000/s | {:.0} | – | {:.2} | {:.2} |",
            fixed.rate, fixed.p50_ms, fixed.p99_ms
        );
    }
    Ok(())
}

/// The latency part, at a provider round trip of `--sim-latency-ms` ± `--sim-jitter-ms`:
/// the old fixed 256 in flight against the default configuration, and the default against
/// the smaller of its two bounds. The in-flight bound is the open connections' advertised
/// streams ÷ the mean latency; the CPU bound is what the same fan-out reaches with no added
/// latency (nothing to wait for, so the two shared cores set the pace), measured just before.
async fn latency(backends: &[&str], args: &Args) -> anyhow::Result<()> {
    let mean_secs = args.sim_latency_ms as f64 / 1000.0;
    anyhow::ensure!(mean_secs > 0.0, "--sim-latency-ms must be more than 0");
    println!(
        "\n## Delivery at a {} ms ± {} ms provider round trip: the old fixed 256, the default, \
         and the default against its bounds\n",
        args.sim_latency_ms, args.sim_jitter_ms
    );
    println!("| backend | devices | worker.concurrency | latency ms | stream capacity | peak in flight | total s | notifications/s | p50 ms | p99 ms | bridge peak RSS MB | bridge CPU µs/notif. |");
    println!("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut bounds = Vec::new();
    for backend in backends {
        for &n in &args.latency_sizes {
            let runs = [
                ("default", 0, 0, None),
                (
                    "256 (before)",
                    args.sim_latency_ms,
                    args.sim_jitter_ms,
                    Some(256),
                ),
                ("default", args.sim_latency_ms, args.sim_jitter_ms, None),
            ];
            let mut rates = Vec::new();
            for (label, latency_ms, jitter_ms, concurrency) in runs {
                let scenario = Scenario {
                    latency_ms,
                    jitter_ms,
                    concurrency,
                };
                let r = delivery(backend, n, scenario).await?;
                let rate = r.devices as f64 / r.secs;
                println!(
                    "| {backend} | {} | {label} | {latency_ms} ± {jitter_ms} | {} | {} | {:.2} | {rate:.0} | {} | {} | {:.0} | {:.0} |",
                    r.devices,
                    r.stream_capacity,
                    r.peak_in_flight,
                    r.secs,
                    r.p50_ms,
                    r.p99_ms,
                    r.peak_rss_mb,
                    r.bridge_cpu / r.devices as f64 * 1e6
                );
                rates.push((rate, r.stream_capacity));
            }
            let (cpu_bound, _) = rates[0];
            let (reached, capacity) = rates[2];
            let in_flight_bound = capacity as f64 / mean_secs;
            bounds.push((backend, n, in_flight_bound, cpu_bound, reached));
        }
    }
    println!("\n| backend | devices | in-flight bound /s | CPU bound /s | default at the latency /s | ratio to the smaller bound |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (backend, n, in_flight_bound, cpu_bound, reached) in bounds {
        println!(
            "| {backend} | {n} | {in_flight_bound:.0} | {cpu_bound:.0} | {reached:.0} | {:.2} |",
            reached / in_flight_bound.min(cpu_bound)
        );
    }
    Ok(())
}
