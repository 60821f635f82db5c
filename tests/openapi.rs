//! The OpenAPI document at `/openapi.json`: it lists exactly the routes the app serves, and
//! the schemas it documents agree with what the API accepts and answers.

mod common;

use std::collections::BTreeSet;

use common::{apns_token, Db, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// Every route the app serves, read from the router modules in `src/http/`. Adding a route
/// means adding it here, and the document must then list it too.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/openapi.json"),
    // health.rs
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    // devices.rs
    ("PUT", "/v1/devices/{token}"),
    ("GET", "/v1/devices/{token}"),
    ("DELETE", "/v1/devices/{token}"),
    ("GET", "/v1/users/{user_id}/devices"),
    // sources.rs
    ("POST", "/v1/sources"),
    ("GET", "/v1/sources"),
    ("GET", "/v1/sources/{name}"),
    ("PATCH", "/v1/sources/{name}"),
    ("DELETE", "/v1/sources/{name}"),
    ("POST", "/v1/sources/{name}/secrets"),
    ("DELETE", "/v1/sources/{name}/secrets/{secret_id}"),
    // webhooks.rs
    ("POST", "/v1/webhooks/{app_id}/{source}"),
    // events.rs
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{id}"),
    // specs.rs
    ("GET", "/v1/templates"),
    ("GET", "/v1/templates/{name}"),
    ("PUT", "/v1/templates/{name}"),
    ("DELETE", "/v1/templates/{name}"),
    ("GET", "/v1/rules"),
    ("GET", "/v1/rules/{name}"),
    ("PUT", "/v1/rules/{name}"),
    ("DELETE", "/v1/rules/{name}"),
    // notifications.rs
    ("POST", "/v1/notifications"),
    ("GET", "/v1/events/{id}/deliveries"),
    ("GET", "/v1/deliveries"),
    ("POST", "/v1/deliveries/retry"),
    ("GET", "/v1/deliveries/{id}"),
    ("POST", "/v1/deliveries/{id}/retry"),
    // app.rs
    ("GET", "/v1/app"),
    ("PUT", "/v1/app/callback"),
    ("DELETE", "/v1/app/callback"),
    // stats.rs
    ("GET", "/v1/stats"),
    // admin.rs
    ("GET", "/dashboard"),
    ("GET", "/v1/admin/apps"),
    ("POST", "/v1/admin/deliveries/{id}/retry"),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn fetch_document(t: &TestApp) -> Value {
    let resp = t
        .client
        .get(t.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    resp.json().await.expect("the document is JSON")
}

/// Sends a bodiless request to a documented path (parameters filled with `x...`); returns
/// the status and the JSON body, or Null for bodies that are not JSON (HTML, metrics).
async fn probe(t: &TestApp, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let concrete = path.replace('{', "x").replace('}', "");
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = t.client.request(method, t.url(&concrete));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every (METHOD, path) operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in HTTP_METHODS {
            if let Some(op) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "components/schemas/{name} is missing");
    s
}

/// `body`'s keys are all documented properties of schema `name`, and every required
/// property is present.
fn assert_body_matches(doc: &Value, name: &str, body: &Value) {
    let s = schema(doc, name);
    let properties: BTreeSet<&str> = s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties"))
        .keys()
        .map(String::as_str)
        .collect();
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("{body} is an object"))
        .keys()
        .map(String::as_str)
        .collect();
    let undocumented: Vec<_> = keys.difference(&properties).collect();
    assert!(
        undocumented.is_empty(),
        "{name} does not document {undocumented:?} of {body}"
    );
    for required in s["required"].as_array().into_iter().flatten() {
        let required = required.as_str().expect("property name");
        assert!(
            keys.contains(required),
            "{name} requires {required}, absent from {body}"
        );
    }
}

async fn document_lists_exactly_the_served_routes(db: Db) {
    let t = TestApp::spawn(db).await;
    let doc = fetch_document(&t).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in the route list"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );

    // Every documented operation reaches a handler: the router's fallbacks answer
    // "route not found" (404) and "method not allowed" (405), handlers never do.
    for (method, path) in ROUTES {
        let (status, body) = probe(&t, method, path, None).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let fell_through = (status == 404 && message == "route not found") || status == 405;
        assert!(
            !fell_through,
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    t.shutdown().await;
}

async fn every_operation_is_described(db: Db) {
    let t = TestApp::spawn(db).await;
    let doc = fetch_document(&t).await;
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for name in ["api_key", "operator_key"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            operation_ids.insert(id),
            "{what}: operationId {id:?} is not unique"
        );
        let summary = op["summary"].as_str().unwrap_or_default();
        assert!(
            !summary.is_empty() && !summary.contains('\n'),
            "{what}: one-line summary"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{what}: no responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no success response"
        );
        for requirement in op["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().expect("requirement").keys() {
                assert!(schemes.contains_key(scheme), "{what}: unknown {scheme}");
            }
        }
        // Every path parameter of the template is documented.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                "{what}: path parameter {name} is undocumented"
            );
        }
    }

    // Every $ref points at a defined component.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().expect("ref");
        let pointer = target.trim_start_matches('#');
        assert!(
            doc.pointer(pointer).is_some(),
            "dangling reference {target}"
        );
    }

    for name in [
        "RegisterDevice",
        "CreateSource",
        "UpdateSource",
        "AddSecret",
        "SendRequest",
        "Recipients",
        "ReplayFilter",
        "CallbackRequest",
        "TemplateSpec",
        "LocalizedText",
        "BadgeSpec",
        "DeliveryOptions",
        "RuleSpec",
        "Audience",
        "DeviceFilter",
        "TemplateRef",
        "Scheme",
        "Priority",
        "ErrorBody",
        "ErrorDetail",
    ] {
        schema(&doc, name);
    }
    t.shutdown().await;
}

