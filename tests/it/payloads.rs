//! What goes on the wire for each kind of template: a push that shows nothing is a background
//! push at priority 5 with Apple's exact `aps`, FCM's Android notification carries every
//! display option, templates that contradict themselves or use reserved keys are refused
//! when saved, and the simulator refuses what Apple and Google document as errors.

use crate::harness::wire::tls_connect;
use crate::harness::{certs_dir, proven, simulator, Db, TestApp};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushbridge::config::Config;
use pushbridge::model::{ApnsEnvironment, Notification, Platform, Priority};
use pushbridge::push::{Outcome, Providers, Target};
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use pushbridge::simulator::{self, RecordedRequest, Side, SimulatorHandle};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

const TOPIC: &str = "com.example.app";

async fn register(t: &TestApp, app: &NewApp, token: &str, platform: &str) {
    let (status, resp) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(&app.client_key),
            Some(proven(app, json!({"platform": platform, "user_id": "u1"}))),
        )
        .await;
    assert!(status == 201 || status == 200, "{resp}");
}

/// Sends `template` to user u1 and waits until every delivery is done.
async fn send_and_wait(t: &TestApp, app: &NewApp, template: Value) {
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u1"}, "template": template})),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let event_id = resp["event_id"].as_str().expect("event id");
    let event = t
        .wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(event["deliveries"]["delivered"], 2, "{event}");
}

fn sent(sim: &SimulatorHandle, side: Side) -> RecordedRequest {
    let records: Vec<_> = sim
        .records()
        .into_iter()
        .filter(|r| r.side == side)
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().expect("one request")
}

/// A bridge on `db` wired to a fresh simulator, with an app whose user u1 has one iPhone and
/// one Android phone.
async fn app_with_two_devices(db: Db) -> (SimulatorHandle, TestApp, NewApp) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    register(&t, &app, &apns_test_token(ApnsTestKind::Success, 1), "apns").await;
    register(&t, &app, &fcm_test_token(FcmTestKind::Success, 2), "fcm").await;
    (sim, t, app)
}

async fn a_data_only_template_goes_out_as_a_background_push_at_priority_5(db: Db) {
    let (sim, t, app) = app_with_two_devices(db).await;

    send_and_wait(
        &t,
        &app,
        json!({"options": {"data": {"sync": "{{ 'inbox' | upper }}"}},
               "fcm": {"priority": "high"}}),
    )
    .await;

    let apns = sent(&sim, Side::Apns);
    assert_eq!(apns.status, 200);
    assert_eq!(apns.headers["apns-push-type"], "background");
    assert_eq!(apns.headers["apns-priority"], "5");
    assert_eq!(
        apns.body,
        json!({"aps": {"content-available": 1}, "sync": "INBOX"})
    );
    let fcm = sent(&sim, Side::Fcm);
    assert_eq!(fcm.status, 200);
    let m = &fcm.body["message"];
    assert!(m.get("notification").is_none(), "a data message: {m}");
    assert_eq!(m["data"], json!({"sync": "INBOX"}));
    // Android may have its high priority; Apple devices get what Google allows them.
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["apns"]["headers"]["apns-push-type"], "background");
    assert_eq!(m["apns"]["headers"]["apns-priority"], "5");
    assert_eq!(
        m["apns"]["payload"],
        json!({"aps": {"content-available": 1}})
    );
    t.shutdown().await;
}

async fn every_display_option_reaches_both_providers(db: Db) {
    let (sim, t, app) = app_with_two_devices(db).await;

    send_and_wait(
        &t,
        &app,
        json!({"title": "Order shipped", "body": "On its way",
               "options": {"badge": 7, "thread_id": "orders", "category": "OPEN_ORDER",
                           "sound": "default", "collapse_key": "order-42", "ttl_seconds": 600},
               "fcm": {"channel_id": "orders"}}),
    )
    .await;

    let apns = sent(&sim, Side::Apns);
    assert_eq!(apns.headers["apns-push-type"], "alert");
    assert_eq!(apns.headers["apns-collapse-id"], "order-42");
    assert_eq!(
        apns.body["aps"],
        json!({"alert": {"title": "Order shipped", "body": "On its way"}, "badge": 7,
               "sound": "default", "category": "OPEN_ORDER", "thread-id": "orders"}),
        "no flag that is off, such as mutable-content: 0"
    );
    let m = &sent(&sim, Side::Fcm).body["message"];
    assert_eq!(
        m["android"]["notification"],
        json!({"notification_count": 7, "tag": "orders", "click_action": "OPEN_ORDER",
               "sound": "default", "channel_id": "orders"})
    );
    assert_eq!(m["android"]["collapse_key"], "order-42");
    assert_eq!(m["android"]["ttl"], "600s");
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "order-42");
    assert_eq!(m["apns"]["payload"]["aps"]["badge"], 7);
    assert_eq!(m["apns"]["payload"]["aps"]["thread-id"], "orders");
    t.shutdown().await;
}

