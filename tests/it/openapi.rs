//! The OpenAPI document at `/openapi.json`: it lists exactly the routes the app serves, and
//! the schemas it documents agree with what the API accepts and answers.

use std::collections::BTreeSet;

use crate::harness::{apns_token, user_proof, Db, TestApp};
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
    ("GET", "/v1/devices"),
    ("POST", "/v1/devices/{token}/restore"),
    ("GET", "/v1/users/{user_id}/devices"),
    // device_import.rs
    ("POST", "/v1/devices/import"),
    ("GET", "/v1/devices/export"),
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
    ("POST", "/v1/events/{id}/cancel"),
    // specs.rs
    ("GET", "/v1/templates"),
    ("GET", "/v1/templates/{name}"),
    ("PUT", "/v1/templates/{name}"),
    ("DELETE", "/v1/templates/{name}"),
    ("POST", "/v1/templates/{name}/preview"),
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
    // endpoints.rs
    ("POST", "/v1/endpoints"),
    ("GET", "/v1/endpoints"),
    ("GET", "/v1/endpoints/{id}"),
    ("PATCH", "/v1/endpoints/{id}"),
    ("DELETE", "/v1/endpoints/{id}"),
    ("GET", "/v1/endpoints/{id}/messages"),
    ("GET", "/v1/endpoints/{id}/attempts"),
    ("POST", "/v1/endpoints/{id}/recover"),
    ("POST", "/v1/endpoints/{id}/messages/{message_id}/resend"),
    ("POST", "/v1/endpoints/{id}/test"),
    ("POST", "/v1/endpoints/{id}/secret/rotate"),
    ("GET", "/v1/event-types"),
    ("GET", "/v1/app/policy"),
    ("PUT", "/v1/app/policy"),
    ("GET", "/v1/users/{user_id}/preferences"),
    ("PUT", "/v1/users/{user_id}/preferences"),
    ("DELETE", "/v1/users/{user_id}/preferences"),
    ("GET", "/v1/app/credentials"),
    ("PUT", "/v1/app/credentials/apns"),
    ("PUT", "/v1/app/credentials/fcm"),
    ("DELETE", "/v1/app/credentials/apns"),
    ("DELETE", "/v1/app/credentials/fcm"),
    // user_auth.rs
    ("GET", "/v1/app/user-auth"),
    ("POST", "/v1/app/user-auth"),
    ("POST", "/v1/app/user-auth/keys"),
    ("DELETE", "/v1/app/user-auth/keys/{id}"),
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
        // The request-head limits apply before routing, to every operation.
        for status in ["414", "431"] {
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{what}: {status} undocumented"
            );
        }
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
        // A client key may only use endpoints documented as taking any app key and not
        // answering 403 for a client key (registration answers 403 for a missing user proof).
        let forbids_client_keys = doc["paths"][*path][method.to_lowercase()]["responses"]["403"]
            ["description"]
            .as_str()
            .is_some_and(|d| d.contains("needs a server key"));
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
        "attributes": {"first_name": "Ada"}, "tags": ["beta"],
        "user_auth": user_proof(&app, "u1")
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
    assert_eq!(schemes.len(), 5);
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
    let payload = detail
        .as_object_mut()
        .and_then(|d| d.remove("payload"))
        .expect("the payload sent");
    assert_body_matches(&doc, "SentPayload", &payload);
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
    let (_, credentials) = t
        .call(
            Method::GET,
            "/v1/app/credentials",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_body_matches(&doc, "CredentialsView", &credentials);
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
            Some(crate::harness::OPERATOR_KEY),
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

/// The documented pattern of `schema` (resolving a `$ref`), compiled.
fn pattern_of(doc: &Value, schema: &Value) -> regex::Regex {
    let schema = match schema["$ref"].as_str() {
        Some(r) => doc.pointer(r.trim_start_matches('#')).expect("ref target"),
        None => schema,
    };
    let pattern = schema["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("no pattern in {schema}"));
    regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"))
}

fn path_param<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} documents no {name}"))
}

/// The documented pattern matches `sample` exactly when the server accepted it.
fn assert_agrees(what: &str, pattern: &regex::Regex, sample: &str, status: u16) {
    assert!(
        status < 300 || status == 422,
        "{what} {sample:?}: unexpected {status}"
    );
    assert_eq!(
        pattern.is_match(sample),
        status < 300,
        "{what} {sample:?}: the document and the server disagree (server said {status})"
    );
}

