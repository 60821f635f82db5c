//! The stats read per-minute figures written as results are recorded: the windows and the
//! per-minute series reach back 24 hours on a shifted clock, and figures recorded before the
//! upgrade that introduced them are still in the windows after it.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::schedule::{completed, register_apns, send, shift};
use crate::harness::{fast_worker_on, simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};

async fn stats(t: &TestApp, key: &str) -> Value {
    let (status, body) = t.call(Method::GET, "/v1/stats", Some(key), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Registers `tokens` for `user`.
async fn register(t: &TestApp, key: &str, user: &str, tokens: &[String]) {
    for token in tokens {
        register_apns(t, key, user, token).await;
    }
}

/// Sends to `user` and waits until every delivery is final.
async fn deliver_to(t: &TestApp, key: &str, user: &str) {
    let id = send(
        t,
        key,
        json!({"to": {"user": user}, "template": {"body": "hi"}}),
    )
    .await;
    completed(t, key, &id).await;
}

/// (delivered, invalid, attempts, pruned) of a window.
fn figures(stats: &Value, window: &str) -> (i64, i64, i64, i64) {
    let w = &stats["windows"][window];
    let n = |k: &str| w[k].as_i64().unwrap_or_else(|| panic!("{k} in {w}"));
    (
        n("delivered"),
        n("invalid"),
        n("attempts"),
        n("pruned_tokens"),
    )
}

fn series_times(stats: &Value) -> Vec<i64> {
    stats["throughput_per_minute"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| {
            let at: jiff::Timestamp = p["at"].as_str().expect("at").parse().expect("rfc 3339");
            at.as_millisecond()
        })
        .collect()
}

async fn the_windows_and_the_series_reach_back_24_hours(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.as_str();
    let first = [
        apns_test_token(ApnsTestKind::Success, 1),
        apns_test_token(ApnsTestKind::Success, 2),
        apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 3),
    ];
    register(&t, key, "early", &first).await;
    register(
        &t,
        key,
        "late",
        &[apns_test_token(ApnsTestKind::Success, 4)],
    )
    .await;
    deliver_to(&t, key, "early").await;
    let s = stats(&t, key).await;
    for w in ["5m", "1h", "24h"] {
        assert_eq!(figures(&s, w), (2, 1, 3, 1), "{w}: {s}");
    }
    let p95 = s["windows"]["5m"]["p95_latency_ms"].as_i64().expect("p95");
    assert!(p95 >= 1, "a delivered round trip has a p95: {s}");
    assert_eq!(series_times(&s).len(), 1, "{s}");

    shift(&t, &sim, 3 * 3600);
    deliver_to(&t, key, "late").await;
    let s = stats(&t, key).await;
    assert_eq!(figures(&s, "5m"), (1, 0, 1, 0), "{s}");
    assert_eq!(figures(&s, "1h"), (1, 0, 1, 0), "{s}");
    assert_eq!(figures(&s, "24h"), (3, 1, 4, 1), "{s}");
    let times = series_times(&s);
    assert_eq!(times.len(), 2, "one point per minute with attempts: {s}");
    let apart = times[1] - times[0];
    assert!(
        ((3 * 3600 - 60) * 1000..=(3 * 3600 + 60) * 1000).contains(&apart),
        "the series holds both minutes, three hours apart: {s}"
    );

    // A day after the first send only the second is in the day's window and series.
    shift(&t, &sim, 22 * 3600);
    let s = stats(&t, key).await;
    assert_eq!(figures(&s, "24h"), (1, 0, 1, 0), "{s}");
    assert_eq!(series_times(&s).len(), 1, "{s}");
    t.shutdown().await;
}

async fn figures_recorded_before_the_upgrade_stay_in_the_windows(db: Db) {
    let sim = simulator().await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = db.fresh_url(dir.path()).await;
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |c| fast_worker_on(c, &sim)).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = [
        apns_test_token(ApnsTestKind::Success, 11),
        apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 12),
    ];
    register(&t, &key, "u", &tokens).await;
    deliver_to(&t, &key, "u").await;
    let before = stats(&t, &key).await;
    t.shutdown().await;
    assert_eq!(figures(&before, "24h"), (1, 1, 2, 1), "{before}");

    // The schema and rows as the version before the per-minute figures left them: it logged
    // a first try that delivered as an attempt row too.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    for sql in [
        "INSERT INTO delivery_attempts (job_id, app_id, platform, attempt, outcome, reason, \
         provider_id, latency_ms, at) SELECT id, app_id, platform, 1, 'delivered', NULL, \
         provider_id, latency_ms, answered_at FROM delivery_jobs \
         WHERE status = 'delivered' AND attempts = 1 AND answered_at IS NOT NULL",
        "ALTER TABLE delivery_jobs DROP COLUMN answered_at",
        "ALTER TABLE delivery_jobs DROP COLUMN latency_ms",
        "DROP TABLE stats_failure_minutes",
        "DROP TABLE stats_latency_minutes",
        "DROP TABLE stats_minutes",
        "DROP INDEX delivery_jobs_dead_recent",
        "DELETE FROM _sqlx_migrations WHERE version = 13",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;

    let t = TestApp::spawn_on(url, dir, |c| fast_worker_on(c, &sim)).await;
    let after = stats(&t, &key).await;
    for w in ["5m", "1h", "24h"] {
        for k in [
            "finished",
            "delivered",
            "invalid",
            "attempts",
            "pruned_tokens",
            "avg_latency_ms",
            "p95_latency_ms",
            "failures",
        ] {
            assert_eq!(
                after["windows"][w][k], before["windows"][w][k],
                "{w}.{k}: {after}"
            );
        }
    }
    assert_eq!(
        after["throughput_per_minute"], before["throughput_per_minute"],
        "{after}"
    );
    t.shutdown().await;
}

backend_tests!(
    the_windows_and_the_series_reach_back_24_hours,
    figures_recorded_before_the_upgrade_stay_in_the_windows,
);
