//! Operator figures after a scripted run: exact Prometheus counters and correct stats windows.

use crate::harness::{proven, simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::clock::now_ms;
use pushbridge::signature::sign;
use pushbridge::signature::Scheme;
use pushbridge::simulator::tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, ApnsTestKind, FcmTestKind,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;

/// The value of one sample line `name{labels} value` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics_and_stats_reflect_a_scripted_run(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let devices = [
        ("apns", apns_test_token(ApnsTestKind::Success, 1)),
        (
            "apns",
            apns_test_token_failing_first(ApnsTestKind::ServiceUnavailable, 1, 2),
        ),
        ("fcm", fcm_test_token(FcmTestKind::Success, 3)),
        ("fcm", fcm_test_token(FcmTestKind::Unregistered, 4)),
    ];
    for (platform, token) in &devices {
        let (status, _) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&app.client_key),
                Some(proven(&app, json!({"platform": platform, "user_id": "u1"}))),
            )
            .await;
        assert_eq!(status, 201);
    }
    t.call(Method::PUT, "/v1/rules/all", Some(&app.server_key), Some(json!({
        "event": "order.*", "audience": {"users": ["u1"]}, "template": {"body": "order {{ event.n }}"}
    })))
    .await;
    let (_, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": "shop", "scheme": "github"})),
        )
        .await;
    let secret = source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let post = |n: u32, id: String, secret: String| {
        let body = json!({"type": "order.paid", "n": n}).to_string();
        let mut req = t
            .client
            .post(t.url(&format!("/v1/webhooks/{}/shop", app.app.id)))
            .header("x-github-event", "order.paid")
            .body(body.clone());
        for (k, v) in sign(
            Scheme::Github,
            &secret,
            body.as_bytes(),
            &id,
            now_ms() / 1000,
        )
        .expect("a valid secret")
        {
            req = req.header(k, v);
        }
        req.send()
    };
    // Three events, one after the other: 4 + 3 + 3 jobs (the unregistered device is pruned by
    // the first), one retry (the 503-once token), one duplicate and two forgeries.
    for n in 1..=3u32 {
        let resp = post(n, format!("d-{n}"), secret.clone())
            .await
            .expect("post");
        assert_eq!(resp.status(), 202);
        let event_id = resp.json::<Value>().await.expect("json")["event_id"]
            .as_str()
            .expect("id")
            .to_string();
        t.wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    }
    assert_eq!(
        post(1, "d-1".into(), secret.clone())
            .await
            .expect("dup")
            .status(),
        200
    );
    for n in 0..2 {
        let forged = post(9, format!("f-{n}"), "wrong-secret-wrong-secret".into())
            .await
            .expect("forged");
        assert_eq!(forged.status(), 401);
    }

    let text = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let source = format!("{}/shop", app.app.id);
    let expect = [
        (format!("pushbridge_webhooks_total{{source=\"{source}\",outcome=\"accepted\",reason=\"\"}}"), 3.0),
        (format!("pushbridge_webhooks_total{{source=\"{source}\",outcome=\"duplicate\",reason=\"\"}}"), 1.0),
        (format!("pushbridge_webhooks_total{{source=\"{source}\",outcome=\"rejected\",reason=\"bad_signature\"}}"), 2.0),
        ("pushbridge_jobs_created_total{status=\"queued\"}".to_string(), 10.0),
        ("pushbridge_deliveries_total{provider=\"apns\",outcome=\"delivered\",reason=\"\"}".to_string(), 6.0),
        ("pushbridge_deliveries_total{provider=\"apns\",outcome=\"retry\",reason=\"ServiceUnavailable\"}".to_string(), 1.0),
        ("pushbridge_deliveries_total{provider=\"fcm\",outcome=\"delivered\",reason=\"\"}".to_string(), 3.0),
        ("pushbridge_deliveries_total{provider=\"fcm\",outcome=\"invalid_token\",reason=\"UNREGISTERED\"}".to_string(), 1.0),
        ("pushbridge_retries_total".to_string(), 1.0),
        ("pushbridge_pruned_tokens_total".to_string(), 1.0),
        ("pushbridge_dead_letters_total".to_string(), 0.0),
        ("pushbridge_queue_jobs{status=\"queued\"}".to_string(), 0.0),
        ("pushbridge_queue_jobs{status=\"in_flight\"}".to_string(), 0.0),
        ("pushbridge_event_to_delivery_seconds_count".to_string(), 9.0),
        ("pushbridge_provider_round_trip_seconds_count{provider=\"apns\"}".to_string(), 7.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&text, &series), Some(want), "{series}\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("pushbridge_http_request_duration_seconds_count{method=\"PUT\",route=\"/v1/devices/{token}\",status=\"201\"} 4")),
        "HTTP durations are labelled by route, never by raw path:\n{text}"
    );
    assert!(!text.contains(&devices[0].1), "no token in metrics");
    let fcm_open = sample(
        &text,
        "pushbridge_pool_connections_open{pool=\"fcm\",app=\"default\"}",
    )
    .expect("fcm pool gauge");
    assert!(
        (1.0..=2.0).contains(&fcm_open),
        "FCM pool holds its connections: {fcm_open}"
    );

    // Stats: every window holds the run now; shifted 10 minutes ahead only the 1 h and 24 h
    // windows do; shifted 2 hours ahead only the 24 h window does.
    let (_, stats) = t
        .call(Method::GET, "/v1/stats", Some(&app.server_key), None)
        .await;
    for w in ["5m", "1h", "24h"] {
        let s = &stats["windows"][w];
        assert_eq!(s["finished"], 10, "{w}: {stats}");
        assert_eq!(s["delivered"], 9);
        assert_eq!(s["invalid"], 1);
        assert_eq!(s["attempts"], 11);
        assert_eq!(s["pruned_tokens"], 1);
        assert!((s["success_rate"].as_f64().expect("rate") - 0.9).abs() < 1e-9);
    }
    let failures = &stats["windows"]["24h"]["failures"];
    assert_eq!(failures.as_array().map(Vec::len), Some(2), "{failures}");
    let store = t.store();
    let now = now_ms();
    let ahead = |mins: i64| now + mins * 60_000;
    let in_window = |s: &pushbridge::store::WindowStats| s.finished;
    assert_eq!(
        in_window(
            &store
                .window_stats(Some(&app.app.id), ahead(10), 300)
                .await
                .expect("5m")
        ),
        0
    );
    assert_eq!(
        in_window(
            &store
                .window_stats(Some(&app.app.id), ahead(10), 3600)
                .await
                .expect("1h")
        ),
        10
    );
    assert_eq!(
        in_window(
            &store
                .window_stats(Some(&app.app.id), ahead(120), 3600)
                .await
                .expect("1h")
        ),
        0
    );
    assert_eq!(
        in_window(
            &store
                .window_stats(Some(&app.app.id), ahead(120), 86_400)
                .await
                .expect("24h")
        ),
        10
    );
    assert_eq!(
        in_window(
            &store
                .window_stats(Some(&app.app.id), ahead(25 * 60), 86_400)
                .await
                .expect("24h")
        ),
        0
    );
    // Another app's key sees only its own (empty) figures.
    let other = t.new_app().await;
    let (_, theirs) = t
        .call(Method::GET, "/v1/stats", Some(&other.server_key), None)
        .await;
    assert_eq!(theirs["windows"]["24h"]["finished"], 0);
    let (status, _) = t
        .call(
            Method::GET,
            &format!("/v1/stats?app_id={}", app.app.id),
            Some(&other.server_key),
            None,
        )
        .await;
    assert_eq!(status, 404, "an app key cannot read another app's stats");
    let (status, all) = t
        .call(Method::GET, "/v1/stats", Some(OPERATOR_KEY), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        all["windows"]["24h"]["finished"], 10,
        "the operator sees all apps"
    );
}

