//! Retention: the sweeper deletes exactly what is past its age (never anything queued,
//! scheduled or dead within its window), runs on its schedule of the bridge's clock, counts
//! what it swept, and under steady load keeps the database from growing.

use crate::harness::schedule::{at, completed, dispatched, send, shift};
use crate::harness::{simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::config::Config;
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::worker::retention::{sweep, RetentionConfig};
use reqwest::Method;
use serde_json::json;

const DAY: i64 = 86_400;

/// The sweeper task only sweeps at start, so a test's own sweeps are the only others.
fn sweep_only_at_start(c: &mut Config) {
    c.retention.interval_secs = 1000 * DAY as u64;
}

async fn register(t: &TestApp, key: &str, token: &str, user: &str) {
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(key),
            Some(json!({"platform": "apns", "user_id": user})),
        )
        .await;
    // 200 when the device was registered before.
    assert!(status == 201 || status == 200, "{status} {body}");
}

/// The statuses of an event's jobs, or `None` once the event is gone.
async fn jobs_of(t: &TestApp, key: &str, event: &str) -> Option<Vec<String>> {
    let (status, e) = t
        .call(Method::GET, &format!("/v1/events/{event}"), Some(key), None)
        .await;
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{e}");
    let (status, list) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let rows = list["deliveries"].as_array().cloned().unwrap_or_default();
    Some(
        rows.iter()
            .map(|r| r["status"].as_str().unwrap_or("?").to_string())
            .collect(),
    )
}

async fn device_status(t: &TestApp, key: &str, token: &str) -> u16 {
    let (status, _) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{token}"),
            Some(key),
            None,
        )
        .await;
    status
}

async fn sweep_now(t: &TestApp) {
    let (_keep, stop) = tokio::sync::watch::channel(false);
    sweep(t.store(), &RetentionConfig::default(), &stop)
        .await
        .expect("sweep");
}

async fn retention_removes_exactly_what_is_past_its_age(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, sweep_only_at_start).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let fine = apns_test_token(ApnsTestKind::Success, 41);
    let gone = apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 42);
    register(&t, key, &fine, "u-fine").await;
    register(&t, key, &gone, "u-gone").await;
    let broken = json!({"body": "{{ event.amount }} arrived"});
    let (status, _) = t
        .call(Method::PUT, "/v1/templates/broken", Some(key), Some(broken))
        .await;
    assert_eq!(status, 201);

    // Day 0: a delivery, a dead letter, a pruned device, and a send scheduled for day 40.
    let old = send(
        &t,
        key,
        json!({"to": {"user": "u-fine"}, "template": {"body": "old"}}),
    )
    .await;
    let dead = send(
        &t,
        key,
        json!({"to": {"user": "u-fine"}, "template": "broken"}),
    )
    .await;
    let pruned = send(
        &t,
        key,
        json!({"to": {"user": "u-gone"}, "template": {"body": "x"}}),
    )
    .await;
    let later = json!({"to": {"user": "u-fine"}, "template": {"body": "later"},
                       "send_at": at(&t, 40 * DAY)});
    let scheduled = send(&t, key, later).await;
    for event in [&old, &dead, &pruned] {
        completed(&t, key, event).await;
    }
    dispatched(&t, key, &scheduled).await;
    assert_eq!(
        jobs_of(&t, key, &dead).await,
        Some(vec!["dead".to_string()])
    );
    assert_eq!(
        jobs_of(&t, key, &pruned).await,
        Some(vec!["invalid".to_string()])
    );

    // Day 8: finished jobs are past their 7 days; nothing else is.
    shift(&t, &sim, 8 * DAY);
    let new = send(
        &t,
        key,
        json!({"to": {"user": "u-fine"}, "template": {"body": "new"}}),
    )
    .await;
    completed(&t, key, &new).await;
    sweep_now(&t).await;
    assert_eq!(
        jobs_of(&t, key, &old).await,
        Some(vec![]),
        "delivered job swept"
    );
    assert_eq!(
        jobs_of(&t, key, &pruned).await,
        Some(vec![]),
        "invalid job swept"
    );
    assert_eq!(
        jobs_of(&t, key, &dead).await,
        Some(vec!["dead".to_string()])
    );
    assert_eq!(
        jobs_of(&t, key, &new).await,
        Some(vec!["delivered".to_string()])
    );
    assert_eq!(
        jobs_of(&t, key, &scheduled).await,
        Some(vec!["queued".to_string()])
    );
    assert_eq!(
        device_status(&t, key, &gone).await,
        200,
        "pruned device kept"
    );

    // Day 31: dead letters, completed events and pruned devices are past their 30 days.
    shift(&t, &sim, 23 * DAY);
    sweep_now(&t).await;
    for event in [&old, &dead, &pruned] {
        assert_eq!(jobs_of(&t, key, event).await, None, "event {event} swept");
    }
    assert_eq!(
        jobs_of(&t, key, &new).await,
        Some(vec![]),
        "its event is 23 days old"
    );
    assert_eq!(
        jobs_of(&t, key, &scheduled).await,
        Some(vec!["queued".to_string()])
    );
    assert_eq!(
        device_status(&t, key, &gone).await,
        404,
        "pruned device swept"
    );
    assert_eq!(
        device_status(&t, key, &fine).await,
        200,
        "active device kept"
    );
    t.shutdown().await;
}

