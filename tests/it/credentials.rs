//! Per-app provider credentials: an app's own APNs key and FCM service account, uploaded over
//! the API (`/v1/app/credentials`), used for that app's sends only, changed without a restart
//! on every instance, never stored or shown as plaintext, and paused by a per-app breaker when
//! the provider refuses them, while other apps keep sending.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{certs_dir, proven, simulator_with, Db, TestApp, OPERATOR_KEY};
use base64::Engine;
use pushbridge::config::Config;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::model::{ApnsEnvironment, Platform};
use pushbridge::simulator::{
    apns_test_token, fcm_test_token, ApnsKeyFile, ApnsTestKind, FcmTestKind, RecordedRequest, Side,
    SimulatorHandle, TEST_KEY_ID, TEST_TEAM_ID,
};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

const SECOND_KEY_ID: &str = "SIMKEY0002";
const SECOND_TEAM_ID: &str = "SIMTEAM002";
const DEFAULT_PROJECT: &str = "pushbridge-sim";
const SECOND_PROJECT: &str = "pushbridge-sim-2";
const SECOND_EMAIL: &str = "pushbridge-sim@pushbridge-sim-2.iam.gserviceaccount.com";
const DEFAULT_EMAIL: &str = "pushbridge-sim@pushbridge-sim.iam.gserviceaccount.com";
/// The default topic of every uploaded APNs key (the config's is `com.example.app`).
const OWN_TOPIC: &str = "com.example.own";
/// `providers.credentials_refresh_ms` of every test bridge here.
const REFRESH_MS: u64 = 100;
/// How long the tests give another instance to notice a change (several refresh periods).
const NOTICE: Duration = Duration::from_millis(REFRESH_MS * 5);

// ---------------------------------------------------------------------------------------------
// Config tweaks

/// Other instances notice a credential change within ~100 ms.
fn fast_refresh(c: &mut Config) {
    c.providers.credentials_refresh_ms = REFRESH_MS;
}

/// An open breaker probes once a second.
fn fast_probe(c: &mut Config) {
    c.worker.breaker_probe_secs = 1;
}

// ---------------------------------------------------------------------------------------------
// Identities

/// A simulator that also knows the second APNs key and the second service account.
async fn sim_with_second_identities() -> SimulatorHandle {
    simulator_with(|c| {
        c.apns_keys.push(ApnsKeyFile {
            key_id: SECOND_KEY_ID.into(),
            team_id: SECOND_TEAM_ID.into(),
            path: certs_dir().join(format!("AuthKey_{SECOND_KEY_ID}.p8")),
        });
        c.fcm_service_accounts
            .push(certs_dir().join("fcm-service-account-2.json"));
    })
    .await
}

/// The second APNs key's `.p8` text.
fn key2_pem() -> String {
    std::fs::read_to_string(certs_dir().join(format!("AuthKey_{SECOND_KEY_ID}.p8"))).expect("p8")
}

/// The second service account's key file as an object, its `token_uri` pointing at `sim` (as
/// a real key file points at Google's endpoint).
fn account2(sim: &SimulatorHandle) -> Value {
    let text =
        std::fs::read_to_string(certs_dir().join("fcm-service-account-2.json")).expect("account");
    let mut account: Value = serde_json::from_str(&text).expect("account JSON");
    account["token_uri"] = Value::String(sim.token_uri());
    account
}

/// The base64 body lines of a PEM (everything but the `-----` armour).
fn pem_body_lines(pem: &str) -> Vec<String> {
    let lines: Vec<String> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    assert!(lines.len() >= 2, "a PEM with a body: {pem}");
    lines
}

