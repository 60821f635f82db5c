//! OpenTelemetry traces: the real binary exports to an OTLP/HTTP receiver started here. One
//! trace runs from the webhook's accept through the fan-out to each provider send, across a
//! restart between accept and fan-out, and no span carries a device token or the payload.
//! Without a configured collector nothing is exported, whatever the standard OTEL_* variables
//! say.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use pushbridge::clock::now_ms;
use pushbridge::signature::{sign, Scheme};
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use serde_json::{json, Value};

use crate::harness::{bridge_env, open_store, proven, simulator, BridgeProcess, Db};

/// Appears only in the webhook's payload and the notifications rendered from it.
const MARKER: &str = "zq-trace-payload-51c2e8";

/// A stand-in OTLP/HTTP collector: keeps every export request's body.
struct Receiver {
    base: String,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start() -> Self {
        let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(
                    |State(b): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes| async move {
                        b.lock().expect("lock").push(body);
                        // An empty ExportTraceServiceResponse: everything accepted.
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    },
                ),
            )
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, bodies }
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Every span received, with the service name of its resource.
    fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for body in self.bodies() {
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for resource in request.resource_spans {
                let resource_attrs = resource.resource.map(|r| r.attributes).unwrap_or_default();
                let service = attr(&resource_attrs, "service.name").unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        let mut values: Vec<String> = resource_attrs.iter().map(value).collect();
                        values.extend(span.attributes.iter().map(value));
                        for event in &span.events {
                            values.push(event.name.clone());
                            values.extend(event.attributes.iter().map(value));
                        }
                        out.push(ReceivedSpan {
                            service: service.clone(),
                            name: span.name.clone(),
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_id: hex::encode(&span.parent_span_id),
                            attributes: span.attributes.clone(),
                            values,
                        });
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: Vec<KeyValue>,
    /// Every attribute value of the span, its events and its resource, as text.
    values: Vec<String>,
}

impl ReceivedSpan {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.attributes, key)
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).map(value)
}

