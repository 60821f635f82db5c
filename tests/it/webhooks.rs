//! Signed webhook ingest through the real HTTP stack.

use crate::harness::wire::{connect, error_code, read_response, read_until_closed, PROMPTLY};
use crate::harness::{Db, TestApp};
use pushbridge::clock::now_ms;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const SCHEMES: [(&str, Scheme); 4] = [
    ("standard_webhooks", Scheme::StandardWebhooks),
    ("github", Scheme::Github),
    ("stripe", Scheme::Stripe),
    ("generic", Scheme::Generic),
];

async fn create_source(
    t: &TestApp,
    app: &NewApp,
    name: &str,
    scheme: &str,
    extra: Value,
) -> String {
    let mut body = json!({"name": name, "scheme": scheme});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string()
}

fn now() -> i64 {
    now_ms() / 1000
}

async fn post_webhook(
    t: &TestApp,
    app: &NewApp,
    source: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    post_webhook_on(&t.client, t, app, source, headers, body).await
}

/// A client that opens a new connection for every request.
fn one_shot_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// [`post_webhook`] through `client`.
async fn post_webhook_on(
    client: &reqwest::Client,
    t: &TestApp,
    app: &NewApp,
    source: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = client
        .post(t.url(&format!("/v1/webhooks/{}/{source}", app.app.id)))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON response");
    (status, body)
}

fn event_body(id: &str) -> String {
    json!({"id": id, "type": "payment.succeeded", "data": {"amount": 150}}).to_string()
}

async fn stored_events(t: &TestApp, app: &NewApp) -> usize {
    let (_, events) = t
        .call(
            Method::GET,
            "/v1/events?limit=500",
            Some(&app.server_key),
            None,
        )
        .await;
    events["events"].as_array().map(Vec::len).unwrap_or(0)
}

