//! Delivery policy: scheduled sends, expiry, collapse and cancel, on a shifted clock (the
//! bridge's and the simulator's together, so provider tokens stay valid), never sleeping
//! for the scheduled time.

use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::{Side, SimulatorHandle};
use reqwest::Method;
use serde_json::{json, Value};

/// Sends the simulator's APNs side answered for `token`.
fn sends_to(sim: &SimulatorHandle, token: &str) -> Vec<Value> {
    sim.records()
        .into_iter()
        .filter(|r| r.side == Side::Apns && r.token.as_deref() == Some(token))
        .map(|r| json!({"body": r.body, "headers": r.headers}))
        .collect()
}

/// Moves the bridge's and the simulator's time by `secs`.
fn shift(t: &TestApp, sim: &SimulatorHandle, secs: i64) {
    t.clock().shift(secs);
    sim.clock().shift(secs);
}

/// RFC 3339 of the bridge's time plus `secs`.
fn at(t: &TestApp, secs: i64) -> String {
    jiff::Timestamp::from_millisecond(t.clock().unix_millis() + secs * 1000)
        .expect("timestamp")
        .to_string()
}

/// Registers APNs devices for `user`, returning their tokens.
async fn devices(t: &TestApp, key: &str, user: &str, seeds: std::ops::Range<u64>) -> Vec<String> {
    let mut tokens = Vec::new();
    for seed in seeds {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        let (status, body) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(key),
                Some(json!({"platform": "apns", "user_id": user})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        tokens.push(token);
    }
    tokens
}

async fn send(t: &TestApp, key: &str, body: Value) -> String {
    let (status, sent) = t
        .call(Method::POST, "/v1/notifications", Some(key), Some(body))
        .await;
    assert_eq!(status, 202, "{sent}");
    sent["event_id"].as_str().expect("event id").to_string()
}

async fn event(t: &TestApp, key: &str, id: &str) -> Value {
    let (status, body) = t
        .call(Method::GET, &format!("/v1/events/{id}"), Some(key), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the event's jobs are written (its fan-out ended).
async fn dispatched(t: &TestApp, key: &str, id: &str) -> Value {
    t.wait_for(&format!("/v1/events/{id}"), key, |e| {
        e["status"] != "received"
    })
    .await
}

async fn a_send_at_a_later_time_waits_for_it(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 1..4).await;
    let id = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "later"}, "send_at": at(&t, 3)}),
    )
    .await;
    let e = dispatched(&t, &key, &id).await;
    assert_eq!(e["deliveries"]["queued"], 3, "{e}");
    // Well past the fan-out and many polls, nothing has gone out before its time.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(tokens.iter().all(|tok| sends_to(&sim, tok).is_empty()));
    let (_, page) = t
        .call(
            Method::GET,
            "/v1/deliveries?status=queued",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        page["deliveries"].as_array().map(Vec::len),
        Some(3),
        "{page}"
    );
    shift(&t, &sim, 3);
    let done = t
        .wait_for(&format!("/v1/events/{id}"), &key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(done["deliveries"]["delivered"], 3, "{done}");
    for tok in &tokens {
        assert_eq!(sends_to(&sim, tok).len(), 1);
    }
    t.shutdown().await;
}

async fn an_expired_job_is_never_sent(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 10..12).await;
    // Due in ten minutes, expiring a minute before that.
    let id = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "stale"},
               "send_at": at(&t, 600), "expires_at": at(&t, 540)}),
    )
    .await;
    dispatched(&t, &key, &id).await;
    shift(&t, &sim, 601);
    let done = t
        .wait_for(&format!("/v1/events/{id}"), &key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(done["deliveries"]["expired"], 2, "{done}");
    assert_eq!(done["deliveries"]["delivered"], 0, "{done}");
    assert!(tokens.iter().all(|tok| sends_to(&sim, tok).is_empty()));
    let (_, page) = t
        .call(
            Method::GET,
            "/v1/deliveries?status=expired",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        page["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    t.shutdown().await;
}

async fn the_provider_is_told_the_time_left_before_expiry(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 20..21).await;
    let sent_at = t.clock().unix_millis() / 1000;
    let id = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "soon"}, "ttl": "1h"}),
    )
    .await;
    t.wait_for(&format!("/v1/events/{id}"), &key, |e| {
        e["status"] == "completed"
    })
    .await;
    let sends = sends_to(&sim, &tokens[0]);
    let expiration: i64 = sends[0]["headers"]["apns-expiration"]
        .as_str()
        .expect("apns-expiration")
        .parse()
        .expect("number");
    assert!(
        (sent_at + 3590..=sent_at + 3601).contains(&expiration),
        "{expiration} vs {sent_at}"
    );
    t.shutdown().await;
}