async fn security_matches_who_may_call(db: Db) {
    let t = TestApp::spawn(db).await;
    let doc = fetch_document(&t).await;
    let security = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method.to_lowercase()]["security"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r.as_object().expect("requirement").keys().cloned())
            .collect()
    };
    let app = t.new_app().await;
    for (method, path) in ROUTES {
        let schemes = security(method, path);
        let (status, _) = probe(&t, method, path, None).await;
        if schemes.is_empty() {
            assert_ne!(status, 401, "{method} {path} is documented as open");
        } else {
            assert_eq!(
                status, 401,
                "{method} {path} is documented as needing a key"
            );
        }
        // A client key may only use endpoints documented as taking any app key and
        // answering no 403 for it.
        let forbids_client_keys = doc["paths"][*path][method.to_lowercase()]["responses"]
            .get("403")
            .is_some();
        if schemes == ["api_key"] {
            let (status, _) = probe(&t, method, path, Some(&app.client_key)).await;
            assert_eq!(
                status == 403,
                forbids_client_keys,
                "{method} {path} with a client key answered {status}"
            );
        }
    }
    t.shutdown().await;
}

async fn documented_schemas_match_the_api(db: Db) {
    let t = TestApp::spawn(db).await;
    let doc = fetch_document(&t).await;
    let app = t.new_app().await;

    // RegisterDevice: `platform` is required, unknown fields are refused.
    let register = schema(&doc, "RegisterDevice");
    assert_eq!(register["additionalProperties"], json!(false));
    assert!(register["required"]
        .as_array()
        .expect("required")
        .contains(&json!("platform")));
    let path = format!("/v1/devices/{}", apns_token(7));
    let (status, body) = t
        .call(
            Method::PUT,
            &path,
            Some(&app.client_key),
            Some(json!({"user_id": "u1"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("platform")));
    assert_body_matches(&doc, "ErrorBody", &body);
    assert_body_matches(&doc, "ErrorDetail", &body["error"]);

    // Every documented RegisterDevice property is accepted.
    let properties = register["properties"].as_object().expect("properties");
    let mut full = json!({
        "platform": "apns", "user_id": "u1", "locale": "fr-FR", "timezone": "Europe/Paris",
        "app_version": "1.0", "environment": "sandbox", "topic": "com.example.app",
        "attributes": {"first_name": "Ada"}, "tags": ["beta"]
    });
    assert_eq!(
        properties.keys().collect::<BTreeSet<_>>(),
        full.as_object()
            .expect("object")
            .keys()
            .collect::<BTreeSet<_>>()
    );
    let (status, device) = t
        .call(
            Method::PUT,
            &path,
            Some(&app.client_key),
            Some(full.clone()),
        )
        .await;
    assert_eq!(status, 201, "{device}");
    assert_body_matches(&doc, "Device", &device);
    full["unknown"] = json!(1);
    let (status, _) = t
        .call(Method::PUT, &path, Some(&app.client_key), Some(full))
        .await;
    assert_eq!(status, 422);

    // Every documented scheme creates a source, answered as documented.
    let schemes = schema(&doc, "Scheme")["enum"]
        .as_array()
        .expect("Scheme is an enum")
        .clone();
    assert_eq!(schemes.len(), 4);
    for (i, scheme) in schemes.iter().enumerate() {
        let (status, source) = t
            .call(
                Method::POST,
                "/v1/sources",
                Some(&app.server_key),
                Some(json!({"name": format!("s{i}"), "scheme": scheme})),
            )
            .await;
        assert_eq!(status, 201, "{scheme}: {source}");
        assert_body_matches(&doc, "Source", &source);
        assert_body_matches(&doc, "SourceSecret", &source["secrets"][0]);
    }

    // A direct send answers EventAccepted; the event reads back as documented.
    let (status, accepted) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u1"}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_body_matches(&doc, "EventAccepted", &accepted);
    let event_path = format!("/v1/events/{}", accepted["event_id"].as_str().expect("id"));
    let (status, mut event) = t
        .call(Method::GET, &event_path, Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200);
    let counts = event
        .as_object_mut()
        .and_then(|e| e.remove("deliveries"))
        .expect("delivery counts");
    assert_body_matches(&doc, "Event", &event);
    assert_body_matches(&doc, "DeliveryCounts", &counts);

    // The send fans out to the device registered above; its delivery reads as documented
    // (whatever became of it without provider credentials).
    let deliveries = t
        .wait_for(&format!("{event_path}/deliveries"), &app.server_key, |b| {
            b["deliveries"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    assert_body_matches(&doc, "DeliveryList", &deliveries);
    let delivery = &deliveries["deliveries"][0];
    assert_body_matches(&doc, "Delivery", delivery);
    let statuses = &schema(&doc, "DeliveryStatus")["enum"];
    assert!(
        statuses
            .as_array()
            .expect("enum")
            .contains(&delivery["status"]),
        "{delivery}"
    );
    let (status, mut detail) = t
        .call(
            Method::GET,
            &format!("/v1/deliveries/{}", delivery["id"].as_str().expect("id")),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    let attempts = detail
        .as_object_mut()
        .and_then(|d| d.remove("attempt_log"))
        .expect("attempt log");
    assert_body_matches(&doc, "Delivery", &detail);
    for attempt in attempts.as_array().expect("attempts") {
        assert_body_matches(&doc, "Attempt", attempt);
    }

    // The app, its callback and a new source secret.
    let (_, me) = t
        .call(Method::GET, "/v1/app", Some(&app.server_key), None)
        .await;
    assert_body_matches(&doc, "AppView", &me);
    let (_, callback) = t
        .call(
            Method::PUT,
            "/v1/app/callback",
            Some(&app.server_key),
            Some(json!({"url": "https://app.example.com/hook"})),
        )
        .await;
    assert_body_matches(&doc, "CallbackSet", &callback);
    let (status, secret) = t
        .call(
            Method::POST,
            "/v1/sources/s0/secrets",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 201, "{secret}");
    assert_body_matches(&doc, "AddedSecret", &secret);
    let (_, apps) = t
        .call(
            Method::GET,
            "/v1/admin/apps",
            Some(common::OPERATOR_KEY),
            None,
        )
        .await;
    assert_body_matches(&doc, "AppList", &apps);
    let (status, stats) = t
        .call(Method::GET, "/v1/stats", Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_body_matches(&doc, "StatsReport", &stats);
    for window in ["5m", "1h", "24h"] {
        assert_body_matches(&doc, "WindowStats", &stats["windows"][window]);
    }
    assert_body_matches(&doc, "QueueStats", &stats["queue"]);
    for point in stats["throughput_per_minute"].as_array().expect("series") {
        assert_body_matches(&doc, "ThroughputPoint", point);
    }
    for dead in stats["recent_dead_letters"]
        .as_array()
        .expect("dead letters")
    {
        assert_body_matches(&doc, "DeadLetter", dead);
    }
    assert_body_matches(&doc, "AppSummary", &apps["apps"][0]);
    t.shutdown().await;
}

backend_tests!(
    document_lists_exactly_the_served_routes,
    every_operation_is_described,
    security_matches_who_may_call,
    documented_schemas_match_the_api,
);
