//! Crash recovery of the real binary: `pushbridge serve` is killed with SIGKILL in the middle of
//! a fan-out, in the middle of webhook ingest, and while a scheduled send waits for its time,
//! then restarted on the same database. Nothing that was accepted may be lost, nothing may go
//! out before its time, and duplicates are bounded by the jobs in flight at the kill.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{bridge_env, open_store, simulator, BridgeProcess, Db};
use pushbridge::clock::now_ms;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::model::{EventStatus, JobStatus};
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use pushbridge::simulator::{RecordedRequest, Side};
use pushbridge::store::{NewApp, QueueStats, Store};
use serde_json::{json, Value};

/// Devices in the fan-out crash test (override with `CRASH_TEST_DEVICES`).
fn fan_out_size() -> u64 {
    std::env::var("CRASH_TEST_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Half APNs, half FCM, all tokens the simulator accepts.
fn devices(n: u64, users: u64) -> Vec<(String, DeviceRegistration)> {
    (0..n)
        .map(|i| {
            let (token, platform) = if i % 2 == 0 {
                (apns_test_token(ApnsTestKind::Success, i), "apns")
            } else {
                (fcm_test_token(FcmTestKind::Success, i), "fcm")
            };
            let reg = DeviceRegistration {
                platform: platform.parse().expect("a platform"),
                user_id: Some(format!("u{}", i % users)),
                locale: None,
                timezone: None,
                app_version: None,
                environment: None,
                topic: None,
                attributes: json!({}),
                tags: vec![],
            };
            (token, reg)
        })
        .collect()
}

/// Successful sends per token, over both providers.
fn delivered_per_token(records: &[RecordedRequest]) -> HashMap<String, u64> {
    let mut map = HashMap::new();
    for r in records {
        if r.side != Side::Token && r.status == 200 {
            if let Some(t) = &r.token {
                *map.entry(t.clone()).or_insert(0) += 1;
            }
        }
    }
    map
}

fn send_count(records: &[RecordedRequest]) -> usize {
    records
        .iter()
        .filter(|r| r.side != Side::Token && r.status == 200)
        .count()
}

async fn post_json(url: &str, key: &str, method: reqwest::Method, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls the store until every listed event is completed with all of its jobs delivered.
async fn wait_all_delivered(store: &Store, app_id: &str, events: &[String], timeout: Duration) {
    let start = Instant::now();
    let mut pending: Vec<String> = events.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let event = store
                .get_event(app_id, &id)
                .await
                .expect("read event")
                .unwrap_or_else(|| panic!("accepted event {id} was lost"));
            let counts = store.event_counts(&id).await.expect("counts");
            let undelivered = counts
                .iter()
                .any(|(s, n)| *s != JobStatus::Delivered && *n > 0);
            if event.status != EventStatus::Completed || undelivered || counts.is_empty() {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            let id = &pending[0];
            let event = store.get_event(app_id, id).await.expect("read event");
            let counts = store.event_counts(id).await.expect("counts");
            panic!(
                "{} events not delivered after {timeout:?}; e.g. {id}: {:?} {counts:?}",
                pending.len(),
                event.map(|e| e.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const LEASE: [(&str, &str); 2] = [
    ("PUSHBRIDGE_WORKER__LEASE_SECS", "2"),
    ("PUSHBRIDGE_WORKER__BATCH_SIZE", "200"),
];

async fn kill_9_during_fan_out_loses_nothing_and_bounds_duplicates(db: Db) {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("crash").await.expect("app");
    let n = fan_out_size();
    let all = devices(n, n);
    store
        .import_devices(&app.app.id, &all)
        .await
        .expect("import");
    let env = bridge_env(&url, &sim);

    let mut bridge = BridgeProcess::start(dir.path(), &env, &LEASE, None).await;
    let (status, resp) = post_json(
        &bridge.url("/v1/notifications"),
        &app.server_key,
        reqwest::Method::POST,
        json!({"to": {"devices": {}}, "template": {"title": "Crash", "body": "test"}}),
    )
    .await;
    assert_eq!(status, 202, "{resp}");
    let event_id = resp["event_id"].as_str().expect("event id").to_string();

    // Kill once a fifth has gone out: mid-stream, with sends in flight.
    let start = Instant::now();
    while send_count(&sim.records()) < (n / 5) as usize {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fan-out never got going"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bridge.kill9();
    let sent_at_kill = delivered_per_token(&sim.records()).len() as u64;
    // Nothing can change the jobs now: what is `in_flight` was claimed and never recorded.
    let at_kill = store
        .queue_stats(Some(&app.app.id), now_ms())
        .await
        .expect("queue stats");
    assert!(
        sent_at_kill < n && at_kill.queued + at_kill.in_flight > 0,
        "the kill came too late to interrupt anything (sent {sent_at_kill} of {n})"
    );

    let _bridge = BridgeProcess::start(dir.path(), &env, &LEASE, None).await;
    wait_all_delivered(
        &store,
        &app.app.id,
        std::slice::from_ref(&event_id),
        Duration::from_secs(180),
    )
    .await;

    let per_token = delivered_per_token(&sim.records());
    for (token, _) in &all {
        assert!(
            per_token.contains_key(token),
            "token {} never delivered",
            &token[..8]
        );
    }
    let duplicates: u64 = per_token.values().map(|c| c - 1).sum();
    eprintln!(
        "fan-out crash: {n} devices, killed after {sent_at_kill} sent, {} in flight and {} queued at the kill, {duplicates} duplicates",
        at_kill.in_flight, at_kill.queued
    );
    assert!(
        duplicates <= at_kill.in_flight as u64,
        "{duplicates} duplicates but only {} jobs were in flight at the kill",
        at_kill.in_flight
    );
    let counts = store.event_counts(&event_id).await.expect("counts");
    assert_eq!(counts, vec![(JobStatus::Delivered, n as i64)]);
}

/// Creates an app with the CLI, as an operator would, and parses the keys it prints.
fn cli_create_app(dir: &std::path::Path, db_url: &str) -> (String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHBRIDGE_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["apps", "create", "crash ingest"])
        .current_dir(dir)
        .env("PUSHBRIDGE_DATABASE_URL", db_url)
        .envs(db_url.starts_with("postgres").then_some((
            "PUSHBRIDGE_SECRETS__MASTER_KEY",
            crate::harness::TEST_MASTER_KEY,
        )))
        .output()
        .expect("run pushbridge apps create");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (field("app_id:"), field("server_key:"))
}

async fn kill_9_during_webhook_ingest_delivers_every_accepted_event(db: Db) {
    const USERS: u64 = 50;
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let (app_id, server_key) = cli_create_app(dir.path(), &url);
    let store = open_store(&url).await;
    // Two devices per user: one APNs, one FCM.
    store
        .import_devices(&app_id, &devices(USERS * 2, USERS))
        .await
        .expect("import");
    let env = bridge_env(&url, &sim);
    let mut bridge = BridgeProcess::start(dir.path(), &env, &LEASE, None).await;

    let (status, source) = post_json(
        &bridge.url("/v1/sources"),
        &server_key,
        reqwest::Method::POST,
        json!({"name": "billing", "scheme": "generic"}),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let secret = source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let (status, rule) = post_json(
        &bridge.url("/v1/rules/payments"),
        &server_key,
        reqwest::Method::PUT,
        json!({"event": "payment.*", "audience": {"user_id_path": "data.user_id"},
               "template": {"title": "Paid", "body": "{{ event.data.amount }}"}}),
    )
    .await;
    assert!(status == 201 || status == 200, "{rule}");

    // Senders post as fast as they can until the bridge stops answering.
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let webhook_url = bridge.url(&format!("/v1/webhooks/{app_id}/billing"));
    let mut senders = Vec::new();
    for worker in 0..4u64 {
        let (accepted, secret, url) = (accepted.clone(), secret.clone(), webhook_url.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for k in 0.. {
                let id = format!("wh-{worker}-{k}");
                let body = json!({"type": "payment.succeeded",
                    "data": {"user_id": format!("u{}", k % USERS), "amount": k}})
                .to_string();
                let mut req = client.post(&url).body(body.clone());
                for (h, v) in sign(
                    Scheme::Generic,
                    &secret,
                    body.as_bytes(),
                    &id,
                    now_ms() / 1000,
                )
                .expect("a valid secret")
                {
                    req = req.header(h, v);
                }
                let Ok(resp) = req.send().await else { break };
                if resp.status().as_u16() != 202 {
                    break;
                }
                let Ok(answer) = resp.json::<Value>().await else {
                    break;
                };
                let event = answer["event_id"].as_str().expect("event id").to_string();
                accepted.lock().expect("lock").push((id, event));
            }
        }));
    }
    let start = Instant::now();
    while accepted.lock().expect("lock").len() < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "webhooks are not accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bridge.kill9();
    for s in senders {
        s.await.expect("sender");
    }
    let accepted = accepted.lock().expect("lock").clone();
    let events: Vec<String> = accepted.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        events.iter().collect::<HashSet<_>>().len(),
        events.len(),
        "one event per accepted webhook"
    );

    let bridge = BridgeProcess::start(dir.path(), &env, &LEASE, None).await;
    wait_all_delivered(&store, &app_id, &events, Duration::from_secs(180)).await;
    for id in &events {
        let counts = store.event_counts(id).await.expect("counts");
        assert_eq!(counts, vec![(JobStatus::Delivered, 2)], "event {id}");
    }
    // The dedupe record survived the crash too: a sender's retry of an accepted webhook is
    // recognised as the event it already created.
    let (id, event) = &accepted[0];
    let body =
        json!({"type": "payment.succeeded", "data": {"user_id": "u0", "amount": 0}}).to_string();
    let mut req = reqwest::Client::new()
        .post(bridge.url(&format!("/v1/webhooks/{app_id}/billing")))
        .body(body.clone());
    for (h, v) in sign(
        Scheme::Generic,
        &secret,
        body.as_bytes(),
        id,
        now_ms() / 1000,
    )
    .expect("a valid secret")
    {
        req = req.header(h, v);
    }
    let resp = req.send().await.expect("retry");
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.expect("json");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(answer["event_id"].as_str(), Some(event.as_str()));
    eprintln!(
        "ingest crash: {} webhooks accepted before the kill, all delivered after restart",
        events.len()
    );
}

/// Devices in the scheduled-send crash test.
const SCHEDULED_DEVICES: u64 = 10_000;

/// How far ahead the scheduled-send crash test sets `send_at`: long enough for the fan-out of
/// [`SCHEDULED_DEVICES`] and a restart, short enough to wait for in real time (a child
/// process cannot share a test's shifted clock).
const SCHEDULED_LEAD_MS: i64 = 8_000;

/// Requests that reached the simulated providers (APNs or FCM messages), whatever the answer.
fn provider_requests(records: &[RecordedRequest]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r.side, Side::Apns | Side::Fcm))
        .count()
}

/// Samples the simulator until `until_ms`: `(time, provider requests recorded before it)`.
/// The records are read before the time is taken, so a sample's count holds only requests
/// that arrived before its time.
async fn sample_until(
    sim: &pushbridge::simulator::SimulatorHandle,
    until_ms: i64,
) -> Vec<(i64, usize)> {
    let mut samples = Vec::new();
    loop {
        let count = provider_requests(&sim.records());
        let at = now_ms();
        samples.push((at, count));
        if at >= until_ms {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the scheduled-send crash saw: the restarted bridge, the queue at the kill, and when
/// the kill and the restart happened (unix ms).
struct ScheduledCrash {
    restarted: BridgeProcess,
    at_kill: QueueStats,
    killed_at: i64,
    restarted_at: i64,
}

/// Posts a send to every device due at `send_at_ms`, kills the bridge with SIGKILL as soon as
/// the fan-out has written every job, and restarts it.
async fn schedule_and_crash(
    dir: &std::path::Path,
    env: &[(String, String)],
    store: &Store,
    app: &NewApp,
    send_at_ms: i64,
) -> (String, ScheduledCrash) {
    let mut bridge = BridgeProcess::start(dir, env, &LEASE, None).await;
    let send_at = jiff::Timestamp::from_millisecond(send_at_ms).expect("timestamp");
    let (status, resp) = post_json(
        &bridge.url("/v1/notifications"),
        &app.server_key,
        reqwest::Method::POST,
        json!({"to": {"devices": {}}, "template": {"title": "Later", "body": "test"},
               "send_at": send_at.to_string()}),
    )
    .await;
    assert_eq!(status, 202, "{resp}");
    let event_id = resp["event_id"].as_str().expect("event id").to_string();
    loop {
        let event = store
            .get_event(&app.app.id, &event_id)
            .await
            .expect("read event")
            .expect("the accepted event");
        if event.status != EventStatus::Received {
            break;
        }
        assert!(
            now_ms() < send_at_ms,
            "the fan-out took longer than the send's {SCHEDULED_LEAD_MS} ms lead"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bridge.kill9();
    let killed_at = now_ms();
    let at_kill = store
        .queue_stats(Some(&app.app.id), killed_at)
        .await
        .expect("queue stats");
    let restarted = BridgeProcess::start(dir, env, &LEASE, None).await;
    let crash = ScheduledCrash {
        restarted,
        at_kill,
        killed_at,
        restarted_at: now_ms(),
    };
    (event_id, crash)
}

async fn kill_9_with_a_scheduled_send_sends_nothing_early_and_everything_once(db: Db) {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("crash scheduled").await.expect("app");
    let n = SCHEDULED_DEVICES;
    let all = devices(n, n);
    store
        .import_devices(&app.app.id, &all)
        .await
        .expect("import");
    let env = bridge_env(&url, &sim);

    // The simulator is watched from before the send until its time, over the kill and the
    // restart alike.
    let send_at_ms = now_ms() + SCHEDULED_LEAD_MS;
    let (samples, (event_id, crash)) = tokio::join!(
        sample_until(&sim, send_at_ms),
        schedule_and_crash(dir.path(), &env, &store, &app, send_at_ms),
    );
    let at_kill = &crash.at_kill;
    assert!(
        crash.restarted_at < send_at_ms,
        "the kill and restart ended {} ms after send_at (killed {} ms before it): the \
         {SCHEDULED_LEAD_MS} ms lead left the restarted bridge no time to send early",
        crash.restarted_at - send_at_ms,
        send_at_ms - crash.killed_at
    );
    assert_eq!(
        (at_kill.queued, at_kill.scheduled, at_kill.in_flight),
        (n as i64, n as i64, 0),
        "at the kill every job was written, waiting for its time: {at_kill:?}"
    );
    let early: Vec<&(i64, usize)> = samples
        .iter()
        .filter(|(at, count)| *at < send_at_ms && *count > 0)
        .collect();
    assert!(
        early.is_empty(),
        "{} requests reached the simulator {} ms before send_at",
        early[0].1,
        send_at_ms - early[0].0
    );
    eprintln!(
        "scheduled crash: {n} jobs, killed {} ms and restarted {} ms before send_at, {} samples \
         of the restarted bridge before it saw no send",
        send_at_ms - crash.killed_at,
        send_at_ms - crash.restarted_at,
        samples
            .iter()
            .filter(|(at, _)| (crash.restarted_at..send_at_ms).contains(at))
            .count()
    );

    wait_all_delivered(
        &store,
        &app.app.id,
        std::slice::from_ref(&event_id),
        Duration::from_secs(180),
    )
    .await;
    drop(crash.restarted);
    let per_token = delivered_per_token(&sim.records());
    for (token, _) in &all {
        assert!(
            per_token.contains_key(token),
            "token {} never delivered",
            &token[..8]
        );
    }
    let duplicates: u64 = per_token.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= at_kill.in_flight as u64,
        "{duplicates} duplicates but only {} jobs were in flight at the kill",
        at_kill.in_flight
    );
    let counts = store.event_counts(&event_id).await.expect("counts");
    assert_eq!(counts, vec![(JobStatus::Delivered, n as i64)]);
}

backend_tests!(
    kill_9_during_fan_out_loses_nothing_and_bounds_duplicates,
    kill_9_during_webhook_ingest_delivers_every_accepted_event,
    kill_9_with_a_scheduled_send_sends_nothing_early_and_everything_once,
);
