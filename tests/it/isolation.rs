//! Tenant isolation on every endpoint of the README's API tables, the client key's limits, the
//! operator surface's closure to app keys, and SQL built only from bound parameters.

use crate::harness::{proven, simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::clock::now_ms;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::Side;
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

/// Everything app B owns, as the tests refer to it.
struct Tenant {
    app: NewApp,
    token: String,
    dead_token: String,
    source_secret: String,
    secret_id: String,
    event_id: String,
    delivered_id: String,
    dead_id: String,
}

async fn ok(t: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Value {
    let (status, resp) = t.call(method.clone(), path, Some(key), body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {resp}"
    );
    resp
}

/// App B with a device, a dead-letter device, a source, a template, a rule, a callback, and an
/// event with one delivered and one dead delivery.
async fn populate(t: &TestApp, app: NewApp, seed: u64) -> Tenant {
    let key = app.server_key.clone();
    let token = apns_test_token(ApnsTestKind::Success, seed);
    let dead_token = apns_test_token(ApnsTestKind::ServiceUnavailable, seed);
    for tok in [&token, &dead_token] {
        ok(
            t,
            Method::PUT,
            &format!("/v1/devices/{tok}"),
            &app.client_key,
            Some(proven(
                &app,
                json!({"platform": "apns", "user_id": "ub", "attributes": {"name": "Bea"}}),
            )),
        )
        .await;
    }
    let source = ok(
        t,
        Method::POST,
        "/v1/sources",
        &key,
        Some(json!({"name": "billing", "scheme": "github"})),
    )
    .await;
    ok(
        t,
        Method::PUT,
        "/v1/templates/tb",
        &key,
        Some(json!({"title": "B title", "body": "B body"})),
    )
    .await;
    ok(
        t,
        Method::PUT,
        "/v1/rules/rb",
        &key,
        Some(json!({"event": "b.*", "audience": {"users": ["ub"]}, "template": "tb"})),
    )
    .await;
    ok(
        t,
        Method::PUT,
        "/v1/app/callback",
        &key,
        Some(json!({"url": "http://127.0.0.1:9/b-callback"})),
    )
    .await;
    let sent = ok(
        t,
        Method::POST,
        "/v1/notifications",
        &key,
        Some(json!({"to": {"user": "ub"}, "template": "tb"})),
    )
    .await;
    let event_id = sent["event_id"].as_str().expect("event").to_string();
    t.wait_for(&format!("/v1/events/{event_id}"), &key, |e| {
        e["status"] == "completed"
    })
    .await;
    let deliveries = ok(
        t,
        Method::GET,
        &format!("/v1/events/{event_id}/deliveries"),
        &key,
        None,
    )
    .await;
    let find = |status: &str| {
        deliveries["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .find(|d| d["status"] == status)
            .unwrap_or_else(|| panic!("a {status} delivery in {deliveries}"))["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    Tenant {
        token,
        dead_token,
        source_secret: source["secrets"][0]["secret"]
            .as_str()
            .expect("secret")
            .into(),
        secret_id: source["secrets"][0]["id"].as_str().expect("id").into(),
        event_id,
        delivered_id: find("delivered"),
        dead_id: find("dead"),
        app,
    }
}

/// Everything B can read about itself; compared before and after A's attempts.
async fn snapshot(t: &TestApp, b: &Tenant) -> Vec<Value> {
    let key = &b.app.server_key;
    let mut out = Vec::new();
    for path in [
        format!("/v1/devices/{}", b.token),
        format!("/v1/devices/{}", b.dead_token),
        "/v1/users/ub/devices".into(),
        "/v1/sources".into(),
        "/v1/sources/billing".into(),
        "/v1/events".into(),
        format!("/v1/events/{}", b.event_id),
        format!("/v1/events/{}/deliveries", b.event_id),
        "/v1/deliveries".into(),
        format!("/v1/deliveries/{}", b.delivered_id),
        format!("/v1/deliveries/{}", b.dead_id),
        "/v1/templates".into(),
        "/v1/templates/tb".into(),
        "/v1/rules".into(),
        "/v1/rules/rb".into(),
        "/v1/app".into(),
    ] {
        out.push(ok(t, Method::GET, &path, key, None).await);
    }
    out
}

/// Every endpoint of the README, with app B's ids in the path, as (method, path, body).
fn endpoints_on(b: &Tenant) -> Vec<(Method, String, Option<Value>)> {
    let tok = &b.token;
    let app_b = &b.app.app.id;
    vec![
        (Method::GET, format!("/v1/devices/{tok}"), None),
        (Method::DELETE, format!("/v1/devices/{tok}"), None),
        (Method::GET, "/v1/sources/billing".into(), None),
        (
            Method::PATCH,
            "/v1/sources/billing".into(),
            Some(json!({"allowed_cidrs": ["10.0.0.0/8"]})),
        ),
        (
            Method::POST,
            "/v1/sources/billing/secrets".into(),
            Some(json!({})),
        ),
        (
            Method::DELETE,
            format!("/v1/sources/billing/secrets/{}", b.secret_id),
            None,
        ),
        (Method::DELETE, "/v1/sources/billing".into(), None),
        (Method::GET, format!("/v1/events/{}", b.event_id), None),
        (
            Method::GET,
            format!("/v1/events/{}/deliveries", b.event_id),
            None,
        ),
        (
            Method::GET,
            format!("/v1/deliveries/{}", b.delivered_id),
            None,
        ),
        (Method::GET, format!("/v1/deliveries/{}", b.dead_id), None),
        (
            Method::POST,
            format!("/v1/deliveries/{}/retry", b.dead_id),
            None,
        ),
        (Method::GET, "/v1/templates/tb".into(), None),
        (Method::DELETE, "/v1/templates/tb".into(), None),
        (Method::GET, "/v1/rules/rb".into(), None),
        (Method::DELETE, "/v1/rules/rb".into(), None),
        (Method::GET, format!("/v1/stats?app_id={app_b}"), None),
    ]
}

async fn another_apps_server_key_can_neither_read_nor_change_anything(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 1).await;
    let a = t.new_app().await;
    // A has a source of its own, whose secret must not open B's.
    let (status, a_source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&a.server_key),
            Some(json!({"name": "a-billing", "scheme": "github"})),
        )
        .await;
    assert_eq!(status, 201, "{a_source}");
    let a_secret = a_source["secrets"][0]["secret"].as_str().expect("secret");
    let b_app = t.new_app().await;
    let b = populate(&t, b_app, 7).await;
    let before = snapshot(&t, &b).await;
    let key = a.server_key.as_str();

    // Direct addressing of B's resources: not found, never forbidden-but-existing.
    for (method, path, body) in endpoints_on(&b) {
        let (status, resp) = t.call(method.clone(), &path, Some(key), body).await;
        assert_eq!(status, 404, "{method} {path}: {status} {resp}");
        assert!(resp["error"]["code"].is_string(), "{method} {path}: {resp}");
    }

    // Collections are scoped: none of B's ids, tokens, names or secrets show up.
    let secrets_and_ids = [
        b.token.as_str(),
        b.dead_token.as_str(),
        b.event_id.as_str(),
        b.delivered_id.as_str(),
        b.dead_id.as_str(),
        b.secret_id.as_str(),
        b.source_secret.as_str(),
        b.app.app.id.as_str(),
        "b-callback",
        "B title",
        "\"rb\"",
        "\"tb\"",
    ];
    for path in [
        "/v1/users/ub/devices",
        "/v1/sources",
        "/v1/events",
        "/v1/deliveries",
        "/v1/deliveries?status=dead",
        "/v1/deliveries?status=delivered",
        "/v1/templates",
        "/v1/rules",
        "/v1/app",
        "/v1/stats",
    ] {
        let body = ok(&t, Method::GET, path, key, None).await.to_string();
        for needle in secrets_and_ids {
            assert!(!body.contains(needle), "{path} shows B's {needle}: {body}");
        }
    }

    // Writes in A's own namespace leave B alone.
    let (status, replayed) = t
        .call(
            Method::POST,
            "/v1/deliveries/retry",
            Some(key),
            Some(json!({"event_id": b.event_id})),
        )
        .await;
    assert!(
        status == 404 || (status < 300 && replayed["requeued"] == 0),
        "{status} {replayed}"
    );
    ok(
        &t,
        Method::PUT,
        "/v1/templates/tb",
        key,
        Some(json!({"title": "A's", "body": "A's"})),
    )
    .await;
    ok(
        &t,
        Method::PUT,
        "/v1/rules/rb",
        key,
        Some(json!({"event": "a.*", "audience": {"users": ["ub"]}, "template": "tb"})),
    )
    .await;
    ok(
        &t,
        Method::PUT,
        "/v1/app/callback",
        key,
        Some(json!({"url": "http://127.0.0.1:9/a-callback"})),
    )
    .await;
    ok(&t, Method::DELETE, "/v1/app/callback", key, None).await;
    sim.clear_records();
    for to in [
        json!({"tokens": [b.token]}),
        json!({"user": "ub"}),
        json!({"devices": {}}),
    ] {
        let (status, resp) = t
            .call(
                Method::POST,
                "/v1/notifications",
                Some(key),
                Some(json!({"to": to, "template": {"title": "x", "body": "y"}})),
            )
            .await;
        if status == 202 {
            let id = resp["event_id"].as_str().expect("id");
            let event = t
                .wait_for(&format!("/v1/events/{id}"), key, |e| {
                    e["status"] == "completed"
                })
                .await;
            assert_eq!(event["deliveries"]["total"], 0, "{to}: {event}");
        } else {
            assert!((400..500).contains(&status), "{to}: {status} {resp}");
        }
    }
    // Registering B's token under A is A's own device; B's stays as it was.
    ok(
        &t,
        Method::PUT,
        &format!("/v1/devices/{}", b.token),
        &a.client_key,
        Some(proven(
            &a,
            json!({"platform": "apns", "user_id": "intruder"}),
        )),
    )
    .await;
    // B's webhook endpoint does not accept A's secret.
    let body = br#"{"type":"b.created"}"#;
    let mut req = t
        .client
        .post(t.url(&format!("/v1/webhooks/{}/billing", b.app.app.id)))
        .header("content-type", "application/json")
        .header("x-github-event", "b.created")
        .body(body.to_vec());
    for (k, v) in
        sign(Scheme::Github, a_secret, body, "gh-1", now_ms() / 1000).expect("a valid secret")
    {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.expect("webhook").status().as_u16(), 401);

    let after = snapshot(&t, &b).await;
    assert_eq!(before, after, "B's data is unchanged");
    // And nothing was sent on B's behalf.
    let sent_to_b = sim
        .records()
        .iter()
        .filter(|r| r.side == Side::Apns)
        .filter(|r| r.token.as_deref() == Some(b.token.as_str()))
        .count();
    assert_eq!(sent_to_b, 0);
    t.shutdown().await;
}

async fn a_client_key_may_only_register_devices(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 1).await;
    let app = t.new_app().await;
    let own = populate(&t, app, 3).await;
    let before = snapshot(&t, &own).await;
    let client = own.app.client_key.clone();

    let mut server_only = endpoints_on(&own);
    server_only.retain(|(m, p, _)| !p.starts_with("/v1/devices/") || *m == Method::PATCH);
    server_only.extend([
        (Method::GET, "/v1/users/ub/devices".to_string(), None),
        (
            Method::POST,
            "/v1/sources".into(),
            Some(json!({"name": "x", "scheme": "github"})),
        ),
        (Method::GET, "/v1/sources".into(), None),
        (Method::GET, "/v1/events".into(), None),
        (
            Method::PUT,
            "/v1/templates/x".into(),
            Some(json!({"title": "x"})),
        ),
        (Method::GET, "/v1/templates".into(), None),
        (
            Method::PUT,
            "/v1/rules/x".into(),
            Some(json!({"event": "*", "audience": {"users": ["u"]}, "template": "tb"})),
        ),
        (Method::GET, "/v1/rules".into(), None),
        (
            Method::POST,
            "/v1/notifications".into(),
            Some(json!({"to": {"user": "ub"}, "template": "tb"})),
        ),
        (Method::GET, "/v1/deliveries".into(), None),
        (Method::POST, "/v1/deliveries/retry".into(), Some(json!({}))),
        (Method::GET, "/v1/app".into(), None),
        (
            Method::PUT,
            "/v1/app/callback".into(),
            Some(json!({"url": "http://127.0.0.1:9/x"})),
        ),
        (Method::DELETE, "/v1/app/callback".into(), None),
        (Method::GET, "/v1/stats".into(), None),
    ]);
    for (method, path, body) in server_only {
        let (status, resp) = t.call(method.clone(), &path, Some(&client), body).await;
        assert_eq!(status, 403, "{method} {path}: {status} {resp}");
        assert_eq!(resp["error"]["code"], "forbidden", "{method} {path}");
    }
    assert_eq!(before, snapshot(&t, &own).await, "nothing changed");

    // What it is for still works.
    let token = apns_test_token(ApnsTestKind::Success, 99);
    let path = format!("/v1/devices/{token}");
    let (status, _) = t
        .call(
            Method::PUT,
            &path,
            Some(&client),
            Some(json!({"platform": "apns"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = t.call(Method::GET, &path, Some(&client), None).await;
    assert_eq!(status, 200);
    let (status, _) = t.call(Method::DELETE, &path, Some(&client), None).await;
    assert_eq!(status, 204);
    t.shutdown().await;
}

async fn operator_endpoints_refuse_app_keys(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 1).await;
    let app = t.new_app().await;
    let own = populate(&t, app, 5).await;
    for key in [own.app.server_key.as_str(), own.app.client_key.as_str()] {
        for (method, path) in [
            (Method::GET, "/metrics".to_string()),
            (Method::GET, "/v1/admin/apps".into()),
            (
                Method::POST,
                format!("/v1/admin/deliveries/{}/retry", own.dead_id),
            ),
        ] {
            let resp = t
                .client
                .request(method.clone(), t.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            assert!(status == 401 || status == 403, "{method} {path}: {status}");
        }
    }
    // A server key sees stats of its own app only, not all apps.
    let (status, stats) = t
        .call(Method::GET, "/v1/stats", Some(&own.app.server_key), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["app_id"], own.app.app.id.as_str(), "{stats}");
    // The dead letter is still dead: none of the replays above went through.
    let (_, delivery) = t
        .call(
            Method::GET,
            &format!("/v1/deliveries/{}", own.dead_id),
            Some(&own.app.server_key),
            None,
        )
        .await;
    assert_eq!(delivery["status"], "dead", "{delivery}");
    // The operator key itself works (so the refusals above are about the key).
    let resp = t
        .client
        .get(t.url("/v1/admin/apps"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("admin");
    assert_eq!(resp.status().as_u16(), 200);
    t.shutdown().await;
}

/// Values that would change a query if they were spliced into SQL text.
const INJECTIONS: [&str; 6] = [
    "'; DROP TABLE devices; --",
    "\" OR 1=1 --",
    "x' OR '1'='1",
    "Robert'); DROP TABLE api_keys;--",
    "%' OR user_id LIKE '%",
    "1; SELECT pg_sleep(5); --",
];

fn path_with(t: &TestApp, segments: &[&str], query: Option<(&str, &str)>) -> String {
    let mut url = reqwest::Url::parse(&t.base).expect("base");
    url.path_segments_mut().expect("segments").extend(segments);
    if let Some((k, v)) = query {
        url.query_pairs_mut().append_pair(k, v);
    }
    format!(
        "{}{}",
        url.path(),
        url.query().map(|q| format!("?{q}")).unwrap_or_default()
    )
}

async fn sql_injection_looking_values_round_trip_literally(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    // A bystander device that a widened WHERE clause would pull in.
    let bystander = apns_test_token(ApnsTestKind::Success, 1_000);
    ok(
        &t,
        Method::PUT,
        &format!("/v1/devices/{bystander}"),
        key,
        Some(json!({"platform": "apns", "user_id": "bystander"})),
    )
    .await;

    for (i, value) in INJECTIONS.iter().enumerate() {
        let token = apns_test_token(ApnsTestKind::Success, i as u64);
        let registration = json!({
            "platform": "apns",
            "user_id": value,
            "app_version": value,
            "attributes": {*value: value, "name": value},
            "tags": [value],
        });
        ok(
            &t,
            Method::PUT,
            &format!("/v1/devices/{token}"),
            &app.client_key,
            Some(proven(&app, registration)),
        )
        .await;
        let device = ok(&t, Method::GET, &format!("/v1/devices/{token}"), key, None).await;
        assert_eq!(device["user_id"], *value);
        assert_eq!(device["app_version"], *value);
        assert_eq!(device["attributes"][*value], *value);
        assert_eq!(device["tags"], json!([value]));

        // The user's devices are exactly this one.
        let listed = ok(
            &t,
            Method::GET,
            &path_with(&t, &["v1", "users", value, "devices"], None),
            key,
            None,
        )
        .await;
        let tokens: Vec<&str> = listed["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .filter_map(|d| d["token"].as_str())
            .collect();
        assert_eq!(tokens, vec![token.as_str()], "{value}");

        // A template and a rule carrying the value, and a send to that user: one delivery,
        // with the text as written.
        ok(
            &t,
            Method::PUT,
            &format!("/v1/templates/t{i}"),
            key,
            Some(json!({"title": value, "body": format!("{{{{ user.name }}}} {value}")})),
        )
        .await;
        let template = ok(&t, Method::GET, &format!("/v1/templates/t{i}"), key, None).await;
        assert_eq!(template["spec"]["title"], *value, "{template}");
        ok(
            &t,
            Method::PUT,
            &format!("/v1/rules/r{i}"),
            key,
            Some(json!({"event": value, "audience": {"users": [value]}, "template": format!("t{i}")})),
        )
        .await;
        let rule = ok(&t, Method::GET, &format!("/v1/rules/r{i}"), key, None).await;
        assert_eq!(rule["spec"]["event"], *value, "{rule}");

        sim.clear_records();
        let sent = ok(
            &t,
            Method::POST,
            "/v1/notifications",
            key,
            Some(json!({"to": {"users": [value]}, "template": format!("t{i}"), "data": {"note": value}})),
        )
        .await;
        let id = sent["event_id"].as_str().expect("id");
        let event = t
            .wait_for(&format!("/v1/events/{id}"), key, |e| {
                e["status"] == "completed"
            })
            .await;
        assert_eq!(event["deliveries"]["delivered"], 1, "{value}: {event}");
        assert_eq!(event["deliveries"]["total"], 1, "{value}: {event}");
        let records = sim.records();
        let push = records
            .iter()
            .find(|r| r.side == Side::Apns)
            .expect("a push");
        assert_eq!(push.token.as_deref(), Some(token.as_str()));
        assert_eq!(push.body["aps"]["alert"]["title"], *value);
        assert_eq!(
            push.body["aps"]["alert"]["body"],
            format!("{value} {value}")
        );

        // A filter on the value finds nothing it should not.
        let events = ok(
            &t,
            Method::GET,
            &path_with(&t, &["v1", "events"], Some(("type", value))),
            key,
            None,
        )
        .await;
        assert_eq!(events["events"], json!([]), "{value}: {events}");
        let (status, _) = t
            .call(
                Method::GET,
                &path_with(&t, &["v1", "sources", value], None),
                Some(key),
                None,
            )
            .await;
        assert!(status == 404 || status == 422, "{value}: {status}");
    }

    // A source whose event-type path is the value; it is stored as written.
    let (status, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(key),
            Some(json!({"name": "inj", "scheme": "generic", "event_type_path": INJECTIONS[0]})),
        )
        .await;
    if status == 201 {
        let shown = ok(&t, Method::GET, "/v1/sources/inj", key, None).await;
        assert_eq!(shown["event_type_path"], INJECTIONS[0], "{shown}");
    } else {
        assert_eq!(status, 422, "{source}");
    }

    // Every table is intact and nothing leaked across rows.
    let store = t.store();
    let devices = store
        .devices_page(&app.app.id, None, "", 1_000)
        .await
        .expect("devices table");
    assert_eq!(devices.len(), INJECTIONS.len() + 1);
    let bystander_row = store
        .get_device(&app.app.id, &bystander)
        .await
        .expect("read")
        .expect("bystander still there");
    assert_eq!(bystander_row.user_id.as_deref(), Some("bystander"));
    assert!(store.authenticate(key).await.expect("api_keys").is_some());
    let named = pushbridge::store::SpecKind::Rule;
    assert_eq!(
        store
            .list_specs(named, &app.app.id)
            .await
            .expect("rules")
            .len(),
        INJECTIONS.len()
    );
    t.shutdown().await;
}

backend_tests!(
    another_apps_server_key_can_neither_read_nor_change_anything,
    a_client_key_may_only_register_devices,
    operator_endpoints_refuse_app_keys,
    sql_injection_looking_values_round_trip_literally,
);