/// Panics if `haystack` contains any line of `pem`'s body.
fn assert_no_pem_lines(haystack: &[u8], pem: &str, what: &str) {
    for line in pem_body_lines(pem) {
        assert!(
            !contains(haystack, line.as_bytes()),
            "{what} contains the private key line {line:?}"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fresh P-256 key as PKCS#8 PEM, as Apple hands out `.p8` files.
fn fresh_p8() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("P-256 key")
        .serialize_pem()
}

// ---------------------------------------------------------------------------------------------
// The credentials API

/// `?app_id=<id>` for the operator key, or nothing.
fn scoped(path: &str, app_id: Option<&str>) -> String {
    match app_id {
        Some(id) => format!("{path}?app_id={id}"),
        None => path.to_string(),
    }
}

/// An APNs upload with the topic of the app the key belongs to.
fn apns_body(key_id: &str, team_id: &str, pem: &str) -> Value {
    json!({"key_id": key_id, "team_id": team_id, "private_key": pem, "default_topic": OWN_TOPIC})
}

/// `PUT /v1/app/credentials/apns`; asserts 200 and returns the view.
async fn put_apns(t: &TestApp, key: &str, app_id: Option<&str>, body: Value) -> Value {
    let (status, view) = t
        .call(
            Method::PUT,
            &scoped("/v1/app/credentials/apns", app_id),
            Some(key),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "PUT apns: {view}");
    view
}

/// `PUT /v1/app/credentials/fcm`; asserts 200 and returns the view.
async fn put_fcm(t: &TestApp, key: &str, app_id: Option<&str>, account: Value) -> Value {
    let (status, view) = t
        .call(
            Method::PUT,
            &scoped("/v1/app/credentials/fcm", app_id),
            Some(key),
            Some(json!({"service_account": account})),
        )
        .await;
    assert_eq!(status, 200, "PUT fcm: {view}");
    view
}

/// `GET /v1/app/credentials`; asserts 200.
async fn get_credentials(t: &TestApp, key: &str, app_id: Option<&str>) -> Value {
    let (status, body) = t
        .call(
            Method::GET,
            &scoped("/v1/app/credentials", app_id),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "GET credentials: {body}");
    body
}

fn assert_fingerprint(view: &Value) {
    let fp = view["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("{view}"));
    let hex = fp.strip_prefix("sha256:").unwrap_or_else(|| panic!("{fp}"));
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{fp}"
    );
}

fn assert_rfc3339(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"));
}

/// The APNs view of an app's own credential for key `key_id`.
fn assert_own_apns(view: &Value, key_id: &str, team_id: &str) {
    assert_eq!(view["source"], "app", "{view}");
    assert_eq!(view["key_id"], key_id, "{view}");
    assert_eq!(view["team_id"], team_id, "{view}");
    assert_eq!(view["default_topic"], OWN_TOPIC, "{view}");
    assert_fingerprint(view);
    assert_rfc3339(&view["updated_at"]);
    assert!(view["state"]["status"].is_string(), "{view}");
}

/// The APNs view of the config file's key.
fn assert_default_apns(view: &Value) {
    assert_eq!(view["source"], "default", "{view}");
    assert_eq!(view["key_id"], TEST_KEY_ID, "{view}");
    assert_eq!(view["team_id"], TEST_TEAM_ID, "{view}");
    assert_eq!(view["default_topic"], "com.example.app", "{view}");
    assert!(view["updated_at"].is_null(), "{view}");
    assert_fingerprint(view);
}

fn assert_own_fcm(view: &Value) {
    assert_eq!(view["source"], "app", "{view}");
    assert_eq!(view["project_id"], SECOND_PROJECT, "{view}");
    assert_eq!(view["client_email"], SECOND_EMAIL, "{view}");
    assert_eq!(view["private_key_id"], "sim-key-0002", "{view}");
    assert_fingerprint(view);
    assert_rfc3339(&view["updated_at"]);
}

fn assert_default_fcm(view: &Value) {
    assert_eq!(view["source"], "default", "{view}");
    assert_eq!(view["project_id"], DEFAULT_PROJECT, "{view}");
    assert_eq!(view["client_email"], DEFAULT_EMAIL, "{view}");
    assert_eq!(view["private_key_id"], "sim-key-0001", "{view}");
    assert!(view["updated_at"].is_null(), "{view}");
    assert_fingerprint(view);
}

/// No private key text anywhere in an API answer.
fn assert_no_private_keys(body: &Value, sim: &SimulatorHandle) {
    let text = body.to_string();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(!text.contains("private_key\""), "{text}");
    assert_no_pem_lines(text.as_bytes(), &key2_pem(), "an API answer");
    let fcm_pem = account2(sim)["private_key"]
        .as_str()
        .expect("pem")
        .to_string();
    assert_no_pem_lines(text.as_bytes(), &fcm_pem, "an API answer");
}

/// A 422 naming `field`.
fn assert_invalid_field(status: u16, body: &Value, field: &str, case: &str) {
    assert_eq!(status, 422, "{case}: {body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{case}: {body}");
    assert_eq!(body["error"]["field"], field, "{case}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Devices and sends

/// Registers a device over the API with the app's client key.
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

/// Registers many APNs devices straight in the store; returns their tokens.
async fn register_apns_many(t: &TestApp, app_id: &str, seeds: std::ops::Range<u64>) -> Vec<String> {
    let mut tokens = Vec::new();
    for seed in seeds {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        let reg = DeviceRegistration {
            platform: Platform::Apns,
            user_id: None,
            locale: None,
            timezone: None,
            app_version: None,
            environment: Some(ApnsEnvironment::Production),
            topic: None,
            attributes: json!({}),
            tags: vec![],
        };
        t.store()
            .upsert_device(app_id, &token, &reg)
            .await
            .expect("register");
        tokens.push(token);
    }
    tokens
}

/// A direct send to every device of `app`; returns the event id.
async fn send_to_all(t: &TestApp, app: &NewApp) -> String {
    let (status, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"devices": {}}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    sent["event_id"].as_str().expect("event id").to_string()
}

async fn wait_completed(t: &TestApp, app: &NewApp, event_id: &str) -> Value {
    t.wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
        e["status"] == "completed"
    })
    .await
}

/// Sends to every device of `app` through `t`, waits until it is completed, and asserts that
/// `expected` were delivered (showing the deliveries otherwise).
async fn send_all_and_wait(t: &TestApp, app: &NewApp, expected: i64) {
    let event_id = send_to_all(t, app).await;
    let event = wait_completed(t, app, &event_id).await;
    if event["deliveries"]["delivered"] != expected {
        let list = event_deliveries(t, app, &event_id).await;
        panic!("{expected} should be delivered: {event}; deliveries: {list:?}");
    }
}

async fn event_deliveries(t: &TestApp, app: &NewApp, event_id: &str) -> Vec<Value> {
    let (status, list) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event_id}/deliveries?limit=500"),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(list["next_cursor"].is_null(), "one page: {list}");
    list["deliveries"].as_array().expect("deliveries").clone()
}

// ---------------------------------------------------------------------------------------------
// What the simulator saw

/// Part `i` (0 header, 1 claims) of the JWT in an `authorization` header.
fn jwt_part(authorization: &str, i: usize) -> Value {
    let jwt = authorization
        .strip_prefix("bearer ")
        .or_else(|| authorization.strip_prefix("Bearer "))
        .unwrap_or(authorization);
    let part = jwt
        .split('.')
        .nth(i)
        .unwrap_or_else(|| panic!("a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JWT JSON")
}

fn authorization(r: &RecordedRequest) -> &str {
    r.headers
        .get("authorization")
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no authorization: {r:?}"))
}

/// `(kid, iss)` of an APNs request's provider token.
fn kid_iss(r: &RecordedRequest) -> (String, String) {
    let auth = authorization(r);
    let kid = jwt_part(auth, 0)["kid"].as_str().expect("kid").to_string();
    let iss = jwt_part(auth, 1)["iss"].as_str().expect("iss").to_string();
    (kid, iss)
}

/// The device token a provider request addressed.
fn addressed(r: &RecordedRequest) -> Option<String> {
    r.token
        .clone()
        .or_else(|| r.body["message"]["token"].as_str().map(str::to_string))
}

fn sent_to<'a>(
    records: &'a [RecordedRequest],
    side: Side,
    token: &str,
) -> Vec<&'a RecordedRequest> {
    let found: Vec<_> = records
        .iter()
        .filter(|r| r.side == side && addressed(r).as_deref() == Some(token))
        .collect();
    assert!(!found.is_empty(), "nothing sent to {token}");
    found
}

