//! The delivery pipeline end to end: webhook or direct send → rules → fan-out → worker →
//! simulator over TLS HTTP/2 → outcome, retry, pruning, callbacks.

use std::sync::{Arc, Mutex};

use crate::harness::{proven, simulator, Db, TestApp};
use pushbridge::clock::now_ms;
use pushbridge::signature::Scheme;
use pushbridge::signature::{sign, verify};
use pushbridge::simulator::tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, fcm_test_token_failing_first,
    ApnsTestKind, FcmTestKind,
};
use pushbridge::simulator::{Faults, Side};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

async fn register(t: &TestApp, app: &NewApp, token: &str, body: Value) {
    let (status, resp) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(&app.client_key),
            Some(proven(app, body)),
        )
        .await;
    assert!(status == 201 || status == 200, "{resp}");
}

async fn send_to_users(t: &TestApp, app: &NewApp, users: &[&str], template: Value) -> String {
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"users": users}, "template": template})),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    resp["event_id"].as_str().expect("event id").to_string()
}

async fn wait_completed(t: &TestApp, app: &NewApp, event_id: &str) -> Value {
    let event = t
        .wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    // Completion comes from the event's count of unfinished jobs; it must land on zero, not
    // below (a finish counted twice) and not above (a replay or fan-out slice not counted).
    assert_eq!(t.open_jobs(event_id).await, 0, "{event}");
    event
}

async fn deliveries(t: &TestApp, app: &NewApp, event_id: &str) -> Vec<Value> {
    let (_, list) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event_id}/deliveries"),
            Some(&app.server_key),
            None,
        )
        .await;
    list["deliveries"].as_array().expect("deliveries").clone()
}

