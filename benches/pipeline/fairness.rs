//! Fairness under load: while app A's large fan-out is being delivered, app B sends single
//! notifications; B's event-to-delivery time must stay short.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::setup::{bench_device, bridge, database_url, drop_database, Simulator};

/// One fairness run's figures.
pub struct FairnessResult {
    /// Devices of app A's fan-out.
    pub fan_out: u64,
    /// Seconds until A's event completed.
    pub fan_out_secs: f64,
    /// B's single notifications sent while A's fan-out ran.
    pub probes: usize,
    /// Median and 99th-percentile of B's event-to-delivery times (until the provider
    /// accepted the notification), ms.
    pub p50_ms: i64,
    /// See `p50_ms`.
    pub p99_ms: i64,
    /// The slowest of B's.
    pub max_ms: i64,
    /// 99th percentile of the part of B's time spent before its job existed (the fan-out).
    pub p99_dispatch_ms: i64,
    /// 99th percentile of the part spent with its job queued or in flight.
    pub p99_queue_ms: i64,
    /// 99th percentile of the time from the provider's acceptance to the result's record.
    pub p99_record_ms: i64,
    /// 99th percentile of B's event-to-record times (when the delivery API shows it).
    pub p99_recorded_ms: i64,
}

/// App A fans out to `fan_out` devices; app B sends one notification to its one device every
/// 100 ms until A is done.
pub async fn fairness(backend: &str, fan_out: u64) -> anyhow::Result<FairnessResult> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim, None).await?;
    let store = running.state.store.clone();
    let a = store.create_app("big").await?;
    let b = store.create_app("small").await?;
    let mut start = 0;
    while start < fan_out {
        let end = (start + 20_000).min(fan_out);
        let slice: Vec<_> = (start..end).map(|i| bench_device(i, "en-US")).collect();
        store.import_devices(&a.app.id, &slice).await?;
        start = end;
    }
    store
        .import_devices(&b.app.id, &[bench_device(fan_out + 1, "en-US")])
        .await?;
    let client = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    let post = |key: String, body: serde_json::Value| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let resp = client
                .post(format!("{base}/v1/notifications"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 202, "send failed: {}", resp.text().await?);
            let v: serde_json::Value = resp.json().await?;
            v["event_id"]
                .as_str()
                .map(str::to_string)
                .context("event id")
        }
    };
    let started = Instant::now();
    let big = post(
        a.server_key.clone(),
        json!({"to": {"devices": {}}, "template": {"title": "Hello {{ user.first_name }}", "body": "sale"}}),
    )
    .await?;
    let mut probes = Vec::new();
    loop {
        let event = store.get_event(&a.app.id, &big).await?.context("event")?;
        if event.status == pushbridge::model::EventStatus::Completed {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "timed out");
        probes.push(
            post(
                b.server_key.clone(),
                json!({"to": {"devices": {}}, "template": {"body": "your code is 1234"}}),
            )
            .await?,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fan_out_secs = started.elapsed().as_secs_f64();
    let (mut latencies, mut dispatch, mut queue) = (Vec::new(), Vec::new(), Vec::new());
    let (mut record, mut recorded) = (Vec::new(), Vec::new());
    for id in &probes {
        for _ in 0..2000 {
            let phases = store.delivery_phases(id).await?;
            if !phases.is_empty() {
                for p in phases {
                    latencies.push(p.fan_out_ms + p.sent_ms);
                    dispatch.push(p.fan_out_ms);
                    queue.push(p.sent_ms);
                    record.push(p.recorded_ms);
                    recorded.push(p.fan_out_ms + p.sent_ms + p.recorded_ms);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    anyhow::ensure!(
        latencies.len() == probes.len(),
        "not every probe was delivered"
    );
    for v in [
        &mut latencies,
        &mut dispatch,
        &mut queue,
        &mut record,
        &mut recorded,
    ] {
        v.sort_unstable();
    }
    let pct = |v: &[i64], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    let result = FairnessResult {
        fan_out,
        fan_out_secs,
        probes: probes.len(),
        p50_ms: pct(&latencies, 0.5),
        p99_ms: pct(&latencies, 0.99),
        p99_dispatch_ms: pct(&dispatch, 0.99),
        p99_queue_ms: pct(&queue, 0.99),
        p99_record_ms: pct(&record, 0.99),
        p99_recorded_ms: pct(&recorded, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0),
    };
    running.shutdown().await?;
    drop_database(backend, &db_url).await?;
    Ok(result)
}
