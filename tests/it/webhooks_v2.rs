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

/// `pushbridge webhooks send` with `args` after `APP SOURCE`, against `t`; exit success and
/// stdout.
async fn cli_send(t: &TestApp, app: &NewApp, source: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db_url, base) = (t.db_url().to_string(), t.base.clone());
    let mut all: Vec<String> = ["webhooks", "send", &app.app.id, source, "--url", &base]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        crate::harness::process::run_cli(&db_url, dir.path(), &args)
    })
    .await
    .expect("cli");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || !stderr.is_empty(),
        "a failure says why"
    );
    (out.status.success(), format!("{stdout}{stderr}"))
}

async fn the_cli_sends_a_correctly_signed_webhook_in_every_scheme(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    for scheme in [
        "generic_v2",
        "generic",
        "standard_webhooks",
        "github",
        "stripe",
    ] {
        let body = json!({"name": scheme.replace('_', "-"), "scheme": scheme});
        let (status, created) = t
            .call(
                Method::POST,
                "/v1/sources",
                Some(&app.server_key),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let name = created["name"].as_str().expect("name").to_string();
        let id = format!("cli-{scheme}");
        let args = [
            "--type",
            "payment.completed",
            "--data",
            r#"{"amount":42}"#,
            "--id",
            &id,
        ];
        let (ok, out) = cli_send(&t, &app, &name, &args).await;
        assert!(ok && out.starts_with("202 "), "{scheme}: {out}");
        // The same id again is the same event.
        let (ok, out) = cli_send(&t, &app, &name, &args).await;
        assert!(
            ok && out.starts_with("200 ") && out.contains("duplicate"),
            "{scheme}: {out}"
        );
    }
    let (_, page) = t
        .call(Method::GET, "/v1/events", Some(&app.server_key), None)
        .await;
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 5, "{page}");
    assert!(
        events
            .iter()
            .all(|e| e["event_type"] == "payment.completed"),
        "{page}"
    );
    // An unknown source is refused before anything is posted.
    let (ok, out) = cli_send(&t, &app, "nope", &["--type", "x"]).await;
    assert!(!ok && out.contains("no webhook source nope"), "{out}");
    t.shutdown().await;
}

backend_tests!(
    generic_v2_accepts_only_a_signed_id_timestamp_and_body,
    generic_v2_rejects_a_replayed_id,
    the_cli_sends_a_correctly_signed_webhook_in_every_scheme,
);