async fn webhook_for_user_gives_one_personalized_payload_per_device(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let ios = apns_test_token(ApnsTestKind::Success, 1);
    let android_de = fcm_test_token(FcmTestKind::Success, 2);
    let android_en = fcm_test_token(FcmTestKind::Success, 3);
    register(
        &t,
        &app,
        &ios,
        json!({"platform": "apns", "user_id": "u1", "locale": "fr-FR",
        "attributes": {"first_name": "Zoé", "unread": 4}}),
    )
    .await;
    register(
        &t,
        &app,
        &android_de,
        json!({"platform": "fcm", "user_id": "u1", "locale": "de-AT",
        "attributes": {"first_name": "Jonas"}}),
    )
    .await;
    register(
        &t,
        &app,
        &android_en,
        json!({"platform": "fcm", "user_id": "u1", "locale": "en-GB",
        "attributes": {"first_name": "Sam"}}),
    )
    .await;
    register(
        &t,
        &app,
        &apns_test_token(ApnsTestKind::Success, 9),
        json!({"platform": "apns", "user_id": "someone-else"}),
    )
    .await;

    let (status, err) = t
        .call(Method::PUT, "/v1/templates/payment", Some(&app.server_key), Some(json!({
            "title": "Payment received",
            "body": "Hi {{ user.first_name }}, you received {{ event.data.amount }} {{ event.data.currency }}",
            "locales": {
                "fr": {"title": "Paiement reçu", "body": "Bonjour {{ user.first_name }}, vous avez reçu {{ event.data.amount }} €"},
                "de": {"body": "Hallo {{ user.first_name }}, {{ event.data.amount }} € sind da"}
            },
            "options": {"badge": "{{ user.unread | default(1) }}", "data": {"payment": "{{ event.data.id }}"}},
            "apns": {"sound": "cash.caf", "collapse_key": "pay-{{ event.data.id }}"},
            "fcm": {"channel_id": "payments", "priority": "high"}
        })))
        .await;
    assert_eq!(status, 201, "{err}");
    let (status, err) = t
        .call(
            Method::PUT,
            "/v1/rules/big-payments",
            Some(&app.server_key),
            Some(json!({
                "event": "payment.*", "condition": "data.amount > 100",
                "audience": {"user_id_path": "data.user_id"}, "template": "payment"
            })),
        )
        .await;
    assert_eq!(status, 201, "{err}");
    let (_, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": "billing", "scheme": "standard_webhooks"})),
        )
        .await;
    let secret = source["secrets"][0]["secret"].as_str().expect("secret");

    let body = json!({"type": "payment.succeeded", "data": {"id": "pay_77", "amount": 150, "currency": "EUR", "user_id": "u1"}}).to_string();
    let mut req = t
        .client
        .post(t.url(&format!("/v1/webhooks/{}/billing", app.app.id)))
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in sign(
        Scheme::StandardWebhooks,
        secret,
        body.as_bytes(),
        "msg_pay_77",
        now_ms() / 1000,
    )
    .expect("a valid secret")
    {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("webhook");
    assert_eq!(resp.status(), 202);
    let event_id = resp.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_string();

    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 3, "{event}");
    assert_eq!(
        event["deliveries"]["total"], 3,
        "the other user's device got nothing"
    );

    let records = sim.records();
    let apns: Vec<_> = records.iter().filter(|r| r.side == Side::Apns).collect();
    let fcm: Vec<_> = records.iter().filter(|r| r.side == Side::Fcm).collect();
    assert_eq!(apns.len(), 1, "{records:?}");
    assert_eq!(fcm.len(), 2);
    let a = &apns[0];
    assert_eq!(a.token.as_deref(), Some(ios.as_str()));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["aps"]["alert"]["title"], "Paiement reçu");
    assert_eq!(
        a.body["aps"]["alert"]["body"],
        "Bonjour Zoé, vous avez reçu 150 €"
    );
    assert_eq!(a.body["aps"]["badge"], 4);
    assert_eq!(a.body["aps"]["sound"], "cash.caf");
    assert_eq!(a.body["payment"], "pay_77");
    assert_eq!(
        a.headers.get("apns-collapse-id").map(String::as_str),
        Some("pay-pay_77")
    );
    assert_eq!(
        a.headers.get("apns-topic").map(String::as_str),
        Some("com.example.app")
    );

    let by_token = |token: &str| {
        fcm.iter()
            .find(|r| r.body["message"]["token"] == token)
            .unwrap_or_else(|| panic!("no FCM request for {token}"))
    };
    let de = &by_token(&android_de).body["message"];
    assert_eq!(
        de["notification"]["title"], "Payment received",
        "de has no title variant: default"
    );
    assert_eq!(de["notification"]["body"], "Hallo Jonas, 150 € sind da");
    assert_eq!(de["android"]["notification"]["channel_id"], "payments");
    assert_eq!(de["data"]["payment"], "pay_77");
    let en = &by_token(&android_en).body["message"];
    assert_eq!(en["notification"]["body"], "Hi Sam, you received 150 EUR");
}

async fn a_condition_that_does_not_match_sends_nothing(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    register(
        &t,
        &app,
        &apns_test_token(ApnsTestKind::Success, 5),
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    let (status, _) = t
        .call(
            Method::PUT,
            "/v1/rules/big",
            Some(&app.server_key),
            Some(json!({
                "event": "payment.*", "condition": "data.amount > 100",
                "audience": {"users": ["u1"]}, "template": {"body": "big one"}
            })),
        )
        .await;
    assert_eq!(status, 201);
    let (_, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": "billing", "scheme": "generic"})),
        )
        .await;
    let secret = source["secrets"][0]["secret"].as_str().expect("secret");
    let body = json!({"type": "payment.succeeded", "data": {"amount": 50}}).to_string();
    let mut req = t
        .client
        .post(t.url(&format!("/v1/webhooks/{}/billing", app.app.id)))
        .body(body.clone());
    for (k, v) in sign(
        Scheme::Generic,
        secret,
        body.as_bytes(),
        "small-1",
        now_ms() / 1000,
    )
    .expect("a valid secret")
    {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 202);
    let event_id = resp.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_string();
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["total"], 0);
    assert!(
        sim.records().iter().all(|r| r.side == Side::Token),
        "no push was sent"
    );
}

