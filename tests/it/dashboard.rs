//! The operator dashboard in a real browser (headless Chromium): the figures it shows match
//! the stats API, the delivery policy's among them (scheduled jobs, jobs ended unsent), every
//! card's table fits it from 1280 px up, and an app without deliveries shows no rate.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{proven, simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::simulator::tokens::{apns_test_token, fcm_test_token, ApnsTestKind, FcmTestKind};
use reqwest::Method;
use serde_json::{json, Value};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Loads `url` headless, 1400 px wide, and returns the DOM after scripts ran; also saves a
/// screenshot.
fn render(browser: &PathBuf, url: &str, screenshot: &std::path::Path) -> String {
    let dom = render_at(browser, url, 1400);
    let profile = tempfile::tempdir().expect("profile dir");
    let shot = Command::new(browser)
        .args(chromium_flags(1400))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(shot.status.success(), "screenshot failed");
    dom
}

fn chromium_flags(width: u32) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--window-size={width},1000")])
    .collect()
}

/// The DOM of `url` after scripts ran, in a window `width` px wide.
fn render_at(browser: &PathBuf, url: &str, width: u32) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = Command::new(browser)
        .args(chromium_flags(width))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    String::from_utf8(dom.stdout).expect("utf-8 DOM")
}

/// Every card of the loaded page fits its tables and charts (the page records it per card).
fn assert_cards_fit(dom: &str, width: u32) {
    assert!(
        dom.contains("data-loaded=\"true\""),
        "{width} px: not loaded"
    );
    let fits = dom.matches("data-fits=\"true\"").count();
    assert!(
        !dom.contains("data-fits=\"false\""),
        "{width} px: a table is wider than its card: {dom}"
    );
    assert!(fits >= 8, "{width} px: only {fits} cards measured");
}

/// Text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].trim().to_string())
}

/// The final states the window table shows, sent and withheld.
const FINAL_STATES: [&str; 7] = [
    "delivered",
    "dead",
    "invalid",
    "capped",
    "superseded",
    "expired",
    "cancelled",
];

/// Gives the app two devices of user `u2` with a send to them scheduled an hour ahead (two
/// scheduled jobs) and another one cancelled (two cancelled jobs).
async fn policy_figures(t: &TestApp, app: &pushbridge::store::NewApp) {
    for seed in 6..8 {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        let (status, _) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&app.client_key),
                Some(proven(app, json!({"platform": "apns", "user_id": "u2"}))),
            )
            .await;
        assert_eq!(status, 201);
    }
    let send_at = jiff::Timestamp::from_millisecond(t.clock().unix_millis() + 3_600_000)
        .expect("timestamp")
        .to_string();
    let mut events = Vec::new();
    for body in ["later", "never"] {
        let (status, sent) = t
            .call(
                Method::POST,
                "/v1/notifications",
                Some(&app.server_key),
                Some(json!({"to": {"user": "u2"}, "template": {"body": body}, "send_at": send_at})),
            )
            .await;
        assert_eq!(status, 202, "{sent}");
        let id = sent["event_id"].as_str().expect("event id").to_string();
        t.wait_for(&format!("/v1/events/{id}"), &app.server_key, |e| {
            e["status"] != "received"
        })
        .await;
        events.push(id);
    }
    let (status, cancelled) = t
        .call(
            Method::POST,
            &format!("/v1/events/{}/cancel", events[1]),
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!((status, &cancelled["cancelled_now"]), (200, &json!(2)));
}

