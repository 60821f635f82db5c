//! Delivery policy: scheduled sends, expiry, collapse and cancel, on a shifted clock (the
//! bridge's and the simulator's together, so provider tokens stay valid), never sleeping
//! for the scheduled time.

use crate::harness::schedule::{
    apns_devices as devices, at, completed, dispatched, send, shift, utc_clock_time,
};
use crate::harness::{simulator, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::{Side, SimulatorHandle};
use reqwest::Method;
use serde_json::{json, Value};
use std::str::FromStr;

/// Sends the simulator's APNs side answered for `token`.
fn sends_to(sim: &SimulatorHandle, token: &str) -> Vec<Value> {
    sim.records()
        .into_iter()
        .filter(|r| r.side == Side::Apns && r.token.as_deref() == Some(token))
        .map(|r| json!({"body": r.body, "headers": r.headers}))
        .collect()
}

async fn event(t: &TestApp, key: &str, id: &str) -> Value {
    let (status, body) = t
        .call(Method::GET, &format!("/v1/events/{id}"), Some(key), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
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
    let done = completed(&t, &key, &id).await;
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
    let done = completed(&t, &key, &id).await;
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
    completed(&t, &key, &id).await;
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
    let older = completed(&t, &key, &first).await;
    assert_eq!(older["deliveries"]["superseded"], 1, "{older}");
    shift(&t, &sim, 61);
    let newer = completed(&t, &key, &second).await;
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

/// Registers one APNs device for `user` in `timezone` (none when `None`).
async fn device_in(
    t: &TestApp,
    key: &str,
    user: &str,
    seed: u64,
    timezone: Option<&str>,
) -> String {
    let token = apns_test_token(ApnsTestKind::Success, seed);
    let mut body = json!({"platform": "apns", "user_id": user});
    if let Some(tz) = timezone {
        body["timezone"] = json!(tz);
    }
    let (status, answer) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(key),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    token
}

/// The event's deliveries.
async fn deliveries_of(t: &TestApp, key: &str, event_id: &str) -> Vec<Value> {
    let (status, page) = t
        .call(
            Method::GET,
            &format!("/v1/events/{event_id}/deliveries"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Sets the bridge's (and the simulator's) clock to `instant`.
fn set_clock(t: &TestApp, sim: &SimulatorHandle, instant: jiff::Timestamp) {
    let secs = (instant.as_millisecond() - t.clock().unix_millis()).div_euclid(1000);
    shift(t, sim, secs);
}

async fn quiet_hours_hold_a_normal_push_and_let_an_urgent_one_through(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    // Devices without a zone, in an app without one: UTC. Quiet from an hour ago to an hour
    // from now.
    let (start, end) = (utc_clock_time(&t, -60), utc_clock_time(&t, 60));
    let policy = json!({"quiet_hours": {"start": start, "end": end}});
    let (status, stored) = t
        .call(
            Method::PUT,
            "/v1/app/policy",
            Some(&key),
            Some(policy.clone()),
        )
        .await;
    assert_eq!((status, &stored), (200, &policy), "{stored}");
    let (_, read) = t
        .call(Method::GET, "/v1/app/policy", Some(&key), None)
        .await;
    assert_eq!(read, policy);
    let quiet = device_in(&t, &key, "u1", 70, None).await;
    let normal = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "later"}}),
    )
    .await;
    let urgent = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "now"}, "urgency": "high"}),
    )
    .await;
    // A template may say it is urgent, too.
    let urgent_template = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "now", "urgency": "high"}}),
    )
    .await;
    for id in [&urgent, &urgent_template] {
        let done = completed(&t, &key, id).await;
        assert_eq!(done["deliveries"]["delivered"], 1, "{done}");
    }
    dispatched(&t, &key, &normal).await;
    let held = deliveries_of(&t, &key, &normal).await;
    assert_eq!(held[0]["status"], "queued", "{held:?}");
    assert_eq!(held[0]["hold"], "quiet_hours", "{held:?}");
    let released = jiff::Timestamp::from_str(held[0]["next_attempt_at"].as_str().expect("due"))
        .expect("rfc 3339");
    let wait = released.as_millisecond() - t.clock().unix_millis();
    assert!(
        (58 * 60_000..=60 * 60_000).contains(&wait),
        "released in {wait} ms"
    );
    assert_eq!(
        sends_to(&sim, &quiet).len(),
        2,
        "only the urgent ones went out"
    );
    // A user's own quiet hours apply in an app without any.
    let (status, _) = t
        .call(Method::PUT, "/v1/app/policy", Some(&key), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (status, prefs) = t
        .call(
            Method::PUT,
            "/v1/users/u2/preferences",
            Some(&key),
            Some(json!({"quiet_hours": {"start": start, "end": end}})),
        )
        .await;
    assert_eq!(status, 200, "{prefs}");
    device_in(&t, &key, "u2", 71, None).await;
    let theirs = send(
        &t,
        &key,
        json!({"to": {"user": "u2"}, "template": {"body": "x"}}),
    )
    .await;
    dispatched(&t, &key, &theirs).await;
    assert_eq!(
        deliveries_of(&t, &key, &theirs).await[0]["hold"],
        "quiet_hours"
    );
    // When the quiet hours end, the held ones go.
    shift(&t, &sim, 3_700);
    for id in [&normal, &theirs] {
        let done = completed(&t, &key, id).await;
        assert_eq!(done["deliveries"]["delivered"], 1, "{done}");
    }
    assert_eq!(sends_to(&sim, &quiet).len(), 3);
    t.shutdown().await;
}