backend_tests!(metrics_and_stats_reflect_a_scripted_run);

/// Which text exposition a scrape is checked against.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    OpenMetrics,
    Classic,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{name="value",...}` at the start of `s`, strictly: only the escapes `\\`, `\"` and
/// `\n` inside values. Returns the labels and the rest of the line.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((Vec::new(), s));
    };
    let mut labels = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("invalid escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after a label, got {rest:?}"));
        }
    }
}

/// A strict reader of the two Prometheus text formats: every line must be a well-formed
/// comment or sample, every sample must belong to the family declared before it (with the
/// suffixes its type allows), no series may repeat, and an OpenMetrics exposition must end
/// with `# EOF`. Returns the series (name and labels) it read.
fn parse_exposition(text: &str, format: Format) -> Result<Vec<String>, String> {
    let mut families: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut series = Vec::new();
    let mut seen = HashSet::new();
    let mut saw_eof = false;
    for line in text.lines() {
        let fail = |why: String| format!("{why} in line {line:?}");
        if saw_eof {
            return Err(fail("content after # EOF".into()));
        }
        if line == "# EOF" {
            if format == Format::Classic {
                return Err(fail("# EOF in the classic format".into()));
            }
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_metric_name(name) {
                return Err(fail(format!("bad family name {name:?}")));
            }
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                    ]
                    .contains(&ty)
                    {
                        return Err(fail(format!("unknown type {ty:?}")));
                    }
                    if format == Format::Classic && ty == "counter" && !name.ends_with("_total") {
                        return Err(fail("a classic counter family is named with _total".into()));
                    }
                    if !families.insert(name.to_string()) {
                        return Err(fail("family declared twice".into()));
                    }
                    current = Some((name.to_string(), ty.to_string()));
                }
                _ => return Err(fail(format!("unknown comment {kind:?}"))),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("sample without value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(fail(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(fail)?;
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?;
        let value = value.split(' ').next().unwrap_or("");
        if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
            return Err(fail(format!("bad value {value:?}")));
        }
        let (family, ty) = current
            .as_ref()
            .ok_or_else(|| fail("sample before any TYPE".into()))?;
        let suffixes: &[&str] = match (ty.as_str(), format) {
            ("counter", Format::OpenMetrics) => &["_total", "_created"],
            ("histogram", _) => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| format!("{family}{s}") == name) {
            return Err(fail(format!("sample outside its family {family}")));
        }
        let key = format!("{name}{labels:?}");
        if !seen.insert(key.clone()) {
            return Err(fail("series repeated".into()));
        }
        series.push(key);
    }
    if format == Format::OpenMetrics && !saw_eof {
        return Err("no # EOF at the end".into());
    }
    Ok(series)
}

