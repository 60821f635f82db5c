//! `Idempotency-Key`: a retried POST gets the first answer and creates nothing new.

use crate::harness::{Db, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// Posts `body` to `path` with `key` as server key and `idem` as Idempotency-Key; status,
/// whether the answer was replayed, and the JSON body.
async fn post(t: &TestApp, path: &str, key: &str, idem: &str, body: &Value) -> (u16, bool, Value) {
    let resp = t
        .client
        .post(t.url(path))
        .bearer_auth(key)
        .header("Idempotency-Key", idem)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = resp.json().await.expect("JSON body");
    (status, replayed, body)
}

async fn event_count(t: &TestApp, key: &str) -> usize {
    let (status, page) = t.call(Method::GET, "/v1/events", Some(key), None).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().map_or(0, Vec::len)
}

fn a_send(text: &str) -> Value {
    json!({"to": {"user": "u1"}, "template": {"body": text}})
}

async fn the_same_key_twice_gives_one_event(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let (s1, r1, first) = post(&t, "/v1/notifications", key, "retry-1", &a_send("hi")).await;
    assert_eq!((s1, r1), (202, false), "{first}");
    let (s2, r2, second) = post(&t, "/v1/notifications", key, "retry-1", &a_send("hi")).await;
    assert_eq!((s2, r2), (202, true), "{second}");
    assert_eq!(first, second);
    assert_eq!(event_count(&t, key).await, 1);
    // Another key is another send.
    let (s3, _, third) = post(&t, "/v1/notifications", key, "retry-2", &a_send("hi")).await;
    assert_eq!(s3, 202);
    assert_ne!(third["event_id"], first["event_id"]);
    assert_eq!(event_count(&t, key).await, 2);
    t.shutdown().await;
}

async fn the_same_key_with_another_body_is_refused(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let (status, _, _) = post(&t, "/v1/notifications", key, "k", &a_send("one")).await;
    assert_eq!(status, 202);
    let (status, _, body) = post(&t, "/v1/notifications", key, "k", &a_send("two")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "Idempotency-Key", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("different request")),
        "{body}"
    );
    // The same key on another route is another request too.
    let (status, _, body) = post(
        &t,
        "/v1/sources",
        key,
        "k",
        &json!({"name": "s", "scheme": "generic"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(event_count(&t, key).await, 1);
    t.shutdown().await;
}

async fn apps_do_not_share_keys(db: Db) {
    let t = TestApp::spawn(db).await;
    let a = t.new_app().await;
    let b = t.new_app().await;
    let (sa, ra, ea) = post(&t, "/v1/notifications", &a.server_key, "k", &a_send("x")).await;
    let (sb, rb, eb) = post(&t, "/v1/notifications", &b.server_key, "k", &a_send("x")).await;
    assert_eq!((sa, ra, sb, rb), (202, false, 202, false));
    assert_ne!(ea["event_id"], eb["event_id"]);
    assert_eq!(event_count(&t, &a.server_key).await, 1);
    assert_eq!(event_count(&t, &b.server_key).await, 1);
    t.shutdown().await;
}

async fn concurrent_duplicates_create_one_event(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let body = a_send("race");
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, key, body) = (
            t.client.clone(),
            t.url("/v1/notifications"),
            key.clone(),
            body.clone(),
        );
        racers.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "race-key")
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            (
                status,
                false,
                resp.json::<Value>().await.expect("JSON body"),
            )
        });
    }
    let answers = racers.join_all().await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .filter(|(status, _, _)| *status == 202)
        .map(|(_, _, b)| b["event_id"].as_str().expect("event id").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    // The losers were answered the winner's answer or told it is in progress.
    for (status, _, body) in &answers {
        assert!(
            *status == 202 || (*status == 409 && body["error"]["code"] == "conflict"),
            "{status} {body}"
        );
    }
    assert_eq!(event_count(&t, key).await, 1);
    t.shutdown().await;
}

async fn a_key_is_forgotten_after_a_day(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let (_, _, first) = post(&t, "/v1/notifications", key, "daily", &a_send("a")).await;
    t.clock().shift(23 * 3600);
    let (_, replayed, again) = post(&t, "/v1/notifications", key, "daily", &a_send("a")).await;
    assert!(replayed);
    assert_eq!(again, first);
    t.clock().shift(2 * 3600);
    // Past its lifetime, the sweep deletes it and the key is new again.
    let now = t.store().now();
    assert_eq!(
        t.store()
            .sweep_idempotency_keys(now, 100)
            .await
            .expect("sweep"),
        1
    );
    let (status, replayed, later) = post(&t, "/v1/notifications", key, "daily", &a_send("a")).await;
    assert_eq!((status, replayed), (202, false));
    assert_ne!(later["event_id"], first["event_id"]);
    assert_eq!(event_count(&t, key).await, 2);
    t.shutdown().await;
}

async fn a_retried_source_creation_shows_the_same_secret(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let body = json!({"name": "billing", "scheme": "generic"});
    let (s1, _, first) = post(&t, "/v1/sources", key, "src-1", &body).await;
    let (s2, replayed, second) = post(&t, "/v1/sources", key, "src-1", &body).await;
    assert_eq!((s1, s2, replayed), (201, 201, true), "{second}");
    assert_eq!(
        first["secrets"][0]["secret"],
        second["secrets"][0]["secret"]
    );
    // Without the key, the retry is a conflict: the source exists.
    let (status, _) = t
        .call(Method::POST, "/v1/sources", Some(key), Some(body))
        .await;
    assert_eq!(status, 409);
    t.shutdown().await;
}

async fn refusals_worth_retrying_are_not_remembered(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    // A client key may not send; that refusal is not stored, so the key stays usable.
    let (status, _, _) = post(&t, "/v1/notifications", &app.client_key, "k", &a_send("x")).await;
    assert_eq!(status, 403);
    let (status, replayed, _) =
        post(&t, "/v1/notifications", &app.server_key, "k", &a_send("x")).await;
    assert_eq!((status, replayed), (202, false));
    let (status, _, body) = post(
        &t,
        "/v1/notifications",
        &app.server_key,
        "has space",
        &a_send("x"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("Idempotency-Key")));
    t.shutdown().await;
}

backend_tests!(
    the_same_key_twice_gives_one_event,
    the_same_key_with_another_body_is_refused,
    apps_do_not_share_keys,
    concurrent_duplicates_create_one_event,
    a_key_is_forgotten_after_a_day,
    a_retried_source_creation_shows_the_same_secret,
    refusals_worth_retrying_are_not_remembered,
);
