//! Delivery: one event fanned out to N devices through the simulator, and the simulator's raw
//! capacity measured with h2load.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pushbridge::clock::now_ms;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use serde_json::json;

use crate::setup::{
    bench_device, bridge, certs, cpu_secs, database_url, drop_database, reset_peak_rss, rss_mb,
    Simulator,
};

/// One fan-out run's figures.
pub struct DeliveryResult {
    /// Devices the event was sent to.
    pub devices: u64,
    /// Seconds from the POST to the event's completion.
    pub secs: f64,
    /// Seconds until the event left `received`.
    pub fanout_secs: f64,
    /// Median delivery latency.
    pub p50_ms: i64,
    /// 99th-percentile delivery latency.
    pub p99_ms: i64,
    /// Peak resident memory of the bridge (this process).
    pub peak_rss_mb: f64,
    /// CPU seconds used from the POST to completion by the bridge and by the simulator.
    pub bridge_cpu: f64,
    /// CPU seconds used by the simulator over the same span.
    pub sim_cpu: f64,
    /// Most provider requests in flight at once (sampled every 5 ms over every pool).
    pub peak_in_flight: u64,
    /// The providers' stream capacity at the end (what the worker's limit follows).
    pub stream_capacity: u64,
}

/// How a delivery run is set up.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The simulator answers each send this late on average.
    pub latency_ms: u64,
    /// Each send's latency is drawn evenly from `latency_ms` ± this.
    pub jitter_ms: u64,
    /// `worker.concurrency`; `None` for the default.
    pub concurrency: Option<u32>,
}

impl Scenario {
    /// The throughput table's setup: no added latency, 1000 sends in flight at most.
    pub const FAST: Self = Self {
        latency_ms: 0,
        jitter_ms: 0,
        concurrency: Some(1000),
    };
}

/// Records the most provider requests in flight at once until dropped.
struct InFlightPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl InFlightPeak {
    fn watch(providers: Arc<pushbridge::push::Providers>) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let now: u64 = providers.stats().iter().map(|s| s.stats.in_flight).sum();
                p.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { peak, stop }
    }
}

impl Drop for InFlightPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One event to `devices` devices (half APNs, half FCM) on `backend`, timed to completion.
pub async fn delivery(
    backend: &str,
    devices: u64,
    scenario: Scenario,
) -> anyhow::Result<DeliveryResult> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::with_latency(scenario.latency_ms, scenario.jitter_ms)?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim, scenario.concurrency).await?;
    let store = running.state.store.clone();
    let app = store.create_app("bench").await?;
    // Generated and imported in slices, so the setup does not inflate the measured peak.
    let registration = |i: u64| {
        bench_device(
            i,
            if i.is_multiple_of(3) {
                "fr-FR"
            } else {
                "en-US"
            },
        )
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
    let peak = InFlightPeak::watch(running.state.providers.clone());
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
        if fanout_secs == 0.0 && event.status != pushbridge::model::EventStatus::Received {
            fanout_secs = started.elapsed().as_secs_f64();
        }
        if event.status == pushbridge::model::EventStatus::Completed {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let peak_in_flight = peak.peak.load(Ordering::Relaxed);
    drop(peak);
    let stream_capacity = running.state.providers.stream_capacity();
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
        peak_in_flight,
        stream_capacity,
    })
}

/// The simulator's raw capacity: h2load against the APNs endpoint with a valid JWT.
/// Returns the rate and the simulator's CPU microseconds per request.
pub async fn h2load_raw(requests: u64) -> anyhow::Result<Option<(f64, f64)>> {
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