async fn put_device(t: &TestApp, key: &str, token: &str, body: Value) -> u16 {
    let path = format!("/v1/devices/{token}");
    t.call(Method::PUT, &path, Some(key), Some(body)).await.0
}

async fn documented_constraints_are_what_the_server_enforces(db: Db) {
    let t = TestApp::spawn(db).await;
    let doc = fetch_document(&t).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();

    // Device tokens: a token either platform accepts matches the documented pattern.
    let token = pattern_of(
        &doc,
        path_param(&doc, "put", "/v1/devices/{token}", "token"),
    );
    for sample in [
        apns_token(1),
        "AB".repeat(32),
        "ab".repeat(100),
        "ab".repeat(101),
        format!("{}a", "ab".repeat(40)),
        "zz".repeat(32),
        crate::harness::fcm_token("x"),
        "a".repeat(99),
        format!("{}!", "a".repeat(120)),
        "0".into(),
    ] {
        let apns = put_device(&t, key, &sample, json!({"platform": "apns"})).await;
        let fcm = put_device(&t, key, &sample, json!({"platform": "fcm"})).await;
        assert_agrees("token", &token, &sample, apns.min(fcm));
    }

    // Fields of a registration.
    let register = schema(&doc, "RegisterDevice");
    let fields: [(&str, Vec<String>); 4] = [
        (
            "locale",
            [
                "en",
                "en-us",
                "zh-hant-tw",
                "es-419",
                "de-CH-1996",
                "sl-rozaj-biske",
                "en-US-u-ca-gregory",
                "x-whatever",
                "en-x-private",
                "",
                "e",
                "en_US",
                "english-language-tag",
                "en--US",
                "123",
                "en-US-",
                "en-a",
                "toolonglang",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "timezone",
            [
                "Europe/Paris",
                "UTC",
                "Etc/GMT+5",
                "",
                "Europe Paris",
                "Europe/Paris;",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "user_id",
            vec![
                "u1".into(),
                "Zoé 1".into(),
                String::new(),
                "a\u{1}b".into(),
                "a".repeat(257),
            ],
        ),
        (
            "app_version",
            vec![
                "1.0".into(),
                String::new(),
                "a\u{7f}".into(),
                "a".repeat(64),
                "a".repeat(65),
            ],
        ),
    ];
    for (name, samples) in fields {
        let pattern = pattern_of(&doc, &register["properties"][name]);
        let max = register["properties"][name]["maxLength"].as_u64();
        for sample in samples {
            let mut body = json!({"platform": "apns"});
            body[name] = json!(sample);
            let status = put_device(&t, key, &apns_token(9), body).await;
            if max.is_some_and(|m| sample.chars().count() as u64 > m) {
                assert_eq!(status, 422, "{name} {sample:?} is longer than documented");
            } else {
                assert_agrees(name, &pattern, &sample, status);
            }
        }
    }
    let tag = pattern_of(&doc, &register["properties"]["tags"]["items"]);
    for sample in [
        String::from("beta"),
        String::new(),
        "x".repeat(64),
        "x".repeat(65),
        "a\tb".into(),
    ] {
        let body = json!({"platform": "apns", "tags": [sample]});
        let status = put_device(&t, key, &apns_token(9), body).await;
        assert_agrees("tag", &tag, &sample, status);
    }

    // Names of templates (and of rules and sources: the same validator).
    let name = pattern_of(
        &doc,
        path_param(&doc, "put", "/v1/templates/{name}", "name"),
    );
    for sample in [
        String::from("ok-name_1"),
        "Upper".into(),
        "dot.name".into(),
        "a".repeat(64),
        "a".repeat(65),
    ] {
        let path = format!("/v1/templates/{sample}");
        let (status, _) = t
            .call(Method::PUT, &path, Some(key), Some(json!({"body": "hi"})))
            .await;
        assert_agrees("name", &name, &sample, status);
    }

    // Allowlist entries and secrets of a source.
    let create = schema(&doc, "CreateSource");
    let mut sources = 0;
    let mut create_source = async |body: Value| {
        sources += 1;
        let mut body = body;
        body["name"] = json!(format!("s{sources}"));
        t.call(Method::POST, "/v1/sources", Some(key), Some(body))
            .await
            .0
    };
    let cidr = pattern_of(&doc, &create["properties"]["allowed_cidrs"]["items"]);
    for sample in [
        "10.0.0.0/8",
        "203.0.113.9",
        "::1",
        "2001:db8::/32",
        "::ffff:1.2.3.4",
        "1::2:1.2.3.4",
        "10.0.0.0/33",
        "1.2.3",
        "01.2.3.4",
        "fe80::1%eth0",
        "2001:db8::/129",
        "garbage",
    ] {
        let status = create_source(json!({"scheme": "generic", "allowed_cidrs": [sample]})).await;
        assert_agrees("cidr", &cidr, sample, status);
    }
    let secret = pattern_of(&doc, &create["properties"]["secrets"]["items"]);
    for sample in [
        "s".repeat(16),
        "with spaces and ~!".repeat(2),
        "s".repeat(15),
        "é".repeat(20),
        format!("{}\n", "s".repeat(20)),
    ] {
        let status = create_source(json!({"scheme": "github", "secrets": [sample]})).await;
        assert_agrees("secret", &secret, &sample, status);
    }

    // Every documented platform and environment registers a device.
    for platform in schema(&doc, "Platform")["enum"].as_array().expect("enum") {
        let sample = match platform.as_str() {
            Some("apns") => apns_token(3),
            Some("fcm") => crate::harness::fcm_token("p"),
            other => panic!("undocumented platform {other:?}"),
        };
        let status = put_device(&t, key, &sample, json!({"platform": platform})).await;
        assert!(status < 300, "{platform}: {status}");
    }
    for env in schema(&doc, "ApnsEnvironment")["enum"]
        .as_array()
        .expect("enum")
    {
        let body = json!({"platform": "apns", "environment": env});
        assert!(
            put_device(&t, key, &apns_token(4), body).await < 300,
            "{env}"
        );
    }

    // Bodies are JSON objects: an array is refused, even one serde could read as the struct;
    // an optional body may also be `null`.
    let (status, body) = t
        .call(
            Method::PATCH,
            "/v1/sources/s1",
            Some(key),
            Some(json!([null, null])),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/sources/s1/secrets",
            Some(key),
            Some(Value::Null),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = t
        .call(Method::GET, "/v1/events?type=", Some(key), None)
        .await;
    assert_eq!(
        status, 422,
        "an empty type is below the documented minLength"
    );

    // Cursors: every `next_cursor` matches the documented pattern.
    for seed in 1..=2 {
        put_device(
            &t,
            key,
            &apns_token(seed),
            json!({"platform": "apns", "user_id": "u1"}),
        )
        .await;
    }
    let (_, page) = t
        .call(Method::GET, "/v1/users/u1/devices?limit=1", Some(key), None)
        .await;
    let cursor = path_param(&doc, "get", "/v1/users/{user_id}/devices", "cursor");
    let next = page["next_cursor"].as_str().expect("cursor");
    assert!(pattern_of(&doc, cursor).is_match(next), "{next}");

    // Every operation that takes an app key documents its rate limit, as does the webhook.
    for (method, path, op) in operations(&doc) {
        let app_key = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r.get("api_key").is_some());
        if app_key || path.starts_with("/v1/webhooks/") {
            assert!(
                op["responses"].get("429").is_some(),
                "{method} {path} does not document 429"
            );
        }
    }
    // The webhook documents every scheme's signature header, as optional.
    let webhook = &doc["paths"]["/v1/webhooks/{app_id}/{source}"]["post"]["parameters"];
    for header in [
        "webhook-signature",
        "X-Hub-Signature-256",
        "Stripe-Signature",
        "X-Webhook-Signature",
    ] {
        assert!(
            webhook
                .as_array()
                .expect("parameters")
                .iter()
                .any(|p| p["name"] == header && p["in"] == "header" && p["required"] != true),
            "{header} is not an optional header parameter"
        );
    }
    t.shutdown().await;
}

backend_tests!(
    document_lists_exactly_the_served_routes,
    every_operation_is_described,
    security_matches_who_may_call,
    documented_schemas_match_the_api,
    documented_constraints_are_what_the_server_enforces,
);