/// The provider requests for the tokens in `tokens`.
fn requests_for(sim: &SimulatorHandle, tokens: &HashSet<String>) -> Vec<RecordedRequest> {
    sim.records()
        .into_iter()
        .filter(|r| matches!(r.side, Side::Apns | Side::Fcm))
        .filter(|r| addressed(r).is_some_and(|t| tokens.contains(&t)))
        .collect()
}

/// The `kid` of the single new APNs request to `token` after record `from`.
fn only_kid_since(sim: &SimulatorHandle, from: usize, token: &str) -> String {
    let records: Vec<RecordedRequest> = sim.records().into_iter().skip(from).collect();
    let sent = sent_to(&records, Side::Apns, token);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].status, 200, "{:?}", sent[0]);
    kid_iss(sent[0]).0
}

// ---------------------------------------------------------------------------------------------
// Metrics

async fn metrics(t: &TestApp) -> String {
    let resp = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.expect("text")
}

/// Values of the series of `name` whose labels include every pair of `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.rfind('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())
                .flatten()
        })
        .collect()
}

fn breaker_open(text: &str, app_id: &str) -> Vec<f64> {
    series(
        text,
        "pushbridge_provider_breaker_open",
        &[("app", app_id), ("provider", "apns")],
    )
}

// ---------------------------------------------------------------------------------------------
// A bridge whose database file the test can read

/// A bridge on `sim` in a temp dir the caller keeps: the app, the dir and the database URL.
async fn spawn_in_dir(db: &Db, sim: &SimulatorHandle) -> (TestApp, Arc<tempfile::TempDir>, String) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = db.fresh_url(dir.path()).await;
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |c| {
        pushbridge::use_simulator(c, sim, &certs_dir());
        c.worker.poll_interval_ms = 20;
        c.worker.backoff_base_ms = 20;
        c.worker.backoff_max_ms = 100;
    })
    .await;
    (t, dir, url)
}

// =============================================================================================
// 1. Each app signs with its own identity; an app without one uses the config's.

