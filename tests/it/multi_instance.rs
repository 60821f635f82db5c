//! Several bridge instances sharing one database: one fan-out delivered exactly once per
//! device, an instance killed mid-run finished by the others, and webhook dedupe across
//! instances. Runs on PostgreSQL (the multi-instance store) and on SQLite.

use std::collections::HashMap;

use crate::harness::{simulator, Db, TestApp};
use pushbridge::clock::now_ms;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use pushbridge::simulator::{Faults, Side};
use reqwest::Method;
use serde_json::json;

const DEVICES: u64 = 10_000;
const BATCH: u32 = 200;

async fn three_instances_deliver_a_10k_fan_out_once_and_survive_a_crash(db: Db) {
    let sim = simulator().await;
    sim.set_faults(Faults {
        latency_ms: 5,
        ..Faults::default()
    });
    let tweak = |c: &mut pushbridge::config::Config| {
        c.worker.lease_secs = 2;
        c.worker.batch_size = BATCH;
        c.worker.concurrency = 128;
    };
    let a = TestApp::with_simulator(db, &sim, tweak).await;
    let b = a.another_instance(&sim, tweak).await;
    let mut c = a.another_instance(&sim, tweak).await;
    let app = a.new_app().await;

    let mut tokens = Vec::with_capacity(DEVICES as usize);
    for i in 0..DEVICES {
        let (platform, token) = if i % 2 == 0 {
            (
                "apns",
                apns_test_token(ApnsTestKind::Success, 1_000_000 + i),
            )
        } else {
            ("fcm", fcm_test_token(FcmTestKind::Success, 1_000_000 + i))
        };
        tokens.push((platform, token));
    }
    let store = a.store().clone();
    let regs = tokens.chunks(500).map(|chunk| {
        let store = store.clone();
        let app_id = app.app.id.clone();
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for (platform, token) in chunk {
                let reg = DeviceRegistration {
                    platform: platform.parse().expect("a platform"),
                    user_id: Some("everyone".into()),
                    locale: None,
                    timezone: None,
                    app_version: None,
                    environment: (platform == "apns")
                        .then_some(pushbridge::model::ApnsEnvironment::Production),
                    topic: None,
                    attributes: json!({}),
                    tags: vec![],
                };
                store
                    .upsert_device(&app_id, &token, &reg)
                    .await
                    .expect("register");
            }
        })
    });
    for r in regs.collect::<Vec<_>>() {
        r.await.expect("registration task");
    }
    sim.clear_records();

    let (status, sent) = a
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"devices": {}}, "template": {"body": "to all"}})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let event_id = sent["event_id"].as_str().expect("id").to_string();

    // Kill one instance while deliveries are under way.
    a.wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
        e["deliveries"]["delivered"].as_i64().unwrap_or(0) >= 1000
    })
    .await;
    let in_flight_at_crash = store
        .queue_stats(None, now_ms())
        .await
        .expect("queue")
        .in_flight;
    c.crash_workers();

    let event = a
        .wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(event["deliveries"]["delivered"], DEVICES, "{event}");

    let mut per_token: HashMap<String, u32> = HashMap::new();
    for r in sim.records() {
        if matches!(r.side, Side::Apns | Side::Fcm) && r.status == 200 {
            let token = r.token.clone().unwrap_or_default();
            *per_token.entry(token).or_default() += 1;
        }
    }
    for (_, token) in &tokens {
        assert!(
            per_token.contains_key(token),
            "every device received the push"
        );
    }
    let duplicates: i64 = per_token.values().map(|&n| i64::from(n) - 1).sum();
    // Only the crashed instance's in-flight sends can be repeated.
    assert!(
        duplicates <= in_flight_at_crash,
        "{duplicates} duplicates, {in_flight_at_crash} in flight at the crash"
    );
    drop(b);
}

async fn the_same_webhook_sent_to_two_instances_at_once_is_accepted_once(db: Db) {
    let a = TestApp::spawn(db).await;
    let b = a
        .another_instance(&simulator().await, |c| c.worker.enabled = false)
        .await;
    let app = a.new_app().await;
    let (_, source) = a
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": "crm", "scheme": "standard_webhooks"})),
        )
        .await;
    let secret = source["secrets"][0]["secret"].as_str().expect("secret");
    for round in 0..10 {
        let body = json!({"type": "contact.updated", "n": round}).to_string();
        let headers = sign(
            Scheme::StandardWebhooks,
            secret,
            body.as_bytes(),
            &format!("msg_{round}"),
            now_ms() / 1000,
        )
        .expect("a valid secret");
        let post = |t: &TestApp| {
            let mut req = t
                .client
                .post(t.url(&format!("/v1/webhooks/{}/crm", app.app.id)))
                .header("content-type", "application/json")
                .body(body.clone());
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            req.send()
        };
        let (ra, rb) = tokio::join!(post(&a), post(&b));
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 202],
            "one instance accepts, the other reports the duplicate"
        );
        let ida: serde_json::Value = ra.json().await.expect("json");
        let idb: serde_json::Value = rb.json().await.expect("json");
        assert_eq!(ida["event_id"], idb["event_id"]);
    }
    let (_, events) = a
        .call(
            Method::GET,
            "/v1/events?limit=100",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(events["events"].as_array().map(Vec::len), Some(10));
}

backend_tests!(
    three_instances_deliver_a_10k_fan_out_once_and_survive_a_crash,
    the_same_webhook_sent_to_two_instances_at_once_is_accepted_once,
);
