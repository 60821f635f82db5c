//! Transactional events: many small signed webhooks, each for a different user with one
//! device, posted by concurrent clients, the way payments or finished builds arrive. Measures
//! events per second from the first POST to the last delivery, and webhook-to-delivery
//! latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::service::specs::{put_spec, Spec};
use pushbridge::signature::Scheme;
use pushbridge::store::SpecKind;
use serde_json::json;

use crate::setup::{
    bench_device, bridge, cpu_secs, database_url, drop_database, signed_webhook, Simulator,
};

/// Concurrent webhook senders.
const CLIENTS: u64 = 32;

/// Sends the providers accepted so far, from the bridge's own counters.
fn sent_ok(metrics: &pushbridge::metrics::Metrics) -> u64 {
    metrics
        .encode(pushbridge::metrics::ExpositionFormat::Classic)
        .lines()
        .filter(|l| {
            l.starts_with("pushbridge_deliveries_total{") && l.contains("outcome=\"delivered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One transactional run's figures.
pub struct TransactionalResult {
    /// Events posted (one delivery each).
    pub events: u64,
    /// Seconds until every webhook was accepted.
    pub accepted_secs: f64,
    /// Seconds from the first POST to the last delivery.
    pub secs: f64,
    /// Median webhook-to-delivery latency.
    pub p50_ms: i64,
    /// 99th-percentile webhook-to-delivery latency.
    pub p99_ms: i64,
    /// CPU seconds of this process over the run: the bridge and the 32 clients that sign and
    /// post the webhooks.
    pub process_cpu: f64,
}

/// How the events arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Signed webhooks matched by a rule.
    Webhooks,
    /// `POST /v1/notifications` to one user each.
    DirectSends,
}

impl Arrival {
    /// The label in the results table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Webhooks => "signed webhooks",
            Self::DirectSends => "direct sends",
        }
    }
}

/// `events` events, each for its own user with one device (half APNs, half FCM), arriving as
/// `arrival` says, on `backend`: from 32 closed-loop clients, or at a fixed `rate` per second.
pub async fn transactional(
    backend: &str,
    events: u64,
    arrival: Arrival,
    rate: Option<u64>,
) -> anyhow::Result<TransactionalResult> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let running = bridge(db_url.clone(), &sim, None).await?;
    let store = running.state.store.clone();
    let app = store.create_app("bench").await?;
    let app_id = app.app.id.clone();
    let devices: Vec<(String, DeviceRegistration)> =
        (0..events).map(|i| bench_device(i, "en-US")).collect();
    for chunk in devices.chunks(20_000) {
        store.import_devices(&app_id, chunk).await?;
    }
    let template = json!({
        "title": "Thanks {{ user.first_name }}",
        "body": "Payment {{ event.data.payment }} of {{ event.data.amount }} received",
    });
    put_spec(
        &store,
        &app_id,
        "receipt",
        &Spec::parse(SpecKind::Template, &template.to_string())?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let direct = json!({
        "title": "Thanks {{ user.first_name }}",
        "body": "Payment {{ event.payment }} of {{ event.amount }} received",
    });
    put_spec(
        &store,
        &app_id,
        "receipt_direct",
        &Spec::parse(SpecKind::Template, &direct.to_string())?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rule = json!({"event": "payment.completed", "audience": {"user_id_path": "data.user"},
        "template": "receipt"});
    put_spec(
        &store,
        &app_id,
        "payments",
        &Spec::parse(SpecKind::Rule, &rule.to_string())?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = pushbridge::model::source::new_source(
        "pay".into(),
        Scheme::StandardWebhooks,
        vec![],
        None,
        &[],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = store.create_source(&app_id, &source).await?.secrets[0]
        .secret
        .clone();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS as usize)
        .build()?;

    let post = Arc::new(Poster {
        client,
        base,
        app_id: app_id.clone(),
        secret,
        server_key: app.server_key.clone(),
        arrival,
    });
    let cpu0 = cpu_secs("self");
    let started = Instant::now();
    let started_ms = pushbridge::clock::now_ms();
    let mut senders = tokio::task::JoinSet::new();
    match rate {
        // Closed loop: each client posts its next event as soon as the last one is answered.
        None => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..CLIENTS {
                let (post, next) = (post.clone(), next.clone());
                senders.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= events {
                            return Ok::<(), anyhow::Error>(());
                        }
                        post.post(i).await?;
                    }
                });
            }
        }
        // Open loop: one event every 1/rate seconds, however long the answers take.
        Some(per_sec) => {
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_sec));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..events {
                tick.tick().await;
                let post = post.clone();
                senders.spawn(async move { post.post(i).await });
            }
        }
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db_url).await?;
    // The harness runs in the bridge's process, so it must not take the CPU it measures:
    // it watches the deliveries counter, then counts the recorded deliveries (a scan of the
    // jobs, no index holds delivered ones) only until they are all there. The run ends at
    // the last recorded delivery, not at the poll that saw it.
    loop {
        let (delivered,): (i64,) = if sent_ok(&running.state.metrics) < events {
            (0,)
        } else {
            sqlx::query_as("SELECT COUNT(*) FROM delivery_jobs WHERE status = 'delivered'")
                .fetch_one(&pool)
                .await?
        };
        if delivered as u64 >= events {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "timed out with {delivered} of {events} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let process_cpu = cpu_secs("self") - cpu0;
    let (last,): (i64,) =
        sqlx::query_as("SELECT MAX(updated_at) FROM delivery_jobs WHERE status = 'delivered'")
            .fetch_one(&pool)
            .await?;
    let secs = (last - started_ms).max(1) as f64 / 1000.0;
    let mut latencies: Vec<i64> = sqlx::query_as::<_, (i64,)>(
        "SELECT updated_at - event_at FROM delivery_jobs WHERE status = 'delivered'",
    )
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(ms,)| ms)
    .collect();
    pool.close().await;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let result = TransactionalResult {
        events,
        accepted_secs,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        process_cpu,
    };
    running.shutdown().await?;
    drop_database(backend, &db_url)
        .await
        .context("dropping the database")?;
    Ok(result)
}

/// Posts event `i` of a run.
struct Poster {
    client: reqwest::Client,
    base: String,
    app_id: String,
    secret: String,
    server_key: String,
    arrival: Arrival,
}

impl Poster {
    async fn post(&self, i: u64) -> anyhow::Result<()> {
        let amount = format!("{}.00", i % 100);
        let req = match self.arrival {
            Arrival::Webhooks => {
                let body = json!({"type": "payment.completed",
                    "data": {"user": format!("user-{i}"), "payment": format!("p-{i}"),
                        "amount": amount}});
                let url = format!("{}/v1/webhooks/{}/pay", self.base, self.app_id);
                signed_webhook(
                    &self.client,
                    &url,
                    &self.secret,
                    body.to_string(),
                    &format!("msg-{i}"),
                )?
            }
            Arrival::DirectSends => self
                .client
                .post(format!("{}/v1/notifications", self.base))
                .bearer_auth(&self.server_key)
                .json(&json!({"to": {"user": format!("user-{i}")},
                    "template": "receipt_direct",
                    "data": {"payment": format!("p-{i}"), "amount": amount}})),
        };
        let status = req.send().await?.status().as_u16();
        anyhow::ensure!(status == 202, "event {i} answered {status}");
        Ok(())
    }
}
