//! Read endpoints: event lists carry their delivery counts, a list refuses another list's
//! cursor, and stats name only apps that exist.

use crate::harness::{apns_token, simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

async fn register(t: &TestApp, app: &NewApp, token: &str, user: &str) {
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(&app.client_key),
            Some(crate::harness::proven(
                app,
                json!({"platform": "apns", "user_id": user}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Sends a direct notification to `user` and waits until its event is completed.
async fn send_and_finish(t: &TestApp, app: &NewApp, user: &str) -> String {
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": user}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["event_id"].as_str().expect("event id").to_string();
    t.wait_for(&format!("/v1/events/{id}"), &app.server_key, |e| {
        e["status"] == "completed"
    })
    .await;
    id
}

async fn event_list_items_carry_their_delivery_counts(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    for seed in 1..=3 {
        register(
            &t,
            &app,
            &apns_test_token(ApnsTestKind::Success, seed),
            "many",
        )
        .await;
    }
    register(&t, &app, &apns_test_token(ApnsTestKind::Success, 9), "one").await;
    let many = send_and_finish(&t, &app, "many").await;
    let one = send_and_finish(&t, &app, "one").await;
    let nobody = send_and_finish(&t, &app, "nobody").await;

    // Two pages, so counts are also right past a cursor.
    let (status, first) = t
        .call(
            Method::GET,
            "/v1/events?limit=2",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (status, second) = t
        .call(
            Method::GET,
            &format!("/v1/events?limit=2&cursor={cursor}"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let listed: Vec<Value> = first["events"]
        .as_array()
        .into_iter()
        .chain(second["events"].as_array())
        .flatten()
        .cloned()
        .collect();
    let ids: Vec<&str> = listed.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [nobody.as_str(), one.as_str(), many.as_str()]);

    for (event, delivered) in listed.iter().zip([0, 1, 3]) {
        let counts = &event["deliveries"];
        assert_eq!(counts["total"], delivered, "{event}");
        assert_eq!(counts["delivered"], delivered, "{event}");
        assert!(event.get("payload").is_none(), "lists carry no payload");
        let (_, detail) = t
            .call(
                Method::GET,
                &format!("/v1/events/{}", event["id"].as_str().expect("id")),
                Some(&app.server_key),
                None,
            )
            .await;
        assert_eq!(&detail["deliveries"], counts, "list and detail agree");
    }
    t.shutdown().await;
}

async fn user_devices_refuse_a_cursor_from_elsewhere(db: Db) {
    use base64::Engine;
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    for seed in 1..=3 {
        register(&t, &app, &apns_token(seed), "u1").await;
    }
    let page = |cursor: &str| format!("/v1/users/u1/devices?limit=1&cursor={cursor}");

    // Its own cursor walks the list.
    let (status, first) = t
        .call(
            Method::GET,
            "/v1/users/u1/devices?limit=1",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let own = first["next_cursor"]
        .as_str()
        .expect("next page")
        .to_string();
    let (status, second) = t
        .call(Method::GET, &page(&own), Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["devices"][0]["token"], apns_token(2));

    // A cursor of the event list, base64 of arbitrary text, and text that is not base64.
    t.call(
        Method::POST,
        "/v1/notifications",
        Some(&app.server_key),
        Some(json!({"to": {"user": "u1"}, "template": {"body": "hi"}})),
    )
    .await;
    t.call(
        Method::POST,
        "/v1/notifications",
        Some(&app.server_key),
        Some(json!({"to": {"user": "u1"}, "template": {"body": "hi"}})),
    )
    .await;
    let (_, events) = t
        .call(
            Method::GET,
            "/v1/events?limit=1",
            Some(&app.server_key),
            None,
        )
        .await;
    let from_events = events["next_cursor"].as_str().expect("events cursor");
    let arbitrary = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(apns_token(1));
    for foreign in [from_events, arbitrary.as_str(), "not*base64"] {
        let (status, body) = t
            .call(Method::GET, &page(foreign), Some(&app.server_key), None)
            .await;
        assert_eq!(status, 422, "{foreign}: {body}");
        assert_eq!(body["error"]["field"], "cursor", "{body}");
    }
    // And the other way round: the devices cursor is foreign to the event list.
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/events?cursor={own}"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    t.shutdown().await;
}

async fn stats_of_an_unknown_app_is_not_found(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let operator = Some(crate::harness::OPERATOR_KEY);
    let (status, body) = t
        .call(Method::GET, "/v1/stats?app_id=app_nope", operator, None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/stats?app_id={}", app.app.id),
            operator,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app_id"], app.app.id.as_str());
    let (status, body) = t.call(Method::GET, "/v1/stats", operator, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app_id"], Value::Null);
    t.shutdown().await;
}

backend_tests!(
    event_list_items_carry_their_delivery_counts,
    user_devices_refuse_a_cursor_from_elsewhere,
    stats_of_an_unknown_app_is_not_found,
);
