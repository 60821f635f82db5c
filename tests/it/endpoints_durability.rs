//! Event endpoint messages survive what a production bridge goes through: an upgrade from the
//! per-app callback (its URL, secret and queued messages move to an endpoint), and a kill -9
//! of the real binary with a thousand messages pending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{bridge_env, open_store, simulator, BridgeProcess, Db, TestApp};
use pushbridge::model::event_type::EventType;
use pushbridge::signature::{verify, Scheme};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::store::NewEndpoint;

/// Counts requests per `webhook-id`; each answer takes `delay`.
async fn counting_receiver(delay: Duration) -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: http::HeaderMap| {
            let s = s.clone();
            async move {
                let id = headers["webhook-id"]
                    .to_str()
                    .unwrap_or_default()
                    .to_string();
                *s.lock().expect("lock").entry(id).or_default() += 1;
                tokio::time::sleep(delay).await;
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// A secret of the callback as the previous version stored it (plaintext, sealed at start).
const OLD_SECRET: &str = "whsec_b2xkIGNhbGxiYWNrIHNlY3JldCBieXRlcw==";

async fn an_app_callback_and_its_queued_messages_move_to_an_endpoint_on_upgrade(db: Db) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = db.fresh_url(dir.path()).await;
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    let app = t.new_app().await;
    t.shutdown().await;

    // What the previous version left: a callback and one message still queued for it.
    let seen: Arc<Mutex<Vec<(http::HeaderMap, String)>>> = Arc::default();
    let s = seen.clone();
    let receiver = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: http::HeaderMap, body: String| {
            let s = s.clone();
            async move {
                s.lock().expect("lock").push((headers, body));
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let callback = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    sqlx::query("UPDATE apps SET callback_url = $1, callback_secret = $2 WHERE id = $3")
        .bind(&callback)
        .bind(OLD_SECRET)
        .bind(&app.app.id)
        .execute(&pool)
        .await
        .expect("callback");
    let body = r#"{"type":"devices.pruned","data":{"tokens":[]}}"#;
    sqlx::query(
        "INSERT INTO callback_outbox (id, app_id, body, status, attempts, next_attempt_at, \
         created_at) VALUES ('msg_before_upgrade', $1, $2, 'queued', 1, 0, 0)",
    )
    .bind(&app.app.id)
    .bind(body)
    .execute(&pool)
    .await
    .expect("queued callback");
    pool.close().await;

    let t = TestApp::spawn_on(url.clone(), dir.clone(), |c| c.worker.poll_interval_ms = 20).await;
    let key = app.server_key.as_str();
    let (_, listed) = t.call(Method::GET, "/v1/endpoints", Some(key), None).await;
    let endpoints = listed["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{listed}");
    assert_eq!(endpoints[0]["url"], callback);
    assert_eq!(endpoints[0]["events"], json!(["device.pruned"]));
    let (_, shown) = t.call(Method::GET, "/v1/app", Some(key), None).await;
    assert_eq!(shown["callback_url"], callback);
    for _ in 0..200 {
        if !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "the queued callback is delivered once");
    assert_eq!(got[0].0["webhook-id"], "msg_before_upgrade");
    assert_eq!(got[0].1, body);
    verify(
        Scheme::StandardWebhooks,
        &got[0].0,
        got[0].1.as_bytes(),
        &[OLD_SECRET],
        t.clock().unix_millis() / 1000,
        300,
    )
    .expect("signed with the secret the app already has");
    t.shutdown().await;
}

/// Messages pending at the kill.
const PENDING: usize = 1000;

async fn kill_9_with_a_thousand_messages_pending_delivers_all_of_them(db: Db) {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("crash").await.expect("app");
    let (receiver, seen) = counting_receiver(Duration::from_millis(20)).await;
    let secret = Scheme::StandardWebhooks.generate_secret();
    store
        .create_endpoint(
            &app.app.id,
            NewEndpoint {
                url: &receiver,
                description: None,
                events: &[EventType::DevicePruned],
                secret: &secret,
            },
        )
        .await
        .expect("endpoint");
    for i in 0..PENDING {
        let body = json!({"type": "device.pruned", "data": {"n": i}}).to_string();
        let queued = store
            .enqueue_message(&app.app.id, EventType::DevicePruned, &body)
            .await
            .expect("queued");
        assert_eq!(queued, 1);
    }
    let env = bridge_env(&url, &sim);
    // A short attempt timeout, so the messages in flight at the kill are leased briefly.
    let extra = [("PUSHBRIDGE_ENDPOINTS__TIMEOUT_SECS", "2")];
    let mut bridge = BridgeProcess::start(dir.path(), &env, &extra, None).await;
    let start = Instant::now();
    while seen.lock().expect("lock").len() < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "delivery never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bridge.kill9();
    let at_kill = seen.lock().expect("lock").len();
    assert!(at_kill < PENDING, "the kill came with messages pending");

    let _bridge = BridgeProcess::start(dir.path(), &env, &extra, None).await;
    let start = Instant::now();
    while seen.lock().expect("lock").len() < PENDING {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} of {PENDING} delivered",
            seen.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = seen.lock().expect("lock").clone();
    assert_eq!(counts.len(), PENDING, "every message arrived");
    let twice = counts.values().filter(|&&n| n > 1).count();
    // At least once: only the attempts in flight at the kill (at most the per-endpoint
    // limit) may arrive twice.
    assert!(twice <= 4, "{twice} messages arrived twice");
}

/// Devices in the batching test, and the items per message.
const FAN_OUT: u64 = 2000;
const BATCH: u32 = 500;

async fn a_fan_out_with_delivery_succeeded_is_sent_in_batches_of_n(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| {
        c.endpoints.batch_max_items = BATCH;
        c.endpoints.batch_max_wait_secs = 3600;
    })
    .await;
    let app = t.new_app().await;
    let devices: Vec<(String, pushbridge::model::device::DeviceRegistration)> = (0..FAN_OUT)
        .map(|i| {
            let token = apns_test_token(ApnsTestKind::Success, 90_000 + i);
            let reg = pushbridge::model::device::DeviceRegistration {
                platform: pushbridge::model::Platform::Apns,
                user_id: Some("u1".into()),
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
        .collect();
    t.store()
        .import_devices(&app.app.id, &devices)
        .await
        .expect("import");
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let s = seen.clone();
    let receiver = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |body: String| {
            let s = s.clone();
            async move {
                s.lock()
                    .expect("lock")
                    .push(serde_json::from_str(&body).expect("json"));
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let key = app.server_key.as_str();
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(key),
            Some(json!({"url": url, "events": ["delivery.succeeded"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = crate::harness::schedule::send(
        &t,
        key,
        json!({"to": {"devices": {}}, "template": {"body": "hi"}}),
    )
    .await;
    crate::harness::schedule::completed(&t, key, &id).await;
    let items = |seen: &[serde_json::Value]| -> usize {
        seen.iter()
            .map(|m| m["data"]["deliveries"].as_array().map_or(0, Vec::len))
            .sum()
    };
    for _ in 0..300 {
        if items(&seen.lock().expect("lock")) >= FAN_OUT as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.lock().expect("lock").clone();
    assert_eq!(items(&got), FAN_OUT as usize);
    assert!(
        got.len() <= (FAN_OUT / u64::from(BATCH)) as usize,
        "{} requests for {FAN_OUT} deliveries in batches of {BATCH}",
        got.len()
    );
    let mut ids: Vec<&str> = got
        .iter()
        .flat_map(|m| m["data"]["deliveries"].as_array().into_iter().flatten())
        .filter_map(|d| d["delivery_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), FAN_OUT as usize, "each delivery once");
    assert!(got.iter().all(|m| m["type"] == "delivery.succeeded"));
    t.shutdown().await;
}

backend_tests!(
    a_fan_out_with_delivery_succeeded_is_sent_in_batches_of_n,
    an_app_callback_and_its_queued_messages_move_to_an_endpoint_on_upgrade,
    kill_9_with_a_thousand_messages_pending_delivers_all_of_them,
);
