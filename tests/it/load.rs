//! Sustained mixed load against the real binary (signed webhook ingest, fan-outs, device
//! registration churn) while the bridge's resident memory is sampled. Long: runs only with
//! `PUSHBRIDGE_LONG_TESTS=1` (duration `LOAD_TEST_SECS`, default 120).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{bridge_env, certs_dir, open_store, proven, BridgeProcess, Db};
use pushbridge::clock::now_ms;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use serde_json::{json, Value};

const USERS: u64 = 1_000;
const WARM_UP_SECS: u64 = 20;
const WINDOW_SECS: u64 = 30;

fn long_tests_enabled() -> bool {
    let on = std::env::var("PUSHBRIDGE_LONG_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("notice: long test skipped; set PUSHBRIDGE_LONG_TESTS=1 to run it");
    }
    on
}

fn registration(platform: &str, user: u64) -> DeviceRegistration {
    DeviceRegistration {
        platform: platform.parse().expect("a platform"),
        user_id: Some(format!("u{user}")),
        locale: None,
        timezone: None,
        app_version: None,
        environment: None,
        topic: None,
        attributes: json!({"first_name": "Load"}),
        tags: vec![],
    }
}

async fn sustained_mixed_load_keeps_memory_bounded(db: Db) {
    if !long_tests_enabled() {
        return;
    }
    let secs: u64 = std::env::var("LOAD_TEST_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    assert!(
        secs >= WARM_UP_SECS + 2 * WINDOW_SECS,
        "LOAD_TEST_SECS too short"
    );
    // Webhooks per second over all senders: sustained, so the bridge can keep up and the queue
    // stays short; raise it to find the limit.
    let rate: f64 = std::env::var("LOAD_TEST_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let mut sim_config = pushbridge::simulator::SimulatorConfig::with_certs_dir(&certs_dir());
    sim_config.apns_listen = "127.0.0.1:0".parse().expect("addr");
    sim_config.fcm_listen = "127.0.0.1:0".parse().expect("addr");
    sim_config.max_records = 0;
    let sim = pushbridge::simulator::start(sim_config)
        .await
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("load").await.expect("app");
    let devices: Vec<_> = (0..USERS)
        .flat_map(|u| {
            [
                (
                    apns_test_token(ApnsTestKind::Success, u),
                    registration("apns", u),
                ),
                (
                    fcm_test_token(FcmTestKind::Success, u),
                    registration("fcm", u),
                ),
            ]
        })
        .collect();
    store
        .import_devices(&app.app.id, &devices)
        .await
        .expect("import");
    let log_path = dir.path().join("bridge.log");
    let bridge =
        BridgeProcess::start(dir.path(), &bridge_env(&url, &sim), &[], Some(&log_path)).await;
    let client = reqwest::Client::new();
    let server = app.server_key.clone();
    let resp = client
        .post(bridge.url("/v1/sources"))
        .bearer_auth(&server)
        .json(&json!({"name": "billing", "scheme": "standard_webhooks"}))
        .send()
        .await
        .expect("source");
    let source: Value = resp.json().await.expect("json");
    let secret = source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let resp = client
        .put(bridge.url("/v1/rules/payments"))
        .bearer_auth(&server)
        .json(&json!({"event": "payment.*", "audience": {"user_id_path": "data.user_id"},
                      "template": {"title": "Paid {{ user.first_name }}", "body": "{{ event.data.amount }}"}}))
        .send()
        .await
        .expect("rule");
    assert!(resp.status().is_success());

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let fan_outs = Arc::new(AtomicU64::new(0));
    let registrations = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Webhook senders.
    for worker in 0..4u64 {
        let (stop, accepted, refused, secret, client) = (
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            secret.clone(),
            client.clone(),
        );
        let url = bridge.url(&format!("/v1/webhooks/{}/billing", app.app.id));
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            let mut pace = tokio::time::interval(Duration::from_secs_f64(4.0 / rate));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                k += 1;
                let body = json!({"type": "payment.succeeded",
                    "data": {"user_id": format!("u{}", (k * 7 + worker) % USERS), "amount": k}})
                .to_string();
                let mut req = client.post(&url).body(body.clone());
                for (h, v) in sign(
                    Scheme::StandardWebhooks,
                    &secret,
                    body.as_bytes(),
                    &format!("msg-{worker}-{k}"),
                    now_ms() / 1000,
                )
                .expect("a valid secret")
                {
                    req = req.header(h, v);
                }
                let resp = req.send().await.expect("webhook");
                if resp.status().as_u16() == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // A fan-out to every device every 10 s.
    {
        let (stop, fan_outs, client, server) = (
            stop.clone(),
            fan_outs.clone(),
            client.clone(),
            server.clone(),
        );
        let url = bridge.url("/v1/notifications");
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let resp = client
                    .post(&url)
                    .bearer_auth(&server)
                    .json(&json!({"to": {"devices": {}}, "template": {"title": "All", "body": "hands"}}))
                    .send()
                    .await
                    .expect("fan-out");
                assert_eq!(resp.status().as_u16(), 202);
                fan_outs.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }));
    }
    // Registration churn.
    {
        let (stop, registrations, refused, client) = (
            stop.clone(),
            registrations.clone(),
            refused.clone(),
            client.clone(),
        );
        let key = app.client_key.clone();
        let tenant = app.clone();
        let base = bridge.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let token = apns_test_token(ApnsTestKind::Success, k % USERS);
                let resp = client
                    .put(format!("{base}/v1/devices/{token}"))
                    .bearer_auth(&key)
                    .json(&proven(
                        &tenant,
                        json!({"platform": "apns", "user_id": format!("u{}", k % USERS),
                               "attributes": {"first_name": "Load", "n": k}}),
                    ))
                    .send()
                    .await
                    .expect("register");
                if resp.status().is_success() {
                    registrations.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = bridge.rss_kb().expect("bridge alive");
        samples.push((start.elapsed().as_secs(), rss));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let elapsed = start.elapsed().as_secs_f64();

    // Everything accepted drains: every event completed, every job delivered, nothing dead.
    sqlx::any::install_default_drivers();
    let db_pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let count = |sql: &'static str| {
        let (pool, app_id) = (db_pool.clone(), app.app.id.clone());
        async move {
            let (n,): (i64,) = sqlx::query_as(sql)
                .bind(app_id)
                .fetch_one(&pool)
                .await
                .expect("count");
            n
        }
    };
    let drain = Instant::now();
    loop {
        let pending_events =
            count("SELECT COUNT(*) FROM events WHERE app_id = $1 AND status <> 'completed'").await;
        let pending_jobs = count(
            "SELECT COUNT(*) FROM delivery_jobs WHERE app_id = $1 \
             AND status IN ('queued', 'in_flight')",
        )
        .await;
        if pending_events == 0 && pending_jobs == 0 {
            break;
        }
        assert!(
            drain.elapsed() < Duration::from_secs(300),
            "not drained: {pending_events} events, {pending_jobs} jobs pending"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_secs = drain.elapsed().as_secs_f64();
    let delivered =
        count("SELECT COUNT(*) FROM delivery_jobs WHERE app_id = $1 AND status = 'delivered'")
            .await;
    let all_jobs = count("SELECT COUNT(*) FROM delivery_jobs WHERE app_id = $1").await;
    let events = count("SELECT COUNT(*) FROM events WHERE app_id = $1").await;
    let stats = store
        .window_stats(Some(&app.app.id), now_ms(), 3_600)
        .await
        .expect("stats");

    let window_max = |from: u64, to: u64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, r)| *r)
            .max()
            .expect("samples in window")
    };
    let first = window_max(WARM_UP_SECS, WARM_UP_SECS + WINDOW_SECS);
    let last = window_max(secs - WINDOW_SECS, secs + 1);
    let peak = samples.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let webhooks = accepted.load(Ordering::Relaxed);
    let fan_out_count = fan_outs.load(Ordering::Relaxed);
    eprintln!(
        "load ({db:?}, {} build): {secs} s; {webhooks} webhooks ({:.0}/s), {} fan-outs of {} devices, \
         {} registrations; {delivered} deliveries ({:.0}/s; drained {drain_secs:.1} s after the load stopped), \
         success {:.1}%, p95 {} ms; RSS first-window max {first} kB, last-window max {last} kB, peak {peak} kB",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        webhooks as f64 / elapsed,
        fan_out_count,
        USERS * 2,
        registrations.load(Ordering::Relaxed),
        delivered as f64 / (elapsed + drain_secs),
        stats.success_rate * 100.0,
        stats.p95_latency_ms,
    );
    eprintln!("RSS samples (s, kB): {samples:?}");
    assert_eq!(
        events as u64,
        webhooks + fan_out_count,
        "one event per accepted request"
    );
    assert_eq!(
        delivered as u64,
        2 * webhooks + USERS * 2 * fan_out_count,
        "every job delivered"
    );
    assert_eq!(all_jobs, delivered, "nothing dead or invalid");
    assert!(
        (last as f64) <= 1.5 * first as f64,
        "memory grew: last 30 s max {last} kB vs first 30 s max {first} kB"
    );
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(5)
            .collect();
        panic!(
            "{refused} webhooks or registrations refused under load; bridge errors:\n{}",
            errors.join("\n")
        );
    }
}

backend_tests!(sustained_mixed_load_keeps_memory_bounded);
