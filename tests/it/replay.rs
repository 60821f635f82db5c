//! Replaying a dead letter never sends something that was not rendered: a job whose template
//! failed is rendered again, and stays dead with the reason when it still fails.

use crate::harness::{simulator, Db, TestApp, OPERATOR_KEY};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use pushbridge::simulator::{Side, SimulatorHandle};
use reqwest::Method;
use serde_json::{json, Value};

/// The alerts the simulator's APNs side received for `token`.
fn alerts_to(sim: &SimulatorHandle, token: &str) -> Vec<Value> {
    sim.records()
        .into_iter()
        .filter(|r| r.side == Side::Apns && r.token.as_deref() == Some(token))
        .map(|r| r.body)
        .collect()
}

async fn replaying_an_unrendered_dead_letter_renders_it_again_or_refuses(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let key = app.server_key.clone();
    let tokens = [
        apns_test_token(ApnsTestKind::Success, 71),
        apns_test_token(ApnsTestKind::Success, 72),
    ];
    for (user, token) in ["api-user", "dashboard-user"].iter().zip(&tokens) {
        let (status, _) = t
            .call(
                Method::PUT,
                &format!("/v1/devices/{token}"),
                Some(&key),
                Some(json!({"platform": "apns", "user_id": user})),
            )
            .await;
        assert_eq!(status, 201);
    }
    // A template that needs data the sends do not carry: every render fails.
    let broken = json!({"title": "Paid", "body": "{{ event.amount }} arrived"});
    let (status, _) = t
        .call(Method::PUT, "/v1/templates/paid", Some(&key), Some(broken))
        .await;
    assert_eq!(status, 201);
    let mut dead = Vec::new();
    for user in ["api-user", "dashboard-user"] {
        let (status, sent) = t
            .call(
                Method::POST,
                "/v1/notifications",
                Some(&key),
                Some(json!({"to": {"user": user}, "template": "paid"})),
            )
            .await;
        assert_eq!(status, 202, "{sent}");
        let event = sent["event_id"].as_str().expect("event").to_string();
        let done = t
            .wait_for(&format!("/v1/events/{event}"), &key, |e| {
                e["status"] == "completed"
            })
            .await;
        let (_, list) = t
            .call(
                Method::GET,
                &format!("/v1/events/{event}/deliveries"),
                Some(&key),
                None,
            )
            .await;
        let job = list["deliveries"][0].clone();
        assert_eq!(job["status"], "dead", "{done} {list}");
        dead.push((event, job["id"].as_str().expect("id").to_string()));
    }

    // Replayed while the template is still broken: 409 with the render error, still dead,
    // nothing sent. Through the API and through the dashboard's call alike.
    let api = format!("/v1/deliveries/{}/retry", dead[0].1);
    let dashboard = format!("/v1/admin/deliveries/{}/retry", dead[1].1);
    for (path, caller) in [(&api, key.as_str()), (&dashboard, OPERATOR_KEY)] {
        let (status, resp) = t.call(Method::POST, path, Some(caller), None).await;
        assert_eq!(status, 409, "{path}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("template error"), "{message}");
    }
    for (_, id) in &dead {
        let (_, job) = t
            .call(
                Method::GET,
                &format!("/v1/deliveries/{id}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(job["status"], "dead", "{job}");
        assert!(job["last_reason"]
            .as_str()
            .is_some_and(|r| r.contains("template error")));
    }
    // The bulk replay re-queues nothing and says why.
    let (status, bulk) = t
        .call(
            Method::POST,
            "/v1/deliveries/retry",
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(bulk["requeued"], 0, "{bulk}");
    assert_eq!(bulk["not_rendered_total"], 2, "{bulk}");
    assert!(tokens.iter().all(|tok| alerts_to(&sim, tok).is_empty()));

    // Fixed, the template renders on replay and what goes out is the real alert.
    let fixed = json!({"title": "Paid", "body": "{{ event.amount | default('money') }} arrived"});
    let (status, _) = t
        .call(Method::PUT, "/v1/templates/paid", Some(&key), Some(fixed))
        .await;
    assert_eq!(status, 200);
    for (path, caller) in [(&api, key.as_str()), (&dashboard, OPERATOR_KEY)] {
        let (status, resp) = t.call(Method::POST, path, Some(caller), None).await;
        assert_eq!(status, 202, "{path}: {resp}");
        assert_eq!(resp["requeued"], 1);
    }
    for ((event, id), token) in dead.iter().zip(&tokens) {
        t.wait_for(&format!("/v1/deliveries/{id}"), &key, |d| {
            d["status"] == "delivered"
        })
        .await;
        let alerts = alerts_to(&sim, token);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            alerts[0]["aps"]["alert"]["body"], "money arrived",
            "{alerts:?}"
        );
        assert_eq!(t.open_jobs(event).await, 0);
    }
}

backend_tests!(replaying_an_unrendered_dead_letter_renders_it_again_or_refuses);