/// The `pushbridge_retention_swept_total` series of `kind`, or 0.
async fn swept_metric(t: &TestApp, kind: &str) -> f64 {
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
    let series = format!("pushbridge_retention_swept_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0.0)
}

async fn the_sweeper_runs_on_the_clock_and_counts_what_it_swept(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |c| c.retention.interval_secs = 3600).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    register(&t, key, &apns_test_token(ApnsTestKind::Success, 43), "u").await;
    let event = send(
        &t,
        key,
        json!({"to": {"user": "u"}, "template": {"body": "hi"}}),
    )
    .await;
    completed(&t, key, &event).await;
    assert_eq!(swept_metric(&t, "delivered_jobs").await, 0.0);
    // A week and a day later the task's next run is due; it notices within a second.
    shift(&t, &sim, 8 * DAY);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while swept_metric(&t, "delivered_jobs").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no sweep on the shifted clock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(swept_metric(&t, "delivered_jobs").await, 1.0);
    assert_eq!(jobs_of(&t, key, &event).await, Some(vec![]));
    t.shutdown().await;
}

backend_tests!(
    retention_removes_exactly_what_is_past_its_age,
    the_sweeper_runs_on_the_clock_and_counts_what_it_swept,
);

/// Rows in the tables retention bounds.
async fn row_counts(pool: &sqlx::AnyPool) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in [
        "delivery_jobs",
        "delivery_attempts",
        "events",
        "devices",
        "pruned_tokens",
    ] {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .expect("count");
        counts.push((table, n));
    }
    counts
}

/// One step of the steady load: 10 sends to the user's 25 devices, a fifth of them new
/// tokens the provider calls gone (so devices are pruned and the pruned-token log grows).
async fn load_step(t: &TestApp, key: &str, step: u64) {
    for d in 0..25u64 {
        let token = if d % 5 == 0 {
            apns_test_token(
                ApnsTestKind::Unregistered { timestamp_ms: None },
                step * 100 + d,
            )
        } else {
            apns_test_token(ApnsTestKind::Success, d)
        };
        register(t, key, &token, "u").await;
    }
    let mut events = Vec::new();
    for i in 0..10 {
        let body = json!({"to": {"user": "u"}, "template": {"body": format!("{step}/{i}")}});
        events.push(send(t, key, body).await);
    }
    for event in &events {
        completed(t, key, event).await;
    }
}

/// Steady load over 16 retention periods of one day on a shifted clock, a load step every
/// 6 hours followed by a sweep. Once the first rows have aged out, row counts stay at about
/// four steps' worth and the file stops growing.
#[tokio::test]
async fn under_steady_load_rows_and_file_size_level_off() {
    if std::env::var("PUSHBRIDGE_LONG_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set PUSHBRIDGE_LONG_TESTS=1 to run the retention soak test");
        return;
    }
    let sim = simulator().await;
    let t = TestApp::with_simulator(Db::Sqlite, &sim, sweep_only_at_start).await;
    let one_day = RetentionConfig {
        delivered_jobs_days: 1,
        dead_letters_days: 1,
        events_days: 1,
        sent_callbacks_days: 1,
        pruned_devices_days: 1,
        ..RetentionConfig::default()
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(t.db_url()).await.expect("connect");
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let mut daily = Vec::new();
    for step in 0..64u64 {
        load_step(&t, key, step).await;
        shift(&t, &sim, DAY / 4);
        let (_keep, stop) = tokio::sync::watch::channel(false);
        sweep(t.store(), &one_day, &stop).await.expect("sweep");
        if step % 4 == 3 {
            let counts = row_counts(&pool).await;
            let bytes = t.store().file_bytes().await.expect("size");
            eprintln!("day {}: {counts:?}, {bytes} bytes", step / 4);
            daily.push((counts, bytes));
        }
    }
    // From the second day on, every step removes what the step a day before added. What is
    // kept varies a little with the share of tokens pruned by each step, so the check is for
    // a trend: the last third of the run holds no more than the middle third, on average.
    assert!(daily[1].0.iter().all(|(_, n)| *n > 0), "{:?}", daily[1]);
    let mean = |days: &[(Vec<(&str, i64)>, u64)], i: Option<usize>| {
        let sum: u64 = days
            .iter()
            .map(|(c, b)| i.map_or(*b, |i| c[i].1 as u64))
            .sum();
        sum as f64 / days.len() as f64
    };
    let (middle, last) = (&daily[5..11], &daily[11..]);
    for (i, (table, _)) in daily[0].0.iter().enumerate() {
        let (before, after) = (mean(middle, Some(i)), mean(last, Some(i)));
        assert!(after <= before * 1.1, "{table} grew: {after} > {before}");
    }
    let (before, after) = (mean(middle, None), mean(last, None));
    assert!(
        after <= before * 1.05,
        "file grew: {after} > {before} bytes"
    );
    assert!(
        t.store().reclaims_space().await.expect("mode"),
        "incremental auto-vacuum"
    );
    assert_eq!(
        t.store().free_pages().await.expect("free"),
        0,
        "freed pages given back"
    );
    t.shutdown().await;
}
