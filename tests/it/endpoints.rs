//! Event endpoints end to end: a local receiver checks every message with its own Standard
//! Webhooks verification (and the spec's published vector), subscriptions filter, failures
//! follow the retry schedule on a shifted clock, rotation, recover, the address guard, and
//! disabling an endpoint that fails for too long.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::schedule::send;
use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: http::HeaderMap,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn id(&self) -> String {
        self.headers["webhook-id"].to_str().expect("id").to_string()
    }
}

/// A local webhook receiver: records every request and answers with the next queued status
/// (200 once the queue is empty, or always `fail_with` while that is set).
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<Vec<u16>>>,
    fail_with: Arc<Mutex<Option<u16>>>,
}

impl Receiver {
    async fn start() -> (String, Self) {
        let receiver = Self::default();
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let r = r.clone();
                async move {
                    r.seen
                        .lock()
                        .expect("lock")
                        .push(Received { headers, body });
                    let status = match *r.fail_with.lock().expect("lock") {
                        Some(s) => s,
                        None => {
                            let mut answers = r.answers.lock().expect("lock");
                            if answers.is_empty() {
                                200
                            } else {
                                answers.remove(0)
                            }
                        }
                    };
                    (
                        http::StatusCode::from_u16(status).expect("status"),
                        format!("answered {status}"),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, receiver)
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits (up to ~15 s) until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} requests, got {:?}", self.seen());
    }
}

/// The Standard Webhooks verification, written from the spec: HMAC-SHA256 keyed with the
/// base64 after `whsec_`, over `{id}.{timestamp}.{body}`, matching any `v1,` entry.
fn verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = B64.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

/// Whether `message` is signed by `secret`, with a timestamp near the bridge's time.
fn signed_by(t: &TestApp, message: &Received, secret: &str) -> bool {
    let h = &message.headers;
    let ts = h["webhook-timestamp"].to_str().expect("timestamp");
    let at: i64 = ts.parse().expect("unix seconds");
    assert!(
        (at - t.clock().unix_millis() / 1000).abs() < 300,
        "timestamp {at}"
    );
    verifies(
        secret,
        h["webhook-id"].to_str().expect("id"),
        ts,
        message.body.as_bytes(),
        h["webhook-signature"].to_str().expect("signature"),
    )
}