async fn the_fourth_marketing_push_within_a_day_is_capped(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let policy = json!({"caps": [{"category": "marketing", "max": 3, "per": "24h"}]});
    let (status, _) = t
        .call(Method::PUT, "/v1/app/policy", Some(&key), Some(policy))
        .await;
    assert_eq!(status, 200);
    let token = device_in(&t, &key, "u1", 80, None).await;
    let marketing =
        json!({"to": {"user": "u1"}, "template": {"body": "sale"}, "category": "marketing"});
    let mut ends = Vec::new();
    for _ in 0..4 {
        let id = send(&t, &key, marketing.clone()).await;
        let done = completed(&t, &key, &id).await;
        ends.push(done["deliveries"].clone());
        shift(&t, &sim, 60);
    }
    for sent in &ends[..3] {
        assert_eq!(sent["delivered"], 1, "{ends:?}");
    }
    assert_eq!(ends[3]["capped"], 1, "{ends:?}");
    let (_, page) = t
        .call(
            Method::GET,
            "/v1/deliveries?status=capped",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        page["deliveries"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    // Another category, or none, is not counted.
    let other = send(
        &t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "receipt"}}),
    )
    .await;
    let done = completed(&t, &key, &other).await;
    assert_eq!(done["deliveries"]["delivered"], 1, "{done}");
    // A day after the first, the window has room again.
    shift(&t, &sim, 24 * 3600 - 3 * 60);
    let later = send(&t, &key, marketing).await;
    let done = completed(&t, &key, &later).await;
    assert_eq!(done["deliveries"]["delivered"], 1, "{done}");
    assert_eq!(sends_to(&sim, &token).len(), 5);
    t.shutdown().await;
}

/// Sends `deliver_at_local: 09:00` to one device in each zone from `now` and returns each
/// delivery's due instant by zone, checking it is held as scheduled.
async fn nine_local_due(
    t: &TestApp,
    sim: &SimulatorHandle,
    now: jiff::Timestamp,
    zones: &[&str],
    first_seed: u64,
) -> Vec<jiff::Timestamp> {
    set_clock(t, sim, now);
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let mut tokens = Vec::new();
    for (i, zone) in zones.iter().enumerate() {
        tokens.push(device_in(t, &key, "u1", first_seed + i as u64, Some(zone)).await);
    }
    let id = send(
        t,
        &key,
        json!({"to": {"user": "u1"}, "template": {"body": "good morning"}, "deliver_at_local": "09:00"}),
    )
    .await;
    dispatched(t, &key, &id).await;
    let rows = deliveries_of(t, &key, &id).await;
    tokens
        .iter()
        .map(|token| {
            let row = rows
                .iter()
                .find(|r| &r["token"] == token)
                .expect("delivery");
            assert_eq!(row["hold"], "scheduled", "{row}");
            jiff::Timestamp::from_str(row["next_attempt_at"].as_str().expect("due"))
                .expect("rfc 3339")
        })
        .collect()
}

async fn nine_oclock_local_is_nine_oclock_in_every_zone_and_on_dst_days(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let zones = ["Europe/Paris", "America/New_York", "Asia/Kolkata"];
    let at = |date: jiff::civil::Date, zone: &str| {
        date.at(9, 0, 0, 0).in_tz(zone).expect("zone").timestamp()
    };
    // An ordinary day: 2027-06-01 at 00:00 UTC.
    let now = jiff::Timestamp::from_str("2027-06-01T00:00:00Z").expect("time");
    let due = nine_local_due(&t, &sim, now, &zones, 90).await;
    let day = jiff::civil::date(2027, 6, 1);
    let expected: Vec<_> = zones.iter().map(|z| at(day, z)).collect();
    assert_eq!(due, expected);
    assert!(
        due[0] != due[1] && due[1] != due[2] && due[0] != due[2],
        "{due:?}"
    );
    for (instant, zone) in due.iter().zip(zones) {
        let local = instant.in_tz(zone).expect("zone");
        assert_eq!((local.hour(), local.minute()), (9, 0), "{zone}");
    }
    // Paris springs forward on 2027-03-28 at 02:00: 09:00 that day is CEST (+02:00).
    let now = jiff::Timestamp::from_str("2027-03-28T00:30:00Z").expect("time");
    let due = nine_local_due(&t, &sim, now, &["Europe/Paris"], 95).await;
    assert_eq!(due[0].to_string(), "2027-03-28T07:00:00Z");
    // New York falls back on 2027-11-07 at 02:00: 09:00 that day is EST (-05:00).
    let now = jiff::Timestamp::from_str("2027-11-07T04:00:00Z").expect("time");
    let due = nine_local_due(&t, &sim, now, &["America/New_York"], 96).await;
    assert_eq!(due[0].to_string(), "2027-11-07T14:00:00Z");
    t.shutdown().await;
}

