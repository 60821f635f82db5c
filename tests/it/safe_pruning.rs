//! Safe pruning: only a provider's "gone" prunes a device, and then softly (listed,
//! restorable, swept after the retention); a refused token marks the device suspect; a
//! sandbox token registered without an environment is found on the sandbox; and a refusal
//! that comes for most of an app's devices is taken for the configuration mistake it is.

use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::{apns_test_token, apns_test_token_failing_first, ApnsTestKind};
use reqwest::Method;
use serde_json::{json, Value};

async fn register(t: &TestApp, key: &str, token: &str, extra: Value) {
    let mut body = json!({"platform": "apns"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, resp) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(key),
            Some(body),
        )
        .await;
    assert!(status == 200 || status == 201, "{resp}");
}

/// A direct send to `tokens`; returns the event id.
async fn send(t: &TestApp, key: &str, tokens: &[String]) -> String {
    let (status, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(key),
            Some(json!({"to": {"tokens": tokens}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    sent["event_id"].as_str().expect("event id").to_string()
}

async fn completed(t: &TestApp, key: &str, event: &str) -> Value {
    t.wait_for(&format!("/v1/events/{event}"), key, |e| {
        e["status"] == "completed"
    })
    .await
}

async fn device(t: &TestApp, key: &str, token: &str) -> Value {
    let (status, d) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{token}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{d}");
    d
}

async fn listed(t: &TestApp, key: &str, state: &str) -> Vec<String> {
    let (status, list) = t
        .call(
            Method::GET,
            &format!("/v1/devices?state={state}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["token"].as_str().expect("token").to_string())
        .collect()
}

async fn the_provider_decides_what_is_pruned_and_pruning_is_undoable(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let gone = apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 1);
    let refused = apns_test_token(ApnsTestKind::BadDeviceToken, 2);
    let fine = apns_test_token(ApnsTestKind::Success, 3);
    for token in [&gone, &fine] {
        register(&t, key, token, json!({})).await;
    }
    // Registered for production: production's BadDeviceToken is the last word.
    register(&t, key, &refused, json!({"environment": "production"})).await;
    let all = vec![gone.clone(), refused.clone(), fine.clone()];
    let event = send(&t, key, &all).await;
    let event = completed(&t, key, &event).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    assert_eq!(event["deliveries"]["invalid"], 2, "{event}");

    let d = device(&t, key, &gone).await;
    assert_eq!(d["state"], "pruned", "{d}");
    assert_eq!(d["state_reason"], "Unregistered", "{d}");
    let d = device(&t, key, &refused).await;
    assert_eq!(d["state"], "suspect", "{d}");
    assert_eq!(d["state_reason"], "BadDeviceToken", "{d}");
    assert_eq!(device(&t, key, &fine).await["state"], "active");
    assert_eq!(listed(&t, key, "pruned").await, vec![gone.clone()]);
    assert_eq!(listed(&t, key, "suspect").await, vec![refused.clone()]);
    let (status, bad) = t
        .call(Method::GET, "/v1/devices?state=gone", Some(key), None)
        .await;
    assert_eq!(status, 422, "{bad}");

    // Pruned and suspect devices are not sent to.
    sim.clear_records();
    let event = send(&t, key, &all).await;
    let event = completed(&t, key, &event).await;
    assert_eq!(event["deliveries"]["total"], 1, "{event}");
    let addressed: Vec<String> = sim.records().into_iter().filter_map(|r| r.token).collect();
    assert_eq!(addressed, vec![fine.clone()]);

    // Restored, or registered again, a device is sent to again.
    let (status, restored) = t
        .call(
            Method::POST,
            &format!("/v1/devices/{refused}/restore"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["state"], "active");
    assert!(restored.get("state_reason").is_none(), "{restored}");
    register(&t, key, &gone, json!({})).await;
    assert_eq!(device(&t, key, &gone).await["state"], "active");
    assert!(listed(&t, key, "pruned").await.is_empty());
    let (status, _) = t
        .call(
            Method::POST,
            &format!(
                "/v1/devices/{}/restore",
                apns_test_token(ApnsTestKind::Success, 99)
            ),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // After the retention, the sweeper deletes pruned devices (and only those).
    let event = send(&t, key, std::slice::from_ref(&gone)).await;
    completed(&t, key, &event).await;
    assert_eq!(device(&t, key, &gone).await["state"], "pruned");
    let later = pushbridge::clock::now_ms() + 1;
    let devices = pushbridge::store::retention::SWEEPS
        .iter()
        .find(|s| s.kind == pushbridge::store::retention::RetentionKind::PrunedDevices)
        .expect("a device sweep");
    let swept = t
        .store()
        .sweep_batch(devices, later, 500)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let (status, _) = t
        .call(Method::GET, &format!("/v1/devices/{gone}"), Some(key), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(device(&t, key, &fine).await["state"], "active");
    t.shutdown().await;
}

async fn a_sandbox_token_without_an_environment_is_found_on_the_sandbox(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    // Production calls it bad once (as Apple does for a sandbox token); the sandbox takes it.
    let token = apns_test_token_failing_first(ApnsTestKind::BadDeviceToken, 1, 7);
    register(&t, key, &token, json!({})).await;
    let d = device(&t, key, &token).await;
    assert!(d.get("environment").is_none(), "unknown until learned: {d}");
    let event = send(&t, key, std::slice::from_ref(&token)).await;
    let event = completed(&t, key, &event).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    let d = device(&t, key, &token).await;
    assert_eq!(
        d["environment"], "sandbox",
        "the environment that worked is recorded: {d}"
    );
    assert_eq!(d["state"], "active");
    let sent: Vec<u16> = sim
        .records()
        .iter()
        .filter(|r| r.token.as_deref() == Some(token.as_str()))
        .map(|r| r.status)
        .collect();
    assert_eq!(sent, vec![400, 200], "one BadDeviceToken, then delivered");
    t.shutdown().await;
}

async fn a_wrong_topic_for_every_device_deletes_nothing_and_holds_the_jobs(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| {
        c.worker.concurrency = 8;
        c.worker.batch_size = 8;
    })
    .await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let tokens: Vec<String> = (0..80)
        .map(|i| apns_test_token(ApnsTestKind::DeviceTokenNotForTopic, 100 + i))
        .collect();
    for token in &tokens {
        register(&t, key, token, json!({"environment": "production"})).await;
    }
    let event = send(&t, key, &tokens).await;
    let credentials = t
        .wait_for("/v1/app/credentials", key, |c| {
            c["apns"]["state"]["status"] == "failing"
        })
        .await;
    let reason = credentials["apns"]["state"]["reason"]
        .as_str()
        .expect("reason");
    assert!(
        reason.contains("DeviceTokenNotForTopic") && reason.contains("burst guard"),
        "{credentials}"
    );
    // Let the sends in flight at that moment come back.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, event) = t
        .call(Method::GET, &format!("/v1/events/{event}"), Some(key), None)
        .await;
    let counts = &event["deliveries"];
    assert_eq!(counts["dead"], 0, "{event}");
    let acted_on = counts["invalid"].as_i64().expect("invalid");
    assert!(
        acted_on < 5,
        "only the first few refusals are acted on before the guard can tell: {event}"
    );
    assert_eq!(
        counts["queued"].as_i64().unwrap_or(0) + counts["in_flight"].as_i64().unwrap_or(0),
        80 - acted_on,
        "the rest are held: {event}"
    );
    // No device was deleted, and none is left suspect.
    for token in &tokens {
        assert_eq!(device(&t, key, token).await["state"], "active", "{token}");
    }
    let text = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(crate::harness::OPERATOR_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("pushbridge_burst_guard_trips_total{")
                && l.contains("DeviceTokenNotForTopic")),
        "{text}"
    );
    t.shutdown().await;
}

/// Sends lost to connections that stopped answering are not counted against their jobs:
/// with one attempt allowed, no job becomes a dead letter while every connection goes
/// silent, and all are delivered once the provider answers again.
async fn attempts_lost_to_dead_connections_do_not_dead_letter(db: Db) {
    let sim = simulator().await;
    // Every connection is accepted and then answers nothing.
    sim.set_faults(pushbridge::simulator::Faults {
        blackhole_after_streams: Some(0),
        ..Default::default()
    });
    let t = TestApp::with_simulator(db, &sim, |c| {
        c.worker.max_attempts = 1;
        c.worker.concurrency = 2;
        c.apns.pool_size = 1;
        c.apns.request_timeout_ms = 200;
    })
    .await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let tokens: Vec<String> = (0..2)
        .map(|i| apns_test_token(ApnsTestKind::Success, 500 + i))
        .collect();
    for token in &tokens {
        register(&t, key, token, json!({"environment": "production"})).await;
    }
    let event = send(&t, key, &tokens).await;
    // The first connection and the one the resends went to were both silent: those sends
    // ended as lost (DeadConnection), and a third connection was opened for the retry.
    // Each silent connection costs a request timeout and a 3 s ping; allow for a busy machine.
    for _ in 0..1200 {
        if sim.connections_accepted() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        sim.connections_accepted() >= 3,
        "{}",
        sim.connections_accepted()
    );
    let (_, state) = t
        .call(Method::GET, &format!("/v1/events/{event}"), Some(key), None)
        .await;
    assert_eq!(state["deliveries"]["dead"], 0, "{state}");
    assert_eq!(state["deliveries"]["delivered"], 0, "{state}");
    sim.set_faults(pushbridge::simulator::Faults::default());
    let done = completed(&t, key, &event).await;
    assert_eq!(done["deliveries"]["delivered"], 2, "{done}");
    assert_eq!(done["deliveries"]["dead"], 0, "{done}");
    t.shutdown().await;
}

backend_tests!(
    attempts_lost_to_dead_connections_do_not_dead_letter,
    the_provider_decides_what_is_pruned_and_pruning_is_undoable,
    a_sandbox_token_without_an_environment_is_found_on_the_sandbox,
    a_wrong_topic_for_every_device_deletes_nothing_and_holds_the_jobs
);
