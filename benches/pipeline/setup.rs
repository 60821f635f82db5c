//! What every benchmark runs on: the simulator as its own process, a fresh database, the
//! bridge in this process, and the process figures (`/proc`) the tables report.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use pushbridge::config::Config;

/// The repository's test credentials.
pub fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A memory figure of this process in MB, e.g. `VmHWM:` (peak RSS), from `/proc/self/status`.
pub fn rss_mb(field: &str) -> f64 {
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
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_secs(pid: &str) -> f64 {
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
pub struct Simulator {
    child: std::process::Child,
    /// Base URL of its APNs side.
    pub apns_url: String,
    /// Base URL of its FCM side.
    pub fcm_url: String,
}

impl Simulator {
    /// Starts `pushbridge simulate` on free ports and reads the URLs it prints.
    pub fn start() -> anyhow::Result<Self> {
        Self::with_latency(0, 0)
    }

    /// Like [`Simulator::start`], answering each send `latency_ms` ± `jitter_ms` late (a
    /// provider's round trip, drawn evenly from that range).
    pub fn with_latency(latency_ms: u64, jitter_ms: u64) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
            .args(["simulate", "--apns-listen", "127.0.0.1:0"])
            .args(["--fcm-listen", "127.0.0.1:0", "--max-records", "0"])
            .args(["--latency-ms", &latency_ms.to_string()])
            .args(["--latency-jitter-ms", &jitter_ms.to_string()])
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

    /// CPU seconds the simulator process has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.child.id().to_string())
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database for one run: a SQLite file in `dir`, or a new PostgreSQL database.
pub async fn database_url(backend: &str, dir: &Path) -> anyhow::Result<String> {
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
pub async fn drop_database(backend: &str, db_url: &str) -> anyhow::Result<()> {
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

/// The bridge in this process on `db_url`, wired to `sim`, with the rate limits off and
/// `worker.concurrency` set to `concurrency` (`None`: the default).
pub async fn bridge(
    db_url: String,
    sim: &Simulator,
    concurrency: Option<u32>,
) -> anyhow::Result<pushbridge::Running> {
    bridge_with(db_url, sim, concurrency, pushbridge::clock::Clock::system()).await
}

/// Like [`bridge`] with the default concurrency, on `clock` (which the bench shifts).
pub async fn bridge_on_clock(
    db_url: String,
    sim: &Simulator,
    clock: pushbridge::clock::Clock,
) -> anyhow::Result<pushbridge::Running> {
    bridge_with(db_url, sim, None, clock).await
}

async fn bridge_with(
    db_url: String,
    sim: &Simulator,
    concurrency: Option<u32>,
    clock: pushbridge::clock::Clock,
) -> anyhow::Result<pushbridge::Running> {
    let mut config = Config {
        database_max_connections: 8,
        ..Config::default()
    };
    if db_url.starts_with("postgres") {
        // A fresh database per run: any key will do, but PostgreSQL needs one configured.
        config.secrets.master_key = Some(pushbridge::secrets::MasterKey::generate());
    }
    config.database_url = db_url;
    pushbridge::use_simulator_at(&mut config, &sim.apns_url, &sim.fcm_url, &certs());
    config.worker.batch_size = 1000;
    if let Some(concurrency) = concurrency {
        config.worker.concurrency = concurrency;
    }
    config.worker.poll_interval_ms = 20;
    // Measure the pipeline, not the per-key and per-source limits.
    config.rate_limits.server_key_per_sec = 0.0;
    config.rate_limits.source_per_sec = 0.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let options = pushbridge::StartOptions {
        clock,
        ..Default::default()
    };
    pushbridge::start_with(config, listener, options).await
}

/// Device `i` of a benchmark app: APNs for even `i`, FCM for odd, owned by `user-{i}`, with a
/// first name for personalized templates.
pub fn bench_device(
    i: u64,
    locale: &str,
) -> (String, pushbridge::model::device::DeviceRegistration) {
    use pushbridge::simulator::tokens::{
        apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind,
    };
    let apns = i.is_multiple_of(2);
    let token = if apns {
        apns_test_token(ApnsTestKind::Success, i)
    } else {
        fcm_test_token(FcmTestKind::Success, i)
    };
    let reg = pushbridge::model::device::DeviceRegistration {
        platform: if apns {
            pushbridge::model::Platform::Apns
        } else {
            pushbridge::model::Platform::Fcm
        },
        user_id: Some(format!("user-{i}")),
        locale: Some(locale.into()),
        timezone: None,
        app_version: None,
        environment: apns.then_some(pushbridge::model::ApnsEnvironment::Production),
        topic: None,
        attributes: serde_json::json!({"first_name": format!("User {i}")}),
        tags: vec![],
    };
    (token, reg)
}

/// A POST of `body` to the app's webhook source, signed as Standard Webhooks with message id
/// `id`.
pub fn signed_webhook(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: String,
    id: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    use pushbridge::signature::{sign, Scheme};
    let headers = sign(
        Scheme::StandardWebhooks,
        secret,
        body.as_bytes(),
        id,
        pushbridge::clock::now_ms() / 1000,
    )?;
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    Ok(req)
}