async fn each_scheme_accepts_a_valid_signature_and_rejects_forgeries(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    for (name, scheme) in SCHEMES {
        let secret = create_source(&t, &app, name, name, json!({})).await;
        let body = event_body(&format!("evt_{name}"));

        let headers = sign(
            scheme,
            &secret,
            body.as_bytes(),
            &format!("msg_{name}"),
            now(),
        )
        .expect("a valid secret");
        if scheme == Scheme::Github {
            let mut headers = headers.clone();
            headers.push(("x-github-event".into(), "push".into()));
            let (status, resp) = post_webhook(&t, &app, name, &headers, body.clone()).await;
            assert_eq!(status, 202, "{name}: {resp}");
            let (_, event) = t
                .call(
                    Method::GET,
                    &format!("/v1/events/{}", resp["event_id"].as_str().expect("id")),
                    Some(&app.server_key),
                    None,
                )
                .await;
            assert_eq!(
                event["event_type"], "push",
                "GitHub's type comes from X-GitHub-Event"
            );
        } else {
            let (status, resp) = post_webhook(&t, &app, name, &headers, body.clone()).await;
            assert_eq!(status, 202, "{name}: {resp}");
            let id = resp["event_id"].as_str().expect("event id");
            let (status, event) = t
                .call(
                    Method::GET,
                    &format!("/v1/events/{id}"),
                    Some(&app.server_key),
                    None,
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(event["event_type"], "payment.succeeded", "{name}");
            assert_eq!(event["payload"]["data"]["amount"], 150);
            assert!(
                matches!(event["status"].as_str(), Some("received" | "completed")),
                "{event}"
            );
        }

        let tampered = body.replace("150", "999");
        let (status, err) = post_webhook(&t, &app, name, &headers, tampered).await;
        assert_eq!(status, 401, "{name} tampered: {err}");
        assert!(
            !err.to_string().contains(&headers[0].1),
            "the error never echoes a signature"
        );

        let wrong = sign(
            scheme,
            "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==",
            body.as_bytes(),
            "msg_w",
            now(),
        )
        .expect("a valid secret");
        let (status, _) = post_webhook(&t, &app, name, &wrong, body.clone()).await;
        assert_eq!(status, 401, "{name} wrong secret");

        if scheme != Scheme::Github {
            // GitHub signs no timestamp; its replay protection is delivery-id dedupe.
            for skew in [-301, 301] {
                let stale = sign(
                    scheme,
                    &secret,
                    body.as_bytes(),
                    &format!("msg_skew{skew}"),
                    now() + skew,
                )
                .expect("a valid secret");
                let (status, err) = post_webhook(&t, &app, name, &stale, body.clone()).await;
                assert_eq!(status, 401, "{name} skew {skew}: {err}");
                assert!(err["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("timestamp"));
            }
        }

        let (status, err) = post_webhook(&t, &app, name, &[], body.clone()).await;
        assert_eq!(status, 401, "{name} unsigned: {err}");
    }
    assert_eq!(
        stored_events(&t, &app).await,
        4,
        "only the four valid requests were stored"
    );
}

async fn after_rotation_old_and_new_secrets_both_verify(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let old = create_source(&t, &app, "billing", "standard_webhooks", json!({})).await;
    let (status, added) = t
        .call(
            Method::POST,
            "/v1/sources/billing/secrets",
            Some(&app.server_key),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let new = added["secret"].as_str().expect("secret").to_string();
    assert_ne!(old, new);
    for (i, secret) in [&old, &new].into_iter().enumerate() {
        let body = event_body(&format!("rot{i}"));
        let headers = sign(
            Scheme::StandardWebhooks,
            secret,
            body.as_bytes(),
            &format!("msg_rot{i}"),
            now(),
        )
        .expect("a valid secret");
        let (status, resp) = post_webhook(&t, &app, "billing", &headers, body).await;
        assert_eq!(status, 202, "secret {i}: {resp}");
    }
    // Retiring the old secret makes it stop verifying.
    let (_, source) = t
        .call(
            Method::GET,
            "/v1/sources/billing",
            Some(&app.server_key),
            None,
        )
        .await;
    assert!(
        source.to_string().find(&old).is_none(),
        "secrets are not shown after creation"
    );
    let old_id = source["secrets"][0]["id"].as_str().expect("id");
    let (status, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/sources/billing/secrets/{old_id}"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let body = event_body("rot-late");
    let headers = sign(
        Scheme::StandardWebhooks,
        &old,
        body.as_bytes(),
        "msg_rot_late",
        now(),
    )
    .expect("a valid secret");
    let (status, _) = post_webhook(&t, &app, "billing", &headers, body).await;
    assert_eq!(status, 401);
}

async fn a_repeated_event_id_is_accepted_once(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let secret = create_source(&t, &app, "crm", "standard_webhooks", json!({})).await;
    let body = event_body("dup");
    let headers = sign(
        Scheme::StandardWebhooks,
        &secret,
        body.as_bytes(),
        "msg_dup",
        now(),
    )
    .expect("a valid secret");
    let (status, first) = post_webhook(&t, &app, "crm", &headers, body.clone()).await;
    assert_eq!(status, 202);
    let (status, second) = post_webhook(&t, &app, "crm", &headers, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(second["event_id"], first["event_id"]);
    assert_eq!(second["duplicate"], true);
    // Stripe has no id header: the event id in the body dedupes.
    let stripe = create_source(&t, &app, "stripe", "stripe", json!({})).await;
    for expected in [202, 200] {
        let h = sign(Scheme::Stripe, &stripe, body.as_bytes(), "", now()).expect("a valid secret");
        let (status, _) = post_webhook(&t, &app, "stripe", &h, body.clone()).await;
        assert_eq!(status, expected);
    }
    assert_eq!(stored_events(&t, &app).await, 2);

    let resp = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 401, "metrics need the operator key");
    let metrics = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(crate::harness::OPERATOR_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = format!(
        "pushbridge_webhooks_total{{source=\"{}/crm\",outcome=\"duplicate\",reason=\"\"}} 1",
        app.app.id
    );
    assert!(metrics.contains(&line), "{metrics}");
}

async fn oversized_and_non_json_bodies_are_rejected(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.webhooks.max_body_bytes = 1024).await;
    let app = t.new_app().await;
    let secret = create_source(&t, &app, "gen", "generic", json!({})).await;
    let big = json!({"type": "x", "pad": "y".repeat(2000)}).to_string();
    let h = sign(Scheme::Generic, &secret, big.as_bytes(), "big", now()).expect("a valid secret");
    // The server closes a connection whose body it refused without reading it all, so these
    // requests each get a connection of their own: reused, it could fail the next request.
    let (status, err) = post_webhook_on(&one_shot_client(), &t, &app, "gen", &h, big).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");

    // A streamed body without Content-Length is cut off at the limit too: the answer comes as
    // soon as the bytes read pass it, while the rest of the body is still to come, and the
    // connection is closed.
    let chunk = format!("64\r\n{}\r\n", " ".repeat(100));
    let mut request = format!(
        "POST /v1/webhooks/{}/gen HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n",
        app.app.id
    );
    for (name, value) in &h {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    // 1100 bytes, past the 1024 limit; the terminating chunk is never sent.
    request.push_str(&chunk.repeat(11));
    let mut conn = connect(&t).await;
    // One write, so the server has read every byte sent when it closes (no reset).
    conn.write_all(request.as_bytes()).await.expect("request");
    let (status, head, body) = read_response(&mut conn).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(error_code(&body), "payload_too_large");
    assert!(
        read_until_closed(&mut conn, PROMPTLY).await.is_some(),
        "the connection is closed"
    );

    for (i, bad) in [
        "not json",
        "[1,2,3]",
        "\"just a string\"",
        "{\"no_type\": 1}",
    ]
    .into_iter()
    .enumerate()
    {
        let h = sign(
            Scheme::Generic,
            &secret,
            bad.as_bytes(),
            &format!("bad{i}"),
            now(),
        )
        .expect("a valid secret");
        let (status, err) = post_webhook(&t, &app, "gen", &h, bad.to_string()).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    assert_eq!(stored_events(&t, &app).await, 0);
}

async fn addresses_outside_the_allowlist_get_403_even_with_spoofed_forwarded_for(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let secret = create_source(
        &t,
        &app,
        "ci",
        "generic",
        json!({"allowed_cidrs": ["10.0.0.0/8"]}),
    )
    .await;
    let body = event_body("ip");
    let mut h =
        sign(Scheme::Generic, &secret, body.as_bytes(), "ip1", now()).expect("a valid secret");
    let (status, err) = post_webhook(&t, &app, "ci", &h, body.clone()).await;
    assert_eq!(status, 403, "{err}");
    h.push(("x-forwarded-for".into(), "10.1.2.3".into()));
    let (status, _) = post_webhook(&t, &app, "ci", &h, body.clone()).await;
    assert_eq!(
        status, 403,
        "X-Forwarded-For from an untrusted peer is ignored"
    );

    let (status, _) = t
        .call(
            Method::PATCH,
            "/v1/sources/ci",
            Some(&app.server_key),
            Some(json!({"allowed_cidrs": ["127.0.0.1/32"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = post_webhook(&t, &app, "ci", &h, body).await;
    assert_eq!(status, 202);
}

async fn forwarded_for_is_believed_from_a_trusted_proxy(db: Db) {
    let t = TestApp::spawn_with(db, |c| {
        c.webhooks.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")]
    })
    .await;
    let app = t.new_app().await;
    let secret = create_source(
        &t,
        &app,
        "ci",
        "generic",
        json!({"allowed_cidrs": ["10.0.0.0/8"]}),
    )
    .await;
    let body = event_body("proxy");
    let mut h =
        sign(Scheme::Generic, &secret, body.as_bytes(), "p1", now()).expect("a valid secret");
    h.push(("x-forwarded-for".into(), "10.1.2.3".into()));
    let (status, resp) = post_webhook(&t, &app, "ci", &h, body.clone()).await;
    assert_eq!(status, 202, "{resp}");
    let mut h =
        sign(Scheme::Generic, &secret, body.as_bytes(), "p2", now()).expect("a valid secret");
    h.push(("x-forwarded-for".into(), "192.0.2.1".into()));
    let (status, _) = post_webhook(&t, &app, "ci", &h, body).await;
    assert_eq!(status, 403);
}

async fn an_unknown_source_gives_404(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let body = event_body("x");
    let h = sign(
        Scheme::Generic,
        "whatever-secret-16",
        body.as_bytes(),
        "x",
        now(),
    )
    .expect("a valid secret");
    let (status, err) = post_webhook(&t, &app, "nope", &h, body.clone()).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    let resp = t
        .client
        .post(t.url("/v1/webhooks/app_missing/nope"))
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
}

async fn sources_are_isolated_per_app_and_validated(db: Db) {
    let t = TestApp::spawn(db).await;
    let a = t.new_app().await;
    let b = t.new_app().await;
    create_source(&t, &a, "shop", "github", json!({})).await;
    let (status, _) = t
        .call(Method::GET, "/v1/sources/shop", Some(&b.server_key), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(Method::GET, "/v1/sources/shop", Some(&a.client_key), None)
        .await;
    assert_eq!(status, 403);
    let (status, err) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&a.server_key),
            Some(json!({"name": "shop", "scheme": "github"})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    for (body, field) in [
        (json!({"name": "Bad Name", "scheme": "github"}), "name"),
        (json!({"name": "x", "scheme": "md5"}), "scheme"),
        (
            json!({"name": "x", "scheme": "standard_webhooks", "secrets": ["not-base64!"]}),
            "secrets[0]",
        ),
        (
            json!({"name": "x", "scheme": "github", "secrets": ["short"]}),
            "secrets[0]",
        ),
        (
            json!({"name": "x", "scheme": "github", "allowed_cidrs": ["10.0.0.0/33"]}),
            "allowed_cidrs[0]",
        ),
        (
            json!({"name": "x", "scheme": "github", "event_type_path": "a..b"}),
            "event_type_path",
        ),
    ] {
        let (status, err) = t
            .call(
                Method::POST,
                "/v1/sources",
                Some(&a.server_key),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (_, list) = t
        .call(Method::GET, "/v1/events", Some(&b.server_key), None)
        .await;
    assert_eq!(list["events"], json!([]));
}

async fn the_event_type_can_come_from_a_configured_json_path(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let secret = create_source(
        &t,
        &app,
        "ci",
        "generic",
        json!({"event_type_path": "meta.event"}),
    )
    .await;
    let body = json!({"meta": {"event": "build.failed"}}).to_string();
    let h = sign(Scheme::Generic, &secret, body.as_bytes(), "t1", now()).expect("a valid secret");
    let (status, resp) = post_webhook(&t, &app, "ci", &h, body).await;
    assert_eq!(status, 202);
    let (_, event) = t
        .call(
            Method::GET,
            &format!("/v1/events/{}", resp["event_id"].as_str().expect("id")),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(event["event_type"], "build.failed");
    let (_, filtered) = t
        .call(
            Method::GET,
            "/v1/events?type=build.failed",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(filtered["events"].as_array().map(Vec::len), Some(1));
    let (_, none) = t
        .call(
            Method::GET,
            "/v1/events?type=other",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0));
}

/// Svix senders use `svix-id`, `svix-timestamp` and `svix-signature` unless they pay for
/// white-labelled names; a `standard_webhooks` source verifies and dedupes those too.
async fn svix_header_names_verify_for_a_standard_webhooks_source(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let secret = create_source(&t, &app, "svix", "standard_webhooks", json!({})).await;
    let body = event_body("svix");
    let svix = |headers: Vec<(String, String)>| -> Vec<(String, String)> {
        headers
            .into_iter()
            .map(|(k, v)| (k.replacen("webhook-", "svix-", 1), v))
            .collect()
    };
    let headers = svix(
        sign(
            Scheme::StandardWebhooks,
            &secret,
            body.as_bytes(),
            "msg_svix",
            now(),
        )
        .expect("a valid secret"),
    );
    assert!(headers.iter().all(|(k, _)| k.starts_with("svix-")));
    let (status, first) = post_webhook(&t, &app, "svix", &headers, body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = post_webhook(&t, &app, "svix", &headers, body.clone()).await;
    assert_eq!(status, 200, "svix-id dedupes: {again}");
    assert_eq!(again["event_id"], first["event_id"]);
    let tampered = body.replace("150", "999");
    let (status, _) = post_webhook(&t, &app, "svix", &headers, tampered).await;
    assert_eq!(status, 401, "a tampered body under svix names");
    let stale = svix(
        sign(
            Scheme::StandardWebhooks,
            &secret,
            body.as_bytes(),
            "msg_stale",
            now() - 301,
        )
        .expect("a valid secret"),
    );
    let (status, _) = post_webhook(&t, &app, "svix", &stale, body.clone()).await;
    assert_eq!(status, 401, "an old svix-timestamp");
    assert_eq!(stored_events(&t, &app).await, 1);
}

backend_tests!(
    each_scheme_accepts_a_valid_signature_and_rejects_forgeries,
    after_rotation_old_and_new_secrets_both_verify,
    a_repeated_event_id_is_accepted_once,
    oversized_and_non_json_bodies_are_rejected,
    addresses_outside_the_allowlist_get_403_even_with_spoofed_forwarded_for,
    forwarded_for_is_believed_from_a_trusted_proxy,
    an_unknown_source_gives_404,
    sources_are_isolated_per_app_and_validated,
    the_event_type_can_come_from_a_configured_json_path,
    svix_header_names_verify_for_a_standard_webhooks_source,
);

async fn rate_limits_per_source_and_per_key_answer_429_with_retry_after(db: Db) {
    let t = TestApp::spawn_with(db, |c| {
        // Three requests of burst, then one more every ten seconds: no refill during the test.
        c.rate_limits.source_per_sec = 0.1;
        c.rate_limits.server_key_per_sec = 0.1;
        c.rate_limits.burst_secs = 30.0;
    })
    .await;
    let app = t.new_app().await;
    // Uses one of the key's three tokens.
    let secret = create_source(&t, &app, "busy", "generic", json!({})).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let body = event_body(&format!("rl{i}"));
        let h = sign(
            Scheme::Generic,
            &secret,
            body.as_bytes(),
            &format!("rl{i}"),
            now(),
        )
        .expect("a valid secret");
        let resp = t
            .client
            .post(t.url(&format!("/v1/webhooks/{}/busy", app.app.id)))
            .body(body);
        let resp = h
            .iter()
            .fold(resp, |r, (k, v)| r.header(k.as_str(), v.as_str()))
            .send()
            .await
            .expect("send");
        let retry_after = resp.headers().get("retry-after").cloned();
        let status = resp.status().as_u16();
        if status == 429 {
            let secs: u64 = retry_after
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After seconds");
            assert!((1..=10).contains(&secs), "{secs}");
            let err: Value = resp.json().await.expect("json");
            assert_eq!(err["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [202, 202, 202, 429], "burst of 3, then limited");
    // The server key has two tokens left after creating the source; then it is limited too.
    let (status, _) = t
        .call(Method::GET, "/v1/sources", Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = t
        .call(Method::GET, "/v1/sources", Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200);
    let (status, err) = t
        .call(Method::GET, "/v1/sources", Some(&app.server_key), None)
        .await;
    assert_eq!(status, 429, "{err}");
    // Another app's key has its own bucket.
    let other = t.new_app().await;
    let (status, _) = t
        .call(Method::GET, "/v1/sources", Some(&other.server_key), None)
        .await;
    assert_eq!(status, 200);
}

backend_tests!(rate_limits_per_source_and_per_key_answer_429_with_retry_after);

/// A NUL in the event type or in a Stripe event id cannot be stored on PostgreSQL; every
/// backend refuses it alike, with a 400 naming the field, so the sender stops retrying, and
/// concurrent webhooks committed in the same group are not affected.
async fn a_nul_in_the_event_type_or_id_is_refused_alike_on_every_backend(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let stripe = create_source(&t, &app, "stripe", "stripe", json!({})).await;
    let cases = [
        (json!({"id": "evt_1", "type": "pay\u{0}ment"}), "type"),
        (json!({"id": "evt\u{0}2", "type": "payment"}), "id"),
    ];
    for (payload, field) in cases {
        let body = payload.to_string();
        let h = sign(Scheme::Stripe, &stripe, body.as_bytes(), "", now()).expect("a valid secret");
        let (status, resp) = post_webhook(&t, &app, "stripe", &h, body).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["error"]["code"], "bad_request");
        assert_eq!(resp["error"]["field"], field, "{resp}");
    }
    // A NUL elsewhere in the payload is stored as JSON spells it, escaped.
    let body = json!({"id": "evt_3", "type": "payment", "note": "a\u{0}b"}).to_string();
    let h = sign(Scheme::Stripe, &stripe, body.as_bytes(), "", now()).expect("a valid secret");
    let (status, resp) = post_webhook(&t, &app, "stripe", &h, body).await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(stored_events(&t, &app).await, 1);
    // A configured type path is named as the field.
    let generic = create_source(
        &t,
        &app,
        "crm",
        "generic",
        json!({"event_type_path": "meta.kind"}),
    )
    .await;
    let body = json!({"meta": {"kind": "x\u{0}"}}).to_string();
    let h = sign(Scheme::Generic, &generic, body.as_bytes(), "g-1", now()).expect("a valid secret");
    let (status, resp) = post_webhook(&t, &app, "crm", &h, body).await;
    assert_eq!(
        (status, &resp["error"]["field"]),
        (400, &json!("meta.kind"))
    );
}

backend_tests!(a_nul_in_the_event_type_or_id_is_refused_alike_on_every_backend);