fn value(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn call(
    bridge: &BridgeProcess,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, bridge.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Registers an APNs and an FCM device for user u1, a Standard Webhooks source and a rule that
/// notifies the event's user; returns the tokens and the source's secret.
async fn set_up_app(
    bridge: &BridgeProcess,
    app: &pushbridge::store::NewApp,
) -> (Vec<String>, String) {
    let tokens = vec![
        apns_test_token(ApnsTestKind::Success, 31),
        fcm_test_token(FcmTestKind::Success, 32),
    ];
    for (platform, token) in ["apns", "fcm"].into_iter().zip(&tokens) {
        let body = proven(app, json!({"platform": platform, "user_id": "u1"}));
        let path = format!("/v1/devices/{token}");
        let (status, resp) = call(bridge, reqwest::Method::PUT, &path, &app.client_key, body).await;
        assert_eq!(status, 201, "{resp}");
    }
    let body = json!({"name": "billing", "scheme": "standard_webhooks"});
    let (status, source) = call(
        bridge,
        reqwest::Method::POST,
        "/v1/sources",
        &app.server_key,
        body,
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let secret = source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let rule = json!({"event": "payment.*", "audience": {"user_id_path": "data.user_id"},
                      "template": {"title": "Paid", "body": "{{ event.data.note }}"}});
    let (status, resp) = call(
        bridge,
        reqwest::Method::PUT,
        "/v1/rules/payments",
        &app.server_key,
        rule,
    )
    .await;
    assert!(status < 300, "{resp}");
    (tokens, secret)
}

/// Posts a signed `payment.succeeded` webhook carrying [`MARKER`]; returns its event id and
/// the raw body.
async fn post_webhook(
    bridge: &BridgeProcess,
    app: &pushbridge::store::NewApp,
    secret: &str,
) -> (String, String) {
    let body = json!({"type": "payment.succeeded",
                      "data": {"user_id": "u1", "note": format!("{MARKER} paid")}})
    .to_string();
    let mut req = reqwest::Client::new()
        .post(bridge.url(&format!("/v1/webhooks/{}/billing", app.app.id)))
        .header("content-type", "application/json")
        .body(body.clone());
    let headers = sign(
        Scheme::StandardWebhooks,
        secret,
        body.as_bytes(),
        "msg_trace_1",
        now_ms() / 1000,
    )
    .expect("a valid secret");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("webhook");
    assert_eq!(resp.status().as_u16(), 202);
    let answer: Value = resp.json().await.expect("json");
    (answer["event_id"].as_str().expect("id").to_string(), body)
}

/// A direct send to user u1 carrying [`MARKER`]; returns its event id.
async fn send_direct(bridge: &BridgeProcess, app: &pushbridge::store::NewApp) -> String {
    let send = json!({"to": {"user": "u1"},
                      "template": {"title": "Hi", "body": format!("{MARKER} direct")}});
    let post = reqwest::Method::POST;
    let (status, sent) = call(bridge, post, "/v1/notifications", &app.server_key, send).await;
    assert_eq!(status, 202, "{sent}");
    sent["event_id"].as_str().expect("id").to_string()
}

/// Waits until the event's deliveries are all done.
async fn wait_completed(
    bridge: &BridgeProcess,
    app: &pushbridge::store::NewApp,
    event_id: &str,
) -> Value {
    let start = Instant::now();
    loop {
        let path = format!("/v1/events/{event_id}");
        let resp = reqwest::Client::new()
            .get(bridge.url(&path))
            .bearer_auth(&app.server_key)
            .send()
            .await
            .expect("event");
        let event: Value = resp.json().await.expect("json");
        if event["status"] == "completed" {
            return event;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{event}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_trace_runs_from_accept_through_fan_out_to_each_send(db: Db) {
    let sim = simulator().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("traced").await.expect("app");
    let env = bridge_env(&url, &sim);
    let traced = [
        (
            "PUSHBRIDGE_TELEMETRY__OTLP_ENDPOINT",
            receiver.base.as_str(),
        ),
        (
            "PUSHBRIDGE_TELEMETRY__SERVICE_NAME",
            "pushbridge-under-test",
        ),
        ("PUSHBRIDGE_TELEMETRY__BATCH_DELAY_MS", "50"),
    ];

    // Accepted by an instance without a worker, which then stops: the fan-out and the sends
    // happen in another process, after a restart, with only the stored event to go on.
    let no_worker: Vec<(&str, &str)> = traced
        .iter()
        .copied()
        .chain([("PUSHBRIDGE_WORKER__ENABLED", "false")])
        .collect();
    let mut bridge = BridgeProcess::start(dir.path(), &env, &no_worker, None).await;
    let (tokens, secret) = set_up_app(&bridge, &app).await;
    let (event_id, body) = post_webhook(&bridge, &app, &secret).await;
    bridge.terminate();
    let stored = store
        .get_event(&app.app.id, &event_id)
        .await
        .expect("read")
        .expect("event")
        .traceparent
        .expect("a traced event stores its trace context");

    let mut bridge = BridgeProcess::start(dir.path(), &env, &traced, None).await;
    let event = wait_completed(&bridge, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 2, "{event}");
    // A direct send starts a trace of its own, which takes the same path.
    let direct_id = send_direct(&bridge, &app).await;
    wait_completed(&bridge, &app, &direct_id).await;
    // A graceful stop exports what is left.
    bridge.terminate();

    let spans = receiver.spans();
    let (accept, sends) = assert_one_trace(&spans, "webhook.accept", &event_id);
    assert_eq!(accept.service, "pushbridge-under-test");
    assert_eq!(
        accept.attr("http.response.status_code").as_deref(),
        Some("202")
    );
    assert_eq!(
        accept.attr("event_type").as_deref(),
        Some("payment.succeeded")
    );
    assert_eq!(accept.attr("app_id").as_deref(), Some(app.app.id.as_str()));
    assert_eq!(
        stored,
        format!("00-{}-{}-01", accept.trace_id, accept.span_id)
    );
    let mut platforms: Vec<String> = sends.iter().filter_map(|s| s.attr("platform")).collect();
    platforms.sort();
    assert_eq!(platforms, ["apns", "fcm"]);
    for send in &sends {
        assert_eq!(send.attr("outcome").as_deref(), Some("delivered"));
    }
    let (direct, _) = assert_one_trace(&spans, "notification.accept", &direct_id);
    assert_ne!(
        direct.trace_id, accept.trace_id,
        "a direct send has a trace of its own"
    );

    let mut forbidden: Vec<&str> = vec![MARKER, body.as_str()];
    forbidden.extend(tokens.iter().map(String::as_str));
    forbidden.extend(tokens.iter().map(|t| &t[..12]));
    assert_nothing_exported_contains(&receiver, &spans, &forbidden);
    store.close().await;
}

backend_tests!(one_trace_runs_from_accept_through_fan_out_to_each_send);

/// Asserts that `event_id`'s spans are one trace: one `accept_name` span, its one fan-out
/// child, and one send per device (two) under the fan-out. Returns the accept and the sends.
fn assert_one_trace<'s>(
    spans: &'s [ReceivedSpan],
    accept_name: &str,
    event_id: &str,
) -> (&'s ReceivedSpan, Vec<&'s ReceivedSpan>) {
    let named = |name: &str| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.name == name && s.attr("event_id").as_deref() == Some(event_id))
            .collect()
    };
    let accept = named(accept_name);
    assert_eq!(accept.len(), 1, "one {accept_name} span: {spans:#?}");
    let fan_out = named("event.fan_out");
    assert_eq!(fan_out.len(), 1, "one fan-out span: {spans:#?}");
    let (accept, fan_out) = (accept[0], fan_out[0]);
    assert_eq!(
        fan_out.trace_id, accept.trace_id,
        "the fan-out joins the accept's trace"
    );
    assert_eq!(
        fan_out.parent_id, accept.span_id,
        "the fan-out is the accept's child"
    );
    assert_eq!(fan_out.attr("jobs").as_deref(), Some("2"));
    let sends = named("provider.send");
    assert_eq!(sends.len(), 2, "one send span per device: {spans:#?}");
    for send in &sends {
        assert_eq!(send.trace_id, accept.trace_id, "each send joins the trace");
        assert_eq!(
            send.parent_id, fan_out.span_id,
            "each send is the fan-out's child"
        );
    }
    (accept, sends)
}

/// Asserts that none of `forbidden` appears in an attribute, or anywhere else in what was
/// exported.
fn assert_nothing_exported_contains(
    receiver: &Receiver,
    spans: &[ReceivedSpan],
    forbidden: &[&str],
) {
    for span in spans {
        for v in &span.values {
            for f in forbidden {
                assert!(
                    !v.contains(f),
                    "span {} has an attribute with {f}: {v}",
                    span.name
                );
            }
        }
    }
    for export in receiver.bodies() {
        for f in forbidden {
            let found = export.windows(f.len()).any(|w| w == f.as_bytes());
            assert!(!found, "an export request contains {f}");
        }
    }
}

/// With no `telemetry.otlp_endpoint`, nothing is exported and no trace context is stored,
/// even with the standard OTEL_* variables pointing at a collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_off_by_default() {
    let sim = simulator().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = Db::Sqlite.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("untraced").await.expect("app");
    let log_path = dir.path().join("bridge.log");
    let traces_url = format!("{}/v1/traces", receiver.base);
    let standard = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str()),
        ("OTEL_TRACES_EXPORTER", "otlp"),
    ];
    let env = bridge_env(&url, &sim);
    let mut bridge = BridgeProcess::start(dir.path(), &env, &standard, Some(&log_path)).await;
    let (_, secret) = set_up_app(&bridge, &app).await;
    let (event_id, _) = post_webhook(&bridge, &app, &secret).await;
    let event = wait_completed(&bridge, &app, &event_id).await;
    assert_eq!(event["deliveries"]["delivered"], 2, "{event}");
    // Stopping would flush a running exporter: after it, whatever was exported has arrived.
    bridge.terminate();

    assert_eq!(receiver.bodies().len(), 0, "nothing was exported");
    let stored = store
        .get_event(&app.app.id, &event_id)
        .await
        .expect("read")
        .expect("event");
    assert_eq!(stored.traceparent, None, "no trace context is stored");
    let logs = std::fs::read_to_string(&log_path).expect("log file");
    assert!(
        logs.contains("pushbridge listening"),
        "the log was written: {logs}"
    );
    assert!(
        !logs.contains("telemetry"),
        "no exporter was started: {logs}"
    );
    store.close().await;
}