async fn two_apps_use_their_own_identities(db: Db) {
    let sim = sim_with_second_identities().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let a = t.new_app().await;
    let b = t.new_app().await;

    let apns_view = put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;
    assert_no_private_keys(&apns_view, &sim);
    let fcm_view = put_fcm(&t, &a.server_key, None, account2(&sim)).await;
    assert_no_private_keys(&fcm_view, &sim);

    let a_creds = get_credentials(&t, &a.server_key, None).await;
    assert_eq!(a_creds["app_id"], a.app.id.as_str(), "{a_creds}");
    assert_own_apns(&a_creds["apns"], SECOND_KEY_ID, SECOND_TEAM_ID);
    assert_own_fcm(&a_creds["fcm"]);
    assert_no_private_keys(&a_creds, &sim);
    let b_creds = get_credentials(&t, &b.server_key, None).await;
    assert_eq!(b_creds["app_id"], b.app.id.as_str(), "{b_creds}");
    assert_default_apns(&b_creds["apns"]);
    assert_default_fcm(&b_creds["fcm"]);
    assert_ne!(
        b_creds["apns"]["fingerprint"],
        a_creds["apns"]["fingerprint"]
    );
    assert_ne!(b_creds["fcm"]["fingerprint"], a_creds["fcm"]["fingerprint"]);

    let (a_ios, a_android) = (
        apns_test_token(ApnsTestKind::Success, 11),
        fcm_test_token(FcmTestKind::Success, 11),
    );
    let (b_ios, b_android) = (
        apns_test_token(ApnsTestKind::Success, 12),
        fcm_test_token(FcmTestKind::Success, 12),
    );
    register(&t, &a, &a_ios, "apns").await;
    register(&t, &a, &a_android, "fcm").await;
    register(&t, &b, &b_ios, "apns").await;
    register(&t, &b, &b_android, "fcm").await;
    send_all_and_wait(&t, &a, 2).await;
    send_all_and_wait(&t, &b, 2).await;

    let records = sim.records();
    for (token, kid, team, topic) in [
        (&a_ios, SECOND_KEY_ID, SECOND_TEAM_ID, OWN_TOPIC),
        (&b_ios, TEST_KEY_ID, TEST_TEAM_ID, "com.example.app"),
    ] {
        for r in sent_to(&records, Side::Apns, token) {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(kid_iss(r), (kid.to_string(), team.to_string()), "{r:?}");
            assert_eq!(r.headers.get("apns-topic").map(String::as_str), Some(topic));
        }
    }
    let a_fcm = sent_to(&records, Side::Fcm, &a_android);
    let b_fcm = sent_to(&records, Side::Fcm, &b_android);
    for (sent, project) in [(&a_fcm, SECOND_PROJECT), (&b_fcm, DEFAULT_PROJECT)] {
        for r in sent.iter() {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.path, format!("/v1/projects/{project}/messages:send"));
        }
    }
    // Two accounts, two access tokens, each obtained with its own account's assertion.
    assert_ne!(authorization(a_fcm[0]), authorization(b_fcm[0]));
    let assertion_issuers: BTreeSet<String> = records
        .iter()
        .filter(|r| r.side == Side::Token && r.status == 200)
        .filter_map(|r| r.body["assertion"].as_str().map(|a| jwt_part(a, 1)))
        .filter_map(|claims| claims["iss"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        assertion_issuers,
        BTreeSet::from([DEFAULT_EMAIL.to_string(), SECOND_EMAIL.to_string()])
    );

    // A's own credential has pools of its own, labelled with its id; B shares the default.
    let text = metrics(&t).await;
    let pool_lines = |id: &str| {
        text.lines()
            .filter(|l| l.starts_with("pushbridge_pool_connections_open{"))
            .filter(|l| l.contains(&format!("\"{id}\"")))
            .count()
    };
    assert!(pool_lines(&a.app.id) >= 1, "{text}");
    assert_eq!(pool_lines(&b.app.id), 0, "{text}");

    // Each PUT answered with the stored credential's view (checked last, so the sends above
    // are checked whatever the answer's shape).
    assert_own_apns(&apns_view, SECOND_KEY_ID, SECOND_TEAM_ID);
    assert_eq!(apns_view["fingerprint"], a_creds["apns"]["fingerprint"]);
    assert_own_fcm(&fcm_view);
    assert_eq!(fcm_view["fingerprint"], a_creds["fcm"]["fingerprint"]);
    t.shutdown().await;
}

// =============================================================================================
// 2. Uploading or deleting a credential changes the next send, on every instance.

