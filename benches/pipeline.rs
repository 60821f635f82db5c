//! End-to-end benchmarks, measured side by side in one run (absolute numbers on a shared
//! machine are noise; ratios are the result):
//!
//! - delivery: one event fanned out to N devices (half APNs, half FCM), through the simulator
//!   over TLS HTTP/2, against the simulator's raw capacity measured with h2load;
//! - ingest: signed webhooks accepted per second against an unsigned, no-store endpoint of
//!   the same binary, plus latency at a fixed 5k/s.
//!
//! `cargo bench --bench pipeline -- --sizes 1000,10000,100000 [--ingest-secs 10]
//! [--h2load-requests 500000] [--only delivery|ingest]`
//! `DATABASE_URL=postgres://...` adds a PostgreSQL column. See docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pushbridge::config::Config;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use pushbridge::store::{now_ms, DeviceRegistration};
use serde_json::json;

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
    /// Run only this part (default: both).
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
}

fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak-RSS counter so each run reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or_default();
    ticks / 100.0 // USER_HZ
}

/// The provider simulator as its own process (`pushbridge simulate`), so that the bench
/// process's memory and CPU are the bridge's alone. Killed on drop.
struct Simulator {
    child: std::process::Child,
    apns_url: String,
    fcm_url: String,
}

