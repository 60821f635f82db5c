//! Device registry API: registration round trip, validation, auth and app isolation.

use crate::harness::{apns_token, fcm_token, proven, Db, TestApp};
use reqwest::Method;
use serde_json::json;

async fn register_get_list_delete_round_trip(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(1);
    let path = format!("/v1/devices/{token}");
    let body = proven(
        &app,
        json!({
            "platform": "apns", "user_id": "u1", "locale": "fr-fr", "timezone": "Europe/Paris",
            "app_version": "1.2.3", "environment": "sandbox", "topic": "com.example.app",
            "attributes": {"first_name": "Ada"}, "tags": ["beta"]
        }),
    );
    let (status, created) = t
        .call(
            Method::PUT,
            &path,
            Some(&app.client_key),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["locale"], "fr-FR");
    assert_eq!(created["environment"], "sandbox");

    let (status, again) = t
        .call(Method::PUT, &path, Some(&app.client_key), Some(body))
        .await;
    assert_eq!(status, 200, "re-registration is an update");
    assert!(again["updated_at"].as_str() >= created["updated_at"].as_str());

    let (status, got) = t
        .call(Method::GET, &path, Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["user_id"], "u1");
    assert_eq!(got["attributes"]["first_name"], "Ada");
    assert_eq!(got["tags"], json!(["beta"]));

    let (status, list) = t
        .call(
            Method::GET,
            "/v1/users/u1/devices",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["next_cursor"], json!(null));

    let (status, _) = t
        .call(Method::DELETE, &path, Some(&app.client_key), None)
        .await;
    assert_eq!(status, 204);
    let (status, err) = t
        .call(Method::GET, &path, Some(&app.server_key), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    let (status, _) = t
        .call(Method::DELETE, &path, Some(&app.client_key), None)
        .await;
    assert_eq!(status, 404);
}

async fn re_registering_a_token_moves_it_to_the_new_user(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let path = format!("/v1/devices/{}", fcm_token("move"));
    for user in ["alice", "bob"] {
        let (status, _) = t
            .call(
                Method::PUT,
                &path,
                Some(&app.client_key),
                Some(proven(&app, json!({"platform": "fcm", "user_id": user}))),
            )
            .await;
        assert!(status == 200 || status == 201);
    }
    let (_, alice) = t
        .call(
            Method::GET,
            "/v1/users/alice/devices",
            Some(&app.server_key),
            None,
        )
        .await;
    let (_, bob) = t
        .call(
            Method::GET,
            "/v1/users/bob/devices",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(alice["devices"].as_array().map(Vec::len), Some(0));
    assert_eq!(bob["devices"].as_array().map(Vec::len), Some(1));
}

async fn user_devices_are_paginated_with_a_cursor(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    for seed in 0..5u8 {
        let path = format!("/v1/devices/{}", apns_token(seed + 10));
        let (status, _) = t
            .call(
                Method::PUT,
                &path,
                Some(&app.server_key),
                Some(json!({"platform": "apns", "user_id": "pager"})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/users/pager/devices?limit=2&cursor={c}"),
            None => "/v1/users/pager/devices?limit=2".to_string(),
        };
        let (status, page) = t
            .call(Method::GET, &path, Some(&app.server_key), None)
            .await;
        assert_eq!(status, 200, "{page}");
        let devices = page["devices"].as_array().expect("devices").clone();
        assert!(devices.len() <= 2);
        seen.extend(
            devices
                .iter()
                .map(|d| d["token"].as_str().expect("token").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "no device appears twice across pages");
    let (status, err) = t
        .call(
            Method::GET,
            "/v1/users/pager/devices?limit=0",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["field"], "limit");
}

async fn a_client_key_cannot_list_a_users_devices(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let (status, err) = t
        .call(
            Method::GET,
            "/v1/users/u1/devices",
            Some(&app.client_key),
            None,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "forbidden");
}

async fn apps_cannot_see_or_change_each_others_devices(db: Db) {
    let t = TestApp::spawn(db).await;
    let a = t.new_app().await;
    let b = t.new_app().await;
    let path = format!("/v1/devices/{}", apns_token(7));
    let (status, _) = t
        .call(
            Method::PUT,
            &path,
            Some(&a.client_key),
            Some(proven(&a, json!({"platform": "apns", "user_id": "shared"}))),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = t.call(Method::GET, &path, Some(&b.server_key), None).await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(Method::DELETE, &path, Some(&b.server_key), None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = t
        .call(
            Method::GET,
            "/v1/users/shared/devices",
            Some(&b.server_key),
            None,
        )
        .await;
    assert_eq!(list["devices"].as_array().map(Vec::len), Some(0));
    // B registering the same token creates B's own device and leaves A's untouched.
    let (status, _) = t
        .call(
            Method::PUT,
            &path,
            Some(&b.client_key),
            Some(proven(&b, json!({"platform": "apns", "user_id": "other"}))),
        )
        .await;
    assert_eq!(status, 201);
    let (_, a_dev) = t.call(Method::GET, &path, Some(&a.server_key), None).await;
    assert_eq!(a_dev["user_id"], "shared");
}

async fn each_validation_error_names_its_field(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let apns = apns_token(3);
    let fcm = fcm_token("v");
    let big = "x".repeat(9000);
    let cases = [
        (apns.clone(), json!({"platform": "pigeon"}), "platform"),
        ("abc".to_string(), json!({"platform": "apns"}), "token"),
        (format!("{}0", apns), json!({"platform": "apns"}), "token"),
        ("short".to_string(), json!({"platform": "fcm"}), "token"),
        (
            apns.clone(),
            json!({"platform": "apns", "locale": "en_US"}),
            "locale",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "timezone": "Europe Paris"}),
            "timezone",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "environment": "staging"}),
            "environment",
        ),
        (
            fcm.clone(),
            json!({"platform": "fcm", "environment": "sandbox"}),
            "environment",
        ),
        (
            fcm.clone(),
            json!({"platform": "fcm", "topic": "com.x"}),
            "topic",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "attributes": [1, 2]}),
            "attributes",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "attributes": {"blob": big}}),
            "attributes",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "user_id": ""}),
            "user_id",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "tags": [""]}),
            "tags[0]",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "user_id": 5}),
            "user_id",
        ),
        (
            apns.clone(),
            json!({"platform": "apns", "colour": "red"}),
            "colour",
        ),
    ];
    for (token, body, field) in cases {
        let (status, err) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&app.client_key),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body} -> {err}");
        assert_eq!(err["error"]["field"], field, "{body} -> {err}");
    }
    // Malformed JSON and a wrong content type are 400 and 415 with JSON bodies.
    let resp = t
        .client
        .put(t.url(&format!("/v1/devices/{apns}")))
        .bearer_auth(&app.client_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.expect("json error");
    assert_eq!(err["error"]["code"], "bad_request");
    let resp = t
        .client
        .put(t.url(&format!("/v1/devices/{apns}")))
        .bearer_auth(&app.client_key)
        .body("platform=apns")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 415);
}