async fn credential_change_takes_effect_without_restart(db: Db) {
    let on_postgres = matches!(db, Db::Postgres(_));
    let sim = sim_with_second_identities().await;
    let t = TestApp::with_simulator(db, &sim, fast_refresh).await;
    let a = t.new_app().await;
    let token = apns_test_token(ApnsTestKind::Success, 21);
    register(&t, &a, &token, "apns").await;

    // On the config's key first.
    let from = sim.records().len();
    send_all_and_wait(&t, &a, 1).await;
    assert_eq!(only_kid_since(&sim, from, &token), TEST_KEY_ID);

    // An own key: the very next send signs with it.
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;
    let from = sim.records().len();
    send_all_and_wait(&t, &a, 1).await;
    assert_eq!(only_kid_since(&sim, from, &token), SECOND_KEY_ID);
    let records = sim.records();
    assert_eq!(kid_iss(records.last().expect("a record")).1, SECOND_TEAM_ID);

    // Deleted: back to the config's key; a second delete finds nothing.
    let (status, body) = t
        .call(
            Method::DELETE,
            "/v1/app/credentials/apns",
            Some(&a.server_key),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = t
        .call(
            Method::DELETE,
            "/v1/app/credentials/apns",
            Some(&a.server_key),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = t
        .call(
            Method::DELETE,
            "/v1/app/credentials/fcm",
            Some(&a.server_key),
            None,
        )
        .await;
    assert_eq!(status, 404, "no FCM credential of its own: {body}");
    assert_default_apns(&get_credentials(&t, &a.server_key, None).await["apns"]);
    let from = sim.records().len();
    send_all_and_wait(&t, &a, 1).await;
    assert_eq!(only_kid_since(&sim, from, &token), TEST_KEY_ID);

    if !on_postgres {
        t.shutdown().await;
        return;
    }
    // A change made through one instance is used by another that only sends.
    let front = t
        .another_instance(&sim, |c| {
            fast_refresh(c);
            c.worker.enabled = false;
        })
        .await;
    let back = t.another_instance(&sim, fast_refresh).await;
    t.shutdown().await;

    put_apns(
        &front,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;
    tokio::time::sleep(NOTICE).await;
    let from = sim.records().len();
    send_all_and_wait(&front, &a, 1).await;
    assert_eq!(only_kid_since(&sim, from, &token), SECOND_KEY_ID);
    assert_own_apns(
        &get_credentials(&back, &a.server_key, None).await["apns"],
        SECOND_KEY_ID,
        SECOND_TEAM_ID,
    );

    let (status, body) = front
        .call(
            Method::DELETE,
            "/v1/app/credentials/apns",
            Some(&a.server_key),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(NOTICE).await;
    let from = sim.records().len();
    send_all_and_wait(&front, &a, 1).await;
    assert_eq!(only_kid_since(&sim, from, &token), TEST_KEY_ID);
    front.shutdown().await;
    back.shutdown().await;
}

// =============================================================================================
// 3. Instances sending with one app's key present one provider token.

async fn two_instances_share_one_jwt(db: Db) {
    let sim = sim_with_second_identities().await;
    let first = TestApp::with_simulator(db, &sim, fast_refresh).await;
    let second = first.another_instance(&sim, fast_refresh).await;
    let a = first.new_app().await;
    put_apns(
        &first,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;
    register_apns_many(&first, &a.app.id, 100..140).await;
    tokio::time::sleep(NOTICE).await;

    // Both instances running, then the second one alone.
    send_all_and_wait(&first, &a, 40).await;
    first.shutdown().await;
    send_all_and_wait(&second, &a, 40).await;

    let apns: Vec<_> = sim
        .records()
        .into_iter()
        .filter(|r| r.side == Side::Apns)
        .collect();
    assert_eq!(apns.len(), 80);
    for r in &apns {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            kid_iss(r),
            (SECOND_KEY_ID.to_string(), SECOND_TEAM_ID.to_string())
        );
    }
    let connections: BTreeSet<u64> = apns.iter().map(|r| r.connection_id).collect();
    assert!(
        connections.len() >= 2,
        "both instances sent: {connections:?}"
    );
    // One token per signing window (the run may straddle a window boundary).
    let mut by_iat: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in &apns {
        let auth = authorization(r).to_string();
        by_iat
            .entry(jwt_part(&auth, 1)["iat"].as_i64().expect("iat"))
            .or_default()
            .insert(auth);
    }
    assert!(by_iat.values().all(|t| t.len() == 1), "{by_iat:?}");
    assert!(by_iat.len() <= 2, "{by_iat:?}");
    second.shutdown().await;
}

// =============================================================================================
// 4. A revoked key pauses that app's sends only; a new key resumes them.

async fn revoked_key_pauses_only_that_app(db: Db) {
    const DEVICES: u64 = 200;
    let sim = sim_with_second_identities().await;
    let t = TestApp::with_simulator(db, &sim, |c| {
        fast_probe(c);
        // Few sends at once, so the breaker has jobs left to hold back when it opens.
        c.worker.concurrency = 8;
        c.worker.batch_size = 20;
        // A counted attempt would show: a probed job would soon be dead.
        c.worker.max_attempts = 3;
    })
    .await;
    let a = t.new_app().await;
    let b = t.new_app().await;
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;
    let a_tokens: HashSet<String> = register_apns_many(&t, &a.app.id, 40_000..40_000 + DEVICES)
        .await
        .into_iter()
        .collect();
    let b_tokens: HashSet<String> = register_apns_many(&t, &b.app.id, 50_000..50_000 + DEVICES)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        get_credentials(&t, &a.server_key, None).await["apns"]["state"]["status"],
        "ok"
    );
    assert!(breaker_open(&metrics(&t).await, &a.app.id)
        .iter()
        .all(|v| *v == 0.0));

    assert!(sim.revoke_apns_key(SECOND_KEY_ID));
    let a_event = send_to_all(&t, &a).await;
    let b_event = send_to_all(&t, &b).await;

    // B is not held up.
    let b_done = wait_completed(&t, &b, &b_event).await;
    assert_eq!(b_done["deliveries"]["delivered"], DEVICES, "{b_done}");
    for r in requests_for(&sim, &b_tokens) {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(kid_iss(&r).0, TEST_KEY_ID);
    }

    // A's breaker is open.
    let creds = t
        .wait_for("/v1/app/credentials", &a.server_key, |c| {
            c["apns"]["state"]["status"] == "failing"
        })
        .await;
    let state = &creds["apns"]["state"];
    assert!(
        state["reason"]
            .as_str()
            .is_some_and(|r| r.contains("InvalidProviderToken")),
        "{creds}"
    );
    assert_rfc3339(&state["since"]);
    if !state["next_probe_at"].is_null() {
        assert_rfc3339(&state["next_probe_at"]);
    }
    assert_eq!(
        get_credentials(&t, &b.server_key, None).await["apns"]["state"]["status"],
        "ok",
        "B's state is its own"
    );

    // Only probes reach the provider while it is open.
    let at_open = requests_for(&sim, &a_tokens).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_requests = requests_for(&sim, &a_tokens);
    let during = a_requests.len() - at_open;
    assert!(
        a_requests.len() < 50,
        "{} requests for A's {DEVICES} jobs with the breaker open",
        a_requests.len()
    );
    assert!(
        (1..=15).contains(&during),
        "{during} requests for A in 3 s with a 1 s probe"
    );
    for r in &a_requests {
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(kid_iss(r).0, SECOND_KEY_ID);
    }

    // A's jobs wait, uncounted; none is dead.
    let (_, event) = t
        .call(
            Method::GET,
            &format!("/v1/events/{a_event}"),
            Some(&a.server_key),
            None,
        )
        .await;
    let counts = &event["deliveries"];
    assert_eq!(counts["total"], DEVICES, "{event}");
    assert_eq!(counts["dead"], 0, "{event}");
    assert_eq!(counts["delivered"], 0, "{event}");
    assert_eq!(
        counts["queued"].as_i64().unwrap_or(-1) + counts["in_flight"].as_i64().unwrap_or(-1),
        DEVICES as i64,
        "{event}"
    );
    assert_ne!(event["status"], "completed", "{event}");
    for d in event_deliveries(&t, &a, &a_event).await {
        assert!(d["status"] == "queued" || d["status"] == "in_flight", "{d}");
        assert_eq!(d["attempts"], 0, "breaker pauses are not attempts: {d}");
    }
    let text = metrics(&t).await;
    assert_eq!(breaker_open(&text, &a.app.id), [1.0], "{text}");
    assert!(
        breaker_open(&text, &b.app.id).iter().all(|v| *v == 0.0),
        "{text}"
    );

    // A new key resumes A at once, and everything is delivered with it.
    let fresh_key_id = "FRESHKEY01";
    let pem = fresh_p8();
    sim.add_apns_key(fresh_key_id, SECOND_TEAM_ID, &pem)
        .expect("the simulator takes the new key");
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(fresh_key_id, SECOND_TEAM_ID, &pem),
    )
    .await;
    let view = get_credentials(&t, &a.server_key, None).await["apns"].clone();
    assert_own_apns(&view, fresh_key_id, SECOND_TEAM_ID);
    assert_eq!(
        view["state"]["status"], "ok",
        "the upload closed the breaker: {view}"
    );
    let done = wait_completed(&t, &a, &a_event).await;
    assert_eq!(done["deliveries"]["delivered"], DEVICES, "{done}");
    assert_eq!(done["deliveries"]["dead"], 0, "{done}");
    let delivered: HashSet<String> = requests_for(&sim, &a_tokens)
        .into_iter()
        .filter(|r| r.status == 200)
        .inspect(|r| assert_eq!(kid_iss(r).0, fresh_key_id, "{r:?}"))
        .filter_map(|r| addressed(&r))
        .collect();
    assert_eq!(delivered, a_tokens);
    for d in event_deliveries(&t, &a, &a_event).await {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1, "only the delivering attempt counts: {d}");
    }
    assert_eq!(
        get_credentials(&t, &a.server_key, None).await["apns"]["state"]["status"],
        "ok"
    );
    let text = metrics(&t).await;
    assert!(
        breaker_open(&text, &a.app.id).iter().all(|v| *v == 0.0),
        "{text}"
    );
    t.shutdown().await;
}

// =============================================================================================
// 5. The database never holds a private key in plaintext.

async fn dumps_hold_no_private_keys(db: Db) {
    let sim = sim_with_second_identities().await;
    let (t, dir, url) = spawn_in_dir(&db, &sim).await;
    let a = t.new_app().await;
    let apns_pem = key2_pem();
    let account = account2(&sim);
    let fcm_pem = account["private_key"].as_str().expect("pem").to_string();
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &apns_pem),
    )
    .await;
    put_fcm(&t, &a.server_key, None, account).await;
    // The uploaded keys work (they are stored, just not in plaintext).
    register(&t, &a, &apns_test_token(ApnsTestKind::Success, 31), "apns").await;
    register(&t, &a, &fcm_test_token(FcmTestKind::Success, 31), "fcm").await;
    send_all_and_wait(&t, &a, 2).await;
    let app_id = a.app.id.clone();
    t.shutdown().await;

    let dump: Vec<u8> = match &db {
        Db::Sqlite => {
            let mut bytes = Vec::new();
            let mut files = Vec::new();
            for entry in std::fs::read_dir(dir.path()).expect("dir") {
                let path = entry.expect("entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string();
                if name.starts_with("bridge.db") {
                    bytes.extend(std::fs::read(&path).expect("read"));
                    files.push(name);
                }
            }
            assert!(files.contains(&"bridge.db".to_string()), "{files:?}");
            bytes
        }
        Db::Postgres(_) => {
            match std::process::Command::new("pg_dump")
                .arg("--dbname")
                .arg(&url)
                .output()
            {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "notice: pg_dump is not installed; the PostgreSQL dump check is skipped"
                    );
                    return;
                }
                Err(e) => panic!("pg_dump: {e}"),
                Ok(out) => {
                    assert!(
                        out.status.success(),
                        "pg_dump: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    out.stdout
                }
            }
        }
    };
    // The dump is of this database: it holds the app and the credentials table.
    assert!(contains(&dump, app_id.as_bytes()), "the app is in the dump");
    assert!(
        contains(&dump, b"app_credentials"),
        "the credentials table is in the dump"
    );
    assert_no_pem_lines(&dump, &apns_pem, "the database");
    assert_no_pem_lines(&dump, &fcm_pem, "the database");
}