async fn a_newer_push_with_the_same_collapse_key_replaces_a_waiting_one(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 30..31).await;
    let template = |body: &str| json!({"body": body, "options": {"collapse_key": "score"}});
    let first = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": template("1-0"), "send_at": at(&t, 60)}),
    )
    .await;
    dispatched(&t, &key, &first).await;
    let second = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": template("2-0"), "send_at": at(&t, 60)}),
    )
    .await;
    dispatched(&t, &key, &second).await;
    let older = t
        .wait_for(&format!("/v1/events/{first}"), &key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(older["deliveries"]["superseded"], 1, "{older}");
    shift(&t, &sim, 61);
    let newer = t
        .wait_for(&format!("/v1/events/{second}"), &key, |e| {
            e["status"] == "completed"
        })
        .await;
    assert_eq!(newer["deliveries"]["delivered"], 1, "{newer}");
    let sends = sends_to(&sim, &tokens[0]);
    assert_eq!(sends.len(), 1, "{sends:?}");
    let sent = sends[0]["body"].to_string();
    assert!(sent.contains("2-0") && !sent.contains("1-0"), "{sent}");
    t.shutdown().await;
}

async fn cancelling_an_event_ends_its_unsent_jobs(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 40..60).await;
    let id = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "sale"}, "send_at": at(&t, 60)}),
    )
    .await;
    dispatched(&t, &key, &id).await;
    let (status, answer) = t
        .call(
            Method::POST,
            &format!("/v1/events/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cancelled_now"], 20, "{answer}");
    assert_eq!(answer["deliveries"]["cancelled"], 20, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    shift(&t, &sim, 61);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(tokens.iter().all(|tok| sends_to(&sim, tok).is_empty()));
    let after = event(&t, &key, &id).await;
    assert_eq!(after["deliveries"]["cancelled"], 20, "{after}");
    let (status, again) = t
        .call(
            Method::POST,
            &format!("/v1/events/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        (status, &again["cancelled_now"]),
        (200, &json!(0)),
        "{again}"
    );
    let (status, missing) = t
        .call(Method::POST, "/v1/events/evt_nope/cancel", Some(&key), None)
        .await;
    assert_eq!(status, 404, "{missing}");
    t.shutdown().await;
}

async fn a_bad_policy_is_refused_naming_the_field(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    for (extra, field) in [
        (json!({"send_at": "tomorrow"}), None),
        (json!({"ttl": "5x"}), None),
        (json!({"within": "1h"}), Some("within")),
        (json!({"sent_at": "2026-01-01T00:00:00Z"}), Some("sent_at")),
    ] {
        let mut body = json!({"to": {"user": "u1"}, "template": {"body": "x"}});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, answer) = t
            .call(Method::POST, "/v1/notifications", Some(&key), Some(body))
            .await;
        assert_eq!(status, 422, "{extra}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{extra}: {answer}");
        }
    }
    t.shutdown().await;
}

backend_tests!(
    a_send_at_a_later_time_waits_for_it,
    an_expired_job_is_never_sent,
    the_provider_is_told_the_time_left_before_expiry,
    a_newer_push_with_the_same_collapse_key_replaces_a_waiting_one,
    cancelling_an_event_ends_its_unsent_jobs,
    a_bad_policy_is_refused_naming_the_field,
);