async fn scrape(t: &TestApp, accept: Option<&str>) -> (String, String) {
    let mut req = t.client.get(t.url("/metrics")).bearer_auth(OPERATOR_KEY);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, resp.text().await.expect("text"))
}

/// A path segment a stranger might post: quotes, backslashes, braces, newlines, NULs,
/// spaces, non-ASCII and very long names, percent-encoded.
fn hostile_segment(rng: &mut u64) -> String {
    const PIECES: &[&str] = &[
        "%22",
        "%5C",
        "%7B",
        "%7D",
        "%0A",
        "%0D",
        "%00",
        "%20",
        "%2C",
        "=",
        "INJECTED",
        "x",
        "%C3%A9",
        "%E2%80%AE",
        "reason%3D%22x%22%7D%20999999%0Apushbridge_deliveries_total",
    ];
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let len = 1 + next() % 12;
    let mut segment: String = (0..len)
        .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
        .collect();
    if next() % 10 == 0 {
        segment.push_str(&"A".repeat(2000));
    }
    segment
}

async fn hostile_webhook_paths_cannot_add_series_or_break_the_scrape(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let post = |path: String| {
        let req = t.client.post(t.url(&path)).body("{}");
        async move { req.send().await.expect("post").status().as_u16() }
    };
    // One unknown source and one scrape first, so the series that every rejection and every
    // scrape share exist already.
    assert_eq!(post(format!("/v1/webhooks/{}/nope", app.app.id)).await, 404);
    let brew = |name: String, path: String| {
        let method = Method::from_bytes(name.as_bytes()).expect("method");
        let req = t.client.request(method, t.url(&path));
        async move { req.send().await.expect("request").status().as_u16() }
    };
    let webhook_path = format!("/v1/webhooks/{}/nope", app.app.id);
    assert!(brew("BREW".into(), webhook_path.clone()).await >= 400);
    // A NUL is refused before any lookup, alike on every backend.
    assert_eq!(
        post(format!("/v1/webhooks/{}/a%00b", app.app.id)).await,
        400
    );
    scrape(&t, None).await;
    let (_, before) = scrape(&t, None).await;
    let series_before = parse_exposition(&before, Format::OpenMetrics).expect("strict parse");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut unknown = 1;
    for i in 0..1000 {
        let source = hostile_segment(&mut rng);
        let path = if i % 2 == 0 {
            format!("/v1/webhooks/{}/{source}", app.app.id)
        } else {
            format!("/v1/webhooks/{}/{source}", hostile_segment(&mut rng))
        };
        let expected = if path.contains("%00") { 400 } else { 404 };
        unknown += u32::from(expected == 404);
        let status = post(path).await;
        assert_eq!(status, expected, "a hostile path is an unknown source");
        if i % 10 == 0 {
            // Invented methods are not labels either.
            assert!(brew(format!("X{i}INJECTED"), webhook_path.clone()).await >= 400);
        }
    }
    for (format, accept) in [
        (Format::OpenMetrics, None),
        (Format::Classic, Some("text/plain;version=0.0.4")),
    ] {
        let (_, text) = scrape(&t, accept).await;
        let series = parse_exposition(&text, format)
            .unwrap_or_else(|e| panic!("the scrape must stay parsable: {e}"));
        if format == Format::OpenMetrics {
            assert_eq!(series, series_before, "no series was added");
        }
        assert!(!text.contains("INJECTED"), "{text}");
    }
    let (_, after) = scrape(&t, None).await;
    assert_eq!(
        sample(
            &after,
            "pushbridge_webhooks_total{source=\"unknown\",outcome=\"rejected\",reason=\"unknown_source\"}"
        ),
        Some(f64::from(unknown))
    );
    assert!(
        unknown > 500,
        "most hostile paths reach the handler: {unknown}"
    );
}

