//! Bounded rendering: one app's expensive template fails on its own devices, is refused at
//! save time when it cannot finish even without data, and never delays another app's push.

use std::time::{Duration, Instant};

use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use reqwest::Method;
use serde_json::{json, Value};

const NESTED_LOOPS: &str =
    "{% for i in range(20000) %}{% for j in range(20000) %}{{ i }}{% endfor %}{% endfor %}";

async fn a_template_that_cannot_finish_is_refused_at_save_time(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/templates/slow",
            Some(&app.server_key),
            Some(json!({"title": "x", "body": NESTED_LOOPS})),
        )
        .await;
    assert_eq!(status, 422, "{resp}");
    assert_eq!(resp["error"]["field"], "body");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("steps")),
        "{resp}"
    );
    // Output that would outgrow any payload is refused too, as is an inline template of a
    // rule and of a direct send.
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/templates/huge",
            Some(&app.server_key),
            Some(json!({"body": "{{ 'x' * 100000 }}"})),
        )
        .await;
    assert_eq!(
        (status, &resp["error"]["field"]),
        (422, &json!("body")),
        "{resp}"
    );
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/rules/slow",
            Some(&app.server_key),
            Some(json!({"event": "*", "audience": {"users": ["u1"]},
                        "template": {"body": NESTED_LOOPS}})),
        )
        .await;
    assert_eq!(
        (status, &resp["error"]["field"]),
        (422, &json!("template.body")),
        "{resp}"
    );
    let (status, _) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u1"}, "template": {"body": NESTED_LOOPS}})),
        )
        .await;
    assert_eq!(status, 422);
    // A loop driven by the event's data is fine to save: the sample has no data.
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/templates/per-item",
            Some(&app.server_key),
            Some(json!({"body": "{% for item in event.items %}{{ item.name }} {% endfor %}"})),
        )
        .await;
    assert!(status == 201, "{resp}");
}

async fn deliveries(t: &TestApp, key: &str, event_id: &str) -> Vec<Value> {
    let (_, resp) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event_id}/deliveries"),
            Some(key),
            None,
        )
        .await;
    resp["deliveries"].as_array().cloned().unwrap_or_default()
}

async fn one_apps_slow_template_does_not_delay_another_apps_push(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let (slow, quick) = (t.new_app().await, t.new_app().await);
    // App A: 500 devices and a template whose loops, driven by the event, take most of the
    // fuel of seven fields and all of an eighth's, for every device: seconds of rendering.
    for i in 0..500u64 {
        let token = apns_test_token(ApnsTestKind::Success, 10_000 + i);
        let (status, _) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&slow.server_key),
                Some(json!({"platform": "apns", "user_id": "a-user"})),
            )
            .await;
        assert_eq!(status, 201);
    }
    // Seven fields that finish within their fuel, and an eighth that does not.
    let within = "{% for i in range(event.k) %}{{ i }}{% endfor %}";
    let looping =
        "{% for i in range(event.n) %}{% for j in range(event.n) %}{{ i }}{% endfor %}{% endfor %}";
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/templates/report",
            Some(&slow.server_key),
            Some(json!({"title": within, "subtitle": within, "body": within,
                        "options": {"data": {"a": within, "b": within, "c": within,
                                             "d": within, "z": looping}}})),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    let quick_token = apns_test_token(ApnsTestKind::Success, 1);
    let (status, _) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{quick_token}"),
            Some(&quick.server_key),
            Some(json!({"platform": "apns", "user_id": "b-user"})),
        )
        .await;
    assert_eq!(status, 201);

    let (status, a) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&slow.server_key),
            Some(json!({"to": {"user": "a-user"}, "template": "report", "data": {"n": 20000, "k": 3000}})),
        )
        .await;
    assert_eq!(status, 202, "{a}");
    let a_event = a["event_id"].as_str().expect("event id").to_string();
    // Let A's fan-out start rendering.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let (status, b) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&quick.server_key),
            Some(json!({"to": {"user": "b-user"}, "template": {"title": "Hi", "body": "B"}})),
        )
        .await;
    assert_eq!(status, 202, "{b}");
    let b_event = b["event_id"].as_str().expect("event id").to_string();
    loop {
        let delivered = deliveries(&t, &quick.server_key, &b_event)
            .await
            .iter()
            .any(|d| d["status"] == "delivered");
        if delivered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "app B's push must be delivered within 1 s while app A renders"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, a_now) = t
        .call(
            Method::GET,
            &format!("/v1/events/{a_event}"),
            Some(&slow.server_key),
            None,
        )
        .await;
    assert_ne!(
        a_now["status"], "completed",
        "app A was still rendering when B's push went out: {a_now}"
    );
    // A's renders all fail on the bound, each with its reason, and nothing of A is sent.
    let a_done = t
        .wait_for(&format!("/v1/events/{a_event}"), &slow.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    let jobs = deliveries(&t, &slow.server_key, &a_event).await;
    assert!(!jobs.is_empty(), "{a_done}");
    for job in &jobs {
        assert_eq!(job["status"], "dead", "{job}");
        assert!(
            job["last_reason"]
                .as_str()
                .is_some_and(|r| r.contains("steps to render")),
            "{job}"
        );
    }
}

backend_tests!(
    a_template_that_cannot_finish_is_refused_at_save_time,
    one_apps_slow_template_does_not_delay_another_apps_push
);