// =============================================================================================
// 6. Bad uploads are refused with the field at fault, and change nothing.

async fn bad_uploads_name_the_field(db: Db) {
    let sim = sim_with_second_identities().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let a = t.new_app().await;
    let pem = key2_pem();
    let account = account2(&sim);
    let rsa_pem = account["private_key"].as_str().expect("pem").to_string();
    let truncated = pem[..pem.len() / 2].to_string();

    let apns_cases = [
        (
            "truncated PEM",
            apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &truncated),
            "private_key",
        ),
        (
            "an RSA key",
            apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &rsa_pem),
            "private_key",
        ),
        (
            "not a PEM",
            apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, "hello"),
            "private_key",
        ),
        (
            "a 9-character key id",
            apns_body("SIMKEY002", SECOND_TEAM_ID, &pem),
            "key_id",
        ),
        (
            "a 9-character team id",
            apns_body(SECOND_KEY_ID, "SIMTEAM02", &pem),
            "team_id",
        ),
        (
            "an 11-character team id",
            apns_body(SECOND_KEY_ID, "SIMTEAM0002", &pem),
            "team_id",
        ),
    ];
    for (case, body, field) in apns_cases {
        let (status, resp) = t
            .call(
                Method::PUT,
                "/v1/app/credentials/apns",
                Some(&a.server_key),
                Some(body),
            )
            .await;
        assert_invalid_field(status, &resp, field, case);
        assert_no_pem_lines(resp.to_string().as_bytes(), &pem, case);
    }

    let without = |field: &str| {
        let mut incomplete = account.clone();
        incomplete.as_object_mut().expect("object").remove(field);
        incomplete
    };
    let mut wrong_type = account.clone();
    wrong_type["type"] = json!("authorized_user");
    let fcm_cases = [
        (
            "no private_key",
            without("private_key"),
            "service_account.private_key",
        ),
        ("another type", wrong_type, "service_account.type"),
        (
            "no client_email",
            without("client_email"),
            "service_account.client_email",
        ),
        (
            "no project_id",
            without("project_id"),
            "service_account.project_id",
        ),
        (
            "no token_uri",
            without("token_uri"),
            "service_account.token_uri",
        ),
    ];
    for (case, service_account, field) in fcm_cases {
        let (status, resp) = t
            .call(
                Method::PUT,
                "/v1/app/credentials/fcm",
                Some(&a.server_key),
                Some(json!({ "service_account": service_account })),
            )
            .await;
        assert_invalid_field(status, &resp, field, case);
        assert_no_pem_lines(resp.to_string().as_bytes(), &rsa_pem, case);
    }

    // Nothing was stored; the same uploads done right are accepted.
    let creds = get_credentials(&t, &a.server_key, None).await;
    assert_default_apns(&creds["apns"]);
    assert_default_fcm(&creds["fcm"]);
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &pem),
    )
    .await;
    put_fcm(&t, &a.server_key, None, account).await;
    let creds = get_credentials(&t, &a.server_key, None).await;
    assert_own_apns(&creds["apns"], SECOND_KEY_ID, SECOND_TEAM_ID);
    assert_own_fcm(&creds["fcm"]);
    t.shutdown().await;
}

