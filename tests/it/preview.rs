//! Template previews: the request a device would get, checked against what the simulator
//! receives when the same template is really sent.

use crate::harness::schedule::completed;
use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::Side;
use reqwest::Method;
use serde_json::{json, Value};

const TEMPLATE: &str = "payment";

async fn put_template(t: &TestApp, key: &str) {
    let spec = json!({
        "title": "Payment received",
        "body": "Hi {{ user.first_name }}, you got {{ event.data.amount }} €",
        "locales": {
            "fr": {"title": "Paiement reçu", "body": "Salut {{ user.first_name }}, {{ event.data.amount }} € reçus"},
            "de": {"body": "Hallo {{ user.first_name }}"}
        }
    });
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("/v1/templates/{TEMPLATE}"),
            Some(key),
            Some(spec),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");
}

async fn preview(t: &TestApp, key: &str, body: Value) -> (u16, Value) {
    t.call(
        Method::POST,
        &format!("/v1/templates/{TEMPLATE}/preview"),
        Some(key),
        Some(body),
    )
    .await
}

async fn an_fr_ca_device_is_shown_the_fr_variant_and_the_exact_apns_request(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    put_template(&t, key).await;
    let token = apns_test_token(ApnsTestKind::Success, 7);
    let (status, device) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(key),
            Some(
                json!({"platform": "apns", "user_id": "u1", "locale": "fr-CA",
                        "attributes": {"first_name": "Zoé"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    let event = json!({"data": {"amount": 42}});
    let (status, shown) = preview(&t, key, json!({"token": token, "event": event})).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["platform"], "apns");
    assert_eq!(shown["locale"]["variant"], "fr", "{shown}");
    assert_eq!(shown["locale"]["chain"], json!(["fr"]));
    assert!(
        shown["locale"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fr-CA") && r.contains("language")),
        "{shown}"
    );
    let apns = &shown["apns"];
    let expected =
        json!({"aps": {"alert": {"title": "Paiement reçu", "body": "Salut Zoé, 42 € reçus"}}});
    assert_eq!(apns["body"], expected, "{shown}");
    assert_eq!(apns["path"], format!("/3/device/{token}"));
    assert_eq!(apns["headers"]["apns-topic"], "com.example.app");
    assert_eq!(apns["headers"]["apns-push-type"], "alert");
    assert_eq!(apns["headers"]["apns-priority"], "10");
    assert_eq!(apns["bytes"], expected.to_string().len());
    assert_eq!(apns["limit"], 4096);
    assert!(shown.get("fcm").is_none());

    // Sent for real, the simulator receives that very body and those headers.
    let (status, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(key),
            Some(json!({"to": {"tokens": [token]}, "template": TEMPLATE, "data": event})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let event_id = sent["event_id"].as_str().expect("event id").to_string();
    completed(&t, key, &event_id).await;
    // The delivery shows the payload it carried, the same body.
    let (_, list) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event_id}/deliveries"),
            Some(key),
            None,
        )
        .await;
    let delivery_id = list["deliveries"][0]["id"]
        .as_str()
        .expect("a delivery")
        .to_string();
    let (status, delivery) = t
        .call(
            Method::GET,
            &format!("/v1/deliveries/{delivery_id}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["payload"]["body"], apns["body"], "{delivery}");
    assert_eq!(
        delivery["payload"]["notification"]["body"],
        "Salut Zoé, 42 € reçus"
    );
    let record = sim
        .records()
        .into_iter()
        .find(|r| r.side == Side::Apns && r.token.as_deref() == Some(token.as_str()))
        .expect("the simulator got the push");
    assert_eq!(record.body, apns["body"]);
    for name in ["apns-topic", "apns-push-type", "apns-priority"] {
        assert_eq!(
            record.headers.get(name).map(String::as_str),
            apns["headers"][name].as_str(),
            "{name}"
        );
    }
    t.shutdown().await;
}

async fn an_inline_fcm_device_gets_the_fcm_request_and_the_default_text(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    put_template(&t, key).await;
    let token = format!("fcm-preview:{}", "B".repeat(120));
    let device = json!({"token": token, "platform": "fcm", "locale": "es-MX",
                        "attributes": {"first_name": "Ana"}});
    let (status, shown) = preview(
        &t,
        key,
        json!({"device": device, "event": {"data": {"amount": 3}}}),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["locale"]["variant"], Value::Null, "{shown}");
    assert!(shown["locale"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("default")));
    let fcm = &shown["fcm"];
    assert_eq!(fcm["body"]["message"]["token"], token);
    assert_eq!(
        fcm["body"]["message"]["notification"],
        json!({"title": "Payment received", "body": "Hi Ana, you got 3 €"}),
        "{shown}"
    );
    assert!(
        fcm["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/messages:send")),
        "{shown}"
    );
    assert_eq!(fcm["limit"], 4096);
    assert!(fcm["bytes"].as_u64().is_some_and(|b| b > 0 && b < 4096));
    // Nothing was stored.
    let (status, _) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{token}"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 404);
    t.shutdown().await;
}

async fn a_preview_names_what_is_missing(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    put_template(&t, key).await;
    let token = apns_test_token(ApnsTestKind::Success, 9);
    let (status, body) = preview(&t, key, json!({"token": token})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let both = json!({"token": token, "device": {"token": token, "platform": "apns"}});
    let (status, body) = preview(&t, key, both).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("token")),
        "{body}"
    );
    let bad = json!({"device": {"token": "zz", "platform": "apns"}});
    let (status, body) = preview(&t, key, bad).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("device.token")),
        "{body}"
    );
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/templates/nope/preview",
            Some(key),
            Some(json!({"device": {"token": token, "platform": "apns"}})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    t.shutdown().await;
}

backend_tests!(
    an_fr_ca_device_is_shown_the_fr_variant_and_the_exact_apns_request,
    an_inline_fcm_device_gets_the_fcm_request_and_the_default_text,
    a_preview_names_what_is_missing,
);