/// Label values from outside are escaped: a provider reason holding quotes, a backslash and a
/// newline stays inside its label in both formats.
#[test]
fn free_text_label_values_are_escaped() {
    let metrics = pushbridge::metrics::Metrics::new();
    metrics.delivery(
        pushbridge::model::Platform::Apns,
        &pushbridge::push::Outcome::Failed {
            reason: "Bad\"Reason\\\n} 1\nfake_total 999".into(),
        },
        std::time::Duration::from_millis(1),
    );
    for format in [
        pushbridge::metrics::ExpositionFormat::OpenMetrics,
        pushbridge::metrics::ExpositionFormat::Classic,
    ] {
        let text = metrics.encode(format);
        let strict = match format {
            pushbridge::metrics::ExpositionFormat::OpenMetrics => Format::OpenMetrics,
            pushbridge::metrics::ExpositionFormat::Classic => Format::Classic,
        };
        parse_exposition(&text, strict).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            text.contains(r#"reason="Bad\"Reason\\\n} 1\nfake_total 999""#),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("fake_total")), "{text}");
    }
}

async fn scrapers_asking_for_the_classic_format_get_it(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let _ = t
        .call(Method::GET, "/v1/devices/xyz", Some(&app.server_key), None)
        .await;
    // A first scrape, so that every later one holds the series of `/metrics` itself.
    scrape(&t, None).await;
    let (open_type, open) = scrape(&t, None).await;
    assert!(
        open_type.starts_with("application/openmetrics-text"),
        "{open_type}"
    );
    parse_exposition(&open, Format::OpenMetrics).expect("OpenMetrics");
    // What Prometheus itself sends, preferring OpenMetrics.
    let (prom_type, _) = scrape(
        &t,
        Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert!(
        prom_type.starts_with("application/openmetrics-text"),
        "{prom_type}"
    );
    let (classic_type, classic) = scrape(&t, Some("text/plain;version=0.0.4")).await;
    assert_eq!(classic_type, "text/plain; version=0.0.4; charset=utf-8");
    parse_exposition(&classic, Format::Classic).expect("classic");
    assert!(
        classic.contains("# TYPE pushbridge_webhooks_total counter"),
        "{classic}"
    );
    assert!(!classic.contains("# EOF"));
    // The same series in both formats.
    let count = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(count(&open), count(&classic));
}

backend_tests!(
    hostile_webhook_paths_cannot_add_series_or_break_the_scrape,
    scrapers_asking_for_the_classic_format_get_it
);
