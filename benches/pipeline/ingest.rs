//! Ingest: signed webhooks accepted per second against the unsigned ceiling, and latency at a
//! fixed rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushbridge::signature::Scheme;

use crate::setup::{bridge, database_url, drop_database, signed_webhook, Simulator};

/// One ingest measurement: requests per second and latency.
pub struct IngestResult {
    /// Requests answered per second.
    pub rate: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th-percentile latency.
    pub p99_ms: f64,
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
                    let url = format!("{base}/v1/webhooks/{app_id}/shop");
                    signed_webhook(&client, &url, &secret, body, &format!("m-{worker}-{n}"))
                        .expect("a valid secret")
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
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
            let url = format!("{base}/v1/webhooks/{app_id}/shop");
            let req = signed_webhook(&client, &url, &secret, body, &format!("fixed-{sent}"))
                .expect("a valid secret");
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

/// The unsigned ceiling, signed closed-loop ingest and signed ingest at 5k/s, on `backend`.
pub async fn ingest(
    backend: &str,
    secs: u64,
) -> anyhow::Result<(IngestResult, IngestResult, IngestResult)> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim, Some(1000)).await?;
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
