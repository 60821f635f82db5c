//! The delivery policy's figures for operators: scheduled and held jobs in the queue of
//! `/v1/stats` and `/metrics`, and jobs a policy ended unsent (expired, cancelled) in the
//! stats windows without lowering the success rate. On a shifted clock (the bridge's and the
//! simulator's together), never sleeping for the scheduled time.

use crate::harness::schedule::{
    self, apns_devices, at, completed, dispatched, shift, utc_clock_time,
};
use crate::harness::{simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::simulator::SimulatorHandle;
use reqwest::Method;
use serde_json::{json, Value};

/// The value of one sample line `series value` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The bridge wired to `sim` on a fresh database.
async fn bridge(db: Db, sim: &SimulatorHandle) -> TestApp {
    TestApp::with_simulator(db, sim, |_| {}).await
}

/// Sends `body` and waits until its jobs are written; returns the event id.
async fn send(t: &TestApp, key: &str, body: Value) -> String {
    let id = schedule::send(t, key, body).await;
    dispatched(t, key, &id).await;
    id
}

/// Registers APNs devices (seeded `seeds`) for `user`.
async fn devices(t: &TestApp, key: &str, user: &str, seeds: std::ops::Range<u64>) {
    apns_devices(t, key, user, seeds).await;
}

async fn stats(t: &TestApp, key: &str) -> Value {
    let (status, body) = t.call(Method::GET, "/v1/stats", Some(key), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn metrics(t: &TestApp) -> String {
    let resp = t
        .client
        .get(t.url("/metrics"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("text")
}

/// `pushbridge_queue_jobs{status="<status>"}` of a scrape.
fn queue_gauge(text: &str, status: &str) -> Option<f64> {
    sample(
        text,
        &format!("pushbridge_queue_jobs{{status=\"{status}\"}}"),
    )
}

/// Asserts that each stats window holds the `want` counts and a success rate of 1.0.
fn every_window_holds(stats: &Value, want: [(&str, i64); 8]) {
    for w in ["5m", "1h", "24h"] {
        let figures = &stats["windows"][w];
        for (field, n) in want {
            assert_eq!(figures[field], n, "{w} {field}: {figures}");
        }
        assert_eq!(
            figures["success_rate"].as_f64(),
            Some(1.0),
            "{w}: what a policy withheld was never tried: {figures}"
        );
    }
}

async fn scheduled_and_held_jobs_show_in_the_queue_figures(db: Db) {
    let sim = simulator().await;
    let t = bridge(db, &sim).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    devices(&t, &key, "u1", 1..5).await;
    let id = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "in an hour"}, "send_at": at(&t, 3600)}),
    )
    .await;

    let queue = &stats(&t, &key).await["queue"];
    assert_eq!(
        (&queue["queued"], &queue["scheduled"], &queue["held"]),
        (&json!(4), &json!(4), &json!(0)),
        "{queue}"
    );
    assert_eq!(queue["oldest_due_age_secs"], 0.0, "nothing is due: {queue}");
    let text = metrics(&t).await;
    assert_eq!(queue_gauge(&text, "queued"), Some(4.0), "{text}");
    assert_eq!(queue_gauge(&text, "scheduled"), Some(4.0), "{text}");
    assert_eq!(queue_gauge(&text, "held"), Some(0.0), "{text}");

    // A user in quiet hours (from an hour ago to an hour from now, UTC): held.
    let quiet =
        json!({"quiet_hours": {"start": utc_clock_time(&t, -60), "end": utc_clock_time(&t, 60)}});
    let (status, _) = t
        .call(
            Method::PUT,
            "/v1/users/u2/preferences",
            Some(&key),
            Some(quiet),
        )
        .await;
    assert_eq!(status, 200);
    devices(&t, &key, "u2", 5..6).await;
    let held = send(
        &t,
        &key,
        json!({"to": {"user": "u2"}, "template": {"body": "morning"}}),
    )
    .await;
    t.wait_for(&format!("/v1/events/{held}"), &key, |e| {
        e["status"] != "received"
    })
    .await;
    let queue = &stats(&t, &key).await["queue"];
    assert_eq!(
        (&queue["queued"], &queue["scheduled"], &queue["held"]),
        (&json!(5), &json!(4), &json!(1)),
        "{queue}"
    );
    let (_, all) = t
        .call(Method::GET, "/v1/stats", Some(OPERATOR_KEY), None)
        .await;
    assert_eq!(
        all["queue"]["held"], 1,
        "the operator sees every app: {all}"
    );
    let text = metrics(&t).await;
    assert_eq!(queue_gauge(&text, "scheduled"), Some(4.0), "{text}");
    assert_eq!(queue_gauge(&text, "held"), Some(1.0), "{text}");

    // Once their time has come they are neither: they are due, then delivered.
    shift(&t, &sim, 3601);
    let done = completed(&t, &key, &id).await;
    assert_eq!(done["deliveries"]["delivered"], 4, "{done}");
    let done = completed(&t, &key, &held).await;
    assert_eq!(done["deliveries"]["delivered"], 1, "{done}");
    let s = stats(&t, &key).await;
    let queue = &s["queue"];
    assert_eq!(
        (&queue["queued"], &queue["scheduled"], &queue["held"]),
        (&json!(0), &json!(0), &json!(0)),
        "{queue}"
    );
    assert_eq!(s["windows"]["5m"]["delivered"], 5, "{s}");
    let text = metrics(&t).await;
    assert_eq!(queue_gauge(&text, "scheduled"), Some(0.0), "{text}");
    assert_eq!(queue_gauge(&text, "held"), Some(0.0), "{text}");
    t.shutdown().await;
}

async fn expired_and_cancelled_jobs_finish_without_lowering_the_success_rate(db: Db) {
    let sim = simulator().await;
    let t = bridge(db, &sim).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    devices(&t, &key, "stale", 10..12).await;
    devices(&t, &key, "sent", 20..22).await;
    devices(&t, &key, "called-off", 30..33).await;
    // Due in ten minutes, expiring a minute before that.
    let stale = send(
        &t,
        &key,
        json!({"to": {"user": "stale"}, "template": {"body": "stale"},
               "send_at": at(&t, 600), "expires_at": at(&t, 540)}),
    )
    .await;
    shift(&t, &sim, 601);
    let done = completed(&t, &key, &stale).await;
    assert_eq!(done["deliveries"]["expired"], 2, "{done}");
    // After the shift, so that every window holds all three events.
    let sent = send(
        &t,
        &key,
        json!({"to": {"user": "sent"}, "template": {"body": "now"}}),
    )
    .await;
    let done = completed(&t, &key, &sent).await;
    assert_eq!(done["deliveries"]["delivered"], 2, "{done}");
    let called_off = send(
        &t,
        &key,
        json!({"to": {"user": "called-off"}, "template": {"body": "sale"},
               "send_at": at(&t, 3600)}),
    )
    .await;
    t.wait_for(&format!("/v1/events/{called_off}"), &key, |e| {
        e["status"] != "received"
    })
    .await;
    let (status, answer) = t
        .call(
            Method::POST,
            &format!("/v1/events/{called_off}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, &answer["cancelled_now"]),
        (200, &json!(3)),
        "{answer}"
    );

    let s = stats(&t, &key).await;
    every_window_holds(
        &s,
        [
            ("finished", 7),
            ("delivered", 2),
            ("dead", 0),
            ("invalid", 0),
            ("capped", 0),
            ("superseded", 0),
            ("expired", 2),
            ("cancelled", 3),
        ],
    );
    let queue = &s["queue"];
    assert_eq!(
        (&queue["queued"], &queue["scheduled"]),
        (&json!(0), &json!(0))
    );
    // The withheld counter counts each status (every series exists, at 0 when none).
    let text = metrics(&t).await;
    for (status, n) in [
        ("expired", 2.0),
        ("cancelled", 3.0),
        ("capped", 0.0),
        ("superseded", 0.0),
    ] {
        let series = format!("pushbridge_jobs_withheld_total{{status=\"{status}\"}}");
        assert_eq!(sample(&text, &series), Some(n), "{series}\n{text}");
    }
    t.shutdown().await;
}

backend_tests!(
    scheduled_and_held_jobs_show_in_the_queue_figures,
    expired_and_cancelled_jobs_finish_without_lowering_the_success_rate,
);