// =============================================================================================
// 7. An app's key sees and changes its own credentials only; the operator key any app's.

async fn isolation(db: Db) {
    let sim = sim_with_second_identities().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let a = t.new_app().await;
    let b = t.new_app().await;
    let b_id = b.app.id.as_str();
    put_apns(
        &t,
        &a.server_key,
        None,
        apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &key2_pem()),
    )
    .await;

    // Each server key reads its own app's.
    let a_creds = get_credentials(&t, &a.server_key, None).await;
    assert_eq!(a_creds["app_id"], a.app.id.as_str());
    assert_own_apns(&a_creds["apns"], SECOND_KEY_ID, SECOND_TEAM_ID);
    let b_creds = get_credentials(&t, &b.server_key, None).await;
    assert_eq!(b_creds["app_id"], b_id);
    assert_default_apns(&b_creds["apns"]);

    // A's server key cannot name B.
    let pem = key2_pem();
    let attempts = [
        (Method::GET, "/v1/app/credentials".to_string(), None),
        (
            Method::PUT,
            "/v1/app/credentials/apns".to_string(),
            Some(apns_body(SECOND_KEY_ID, SECOND_TEAM_ID, &pem)),
        ),
        (
            Method::PUT,
            "/v1/app/credentials/fcm".to_string(),
            Some(json!({"service_account": account2(&sim)})),
        ),
        (Method::DELETE, "/v1/app/credentials/apns".to_string(), None),
    ];
    for (method, path, body) in attempts.clone() {
        let path = scoped(&path, Some(b_id));
        let (status, resp) = t
            .call(method.clone(), &path, Some(&a.server_key), body)
            .await;
        assert_eq!(status, 404, "{method} {path}: {resp}");
        assert_eq!(
            resp["error"]["code"], "not_found",
            "{method} {path}: {resp}"
        );
        assert!(!resp.to_string().contains(SECOND_KEY_ID), "{resp}");
    }
    // Client keys manage nothing.
    for (method, path, body) in attempts {
        let (status, resp) = t
            .call(method.clone(), &path, Some(&a.client_key), body)
            .await;
        assert!(
            status == 401 || status == 403,
            "{method} {path}: {status} {resp}"
        );
    }
    let b_creds = get_credentials(&t, OPERATOR_KEY, Some(b_id)).await;
    assert_eq!(b_creds["app_id"], b_id);
    assert_default_apns(&b_creds["apns"]);
    assert_default_fcm(&b_creds["fcm"]);
    assert_own_apns(
        &get_credentials(&t, &a.server_key, None).await["apns"],
        SECOND_KEY_ID,
        SECOND_TEAM_ID,
    );

    // The operator must say which app.
    let (status, resp) = t
        .call(Method::GET, "/v1/app/credentials", Some(OPERATOR_KEY), None)
        .await;
    assert_invalid_field(status, &resp, "app_id", "operator without app_id");
    let (status, resp) = t
        .call(
            Method::PUT,
            "/v1/app/credentials/fcm",
            Some(OPERATOR_KEY),
            Some(json!({"service_account": account2(&sim)})),
        )
        .await;
    assert_invalid_field(status, &resp, "app_id", "operator PUT without app_id");
    let (status, resp) = t
        .call(
            Method::GET,
            "/v1/app/credentials?app_id=app_doesnotexist",
            Some(OPERATOR_KEY),
            None,
        )
        .await;
    assert_eq!(status, 404, "{resp}");

    // The operator sets and removes B's; B sees it, A does not.
    put_fcm(&t, OPERATOR_KEY, Some(b_id), account2(&sim)).await;
    assert_own_fcm(&get_credentials(&t, &b.server_key, None).await["fcm"]);
    assert_default_fcm(&get_credentials(&t, &a.server_key, None).await["fcm"]);
    let (status, resp) = t
        .call(
            Method::DELETE,
            &scoped("/v1/app/credentials/fcm", Some(b_id)),
            Some(OPERATOR_KEY),
            None,
        )
        .await;
    assert_eq!(status, 204, "{resp}");
    assert_default_fcm(&get_credentials(&t, &b.server_key, None).await["fcm"]);
    // The operator reads A's too.
    assert_own_apns(
        &get_credentials(&t, OPERATOR_KEY, Some(&a.app.id)).await["apns"],
        SECOND_KEY_ID,
        SECOND_TEAM_ID,
    );
    t.shutdown().await;
}

backend_tests!(
    two_apps_use_their_own_identities,
    credential_change_takes_effect_without_restart,
    two_instances_share_one_jwt,
    revoked_key_pauses_only_that_app,
    dumps_hold_no_private_keys,
    bad_uploads_name_the_field,
    isolation,
);
