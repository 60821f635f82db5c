//! The `generic_v2` scheme through the real HTTP stack: the id and timestamp are signed with
//! the body, a replayed id is stored no second time, and the timestamp window applies.

use crate::harness::{Db, TestApp};
use pushbridge::signature::{sign, Scheme};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "generic-v2-integration-secret";

async fn source(t: &TestApp) -> NewApp {
    let app = t.new_app().await;
    let body = json!({"name": "shop", "scheme": "generic_v2", "secrets": [SECRET]});
    let (status, created) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["scheme"], "generic_v2", "{created}");
    app
}

async fn post(t: &TestApp, app: &NewApp, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let mut req = t
        .client
        .post(t.url(&format!("/v1/webhooks/{}/shop", app.app.id)))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON answer"))
}

fn now(t: &TestApp) -> i64 {
    t.clock().unix_millis() / 1000
}

/// The headers with `name` set to `value`.
fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = if k == name { value } else { v };
            (k.clone(), v.to_string())
        })
        .collect()
}

async fn events(t: &TestApp, app: &NewApp) -> usize {
    let (_, page) = t
        .call(Method::GET, "/v1/events", Some(&app.server_key), None)
        .await;
    page["events"].as_array().map_or(0, Vec::len)
}

async fn generic_v2_accepts_only_a_signed_id_timestamp_and_body(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = source(&t).await;
    let body = json!({"type": "payment.completed", "amount": 42}).to_string();
    let signed = sign(Scheme::GenericV2, SECRET, body.as_bytes(), "evt_1", now(&t)).expect("sign");
    // The signature does not carry over to another id or timestamp.
    let (status, err) = post(&t, &app, &with(&signed, "x-webhook-id", "evt_2"), &body).await;
    assert_eq!(status, 401, "{err}");
    let later = (now(&t) + 1).to_string();
    let (status, err) = post(
        &t,
        &app,
        &with(&signed, "x-webhook-timestamp", &later),
        &body,
    )
    .await;
    assert_eq!(status, 401, "{err}");
    // A `generic` signature (of the body alone) is not enough.
    let v1 = sign(Scheme::Generic, SECRET, body.as_bytes(), "evt_1", now(&t)).expect("sign");
    let (status, err) = post(&t, &app, &v1, &body).await;
    assert_eq!(status, 401, "{err}");
    // Without the id header there is nothing to check it against.
    let no_id: Vec<_> = signed
        .iter()
        .filter(|(k, _)| k != "x-webhook-id")
        .cloned()
        .collect();
    let (status, err) = post(&t, &app, &no_id, &body).await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("x-webhook-id")),
        "{err}"
    );
    assert_eq!(events(&t, &app).await, 0);
    let (status, accepted) = post(&t, &app, &signed, &body).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(events(&t, &app).await, 1);
    t.shutdown().await;
}

async fn generic_v2_rejects_a_replayed_id(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = source(&t).await;
    let body = json!({"type": "payment.completed"}).to_string();
    let signed = sign(Scheme::GenericV2, SECRET, body.as_bytes(), "evt_r", now(&t)).expect("sign");
    let (status, first) = post(&t, &app, &signed, &body).await;
    assert_eq!(status, 202, "{first}");
    // The same request again is recognised and not stored again.
    let (status, again) = post(&t, &app, &signed, &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    // Re-signed a minute later under the same id, it is still the same event.
    t.clock().shift(60);
    let resigned =
        sign(Scheme::GenericV2, SECRET, body.as_bytes(), "evt_r", now(&t)).expect("sign");
    let (status, again) = post(&t, &app, &resigned, &body).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    // Replayed once the timestamp is past the tolerance, it is refused outright.
    t.clock().shift(301);
    let (status, err) = post(&t, &app, &resigned, &body).await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("timestamp")),
        "{err}"
    );
    assert_eq!(events(&t, &app).await, 1);
    t.shutdown().await;
}

backend_tests!(
    generic_v2_accepts_only_a_signed_id_timestamp_and_body,
    generic_v2_rejects_a_replayed_id,
);
