//! How many sends the worker keeps in flight: what the providers' connections take (the
//! concurrent streams their servers advertise), capped by `worker.concurrency`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{simulator_with, Db, TestApp};
use pushbridge::model::device::DeviceRegistration;
use pushbridge::model::{ApnsEnvironment, Platform};
use pushbridge::push::Providers;
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

/// Registers `n` APNs production devices for `app`.
async fn import_apns_devices(t: &TestApp, app: &NewApp, from: u64, n: u64) {
    let devices: Vec<(String, DeviceRegistration)> = (from..from + n)
        .map(|i| {
            let reg = DeviceRegistration {
                platform: Platform::Apns,
                user_id: Some(format!("user-{i}")),
                locale: None,
                timezone: None,
                app_version: None,
                environment: Some(ApnsEnvironment::Production),
                topic: None,
                attributes: json!({}),
                tags: vec![if from == 0 { "first" } else { "rest" }.to_string()],
            };
            (apns_test_token(ApnsTestKind::Success, i), reg)
        })
        .collect();
    t.store()
        .import_devices(&app.app.id, &devices)
        .await
        .expect("import");
}

/// Sends one notification to the devices tagged `tag` and waits for the event to complete.
async fn send_and_wait(t: &TestApp, app: &NewApp, tag: &str) {
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"devices": {"tags": [tag]}}, "template": {"title": "Hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let event_id = resp["event_id"].as_str().expect("event id").to_string();
    let event: Value = t
        .wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(event["status"], "completed", "{event}");
}

/// Samples the requests in flight over every provider pool until dropped; `peak()` is the
/// highest seen.
struct InFlightPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl InFlightPeak {
    fn watch(providers: Arc<Providers>) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let now: u64 = providers.stats().iter().map(|s| s.stats.in_flight).sum();
                p.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn sends_in_flight_follow_the_streams_the_server_allows(db: Db) {
    let sim = simulator_with(|c| {
        c.max_concurrent_streams = 10;
        c.faults.latency_ms = 50;
    })
    .await;
    let t = TestApp::with_simulator(db, &sim, |c| c.apns.pool_size = 1).await;
    let app = t.new_app().await;
    import_apns_devices(&t, &app, 0, 1).await;
    import_apns_devices(&t, &app, 1, 200).await;
    // One send opens the connection and learns the server's limit...
    send_and_wait(&t, &app, "first").await;
    let providers = t.running().state.providers.clone();
    assert_eq!(providers.stream_capacity(), 10);
    // ... and the next 200 go out at most 10 at a time, as many as it allows.
    let watch = InFlightPeak::watch(providers);
    send_and_wait(&t, &app, "rest").await;
    assert!(
        (5..=10).contains(&watch.peak()),
        "peak in flight {}",
        watch.peak()
    );
    t.shutdown().await;
}

async fn an_explicit_concurrency_caps_sends_in_flight(db: Db) {
    let sim = simulator_with(|c| c.faults.latency_ms = 50).await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.concurrency = 4).await;
    let app = t.new_app().await;
    import_apns_devices(&t, &app, 1, 60).await;
    let watch = InFlightPeak::watch(t.running().state.providers.clone());
    send_and_wait(&t, &app, "rest").await;
    assert!(
        (2..=4).contains(&watch.peak()),
        "peak in flight {}",
        watch.peak()
    );
    t.shutdown().await;
}

/// A provider answering each send 400 ms late: what is being checked is how many sends the
/// default configuration lets be in flight, not how fast a loaded test machine claims them, so
/// each send stays in flight long enough for several claims of a debug build to add up.
async fn the_default_configuration_keeps_over_1000_sends_in_flight_when_the_provider_is_slow(
    db: Db,
) {
    let sim = simulator_with(|c| {
        c.faults.latency_ms = 400;
        c.max_records = 0;
    })
    .await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    import_apns_devices(&t, &app, 1, 4_000).await;
    let providers = t.running().state.providers.clone();
    let watch = InFlightPeak::watch(providers.clone());
    send_and_wait(&t, &app, "rest").await;
    // Two APNs connections at the simulator's (and Apple's) 1000 streams each.
    assert_eq!(providers.stream_capacity(), 2_000);
    assert!(watch.peak() > 1_000, "peak in flight {}", watch.peak());
    t.shutdown().await;
}

backend_tests!(
    sends_in_flight_follow_the_streams_the_server_allows,
    an_explicit_concurrency_caps_sends_in_flight,
    the_default_configuration_keeps_over_1000_sends_in_flight_when_the_provider_is_slow,
);
