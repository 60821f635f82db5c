//! Secrets stay out of the logs: the real binary at `RUST_LOG=debug` drives a scenario that
//! touches every secret the bridge handles, then its stderr is searched for each of them.

use std::time::{Duration, Instant};

use crate::harness::{
    bridge_env, open_store, proven, simulator, user_proof, BridgeProcess, Db, OPERATOR_KEY,
};
use pushbridge::clock::now_ms;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use serde_json::{json, Value};

/// A string that appears only in notification bodies and webhook payloads.
const MARKER: &str = "zq-private-payload-7f3a91";

async fn call(
    bridge: &BridgeProcess,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, bridge.url(path))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn debug_logs_carry_no_secrets_tokens_or_payloads(db: Db) {
    let sim = simulator().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("logs").await.expect("app");
    let extra_key = store
        .create_key(&app.app.id, pushbridge::store::KeyKind::Server)
        .await
        .expect("key");
    let log_path = dir.path().join("bridge.log");
    let mut bridge = BridgeProcess::start(
        dir.path(),
        &bridge_env(&url, &sim),
        &[
            ("RUST_LOG", "debug"),
            ("PUSHBRIDGE_WORKER__MAX_ATTEMPTS", "2"),
        ],
        Some(&log_path),
    )
    .await;
    let server = app.server_key.as_str();

    // Devices: delivered, pruned (APNs 410 and 400, FCM UNREGISTERED) and dead-lettered.
    let tokens = [
        ("apns", apns_test_token(ApnsTestKind::Success, 1)),
        ("fcm", fcm_test_token(FcmTestKind::Success, 2)),
        (
            "apns",
            apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 3),
        ),
        ("apns", apns_test_token(ApnsTestKind::BadDeviceToken, 4)),
        ("fcm", fcm_test_token(FcmTestKind::Unregistered, 5)),
        ("apns", apns_test_token(ApnsTestKind::ServiceUnavailable, 6)),
        ("fcm", fcm_test_token(FcmTestKind::Unavailable, 7)),
    ];
    for (platform, token) in &tokens {
        let (status, resp) = call(
            &bridge,
            reqwest::Method::PUT,
            &format!("/v1/devices/{token}"),
            &app.client_key,
            Some(proven(
                &app,
                json!({"platform": platform, "user_id": "u1",
                       "attributes": {"first_name": "Ada"}}),
            )),
        )
        .await;
        assert_eq!(status, 201, "{resp}");
    }
    // A forged registration and a bad key, so the rejection paths log too.
    call(
        &bridge,
        reqwest::Method::GET,
        "/v1/events",
        &format!("{server}0"),
        None,
    )
    .await;

    // A registration whose user proof is for someone else, and the user-auth secret rotated.
    let proof = user_proof(&app, "u1");
    let (status, _) = call(
        &bridge,
        reqwest::Method::PUT,
        &format!("/v1/devices/{}", tokens[0].1),
        &app.client_key,
        Some(json!({"platform": "apns", "user_id": "u2", "user_auth": proof})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, user_auth) = call(
        &bridge,
        reqwest::Method::POST,
        "/v1/app/user-auth",
        server,
        Some(json!({"rotate_secret": true})),
    )
    .await;
    assert_eq!(status, 200, "{user_auth}");
    let rotated_user_auth = user_auth["secret"].as_str().expect("secret").to_string();

    // Sources with secrets (one given, one generated), and a callback with its own secret.
    let given_secret = format!("given-secret-{}", uuid::Uuid::new_v4().simple());
    let (status, github) = call(
        &bridge,
        reqwest::Method::POST,
        "/v1/sources",
        server,
        Some(json!({"name": "ci", "scheme": "github", "secrets": [given_secret]})),
    )
    .await;
    assert_eq!(status, 201, "{github}");
    let (status, standard) = call(
        &bridge,
        reqwest::Method::POST,
        "/v1/sources",
        server,
        Some(json!({"name": "billing", "scheme": "standard_webhooks"})),
    )
    .await;
    assert_eq!(status, 201, "{standard}");
    let standard_secret = standard["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let (status, rotated) = call(
        &bridge,
        reqwest::Method::POST,
        "/v1/sources/billing/secrets",
        server,
        Some(json!({})),
    )
    .await;
    assert!(status == 201 || status == 200, "{rotated}");
    let rotated_secret = rotated["secrets"]
        .as_array()
        .and_then(|s| s.iter().rev().find_map(|s| s["secret"].as_str()))
        .or(rotated["secret"].as_str())
        .expect("rotated secret")
        .to_string();
    let (status, callback) = call(
        &bridge,
        reqwest::Method::PUT,
        "/v1/app/callback",
        server,
        Some(json!({"url": "http://127.0.0.1:9/pruned"})),
    )
    .await;
    assert!(status < 300, "{callback}");
    let callback_secret = callback["secret"].as_str().unwrap_or_default().to_string();

    let (status, rule) = call(
        &bridge,
        reqwest::Method::PUT,
        "/v1/rules/payments",
        server,
        Some(
            json!({"event": "payment.*", "audience": {"user_id_path": "data.user_id"},
                    "template": {"title": "Paid", "body": "{{ event.data.note }}"}}),
        ),
    )
    .await;
    assert!(status < 300, "{rule}");

    // Signed webhooks (accepted), a forged one and a replay.
    let client = reqwest::Client::new();
    let mut events = Vec::new();
    for (i, (scheme, source, secret)) in [
        (
            Scheme::StandardWebhooks,
            "billing",
            standard_secret.as_str(),
        ),
        (Scheme::StandardWebhooks, "billing", rotated_secret.as_str()),
        (Scheme::Github, "ci", given_secret.as_str()),
        (Scheme::Github, "ci", "wrong-secret"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"type": "payment.succeeded",
                          "data": {"user_id": "u1", "note": format!("{MARKER} webhook {i}")}})
        .to_string();
        let mut req = client
            .post(bridge.url(&format!("/v1/webhooks/{}/{source}", app.app.id)))
            .header("content-type", "application/json")
            .header("x-github-event", "payment.succeeded")
            .body(body.clone());
        for (k, v) in sign(
            scheme,
            secret,
            body.as_bytes(),
            &format!("msg_{i}"),
            now_ms() / 1000,
        )
        .expect("a valid secret")
        {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("webhook");
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.expect("json");
        if secret == "wrong-secret" {
            assert_eq!(status, 401, "{answer}");
        } else {
            assert_eq!(status, 202, "{answer}");
            events.push(answer["event_id"].as_str().expect("id").to_string());
        }
    }
    // A direct send with the marker in the rendered text and in the data.
    let (status, sent) = call(
        &bridge,
        reqwest::Method::POST,
        "/v1/notifications",
        &extra_key,
        Some(json!({"to": {"user": "u1"},
                    "template": {"title": "Hi {{ user.first_name }}", "body": format!("{MARKER} direct")},
                    "data": {"secret_note": MARKER}})),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    events.push(sent["event_id"].as_str().expect("id").to_string());

    // Wait until every event is complete (deliveries, prunes and dead letters all done).
    let start = Instant::now();
    for id in &events {
        loop {
            let (_, event) = call(
                &bridge,
                reqwest::Method::GET,
                &format!("/v1/events/{id}"),
                server,
                None,
            )
            .await;
            let d = &event["deliveries"];
            if event["status"] == "completed" && d["queued"] == 0 && d["in_flight"] == 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{event}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resp = client
        .get(bridge.url("/metrics"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client
        .get(bridge.url("/v1/admin/apps"))
        .bearer_auth(format!("{OPERATOR_KEY}-wrong"))
        .send()
        .await
        .expect("admin");
    assert_eq!(resp.status().as_u16(), 401);
    bridge.terminate();

    let logs = std::fs::read_to_string(&log_path).expect("log file");
    assert!(
        logs.lines().count() > 50 && logs.contains("DEBUG"),
        "debug logging was on: {} lines",
        logs.lines().count()
    );
    let mut leaks = Vec::new();
    let mut check = |what: &str, secret: &str| {
        if !secret.is_empty() && logs.contains(secret) {
            leaks.push(format!("{what} ({}…)", &secret[..secret.len().min(6)]));
        }
    };
    for (_, token) in &tokens {
        check("device token", token);
        // Anything past the 8-character prefix is already too much.
        check("device token beyond its prefix", &token[..12]);
    }
    for key in [&app.server_key, &app.client_key, &extra_key] {
        check("API key", key);
        check(
            "API key secret part",
            key.rsplit_once('_').expect("key parts").1,
        );
    }
    check("source secret", &given_secret);
    check("source secret", &standard_secret);
    check(
        "source secret (base64)",
        standard_secret.trim_start_matches("whsec_"),
    );
    check("rotated source secret", &rotated_secret);
    check("callback secret", &callback_secret);
    check(
        "callback secret (base64)",
        callback_secret.trim_start_matches("whsec_"),
    );
    check("user-auth secret", &app.user_auth_secret);
    check("rotated user-auth secret", &rotated_user_auth);
    check("user proof", &proof);
    check("operator key", OPERATOR_KEY);
    check("payload text", MARKER);
    for line in logs.lines() {
        // A JWT: base64url JSON header `{"` = `eyJ`, then payload and signature.
        if let Some(pos) = line.find("eyJ") {
            let rest = &line[pos..];
            let jwt_like = rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
                .next()
                .unwrap_or("");
            if jwt_like.matches('.').count() >= 2 && jwt_like.len() > 40 {
                leaks.push(format!("JWT in: {}", &line[..line.len().min(200)]));
            }
        }
        let lower = line.to_ascii_lowercase();
        if lower.contains("authorization: bearer") || lower.contains("\"authorization\": \"bearer")
        {
            leaks.push(format!(
                "authorization header in: {}",
                &line[..line.len().min(200)]
            ));
        }
    }
    // The redacted form is there, so tokens are logged and the check above is not vacuous.
    let pruned_prefix = &tokens[2].1[..8];
    assert!(
        logs.contains(pruned_prefix),
        "the pruned token's 8-character prefix is logged"
    );
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
}

backend_tests!(debug_logs_carry_no_secrets_tokens_or_payloads);