async fn create(t: &TestApp, key: &str, url: &str, events: Value) -> Value {
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(key),
            Some(json!({"url": url, "events": events, "description": "test"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn test_send(t: &TestApp, key: &str, id: &str) -> String {
    let (status, body) = t
        .call(
            Method::POST,
            &format!("/v1/endpoints/{id}/test"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["message_id"].as_str().expect("message id").to_string()
}

async fn attempts(t: &TestApp, key: &str, id: &str) -> Vec<Value> {
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/endpoints/{id}/attempts"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["attempts"].as_array().expect("attempts").clone()
}

async fn messages(t: &TestApp, key: &str, id: &str) -> Vec<Value> {
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/endpoints/{id}/messages"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().expect("messages").clone()
}

/// Waits until endpoint `id` has logged `n` attempts.
async fn wait_attempts(t: &TestApp, key: &str, id: &str, n: usize) -> Vec<Value> {
    for _ in 0..300 {
        let a = attempts(t, key, id).await;
        if a.len() >= n {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "endpoint {id}: fewer than {n} attempts: {:?}",
        attempts(t, key, id).await
    );
}

async fn fast(db: Db) -> TestApp {
    TestApp::spawn_with(db, |c| c.worker.poll_interval_ms = 20).await
}

#[test]
fn the_receivers_verification_passes_the_published_test_vector() {
    // From the Standard Webhooks specification.
    assert!(verifies(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
    assert!(!verifies(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265331",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
}

async fn a_test_message_arrives_signed_and_the_secret_is_shown_only_on_create(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    let endpoint = create(&t, key, &url, json!(["device.pruned"])).await;
    let id = endpoint["id"].as_str().expect("id");
    let secret = endpoint["secret"].as_str().expect("secret");
    assert!(secret.starts_with("whsec_"), "{endpoint}");
    let (_, shown) = t
        .call(Method::GET, &format!("/v1/endpoints/{id}"), Some(key), None)
        .await;
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["events"], json!(["device.pruned"]));
    let (_, listed) = t.call(Method::GET, "/v1/endpoints", Some(key), None).await;
    assert!(!listed.to_string().contains(secret), "{listed}");

    let message_id = test_send(&t, key, id).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].id(), message_id);
    assert!(signed_by(&t, &got[0], secret), "{:?}", got[0]);
    let body = got[0].json();
    assert_eq!(body["type"], "device.pruned");
    assert!(body["data"]["tokens"].is_array(), "{body}");
    let logged = wait_attempts(&t, key, id, 1).await;
    assert_eq!(logged[0]["outcome"], "succeeded");
    assert_eq!(logged[0]["response_code"], 200);
    assert_eq!(logged[0]["response_body"], "answered 200");
    let (_, catalog) = t
        .call(Method::GET, "/v1/event-types", Some(key), None)
        .await;
    let names: Vec<&str> = catalog["event_types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "event.completed",
            "delivery.failed",
            "delivery.succeeded",
            "device.pruned",
            "credential.failing",
            "credential.recovered",
            "endpoint.disabled"
        ]
    );
    t.shutdown().await;
}

async fn an_endpoint_receives_only_the_types_it_subscribed_to(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 1).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (pruned_url, pruned_rx) = Receiver::start().await;
    let (failed_url, failed_rx) = Receiver::start().await;
    let pruned = create(&t, key, &pruned_url, json!(["device.pruned"])).await;
    let failed = create(&t, key, &failed_url, json!(["delivery.failed"])).await;
    for (kind, seed) in [
        (ApnsTestKind::Unregistered { timestamp_ms: None }, 1),
        (ApnsTestKind::ServiceUnavailable, 2),
    ] {
        let token = apns_test_token(kind, seed);
        let (status, body) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(key),
                Some(json!({"platform": "apns", "user_id": "u1"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    send(
        &t,
        key,
        json!({"to": {"user": "u1"}, "template": {"body": "hi"}}),
    )
    .await;
    let p = pruned_rx.wait_for(1).await;
    let f = failed_rx.wait_for(1).await;
    // Both kinds of message were made; give a stray one time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secret = |e: &Value| e["secret"].as_str().expect("secret").to_string();
    for m in pruned_rx.seen() {
        assert_eq!(m.json()["type"], "device.pruned", "{}", m.body);
        assert!(signed_by(&t, &m, &secret(&pruned)));
    }
    for m in failed_rx.seen() {
        assert_eq!(m.json()["type"], "delivery.failed", "{}", m.body);
        assert!(signed_by(&t, &m, &secret(&failed)));
    }
    assert_eq!(
        f[0].json()["data"]["deliveries"][0]["reason"],
        "ServiceUnavailable",
        "{}",
        f[0].body
    );
    assert_eq!(
        p[0].json()["data"]["tokens"].as_array().map(Vec::len),
        Some(1)
    );
    t.shutdown().await;
}

async fn a_receiver_failing_three_times_gets_the_message_once_it_answers_200(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    *receiver.answers.lock().expect("lock") = vec![500, 503, 429];
    let endpoint = create(&t, key, &url, json!(["device.pruned"])).await;
    let id = endpoint["id"].as_str().expect("id");
    let message_id = test_send(&t, key, id).await;
    wait_attempts(&t, key, id, 1).await;
    // Each wait of the schedule (5 s, 5 min, 30 min) at its longest (+20 %), no sooner.
    for (n, secs) in [(2, 6), (3, 360), (4, 2160)] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            attempts(&t, key, id).await.len(),
            n - 1,
            "not retried early"
        );
        t.clock().shift(secs);
        wait_attempts(&t, key, id, n).await;
    }
    let log = attempts(&t, key, id).await;
    let outcomes: Vec<(&str, i64)> = log
        .iter()
        .rev()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or_default(),
                a["response_code"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("failed", 500),
            ("failed", 503),
            ("failed", 429),
            ("succeeded", 200)
        ]
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|m| m.id() == message_id),
        "the same webhook-id every time"
    );
    let m = messages(&t, key, id).await;
    assert_eq!(
        (m[0]["status"].as_str(), m[0]["attempts"].as_i64()),
        (Some("delivered"), Some(4))
    );
    t.shutdown().await;
}

async fn during_a_rotation_both_secrets_verify_and_afterwards_only_the_new_one(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    let endpoint = create(&t, key, &url, json!(["device.pruned"])).await;
    let id = endpoint["id"].as_str().expect("id");
    let old = endpoint["secret"].as_str().expect("secret").to_string();
    let (status, rotated) = t
        .call(
            Method::POST,
            &format!("/v1/endpoints/{id}/secret/rotate"),
            Some(key),
            Some(json!({"grace_secs": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().expect("secret").to_string();
    assert_ne!(old, new);
    test_send(&t, key, id).await;
    let during = receiver.wait_for(1).await;
    assert!(signed_by(&t, &during[0], &old) && signed_by(&t, &during[0], &new));
    t.clock().shift(3601);
    test_send(&t, key, id).await;
    let after = receiver.wait_for(2).await;
    assert!(signed_by(&t, &after[1], &new));
    assert!(
        !signed_by(&t, &after[1], &old),
        "the old secret no longer signs"
    );
    let (status, bad) = t
        .call(
            Method::POST,
            &format!("/v1/endpoints/{id}/secret/rotate"),
            Some(key),
            Some(json!({"grace_secs": 700_000})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (422, Some("grace_secs"))
    );
    t.shutdown().await;
}

async fn recover_sends_again_exactly_the_failed_messages(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    let endpoint = create(&t, key, &url, json!(["device.pruned"])).await;
    let id = endpoint["id"].as_str().expect("id");
    let since = jiff::Timestamp::from_millisecond(t.clock().unix_millis()).expect("now");
    *receiver.fail_with.lock().expect("lock") = Some(500);
    let failing = [test_send(&t, key, id).await, test_send(&t, key, id).await];
    // Eight attempts each, the schedule skipped through 13 hours at a time (past 10 h + 20 %).
    for round in 1..=8 {
        wait_attempts(&t, key, id, 2 * round).await;
        t.clock().shift(13 * 3600);
    }
    let m = messages(&t, key, id).await;
    assert!(m.iter().all(|m| m["status"] == "failed"), "{m:?}");
    *receiver.fail_with.lock().expect("lock") = None;
    let fine = test_send(&t, key, id).await;
    let before = receiver.wait_for(17).await.len();
    assert_eq!(before, 17);
    assert_eq!(receiver.seen()[16].id(), fine);
    let (status, recovered) = t
        .call(
            Method::POST,
            &format!("/v1/endpoints/{id}/recover"),
            Some(key),
            Some(json!({"since": since.to_string()})),
        )
        .await;
    assert_eq!(
        (status, recovered["requeued"].as_u64()),
        (202, Some(2)),
        "{recovered}"
    );
    let seen = receiver.wait_for(19).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resent: Vec<String> = receiver.seen()[17..].iter().map(Received::id).collect();
    resent.sort();
    let mut want = failing.to_vec();
    want.sort();
    assert_eq!(resent, want, "{:?}", &seen[17..]);
    let m = messages(&t, key, id).await;
    assert!(m.iter().all(|m| m["status"] == "delivered"), "{m:?}");
    t.shutdown().await;
}

async fn loopback_and_metadata_addresses_are_refused_by_default(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.endpoints = Default::default()).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    for url in [
        "https://127.0.0.1/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/hooks",
        "https://localhost/hooks",
        "https://10.0.0.5/hooks",
        "http://backend.example.com/hooks",
        "not a url",
    ] {
        let (status, body) = t
            .call(
                Method::POST,
                "/v1/endpoints",
                Some(key),
                Some(json!({"url": url, "events": ["device.pruned"]})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {body}"
        );
        let (status, body) = t
            .call(
                Method::PUT,
                "/v1/app/callback",
                Some(key),
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
    }
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(key),
            Some(json!({"url": "https://backend.example.com/hooks", "events": ["no.such"]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(key),
            Some(json!({"url": "https://backend.example.com/hooks", "events": []})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("events")),
        "{body}"
    );
    t.shutdown().await;
}

async fn an_endpoint_failing_for_five_days_is_disabled_and_the_others_are_told(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (bad_url, bad) = Receiver::start().await;
    let (good_url, good) = Receiver::start().await;
    *bad.fail_with.lock().expect("lock") = Some(503);
    let failing = create(&t, key, &bad_url, json!(["device.pruned"])).await;
    let id = failing["id"].as_str().expect("id");
    create(&t, key, &good_url, json!(["endpoint.disabled"])).await;
    test_send(&t, key, id).await;
    wait_attempts(&t, key, id, 1).await;
    t.clock().shift(5 * 86_400 + 60);
    wait_attempts(&t, key, id, 2).await;
    let told = good.wait_for(1).await;
    let body = told[0].json();
    assert_eq!(body["type"], "endpoint.disabled", "{body}");
    assert_eq!(body["data"]["endpoint_id"], id);
    let (_, shown) = t
        .call(Method::GET, &format!("/v1/endpoints/{id}"), Some(key), None)
        .await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(
        shown["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing")),
        "{shown}"
    );
    let m = messages(&t, key, id).await;
    assert_eq!(m[0]["status"], "failed", "{m:?}");
    assert_eq!(bad.seen().len(), 2);
    // Enabled again, it starts afresh.
    let (status, shown) = t
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{id}"),
            Some(key),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert!(
        shown["failing_since"].is_null() && shown["disabled_reason"].is_null(),
        "{shown}"
    );
    t.shutdown().await;
}

async fn the_legacy_callback_is_an_endpoint_subscribed_to_device_pruned(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, _receiver) = Receiver::start().await;
    let (status, set) = t
        .call(
            Method::PUT,
            "/v1/app/callback",
            Some(key),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    let (_, listed) = t.call(Method::GET, "/v1/endpoints", Some(key), None).await;
    let endpoints = listed["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{listed}");
    assert_eq!(endpoints[0]["legacy_callback"], true);
    assert_eq!(endpoints[0]["events"], json!(["device.pruned"]));
    assert_eq!(endpoints[0]["url"], url);
    let (_, shown) = t.call(Method::GET, "/v1/app", Some(key), None).await;
    assert_eq!(shown["callback_url"], url);
    // Set again: the same endpoint (its pending messages stay), with a new secret.
    let (status, again) = t
        .call(
            Method::PUT,
            "/v1/app/callback",
            Some(key),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_ne!(again["secret"], set["secret"]);
    let (_, relisted) = t.call(Method::GET, "/v1/endpoints", Some(key), None).await;
    assert_eq!(
        relisted["endpoints"][0]["id"], endpoints[0]["id"],
        "{relisted}"
    );
    let (status, _) = t
        .call(Method::DELETE, "/v1/app/callback", Some(key), None)
        .await;
    assert_eq!(status, 204);
    let (_, listed) = t.call(Method::GET, "/v1/endpoints", Some(key), None).await;
    assert_eq!(listed["endpoints"], json!([]));
    t.shutdown().await;
}

async fn a_credential_failing_and_recovering_is_told_to_subscribed_endpoints(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    create(
        &t,
        key,
        &url,
        json!(["credential.failing", "credential.recovered"]),
    )
    .await;
    let apns = pushbridge::model::Platform::Apns;
    let probe_at = t.clock().unix_millis() + 60_000;
    for _ in 0..2 {
        // The second refusal finds the breaker open: nothing new to tell.
        t.store()
            .open_breaker(&app.app.id, apns, "InvalidProviderToken", probe_at)
            .await
            .expect("open");
    }
    let failing = receiver.wait_for(1).await;
    assert_eq!(failing[0].json()["type"], "credential.failing");
    assert_eq!(failing[0].json()["data"]["provider"], "apns");
    assert_eq!(failing[0].json()["data"]["reason"], "InvalidProviderToken");
    assert!(t
        .store()
        .close_breaker(&app.app.id, apns)
        .await
        .expect("close"));
    let both = receiver.wait_for(2).await;
    assert_eq!(
        both[1].json()["type"],
        "credential.recovered",
        "{}",
        both[1].body
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 2);
    t.shutdown().await;
}

async fn an_endpoint_that_came_to_point_inside_is_refused_at_connect_time(db: Db) {
    // Saved while it pointed elsewhere (written straight to the store, as if its name had
    // resolved to a public address then): the attempt checks the address again.
    let t = TestApp::spawn_with(db, |c| {
        c.endpoints = Default::default();
        c.endpoints.allow_insecure = true;
        c.worker.poll_interval_ms = 20;
    })
    .await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    let secret = pushbridge::signature::Scheme::StandardWebhooks.generate_secret();
    let endpoint = t
        .store()
        .create_endpoint(
            &app.app.id,
            pushbridge::store::NewEndpoint {
                url: &url,
                description: None,
                events: &[pushbridge::model::event_type::EventType::DevicePruned],
                secret: &secret,
            },
        )
        .await
        .expect("endpoint");
    test_send(&t, key, &endpoint.id).await;
    let logged = wait_attempts(&t, key, &endpoint.id, 1).await;
    assert_eq!(logged[0]["outcome"], "failed");
    assert!(logged[0]["response_code"].is_null(), "{logged:?}");
    let error = logged[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert!(
        receiver.seen().is_empty(),
        "nothing reached the loopback receiver"
    );
    t.shutdown().await;
}

async fn event_completed_tells_the_counts_once(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (url, receiver) = Receiver::start().await;
    create(&t, key, &url, json!(["event.completed"])).await;
    for (kind, seed) in [
        (ApnsTestKind::Success, 31),
        (ApnsTestKind::Success, 32),
        (ApnsTestKind::Unregistered { timestamp_ms: None }, 33),
    ] {
        let token = apns_test_token(kind, seed);
        let (status, body) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(key),
                Some(json!({"platform": "apns", "user_id": "u1"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let event_id = send(
        &t,
        key,
        json!({"to": {"user": "u1"}, "template": {"body": "hi"}}),
    )
    .await;
    let got = receiver.wait_for(1).await;
    let body = got[0].json();
    assert_eq!(body["type"], "event.completed", "{body}");
    assert_eq!(body["data"]["event_id"], event_id.as_str());
    assert_eq!(
        body["data"]["deliveries"],
        json!({"delivered": 2, "invalid": 1}),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 1, "once");
    t.shutdown().await;
}

/// The stats report (and the dashboard that shows it) tells each endpoint's state.
async fn the_stats_report_tells_each_endpoints_health(db: Db) {
    let t = fast(db).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let (ok_url, _ok) = Receiver::start().await;
    let (bad_url, bad) = Receiver::start().await;
    *bad.fail_with.lock().expect("lock") = Some(503);
    let healthy = create(&t, key, &ok_url, json!(["device.pruned"])).await;
    let failing = create(&t, key, &bad_url, json!(["device.pruned"])).await;
    let (healthy, failing) = (
        healthy["id"].as_str().expect("id"),
        failing["id"].as_str().expect("id"),
    );
    test_send(&t, key, failing).await;
    wait_attempts(&t, key, failing, 1).await;
    let health = |report: &Value, id: &str| -> Value {
        report["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("endpoint {id} missing: {report}"))
    };
    let (status, report) = t.call(Method::GET, "/v1/stats", Some(key), None).await;
    assert_eq!(status, 200, "{report}");
    let h = health(&report, healthy);
    assert_eq!(
        (h["state"].as_str(), h["pending"].as_i64()),
        (Some("healthy"), Some(0)),
        "{h}"
    );
    let f = health(&report, failing);
    assert_eq!(f["state"], "failing", "{f}");
    assert!(f["failing_since"].is_string(), "{f}");
    assert_eq!(
        (f["pending"].as_i64(), f["failed"].as_i64()),
        (Some(1), Some(0)),
        "{f}"
    );
    let (status, _) = t
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{failing}"),
            Some(key),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, report) = t.call(Method::GET, "/v1/stats", Some(key), None).await;
    assert_eq!(health(&report, failing)["state"], "disabled", "{report}");
    t.shutdown().await;
}

backend_tests!(
    the_stats_report_tells_each_endpoints_health,
    event_completed_tells_the_counts_once,
    an_endpoint_that_came_to_point_inside_is_refused_at_connect_time,
    a_credential_failing_and_recovering_is_told_to_subscribed_endpoints,
    a_test_message_arrives_signed_and_the_secret_is_shown_only_on_create,
    an_endpoint_receives_only_the_types_it_subscribed_to,
    a_receiver_failing_three_times_gets_the_message_once_it_answers_200,
    during_a_rotation_both_secrets_verify_and_afterwards_only_the_new_one,
    recover_sends_again_exactly_the_failed_messages,
    loopback_and_metadata_addresses_are_refused_by_default,
    an_endpoint_failing_for_five_days_is_disabled_and_the_others_are_told,
    the_legacy_callback_is_an_endpoint_subscribed_to_device_pruned,
);
