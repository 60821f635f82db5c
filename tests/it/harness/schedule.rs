//! Helpers for tests on a shifted clock: the bridge's and the simulator's time move together
//! (so provider tokens stay valid), and sends, devices and event states are read through the
//! API.

use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::SimulatorHandle;
use reqwest::Method;
use serde_json::{json, Value};

use super::TestApp;

/// Moves the bridge's and the simulator's time by `secs`.
pub fn shift(t: &TestApp, sim: &SimulatorHandle, secs: i64) {
    t.clock().shift(secs);
    sim.clock().shift(secs);
}

/// RFC 3339 of the bridge's time plus `secs`.
pub fn at(t: &TestApp, secs: i64) -> String {
    jiff::Timestamp::from_millisecond(t.clock().unix_millis() + secs * 1000)
        .expect("timestamp")
        .to_string()
}

/// `HH:MM` of the bridge's time plus `minutes`, in UTC.
pub fn utc_clock_time(t: &TestApp, minutes: i64) -> String {
    let ms = t.clock().unix_millis() + minutes * 60_000;
    let time = jiff::Timestamp::from_millisecond(ms)
        .expect("timestamp")
        .in_tz("UTC")
        .expect("utc");
    format!("{:02}:{:02}", time.hour(), time.minute())
}

/// Registers the APNs device `token` for `user` (a new device).
pub async fn register_apns(t: &TestApp, key: &str, user: &str, token: &str) {
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(key),
            Some(json!({"platform": "apns", "user_id": user})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Registers APNs devices (seeded `seeds`) for `user`, returning their tokens.
pub async fn apns_devices(
    t: &TestApp,
    key: &str,
    user: &str,
    seeds: std::ops::Range<u64>,
) -> Vec<String> {
    let mut tokens = Vec::new();
    for seed in seeds {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        register_apns(t, key, user, &token).await;
        tokens.push(token);
    }
    tokens
}

/// Posts a direct send and returns its event id.
pub async fn send(t: &TestApp, key: &str, body: Value) -> String {
    let (status, sent) = t
        .call(Method::POST, "/v1/notifications", Some(key), Some(body))
        .await;
    assert_eq!(status, 202, "{sent}");
    sent["event_id"].as_str().expect("event id").to_string()
}

/// Waits until the event's jobs are written (its fan-out ended).
pub async fn dispatched(t: &TestApp, key: &str, id: &str) -> Value {
    t.wait_for(&format!("/v1/events/{id}"), key, |e| {
        e["status"] != "received"
    })
    .await
}

/// Waits until the event is completed.
pub async fn completed(t: &TestApp, key: &str, id: &str) -> Value {
    t.wait_for(&format!("/v1/events/{id}"), key, |e| {
        e["status"] == "completed"
    })
    .await
}