async fn dashboard_shows_the_figures_of_the_stats_api(db: Db) {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("PUSHBRIDGE_REQUIRE_BROWSER").is_err(),
            "PUSHBRIDGE_REQUIRE_BROWSER is set but no chromium was found"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "notice: chromium not installed; dashboard browser test skipped"
        );
        return;
    };
    let sim = simulator().await;
    // Two attempts make a dead letter of a device the provider keeps refusing for now.
    let t = TestApp::with_simulator(db, &sim, |c| c.worker.max_attempts = 2).await;
    let app = t.new_app().await;
    let tokens = [
        ("apns", apns_test_token(ApnsTestKind::Success, 1)),
        ("apns", apns_test_token(ApnsTestKind::Success, 2)),
        ("fcm", fcm_test_token(FcmTestKind::Success, 3)),
        ("apns", apns_test_token(ApnsTestKind::BadDeviceToken, 4)),
        ("fcm", fcm_test_token(FcmTestKind::InvalidArgument, 5)),
    ];
    for (platform, token) in &tokens {
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
    let (_, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u1"}, "template": {"title": "Hi", "body": "there"}})),
        )
        .await;
    let event_id = sent["event_id"].as_str().expect("event id");
    t.wait_for(&format!("/v1/events/{event_id}"), &app.server_key, |e| {
        e["status"] == "completed"
    })
    .await;
    policy_figures(&t, &app).await;

    let (_, stats) = t
        .call(
            Method::GET,
            &format!("/v1/stats?app_id={}", app.app.id),
            Some(OPERATOR_KEY),
            None,
        )
        .await;
    let w5: &Value = &stats["windows"]["5m"];
    // The five sent, and the two of the cancelled event.
    assert_eq!(w5["finished"], 7, "{stats}");
    assert_eq!(w5["cancelled"], 2, "{stats}");
    assert_eq!(stats["queue"]["scheduled"], 2, "{stats}");

    // A provider that refuses the app's credential shows as paused.
    let probe_at = pushbridge::clock::now_ms() + 60_000;
    t.store()
        .open_breaker(
            &app.app.id,
            pushbridge::model::Platform::Fcm,
            "THIRD_PARTY_AUTH_ERROR",
            probe_at,
        )
        .await
        .expect("breaker");

    let shot = tempfile::tempdir().expect("dir");
    let shot_path = shot.path().join("dashboard.png");
    let url = format!("{}/dashboard#key={OPERATOR_KEY}&app={}", t.base, app.app.id);
    let dom = render(&browser, &url, &shot_path);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page loaded its data: {dom}"
    );
    let rate = w5["success_rate"].as_f64().expect("rate");
    assert_eq!(
        text_of(&dom, "rate-5m").as_deref(),
        Some(format!("{:.1}%", rate * 100.0).as_str())
    );
    assert_eq!(text_of(&dom, "finished-5m").as_deref(), Some("7"));
    for state in FINAL_STATES {
        assert_eq!(
            text_of(&dom, &format!("{state}-5m")),
            Some(w5[state].to_string()),
            "{state}"
        );
    }
    assert_eq!(text_of(&dom, "cancelled-5m").as_deref(), Some("2"));
    assert_eq!(text_of(&dom, "q-scheduled").as_deref(), Some("2"));
    assert_eq!(
        text_of(&dom, "q-held"),
        Some(stats["queue"]["held"].to_string())
    );
    assert_eq!(
        text_of(&dom, "q-queued"),
        Some(stats["queue"]["queued"].to_string())
    );
    assert!(
        dom.contains("held (quiet hours)"),
        "the held row is labelled"
    );
    assert_eq!(
        text_of(&dom, "pruned-5m"),
        Some(w5["pruned_tokens"].to_string())
    );
    assert_eq!(
        text_of(&dom, "p95-5m"),
        Some(format!("{} ms", w5["p95_latency_ms"])),
    );
    assert_eq!(text_of(&dom, "q-dead").as_deref(), Some("0"));
    assert!(
        dom.contains("BadDeviceToken"),
        "failures by reason are listed"
    );
    assert!(!dom.contains(&tokens[3].1), "tokens are shown redacted");
    let paused = dom
        .split("id=\"paused\"")
        .nth(1)
        .and_then(|rest| rest.split("</tbody>").next())
        .expect("the paused providers table");
    assert!(
        paused.contains(&app.app.id)
            && paused.contains("fcm")
            && paused.contains("THIRD_PARTY_AUTH_ERROR"),
        "the paused provider is listed: {paused}"
    );
    assert!(
        std::fs::metadata(&shot_path).is_ok_and(|m| m.len() > 10_000),
        "screenshot written"
    );
    if let Ok(dest) = std::env::var("PUSHBRIDGE_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot_path, dest).expect("copy screenshot");
    }

    // From 1280 px up every table fits its card.
    for width in [1280, 1400, 1920] {
        assert_cards_fit(&render_at(&browser, &url, width), width);
    }
    assert!(
        dom.contains("rel=\"icon\""),
        "an icon, so no favicon request 404s"
    );
    assert!(
        text_of(&dom, "rate-chart").is_some() && dom.contains("−60 min"),
        "the success-rate chart has a labelled time axis"
    );

    // An app without deliveries has no success rate to show.
    let idle = t.new_app().await;
    let idle_url = format!(
        "{}/dashboard#key={OPERATOR_KEY}&app={}",
        t.base, idle.app.id
    );
    let idle_dom = render_at(&browser, &idle_url, 1400);
    assert_eq!(text_of(&idle_dom, "rate-5m").as_deref(), Some("no data"));

    // All apps: another app's dead letter and pruned token are listed with its id, and the
    // charts can show the last 24 hours.
    let other = t.new_app().await;
    let refused = apns_test_token(ApnsTestKind::ServiceUnavailable, 9);
    let gone = apns_test_token(ApnsTestKind::Unregistered { timestamp_ms: None }, 10);
    for token in [&refused, &gone] {
        let (status, _) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&other.client_key),
                Some(proven(&other, json!({"platform": "apns", "user_id": "u9"}))),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&other.server_key),
            Some(json!({"to": {"user": "u9"}, "template": {"body": "later"}})),
        )
        .await;
    let other_event = sent["event_id"].as_str().expect("event id");
    t.wait_for(
        &format!("/v1/events/{other_event}"),
        &other.server_key,
        |e| e["status"] == "completed",
    )
    .await;
    let all_dom = render_at(
        &browser,
        &format!("{}/dashboard#key={OPERATOR_KEY}&app=&range=24", t.base),
        1400,
    );
    let tbody = |id: &str| {
        all_dom
            .split(&format!("id=\"{id}\""))
            .nth(1)
            .and_then(|rest| rest.split("</tbody>").next())
            .unwrap_or_else(|| panic!("the {id} table"))
            .to_string()
    };
    let dead = tbody("dead");
    assert!(
        dead.contains(&other.app.id) && dead.contains("ServiceUnavailable"),
        "all apps list the other app's dead letter: {dead}"
    );
    assert!(!dead.contains(&refused), "tokens are shown redacted");
    let pruned = tbody("pruned");
    assert!(
        pruned.contains(&other.app.id) && pruned.contains("Unregistered"),
        "all apps list the other app's pruned token: {pruned}"
    );
    assert!(
        all_dom.contains("−24 h") && all_dom.contains("Throughput, last 24 hours"),
        "the charts show the last 24 hours"
    );

    // Without the operator key the page asks for it and shows no data.
    let dom = render(&browser, &format!("{}/dashboard", t.base), &shot_path);
    assert!(!dom.contains("data-loaded=\"true\""));
    assert!(
        dom.contains("<section id=\"login\">"),
        "the key prompt is visible: {dom}"
    );
    assert!(
        dom.contains("<main id=\"main\" hidden"),
        "the empty dashboard stays hidden under the prompt"
    );
}

backend_tests!(dashboard_shows_the_figures_of_the_stats_api);