async fn cancelling_halfway_through_a_large_fan_out_stops_the_rest(db: Db) {
    use pushbridge::model::device::DeviceRegistration;
    use pushbridge::model::{ApnsEnvironment, Platform};
    // Slow sends, so the cancel lands while jobs are being sent and others still wait.
    let sim = crate::harness::simulator_with(|c| c.faults.latency_ms = 50).await;
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.concurrency = 50).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let devices: Vec<(String, DeviceRegistration)> = (0..5_000u64)
        .map(|i| {
            let reg = DeviceRegistration {
                platform: Platform::Apns,
                user_id: Some(format!("user-{i}")),
                locale: None,
                timezone: None,
                app_version: None,
                environment: Some(ApnsEnvironment::Production),
                topic: None,
                attributes: json!({}),
                tags: vec![],
            };
            (apns_test_token(ApnsTestKind::Success, 1_000 + i), reg)
        })
        .collect();
    t.store()
        .import_devices(&app.app.id, &devices)
        .await
        .expect("import");
    let id = send(
        &t,
        &key,
        json!({"to": {"devices": {}}, "template": {"body": "big sale"}}),
    )
    .await;
    t.wait_for(&format!("/v1/events/{id}"), &key, |e| {
        e["deliveries"]["delivered"].as_i64().unwrap_or(0) >= 200
    })
    .await;
    let (status, answer) = t
        .call(
            Method::POST,
            &format!("/v1/events/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let cancelled_now = answer["cancelled_now"].as_i64().expect("count");
    assert!(cancelled_now > 0, "{answer}");
    let done = completed(&t, &key, &id).await;
    let d = &done["deliveries"];
    let (delivered, cancelled) = (
        d["delivered"].as_i64().expect("delivered"),
        d["cancelled"].as_i64().expect("cancelled"),
    );
    assert_eq!(
        delivered + cancelled,
        d["total"].as_i64().expect("total"),
        "{done}"
    );
    assert!(cancelled >= cancelled_now, "{done}");
    assert!(delivered < 5_000 && cancelled > 0, "{done}");
    // Nothing cancelled goes out later: the provider saw exactly the delivered ones.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = sim
        .records()
        .into_iter()
        .filter(|r| r.side == Side::Apns && r.status == 200)
        .count() as i64;
    assert_eq!(sent, delivered, "{done}");
    t.shutdown().await;
}

async fn a_rule_with_a_delay_sends_that_long_after_the_event(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = devices(&t, &key, "u1", 110..111).await;
    let rule = json!({"event": "cart.abandoned", "audience": {"user_id_path": "user"},
        "template": {"body": "still there?"}, "delay": "15m"});
    let (status, stored) = t
        .call(Method::PUT, "/v1/rules/reminder", Some(&key), Some(rule))
        .await;
    assert_eq!(status, 201, "{stored}");
    // The event as a webhook stores it (the webhook path itself is tested elsewhere).
    let received = t.clock().unix_millis();
    let inserted = t
        .store()
        .insert_event(&pushbridge::store::NewEvent {
            app_id: &app.app.id,
            source_id: None,
            external_id: None,
            event_type: "cart.abandoned",
            payload: r#"{"user": "u1"}"#,
            direct_rule: None,
            traceparent: None,
        })
        .await
        .expect("event");
    let (pushbridge::store::EventInsert::Accepted(id)
    | pushbridge::store::EventInsert::Duplicate(id)) = inserted;
    dispatched(&t, &key, &id).await;
    let rows = deliveries_of(&t, &key, &id).await;
    let reminder = rows
        .iter()
        .find(|r| r["rule"] == "reminder")
        .unwrap_or_else(|| panic!("the rule's delivery: {rows:?}"));
    assert_eq!(reminder["hold"], "scheduled", "{rows:?}");
    let due = jiff::Timestamp::from_str(reminder["next_attempt_at"].as_str().expect("due"))
        .expect("rfc 3339")
        .as_millisecond();
    assert!(
        (received + 899_000..=received + 901_000).contains(&due),
        "{due} vs {received}"
    );
    shift(&t, &sim, 901);
    completed(&t, &key, &id).await;
    assert_eq!(sends_to(&sim, &tokens[0]).len(), 1);
    t.shutdown().await;
}

backend_tests!(
    cancelling_halfway_through_a_large_fan_out_stops_the_rest,
    a_rule_with_a_delay_sends_that_long_after_the_event,
    quiet_hours_hold_a_normal_push_and_let_an_urgent_one_through,
    the_fourth_marketing_push_within_a_day_is_capped,
    nine_oclock_local_is_nine_oclock_in_every_zone_and_on_dst_days,
    a_send_at_a_later_time_waits_for_it,
    an_expired_job_is_never_sent,
    the_provider_is_told_the_time_left_before_expiry,
    a_newer_push_with_the_same_collapse_key_replaces_a_waiting_one,
    cancelling_an_event_ends_its_unsent_jobs,
    a_bad_policy_is_refused_naming_the_field,
);