async fn templates_that_providers_would_refuse_are_422_when_saved(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let long = "x".repeat(4100);
    let cases = [
        (
            json!({"title": "Hi", "options": {"push_type": "background"}}),
            "options.push_type",
        ),
        (
            json!({"options": {"data": {"k": "v"}, "priority": "high"}}),
            "options.priority",
        ),
        (
            json!({"options": {"data": {"k": "v"}, "push_type": "alert"}}),
            "options.push_type",
        ),
        (
            json!({"options": {"data": {"k": "v"}, "category": "NEW"}}),
            "options.category",
        ),
        (
            json!({"body": "x", "options": {"data": {"google.x": "1"}}}),
            "options.data.google.x",
        ),
        (
            json!({"body": "x", "fcm": {"data": {"from": "me"}}}),
            "fcm.data.from",
        ),
        (json!({"title": "Hi", "body": long}), "body"),
    ];
    for (template, field) in cases {
        let (status, resp) = t
            .call(
                Method::PUT,
                "/v1/templates/refused",
                Some(&app.server_key),
                Some(template.clone()),
            )
            .await;
        assert_eq!(status, 422, "{template}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{template}: {resp}");
    }
    // The same checks hold for a rule's inline template and a direct send's.
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/rules/refused",
            Some(&app.server_key),
            Some(json!({"event": "*", "audience": {"users": ["u1"]},
                        "template": {"options": {"data": {"gcm.x": "1"}}}})),
        )
        .await;
    assert_eq!(
        (status, &resp["error"]["field"]),
        (422, &json!("template.options.data.gcm.x")),
        "{resp}"
    );
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u1"},
                        "template": {"options": {"data": {"k": "v"}, "priority": "high"}}})),
        )
        .await;
    assert_eq!(status, 422, "{resp}");
    // What the providers accept is saved.
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/templates/sync",
            Some(&app.server_key),
            Some(
                json!({"options": {"data": {"k": "{{ event.id }}"}, "priority": "normal"},
                        "fcm": {"priority": "high"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    t.shutdown().await;
}

backend_tests!(
    a_data_only_template_goes_out_as_a_background_push_at_priority_5,
    every_display_option_reaches_both_providers,
    templates_that_providers_would_refuse_are_422_when_saved,
);

/// A provider token for the simulator's test key, signed now.
fn provider_jwt() -> String {
    let key = std::fs::read(certs_dir().join("AuthKey_SIMKEY0001.p8")).expect("test key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(simulator::TEST_KEY_ID.into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": simulator::TEST_TEAM_ID, "iat": now}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).expect("EC key"),
    )
    .expect("signed")
}

#[tokio::test]
async fn the_apns_simulator_refuses_priority_10_for_a_background_push() {
    let sim = simulator().await;
    let tls = tls_connect(sim.apns_addr(), &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let jwt = provider_jwt();
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let mut answers = Vec::new();
    for priority in [Some("10"), Some("5"), None] {
        let mut request = http::Request::post(format!("{}/3/device/{token}", sim.apns_url()))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", TOPIC)
            .header("apns-push-type", "background");
        if let Some(p) = priority {
            request = request.header("apns-priority", p);
        }
        let request = request
            .body(Full::new(Bytes::from_static(
                br#"{"aps":{"content-available":1}}"#,
            )))
            .expect("request");
        let response = sender.send_request(request).await.expect("answer");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    assert_eq!(
        answers,
        vec![
            (400, r#"{"reason":"BadPriority"}"#.to_string()),
            (200, String::new()),
            // Clients that leave the header out keep working.
            (200, String::new()),
        ]
    );
}

#[tokio::test]
async fn the_fcm_simulator_refuses_what_google_refuses_in_data_messages() {
    let sim = simulator().await;
    let mut config = Config::default();
    pushbridge::use_simulator(&mut config, &sim, &certs_dir());
    let providers = Providers::new(&config.apns, &config.fcm).expect("providers");
    let target = Target {
        platform: Platform::Fcm,
        token: fcm_test_token(FcmTestKind::Success, 1),
        environment: ApnsEnvironment::Production,
        topic: None,
    };
    // Built by hand: templates that would produce these are refused when saved.
    let reserved_key = Notification {
        title: Some("Hi".into()),
        data: [("google.c.a.e".to_string(), "1".to_string())].into(),
        ..Notification::default()
    };
    let data_at_priority_10 = Notification {
        push_type: Some("alert".into()),
        priority: Some(Priority::High),
        data: [("sync".to_string(), "1".to_string())].into(),
        ..Notification::default()
    };
    for n in [reserved_key, data_at_priority_10] {
        let outcome = providers.send("app_without_credentials", &target, &n).await;
        assert_eq!(
            outcome,
            Outcome::Failed {
                reason: "INVALID_ARGUMENT".into()
            },
            "{n:?}"
        );
    }
    let statuses: Vec<u16> = sim
        .records()
        .iter()
        .filter(|r| r.side == Side::Fcm)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![400, 400]);
}
