//! Operator figures after a scripted run: exact Prometheus counters and correct stats windows.

mod common;

use common::{simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::signature::sign;
use pushbridge::simulator::tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, ApnsTestKind, FcmTestKind,
};
use pushbridge::store::{now_ms, Scheme};
use reqwest::Method;
use serde_json::{json, Value};

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
                Some(json!({"platform": platform, "user_id": "u1"})),
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
        ) {
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
    let fcm_open =
        sample(&text, "pushbridge_pool_connections_open{pool=\"fcm\"}").expect("fcm pool gauge");
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