/// Receives callbacks: (headers, body) of every request.
async fn callback_receiver() -> (String, Arc<Mutex<Vec<(http::HeaderMap, String)>>>) {
    let seen: Arc<Mutex<Vec<(http::HeaderMap, String)>>> = Arc::default();
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hooks/pushbridge",
        axum::routing::post(move |headers: http::HeaderMap, body: String| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push((headers, body));
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/hooks/pushbridge",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn a_410_prunes_the_token_and_fires_the_callback_but_keeps_a_re_registered_device(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let (url, seen) = callback_receiver().await;
    let (status, cb) = t
        .call(
            Method::PUT,
            "/v1/app/callback",
            Some(&app.server_key),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 200, "{cb}");
    let secret = cb["secret"].as_str().expect("secret").to_string();

    // Unregistered "now": the device registered before that, so it is pruned.
    let dead = apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 11);
    // Unregistered at an old time: the device registered again since, so it is kept.
    let revived = apns_test_token(
        ApnsTestKind::Unregistered {
            timestamp_ms: Some(1_000_000),
        },
        12,
    );
    let fcm_dead = fcm_test_token(FcmTestKind::Unregistered, 13);
    register(
        &t,
        &app,
        &dead,
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    register(
        &t,
        &app,
        &revived,
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    register(
        &t,
        &app,
        &fcm_dead,
        json!({"platform": "fcm", "user_id": "u1"}),
    )
    .await;
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "hello"})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["invalid"], 3, "{event}");

    // Pruned devices are kept, marked pruned (restorable), until their retention ends.
    for (token, kept) in [(&dead, false), (&revived, true), (&fcm_dead, false)] {
        let (status, device) = t
            .call(
                Method::GET,
                &format!("/v1/devices/{token}"),
                Some(&app.server_key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{token}");
        assert_eq!(
            device["state"],
            if kept { "active" } else { "pruned" },
            "{device}"
        );
    }

    // Results are recorded as they arrive, so the two prunes may come in one callback or two.
    let mut want = vec![dead.as_str(), fcm_dead.as_str()];
    want.sort_unstable();
    let mut received: Vec<(http::HeaderMap, String)> = Vec::new();
    for _ in 0..200 {
        received = seen.lock().expect("lock").clone();
        let listed: usize = received
            .iter()
            .map(|(_, b)| {
                serde_json::from_str::<Value>(b).expect("json")["data"]["tokens"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .sum();
        if listed >= want.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!received.is_empty(), "the pruned-token callback arrives");
    let mut tokens = Vec::new();
    for (headers, body) in &received {
        verify(
            Scheme::StandardWebhooks,
            headers,
            body.as_bytes(),
            &[&secret],
            now_ms() / 1000,
            300,
        )
        .expect("the callback is signed with the app's callback secret");
        let body: Value = serde_json::from_str(body).expect("json");
        assert_eq!(body["type"], "device.pruned");
        tokens.extend(
            body["data"]["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .filter_map(|t| t["token"].as_str().map(str::to_string)),
        );
    }
    tokens.sort_unstable();
    assert_eq!(tokens, want, "only the tokens actually pruned are listed");

    let (_, stats) = t
        .call(Method::GET, "/v1/stats", Some(&app.server_key), None)
        .await;
    assert_eq!(stats["windows"]["5m"]["pruned_tokens"], 2);
    let shown = stats["recent_pruned_tokens"].to_string();
    assert!(!shown.contains(&dead), "pruned tokens are shown redacted");
}

async fn a_503_then_200_is_delivered_after_a_retry(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let token = apns_test_token_failing_first(ApnsTestKind::ServiceUnavailable, 1, 21);
    register(
        &t,
        &app,
        &token,
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "retry me"})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    let list = deliveries(&t, &app, &event_id).await;
    let id = list[0]["id"].as_str().expect("id");
    let (_, delivery) = t
        .call(
            Method::GET,
            &format!("/v1/deliveries/{id}"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(delivery["attempts"], 2);
    let log = delivery["attempt_log"].as_array().expect("log");
    assert_eq!(log[0]["outcome"], "retry");
    assert_eq!(log[0]["reason"], "ServiceUnavailable");
    assert_eq!(log[1]["outcome"], "delivered");
    assert!(log[1]["provider_id"]
        .as_str()
        .is_some_and(|p| !p.is_empty()));
}

/// A first try that delivers is one write: the job's row tells the attempt, the attempt log
/// gets no row; the API shows the attempt all the same, and a retried job keeps its log.
async fn a_first_try_that_delivers_is_kept_on_the_job_alone(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let first = apns_test_token(ApnsTestKind::Success, 31);
    let retried = apns_test_token_failing_first(ApnsTestKind::ServiceUnavailable, 1, 32);
    for token in [&first, &retried] {
        register(
            &t,
            &app,
            token,
            json!({"platform": "apns", "user_id": "u1"}),
        )
        .await;
    }
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "once"})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 2, "{event}");
    let list = deliveries(&t, &app, &event_id).await;
    // The first try delivered one, a retry the other.
    let id_of = |attempts: i64| {
        list.iter()
            .find(|d| d["attempts"] == attempts)
            .and_then(|d| d["id"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("a delivery of {attempts} attempts: {list:?}"))
    };
    let (first_id, retried_id) = (id_of(1), id_of(2));
    assert_ne!(first_id, retried_id);

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(t.db_url()).await.expect("connect");
    let logged = |id: String| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM delivery_attempts WHERE job_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("count");
            n
        }
    };
    assert_eq!(
        logged(first_id.clone()).await,
        0,
        "no attempt row for a first try"
    );
    assert_eq!(
        logged(retried_id.clone()).await,
        2,
        "a retried job keeps its log"
    );
    pool.close().await;

    for (id, outcomes) in [
        (&first_id, vec!["delivered"]),
        (&retried_id, vec!["retry", "delivered"]),
    ] {
        let (_, delivery) = t
            .call(
                Method::GET,
                &format!("/v1/deliveries/{id}"),
                Some(&app.server_key),
                None,
            )
            .await;
        let log = delivery["attempt_log"].as_array().expect("log");
        let got: Vec<&str> = log.iter().filter_map(|a| a["outcome"].as_str()).collect();
        assert_eq!(got, outcomes, "{delivery}");
        let last = &log[log.len() - 1];
        assert_eq!(last["attempt"], log.len(), "{delivery}");
        assert!(
            last["provider_id"].as_str().is_some_and(|p| !p.is_empty()),
            "{delivery}"
        );
        assert!(last["latency_ms"].as_i64().is_some(), "{delivery}");
        assert!(last["at"].as_str().is_some(), "{delivery}");
    }
}

async fn quota_exceeded_retry_after_is_honoured(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let token = fcm_test_token_failing_first(FcmTestKind::QuotaExceeded, 1, 31);
    register(
        &t,
        &app,
        &token,
        json!({"platform": "fcm", "user_id": "u1"}),
    )
    .await;
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "slow down"})).await;
    wait_completed(&t, &app, &event_id).await;
    let list = deliveries(&t, &app, &event_id).await;
    let id = list[0]["id"].as_str().expect("id");
    let (_, delivery) = t
        .call(
            Method::GET,
            &format!("/v1/deliveries/{id}"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(delivery["status"], "delivered");
    let log = delivery["attempt_log"].as_array().expect("log");
    assert_eq!(log[0]["reason"], "QUOTA_EXCEEDED");
    let at = |i: usize| {
        time::OffsetDateTime::parse(
            log[i]["at"].as_str().expect("at"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time")
    };
    let gap = at(1) - at(0);
    // The test backoff alone would wait at most 100 ms.
    let retry_after = pushbridge::simulator::QUOTA_RETRY_AFTER_SECS as i64 * 1000;
    assert!(
        gap >= time::Duration::milliseconds(retry_after - 50),
        "retried after {gap}"
    );
}

async fn max_attempts_gives_a_dead_letter_and_a_replay_delivers_it(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 2).await;
    let app = t.new_app().await;
    let token = apns_test_token_failing_first(ApnsTestKind::ServiceUnavailable, 3, 41);
    register(
        &t,
        &app,
        &token,
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "persistent"})).await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["dead"], 1, "{event}");
    let (_, dead) = t
        .call(
            Method::GET,
            "/v1/deliveries?status=dead",
            Some(&app.server_key),
            None,
        )
        .await;
    let dead = dead["deliveries"].as_array().expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["last_reason"], "ServiceUnavailable");
    let id = dead[0]["id"].as_str().expect("id").to_string();

    let (status, _) = t
        .call(
            Method::POST,
            &format!("/v1/deliveries/{id}/retry"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let delivery = t
        .wait_for(&format!("/v1/deliveries/{id}"), &app.server_key, |d| {
            d["status"] == "delivered"
        })
        .await;
    assert_eq!(
        delivery["attempt_log"].as_array().map(Vec::len),
        Some(4),
        "{delivery}"
    );
    wait_completed(&t, &app, &event_id).await;
    let (status, _) = t
        .call(
            Method::POST,
            &format!("/v1/deliveries/{id}/retry"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 409, "a delivered job is not a dead letter");
}

async fn a_template_that_fails_for_one_device_dead_letters_only_that_device(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let named = apns_test_token(ApnsTestKind::Success, 51);
    let nameless = apns_test_token(ApnsTestKind::Success, 52);
    register(
        &t,
        &app,
        &named,
        json!({"platform": "apns", "user_id": "u1", "attributes": {"first_name": "Ada"}}),
    )
    .await;
    register(
        &t,
        &app,
        &nameless,
        json!({"platform": "apns", "user_id": "u1"}),
    )
    .await;
    let event_id = send_to_users(
        &t,
        &app,
        &["u1"],
        json!({"body": "Hi {{ user.first_name }}"}),
    )
    .await;
    let event = wait_completed(&t, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    assert_eq!(event["deliveries"]["dead"], 1);
    let list = deliveries(&t, &app, &event_id).await;
    let dead = list
        .iter()
        .find(|d| d["status"] == "dead")
        .expect("dead letter");
    assert_eq!(dead["token"], nameless.as_str());
    assert!(
        dead["last_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("template error"),
        "{dead}"
    );
}

async fn a_crashed_workers_jobs_are_claimed_again_after_the_lease(db: Db) {
    let sim = simulator().await;
    sim.set_faults(Faults {
        latency_ms: 30_000,
        ..Faults::default()
    });
    let mut first = TestApp::with_simulator(db, &sim, |c| c.worker.lease_secs = 2).await;
    let app = first.new_app().await;
    let tokens: Vec<String> = (0..3)
        .map(|i| apns_test_token(ApnsTestKind::Success, 60 + i))
        .collect();
    for token in &tokens {
        register(
            &first,
            &app,
            token,
            json!({"platform": "apns", "user_id": "u1"}),
        )
        .await;
    }
    let event_id = send_to_users(&first, &app, &["u1"], json!({"body": "survive"})).await;
    first
        .wait_for("/v1/deliveries?status=in_flight", &app.server_key, |d| {
            d["deliveries"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    first.crash_workers();
    sim.set_faults(Faults::default());
    // A second instance on the same database picks the jobs up once the lease expires.
    let second = first
        .another_instance(&sim, |c| c.worker.lease_secs = 2)
        .await;
    let event = wait_completed(&second, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 3, "{event}");
    for d in deliveries(&second, &app, &event_id).await {
        assert_eq!(
            d["attempts"], 1,
            "the crashed attempt was never recorded: {d}"
        );
    }
    let delivered: Vec<String> = sim
        .records()
        .iter()
        .filter(|r| r.side == Side::Apns && r.status == 200)
        .filter_map(|r| r.token.clone())
        .collect();
    for token in &tokens {
        assert!(
            delivered.contains(token),
            "{token} delivered by the second instance"
        );
    }
}

async fn shutdown_finishes_in_flight_sends_and_loses_nothing(db: Db) {
    let sim = simulator().await;
    sim.set_faults(Faults {
        latency_ms: 500,
        ..Faults::default()
    });
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    for i in 0..5 {
        register(
            &t,
            &app,
            &fcm_test_token(FcmTestKind::Success, 70 + i),
            json!({"platform": "fcm", "user_id": "u1"}),
        )
        .await;
    }
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "bye"})).await;
    t.wait_for("/v1/deliveries?status=in_flight", &app.server_key, |d| {
        d["deliveries"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let after = t.another_instance(&sim, |c| c.worker.enabled = false).await;
    t.shutdown().await;
    let event = wait_completed(&after, &app, &event_id).await;
    assert_eq!(
        event["deliveries"]["delivered"], 5,
        "in-flight sends finished before exit: {event}"
    );
}

/// A small event's jobs are handed to the fan-out's own sender already leased, even beyond
/// what it can send at once; those still waiting for a send slot at shutdown go back to the
/// queue at once (not after their lease) and another instance sends each exactly once.
async fn jobs_handed_to_a_busy_sender_go_back_to_the_queue_at_shutdown(db: Db) {
    let sim = simulator().await;
    sim.set_faults(Faults {
        latency_ms: 500,
        ..Faults::default()
    });
    let long_lease = |c: &mut pushbridge::config::Config| {
        c.worker.lease_secs = 600;
        c.worker.concurrency = 1;
    };
    let t = TestApp::with_simulator(db, &sim, long_lease).await;
    let app = t.new_app().await;
    let tokens: Vec<String> = (0..4)
        .map(|i| fcm_test_token(FcmTestKind::Success, 80 + i))
        .collect();
    for token in &tokens {
        register(&t, &app, token, json!({"platform": "fcm", "user_id": "u1"})).await;
    }
    let event_id = send_to_users(&t, &app, &["u1"], json!({"body": "handed"})).await;
    // One send at a time, yet all four are leased: handed over, not claimed one by one.
    t.wait_for("/v1/deliveries?status=in_flight", &app.server_key, |d| {
        d["deliveries"].as_array().map(Vec::len) == Some(4)
    })
    .await;
    let after = t.another_instance(&sim, long_lease).await;
    t.shutdown().await;
    sim.set_faults(Faults::default());
    let event = wait_completed(&after, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 4, "{event}");
    for d in deliveries(&after, &app, &event_id).await {
        assert_eq!(d["attempts"], 1, "{d}");
    }
    for token in &tokens {
        let sends = sim
            .records()
            .iter()
            .filter(|r| r.side == Side::Fcm && r.token.as_deref() == Some(token.as_str()))
            .count();
        assert_eq!(sends, 1, "{token} sent once");
    }
}

/// A fan-out that committed its first slice and then lost its instance is resumed by another
/// worker after the cursor: every device gets exactly one job and one send, numbered on from
/// the committed slice, across more than one page of devices.
async fn a_fan_out_cut_short_resumes_after_its_last_committed_slice(db: Db) {
    use pushbridge::model::device::DeviceRegistration;
    use pushbridge::model::rules::{Audience, DeviceFilter, TemplateRef};
    use pushbridge::model::template::TemplateSpec;
    use pushbridge::model::JobStatus;
    use pushbridge::model::Notification;
    use pushbridge::store::{FanOutCursor, FanOutSlice, NewJob};
    use pushbridge::worker::JobPayload;

    let sim = simulator().await;
    // Workers only look for events when woken, so the half-done event below stays untouched
    // until the wake-up at the end.
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.poll_interval_ms = 3_600_000).await;
    let app = t.new_app().await;
    let store = t.store();
    let n = 2_500u64; // more than one page of devices
    let devices: Vec<(String, DeviceRegistration)> = (0..n)
        .map(|i| {
            let apns = i % 2 == 0;
            let token = if apns {
                apns_test_token(ApnsTestKind::Success, i)
            } else {
                fcm_test_token(FcmTestKind::Success, i)
            };
            let reg = DeviceRegistration {
                platform: if apns {
                    pushbridge::model::Platform::Apns
                } else {
                    pushbridge::model::Platform::Fcm
                },
                user_id: None,
                locale: None,
                timezone: None,
                app_version: None,
                environment: apns.then_some(pushbridge::model::ApnsEnvironment::Production),
                topic: None,
                attributes: json!({}),
                tags: vec![],
            };
            (token, reg)
        })
        .collect();
    store
        .import_devices(&app.app.id, &devices)
        .await
        .expect("import");
    let (first_token, first) = devices
        .iter()
        .min_by(|a, b| a.0.cmp(&b.0))
        .expect("devices");

    let template = TemplateSpec {
        title: Some("Resumed".into()),
        ..TemplateSpec::default()
    };
    let events = pushbridge::store::EventWriter::spawn(store.clone());
    let event_id = pushbridge::service::sends::enqueue_direct(
        store,
        &events,
        &app.app.id,
        pushbridge::service::sends::DirectSend {
            audience: Audience::Devices(DeviceFilter::default()),
            template: TemplateRef::Inline(Box::new(template)),
            data: Default::default(),
            event_type: None,
            delivery: Default::default(),
        },
    )
    .await
    .expect("event stored");
    // Another instance leases the event, commits the slice with the lowest token, and dies.
    let events = store
        .claim_events("wrk_crashed", 60_000, 10)
        .await
        .expect("claim");
    let event = events
        .iter()
        .find(|e| e.id == event_id)
        .expect("the event is leased");
    let job = NewJob {
        rule: Some("direct".into()),
        platform: first.platform,
        token: first_token.clone(),
        job: serde_json::to_string(&JobPayload::V1 {
            environment: first.environment,
            topic: None,
            notification: Notification {
                title: Some("Resumed".into()),
                ..Notification::default()
            },
            traceparent: None,
        })
        .expect("payload"),
        status: JobStatus::Queued,
        last_reason: None,
        due: None,
        expires_at: None,
        collapse_key: None,
        user_id: None,
        category: None,
    };
    let cursor = FanOutCursor {
        rule: "direct".into(),
        after: Some(first_token.clone()),
    };
    let written = store
        .write_fan_out_slice(
            event,
            "wrk_crashed",
            1, // its lease runs out at once
            0,
            FanOutSlice {
                jobs: std::slice::from_ref(&job),
                cursor: &cursor,
            },
        )
        .await
        .expect("slice");
    assert_eq!(written.map(|w| w.jobs_after), Some(1));
    // A lost lease cannot write: the sequence has moved on.
    let stale = store
        .write_fan_out_slice(
            event,
            "wrk_other",
            60_000,
            0,
            FanOutSlice {
                jobs: std::slice::from_ref(&job),
                cursor: &cursor,
            },
        )
        .await
        .expect("stale slice");
    assert!(stale.is_none(), "a writer without the lease writes nothing");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    // Any new event wakes this instance's workers, which take over the expired lease.
    send_to_users(&t, &app, &["nobody"], json!({"body": "wake up"})).await;
    let done = wait_completed(&t, &app, &event_id).await;
    assert_eq!(done["deliveries"]["delivered"], n, "{done}");

    let mut per_token: std::collections::HashMap<String, u64> = Default::default();
    for r in sim.records() {
        if r.side != Side::Token && r.status == 200 {
            if let Some(token) = r.token {
                *per_token.entry(token).or_default() += 1;
            }
        }
    }
    assert_eq!(per_token.len() as u64, n, "every device got a notification");
    assert!(
        per_token.values().all(|&c| c == 1),
        "no device got two notifications"
    );
    let jobs = store
        .event_deliveries(&app.app.id, &event_id, "", 10_000)
        .await
        .expect("deliveries");
    let mut numbers: Vec<u64> = jobs
        .iter()
        .map(|j| {
            j.id.rsplit('_')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("numbered job id")
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=n).collect::<Vec<_>>(), "jobs numbered 1..=n");
    let first_job = jobs
        .iter()
        .find(|j| j.token == *first_token)
        .expect("first job");
    assert!(
        first_job.id.ends_with("_00000001"),
        "the committed slice was kept"
    );
}

/// Small events claimed together are read, rendered and written together: each one still
/// reaches exactly its own audience (users, overlapping users, tokens), personalized, and
/// the quiet hours of a user who set some apply to that user's device alone.
async fn events_fanned_out_together_each_reach_their_own_audience(db: Db) {
    let sim = simulator().await;
    // Accepted with no worker running, so the second instance claims them in one batch.
    let first = TestApp::with_simulator(db, &sim, |c| c.worker.enabled = false).await;
    let app = first.new_app().await;
    let mut token_of = std::collections::HashMap::new();
    for i in 0..8u64 {
        let token = apns_test_token(ApnsTestKind::Success, 120 + i);
        let user = format!("u{}", i % 4);
        register(
            &first,
            &app,
            &token,
            json!({"platform": "apns", "user_id": user, "locale": "en"}),
        )
        .await;
        token_of.entry(user).or_insert_with(Vec::new).push(token);
    }
    // u3 is in its quiet hours (an hour ago to an hour from now, UTC): its devices' jobs
    // wait, the others go now.
    let quiet = json!({"quiet_hours": {
        "start": crate::harness::schedule::utc_clock_time(&first, -60),
        "end": crate::harness::schedule::utc_clock_time(&first, 60),
    }});
    let (status, resp) = first
        .call(
            Method::PUT,
            "/v1/users/u3/preferences",
            Some(&app.server_key),
            Some(quiet),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let template = json!({"body": "for {{ event.who }}"});
    let mut sends = Vec::new();
    for (to, who) in [
        (json!({"user": "u0"}), "u0"),
        (json!({"users": ["u1", "u2", "u1"]}), "u1+u2"),
        (json!({"users": ["u2"]}), "u2"),
        (json!({"tokens": [token_of["u0"][1].clone()]}), "t"),
        (json!({"users": ["u3", "nobody"]}), "u3"),
    ] {
        let (status, resp) = first
            .call(
                Method::POST,
                "/v1/notifications",
                Some(&app.server_key),
                Some(json!({"to": to, "template": template, "data": {"who": who}})),
            )
            .await;
        assert_eq!(status, 202, "{resp}");
        let id = resp["event_id"].as_str().expect("event id").to_string();
        sends.push((id, who));
    }
    let second = first.another_instance(&sim, |_| {}).await;
    let expected = |who: &str| -> Vec<String> {
        let mut tokens: Vec<String> = match who {
            "u0" => token_of["u0"].clone(),
            "u1+u2" => [token_of["u1"].clone(), token_of["u2"].clone()].concat(),
            "u2" => token_of["u2"].clone(),
            "t" => vec![token_of["u0"][1].clone()],
            _ => token_of["u3"].clone(),
        };
        tokens.sort();
        tokens
    };
    for (id, who) in &sends {
        if *who == "u3" {
            continue;
        }
        wait_completed(&second, &app, id).await;
        let mut tokens: Vec<String> = deliveries(&second, &app, id)
            .await
            .iter()
            .map(|d| {
                assert_eq!(d["status"], "delivered", "{d}");
                d["token"].as_str().expect("token").to_string()
            })
            .collect();
        tokens.sort();
        assert_eq!(tokens, expected(who), "event for {who}");
    }
    let held = deliveries(&second, &app, &sends[4].0).await;
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter().all(|d| d["hold"] == "quiet_hours"),
        "u3's jobs wait for the end of its quiet hours: {held:?}"
    );
    let bodies: Vec<String> = sim
        .records()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body.to_string())
        .collect();
    for (_, who) in &sends[..4] {
        let n = bodies
            .iter()
            .filter(|b| b.contains(&format!("for {who}")))
            .count();
        assert_eq!(n, expected(who).len(), "payloads for {who}");
    }
}

backend_tests!(
    events_fanned_out_together_each_reach_their_own_audience,
    a_fan_out_cut_short_resumes_after_its_last_committed_slice,
    webhook_for_user_gives_one_personalized_payload_per_device,
    a_condition_that_does_not_match_sends_nothing,
    a_410_prunes_the_token_and_fires_the_callback_but_keeps_a_re_registered_device,
    a_503_then_200_is_delivered_after_a_retry,
    a_first_try_that_delivers_is_kept_on_the_job_alone,
    quota_exceeded_retry_after_is_honoured,
    max_attempts_gives_a_dead_letter_and_a_replay_delivers_it,
    a_template_that_fails_for_one_device_dead_letters_only_that_device,
    a_crashed_workers_jobs_are_claimed_again_after_the_lease,
    shutdown_finishes_in_flight_sends_and_loses_nothing,
    jobs_handed_to_a_busy_sender_go_back_to_the_queue_at_shutdown,
);
