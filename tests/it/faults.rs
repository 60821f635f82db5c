//! Provider misbehaviour injected through the simulator: 503s with Retry-After, connection
//! resets, GOAWAY and latency spikes, on top of tokens the providers reject for good. Valid
//! tokens must all be delivered, invalid ones pruned exactly, and the pool must recover.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::{simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::model::device::DeviceRegistration;
use pushbridge::model::device::DeviceState;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use pushbridge::simulator::{Faults, Side};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

const VALID: u64 = 2_000;
const INVALID: u64 = 300;

fn registration(platform: &str) -> DeviceRegistration {
    DeviceRegistration {
        platform: platform.parse().expect("a platform"),
        user_id: None,
        locale: None,
        timezone: None,
        app_version: None,
        environment: None,
        topic: None,
        attributes: json!({}),
        tags: vec![],
    }
}

/// Valid tokens (half APNs, half FCM) and tokens the providers reject: APNs 410
/// `Unregistered`, APNs 400 `BadDeviceToken` and FCM `UNREGISTERED`, in equal parts.
fn fleet() -> (Vec<String>, Vec<String>, Vec<(String, DeviceRegistration)>) {
    let mut all = Vec::new();
    let valid: Vec<String> = (0..VALID)
        .map(|i| {
            let (token, platform) = if i % 2 == 0 {
                (apns_test_token(ApnsTestKind::Success, i), "apns")
            } else {
                (fcm_test_token(FcmTestKind::Success, i), "fcm")
            };
            all.push((token.clone(), registration(platform)));
            token
        })
        .collect();
    let invalid: Vec<String> = (0..INVALID)
        .map(|i| {
            let seed = 1_000_000 + i;
            let (token, platform) = match i % 3 {
                0 => (
                    apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, seed),
                    "apns",
                ),
                1 => (apns_test_token(ApnsTestKind::BadDeviceToken, seed), "apns"),
                _ => (fcm_test_token(FcmTestKind::Unregistered, seed), "fcm"),
            };
            all.push((token.clone(), registration(platform)));
            token
        })
        .collect();
    (valid, invalid, all)
}

async fn send(t: &TestApp, app: &NewApp, to: Value) -> String {
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": to, "template": {"title": "Faults", "body": "test"}})),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    resp["event_id"].as_str().expect("event id").to_string()
}

/// Waits for the event to complete (longer than `TestApp::wait_for`: retries take seconds).
async fn wait_completed(t: &TestApp, app: &NewApp, event_id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, event) = t
            .call(
                Method::GET,
                &format!("/v1/events/{event_id}"),
                Some(&app.server_key),
                None,
            )
            .await;
        if event["status"] == "completed" {
            return event;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "event not completed: {event}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gauge_values(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn under_injected_faults_valid_tokens_are_delivered_and_invalid_ones_pruned_exactly(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| {
        c.worker.max_attempts = 40;
        c.worker.backoff_max_ms = 200;
    })
    .await;
    let app = t.new_app().await;
    let (valid, invalid, all) = fleet();
    t.store()
        .import_devices(&app.app.id, &all)
        .await
        .expect("import");

    let faults = Faults {
        error_rate: 0.2,
        retry_after_secs: 1,
        reset_probability: 0.05,
        goaway_after_streams: Some(500),
        spike_probability: 0.05,
        spike_latency_ms: 300,
        ..Faults::default()
    };
    sim.set_faults(faults);
    let event_id = send(&t, &app, json!({"devices": {}})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], VALID, "{event}");
    assert_eq!(event["deliveries"]["invalid"], INVALID, "{event}");
    assert_eq!(event["deliveries"]["total"], VALID + INVALID, "{event}");

    let records = sim.records();
    let sends: Vec<_> = records.iter().filter(|r| r.side != Side::Token).collect();
    let failed = sends.iter().filter(|r| r.status == 503).count();
    let resets = sends.iter().filter(|r| r.status == 0).count();
    assert!(
        failed > 100 && resets > 0,
        "the faults were injected ({failed} 503s, {resets} resets)"
    );
    let mut ok: HashMap<&str, u32> = HashMap::new();
    for r in &sends {
        if r.status == 200 {
            *ok.entry(r.token.as_deref().expect("token")).or_default() += 1;
        }
    }
    for token in &valid {
        assert!(
            ok.contains_key(token.as_str()),
            "{} not delivered",
            &token[..8]
        );
    }
    eprintln!(
        "faults: {} sends for {} devices: {failed} injected 503s, {resets} resets; {} connections accepted",
        sends.len(),
        VALID + INVALID,
        sim.connections_accepted()
    );

    // Pruned exactly: every device whose token the provider says is gone is pruned, every
    // BadDeviceToken one suspect (kept: Apple says that for a wrong environment too), every
    // valid one still active.
    let bad_device_token = apns_test_token(ApnsTestKind::BadDeviceToken, 0);
    for token in &invalid {
        let device = t
            .store()
            .get_device(&app.app.id, token)
            .await
            .expect("read");
        let want = if token[..6] == bad_device_token[..6] {
            DeviceState::Suspect
        } else {
            DeviceState::Pruned
        };
        assert_eq!(
            device.map(|d| d.state),
            Some(want),
            "{} was not marked as the provider said",
            &token[..8]
        );
    }
    for token in &valid {
        let device = t
            .store()
            .get_device(&app.app.id, token)
            .await
            .expect("read");
        assert!(
            device.is_some_and(|d| d.state == DeviceState::Active),
            "{} was wrongly pruned",
            &token[..8]
        );
    }

    // The pool recovers: with the faults cleared, every send succeeds on its first attempt.
    sim.set_faults(Faults::default());
    sim.clear_records();
    let sample: Vec<&String> = valid.iter().step_by(10).collect();
    let event_id = send(&t, &app, json!({"tokens": sample})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], sample.len(), "{event}");
    let rows = t
        .store()
        .event_deliveries(&app.app.id, &event_id, "", 1_000)
        .await
        .expect("deliveries");
    assert_eq!(rows.len(), sample.len());
    for row in &rows {
        assert_eq!(row.attempts, 1, "{row:?}");
    }
    let sends = sim
        .records()
        .iter()
        .filter(|r| r.side != Side::Token)
        .count();
    assert_eq!(sends, sample.len(), "one request per device, no retries");

    let resp = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("metrics");
    let metrics = resp.text().await.expect("text");
    let open = gauge_values(&metrics, "pushbridge_pool_connections_open");
    assert!(!open.is_empty(), "pool gauges present");
    for (series, v) in &open {
        assert!((0.0..=2.0).contains(v), "{series} within pool_size: {v}");
    }
    assert!(
        open.iter().any(|(s, v)| s.contains("fcm") && *v >= 1.0),
        "FCM pool reconnected: {open:?}"
    );
}

backend_tests!(under_injected_faults_valid_tokens_are_delivered_and_invalid_ones_pruned_exactly);