async fn missing_or_wrong_keys_are_rejected(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let path = format!("/v1/devices/{}", apns_token(9));
    let (status, err) = t.call(Method::GET, &path, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "unauthorized");
    let (status, _) = t
        .call(Method::GET, &path, Some("pb_server_nope_nope"), None)
        .await;
    assert_eq!(status, 401);
    // A real key id with a wrong secret.
    let mut forged = app.server_key.clone();
    forged.pop();
    forged.push(if app.server_key.ends_with('0') {
        '1'
    } else {
        '0'
    });
    let (status, _) = t.call(Method::GET, &path, Some(&forged), None).await;
    assert_eq!(status, 401);
    let resp = t
        .client
        .get(t.url(&path))
        .header("authorization", format!("Basic {}", app.server_key))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    // Revoked keys stop working at once.
    let key_id = app
        .server_key
        .split('_')
        .nth(2)
        .expect("key id")
        .to_string();
    assert!(t.store().revoke_key(&key_id).await.expect("revoke"));
    let (status, _) = t
        .call(Method::GET, &path, Some(&app.server_key), None)
        .await;
    assert_eq!(status, 401);
}

async fn health_and_readiness_answer(db: Db) {
    let t = TestApp::spawn(db).await;
    let (status, body) = t.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = t.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, body) = t.call(Method::GET, "/nope", None, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    t.shutdown().await;
}

backend_tests!(
    register_get_list_delete_round_trip,
    re_registering_a_token_moves_it_to_the_new_user,
    user_devices_are_paginated_with_a_cursor,
    a_client_key_cannot_list_a_users_devices,
    apps_cannot_see_or_change_each_others_devices,
    each_validation_error_names_its_field,
    missing_or_wrong_keys_are_rejected,
    health_and_readiness_answer,
);

async fn the_listener_serves_https_when_tls_is_configured(db: Db) {
    let certs = crate::harness::certs_dir();
    let t = TestApp::spawn_with(db, |c| {
        c.tls = Some(pushbridge::config::TlsConfig {
            cert_path: certs.join("server.pem"),
            key_path: certs.join("server.key"),
        });
    })
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca"))
        .expect("pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let url = t
        .url("/healthz")
        .replace("http://127.0.0.1", "https://localhost");
    let resp = client.get(&url).send().await.expect("https request");
    assert_eq!(resp.status(), 200);
    let app = t.new_app().await;
    let resp = client
        .put(url.replace("/healthz", &format!("/v1/devices/{}", apns_token(42))))
        .bearer_auth(&app.client_key)
        .json(&proven(
            &app,
            json!({"platform": "apns", "user_id": "tls-user"}),
        ))
        .send()
        .await
        .expect("register over https");
    assert_eq!(resp.status(), 201);
    // Plain HTTP on the TLS port is refused.
    assert!(t.client.get(t.url("/healthz")).send().await.is_err());
}

backend_tests!(the_listener_serves_https_when_tls_is_configured);