impl Simulator {
    fn start() -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
            .args(["simulate", "--apns-listen", "127.0.0.1:0"])
            .args(["--fcm-listen", "127.0.0.1:0", "--max-records", "0"])
            .arg("--certs-dir")
            .arg(certs())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting pushbridge simulate")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut url = |prefix: &str| -> anyhow::Result<String> {
            let line = lines.next().context("simulator exited")??;
            Ok(line
                .strip_prefix(prefix)
                .with_context(|| format!("unexpected simulator output: {line}"))?
                .trim()
                .to_string())
        };
        let apns_url = url("APNs simulator:")?;
        let fcm_url = url("FCM simulator:")?;
        // Keep reading: with the pipe closed, the simulator's next line would kill it (EPIPE).
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            apns_url,
            fcm_url,
        })
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.child.id().to_string())
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn database_url(backend: &str, dir: &Path) -> anyhow::Result<String> {
    if backend == "sqlite" {
        return Ok(format!("sqlite://{}", dir.join("bench.db").display()));
    }
    use sqlx::Connection;
    let url = std::env::var("DATABASE_URL")?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let name = format!("pbbench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await?;
    let base = &url[..url.rfind('/').context("database in URL")?];
    Ok(format!("{base}/{name}"))
}

/// Drops a benchmark's PostgreSQL database (SQLite files go with their temporary directory).
async fn drop_database(backend: &str, db_url: &str) -> anyhow::Result<()> {
    if backend == "sqlite" {
        return Ok(());
    }
    use sqlx::Connection;
    let name = &db_url[db_url.rfind('/').context("database in URL")? + 1..];
    let mut conn = sqlx::PgConnection::connect(&std::env::var("DATABASE_URL")?).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn bridge(db_url: String, sim: &Simulator) -> anyhow::Result<pushbridge::Running> {
    let mut config = Config {
        database_url: db_url,
        database_max_connections: 8,
        ..Config::default()
    };
    pushbridge::use_simulator_at(&mut config, &sim.apns_url, &sim.fcm_url, &certs());
    config.worker.batch_size = 1000;
    config.worker.concurrency = 1000;
    config.worker.poll_interval_ms = 20;
    // Measure the pipeline, not the per-key and per-source limits.
    config.rate_limits.server_key_per_sec = 0.0;
    config.rate_limits.source_per_sec = 0.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    pushbridge::start(config, listener).await
}

struct DeliveryResult {
    devices: u64,
    secs: f64,
    fanout_secs: f64,
    p50_ms: i64,
    p99_ms: i64,
    peak_rss_mb: f64,
    /// CPU seconds used from the POST to completion by the bridge and by the simulator.
    bridge_cpu: f64,
    sim_cpu: f64,
}

async fn delivery(backend: &str, devices: u64) -> anyhow::Result<DeliveryResult> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim).await?;
    let store = running.state.store.clone();
    let app = store.create_app("bench").await?;
    // Generated and imported in slices, so the setup does not inflate the measured peak.
    let registration = |i: u64| {
        let apns = i.is_multiple_of(2);
        let token = if apns {
            apns_test_token(ApnsTestKind::Success, i)
        } else {
            fcm_test_token(FcmTestKind::Success, i)
        };
        let reg = DeviceRegistration {
            platform: if apns {
                pushbridge::model::Platform::Apns
            } else {
                pushbridge::model::Platform::Fcm
            },
            user_id: Some(format!("user-{i}")),
            locale: Some(
                if i.is_multiple_of(3) {
                    "fr-FR"
                } else {
                    "en-US"
                }
                .into(),
            ),
            timezone: None,
            app_version: None,
            environment: apns.then_some(pushbridge::model::ApnsEnvironment::Production),
            topic: None,
            attributes: json!({"first_name": format!("User {i}")}),
            tags: vec![],
        };
        (token, reg)
    };
    let mut start = 0;
    while start < devices {
        let end = (start + 20_000).min(devices);
        let slice: Vec<(String, DeviceRegistration)> = (start..end).map(registration).collect();
        store.import_devices(&app.app.id, &slice).await?;
        start = end;
    }
    reset_peak_rss();

    let client = reqwest::Client::new();
    let (bridge_cpu0, sim_cpu0) = (cpu_secs("self"), sim.cpu_secs());
    let started = Instant::now();
    let resp = client
        .post(format!("http://{}/v1/notifications", running.addr))
        .bearer_auth(&app.server_key)
        .json(&json!({
            "to": {"devices": {}},
            "template": {
                "title": "Hello {{ user.first_name }}",
                "body": "Your order {{ event.order }} shipped",
                "locales": {"fr": {"title": "Bonjour {{ user.first_name }}"}},
                "options": {"data": {"order": "{{ event.order }}"}}
            },
            "data": {"order": "A-1001"}
        }))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "send failed: {}", resp.text().await?);
    let event_id = resp.json::<serde_json::Value>().await?["event_id"]
        .as_str()
        .context("event id")?
        .to_string();
    let mut fanout_secs = 0.0;
    loop {
        let event = store
            .get_event(&app.app.id, &event_id)
            .await?
            .context("event")?;
        if fanout_secs == 0.0 && event.status != "received" {
            fanout_secs = started.elapsed().as_secs_f64();
        }
        if event.status == "completed" {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (bridge_cpu, sim_cpu) = (cpu_secs("self") - bridge_cpu0, sim.cpu_secs() - sim_cpu0);
    let peak_rss_mb = rss_mb("VmHWM:");
    let latencies = store.delivery_latencies(&event_id).await?;
    anyhow::ensure!(
        latencies.len() as u64 == devices,
        "{} of {devices} delivered; jobs by status: {:?}",
        latencies.len(),
        store.event_counts(&event_id).await?
    );
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    running.shutdown().await?;
    drop_database(backend, &db_url).await?;
    Ok(DeliveryResult {
        devices,
        secs,
        fanout_secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        peak_rss_mb,
        bridge_cpu,
        sim_cpu,
    })
}

/// The simulator's raw capacity: h2load against the APNs endpoint with a valid JWT.
/// Returns the rate and the simulator's CPU microseconds per request.
async fn h2load_raw(requests: u64) -> anyhow::Result<Option<(f64, f64)>> {
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("h2load not installed (Debian: nghttp2-client); raw capacity not measured");
        return Ok(None);
    }
    let sim = Simulator::start()?;
    let key =
        std::fs::read(certs().join(format!("AuthKey_{}.p8", pushbridge::simulator::TEST_KEY_ID)))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(pushbridge::simulator::TEST_KEY_ID.into());
    let jwt = jsonwebtoken::encode(
        &header,
        &json!({"iss": pushbridge::simulator::TEST_TEAM_ID, "iat": now_ms() / 1000}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&key)?,
    )?;
    let dir = tempfile::tempdir()?;
    let payload = dir.path().join("payload.json");
    std::fs::write(
        &payload,
        r#"{"aps":{"alert":{"title":"Hello","body":"raw capacity"}}}"#,
    )?;
    let url = format!(
        "{}/3/device/{}",
        sim.apns_url,
        apns_test_token(ApnsTestKind::Success, 7)
    );
    let cpu0 = sim.cpu_secs();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", &requests.to_string(), "-c", "2", "-m", "100"])
            .args(["-H", &format!("authorization: bearer {jwt}")])
            .args([
                "-H",
                "apns-topic: com.example.app",
                "-H",
                "apns-push-type: alert",
            ])
            .arg("-d")
            .arg(&payload)
            .arg(&url)
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        ok.contains(&format!("{requests} 2xx")),
        "h2load did not get all 2xx: {ok}\n{text}"
    );
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse::<f64>().ok())
        .context("parsing h2load output")?;
    let sim_cpu_per_request_us = (sim.cpu_secs() - cpu0) / requests as f64 * 1e6;
    Ok(Some((rate, sim_cpu_per_request_us)))
}

struct IngestResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Closed-loop load with `concurrency` clients for `secs`: signed webhooks or the ceiling.
async fn ingest_closed(
    base: &str,
    app_id: &str,
    secret: &str,
    signed: bool,
    secs: u64,
) -> anyhow::Result<IngestResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let (client, stop, counter) = (client.clone(), stop.clone(), counter.clone());
        let (base, app_id, secret) = (base.to_string(), app_id.to_string(), secret.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                let status = if signed {
                    let body =
                        format!(r#"{{"type":"order.shipped","data":{{"order":"{worker}-{n}"}}}}"#);
                    let mut req = client
                        .post(format!("{base}/v1/webhooks/{app_id}/shop"))
                        .header("content-type", "application/json")
                        .body(body.clone());
                    for (k, v) in sign(
                        Scheme::StandardWebhooks,
                        &secret,
                        body.as_bytes(),
                        &format!("m-{worker}-{n}"),
                        now_ms() / 1000,
                    )
                    .expect("a valid secret")
                    {
                        req = req.header(k, v);
                    }
                    req.send().await.map(|r| r.status().as_u16())
                } else {
                    client
                        .get(format!("{base}/healthz"))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                };
                if matches!(status, Ok(200 | 202)) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            latencies
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(IngestResult {
        rate: counter.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

/// Open-loop signed webhooks at a fixed rate; latency percentiles.
async fn ingest_fixed_rate(
    base: &str,
    app_id: &str,
    secret: &str,
    per_sec: u64,
    secs: u64,
) -> anyhow::Result<IngestResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < per_sec * secs {
        tick.tick().await;
        sent += 1;
        let (client, base, app_id, secret) = (
            client.clone(),
            base.to_string(),
            app_id.to_string(),
            secret.to_string(),
        );
        tasks.spawn(async move {
            let body = format!(r#"{{"type":"order.shipped","data":{{"order":"fixed-{sent}"}}}}"#);
            let mut req = client
                .post(format!("{base}/v1/webhooks/{app_id}/shop"))
                .header("content-type", "application/json")
                .body(body.clone());
            for (k, v) in sign(
                Scheme::StandardWebhooks,
                &secret,
                body.as_bytes(),
                &format!("fixed-{sent}"),
                now_ms() / 1000,
            )
            .expect("a valid secret")
            {
                req = req.header(k, v);
            }
            let t = Instant::now();
            let ok = matches!(req.send().await.map(|r| r.status().as_u16()), Ok(202));
            ok.then(|| t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(ms) = r? {
            all.push(ms);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(IngestResult {
        rate: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

async fn ingest(
    backend: &str,
    secs: u64,
) -> anyhow::Result<(IngestResult, IngestResult, IngestResult)> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim).await?;
    let store = running.state.store.clone();
    let app = store.create_app("bench").await?;
    let source = pushbridge::model::source::new_source(
        "shop".into(),
        Scheme::StandardWebhooks,
        vec![],
        None,
        &[],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = store.create_source(&app.app.id, &source).await?.secrets[0]
        .secret
        .clone();
    let base = format!("http://{}", running.addr);
    let ceiling = ingest_closed(&base, &app.app.id, &secret, false, secs).await?;
    let signed = ingest_closed(&base, &app.app.id, &secret, true, secs).await?;
    let fixed = ingest_fixed_rate(&base, &app.app.id, &secret, 5_000, secs).await?;
    running.shutdown().await?;
    drop_database(backend, &db_url).await?;
    Ok((ceiling, signed, fixed))
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
                let r = delivery(backend, n).await?;
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
