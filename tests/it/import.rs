//! Bulk device import and export, through the API and the CLI.

use crate::harness::{Db, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// An APNs token unique to `i`.
fn apns(i: usize) -> String {
    format!("{i:064x}")
}

/// An FCM token unique to `i`.
fn fcm(i: usize) -> String {
    format!("fcm-{i:0>8}:{}", "A".repeat(120))
}

/// The bad lines of the 10 000-line file, by line number, and why each is bad.
fn bad_line(n: usize) -> Option<String> {
    Some(match n {
        3 => "{not json".to_string(),
        1_000 => json!({"token": "zz", "platform": "apns"}).to_string(),
        2_500 => json!({"token": apns(n), "platform": "fcm"}).to_string(),
        4_001 => json!({"token": apns(n), "platform": "apns", "colour": "red"}).to_string(),
        6_000 => {
            json!({"token": apns(n), "platform": "apns", "locale": "not a locale!"}).to_string()
        }
        8_888 => json!({"platform": "apns"}).to_string(),
        10_000 => json!({"token": apns(n), "platform": "apns", "environment": "moon"}).to_string(),
        _ => return None,
    })
}

const BAD: [u64; 7] = [3, 1_000, 2_500, 4_001, 6_000, 8_888, 10_000];

fn ten_thousand_lines() -> String {
    let mut out = String::new();
    for n in 1..=10_000 {
        let line = bad_line(n).unwrap_or_else(|| {
            if n % 2 == 0 {
                json!({"token": apns(n), "platform": "apns", "user_id": format!("u{n}"),
                       "locale": "fr-ca", "tags": ["imported"]})
                .to_string()
            } else {
                json!({"token": fcm(n), "platform": "fcm", "attributes": {"plan": "pro"}})
                    .to_string()
            }
        });
        out.push_str(&line);
        out.push('\n');
    }
    out
}

async fn import(t: &TestApp, key: &str, body: String) -> (u16, Value) {
    let resp = t
        .client
        .post(t.url("/v1/devices/import"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("import");
    (
        resp.status().as_u16(),
        resp.json().await.expect("JSON answer"),
    )
}

async fn export(t: &TestApp, key: &str) -> Vec<Value> {
    let resp = t
        .client
        .get(t.url("/v1/devices/export"))
        .bearer_auth(key)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.expect("body");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn an_import_reports_its_bad_lines_and_stores_the_rest(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let key = &app.server_key;
    let (status, report) = import(&t, key, ten_thousand_lines()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["created"], 9_993, "{report}");
    assert_eq!(report["updated"], 0);
    assert_eq!(report["rejected"], 7);
    let lines: Vec<u64> = report["rejected_lines"]
        .as_array()
        .expect("rejected lines")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, BAD, "{report}");
    let reasons: Vec<&str> = report["rejected_lines"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["reason"].as_str().expect("reason"))
        .collect();
    assert!(reasons[0].starts_with("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].starts_with("token:"), "{reasons:?}");
    assert!(reasons[3].contains("colour"), "{reasons:?}");
    assert!(reasons[4].starts_with("locale:"), "{reasons:?}");
    assert!(reasons[5].contains("token"), "{reasons:?}");
    assert!(reasons[6].starts_with("environment:"), "{reasons:?}");
    assert_eq!(report["rejected_lines_truncated"], false);
    // Stored as a registration would be.
    let (status, device) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{}", apns(2)),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["locale"], "fr-CA");
    assert_eq!(device["user_id"], "u2");
    assert_eq!(device["tags"], json!(["imported"]));
    // The same file again creates nothing.
    let (status, again) = import(&t, key, ten_thousand_lines()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            &again["created"],
            &again["updated"],
            &again["unchanged"],
            &again["rejected"]
        ),
        (&json!(0), &json!(0), &json!(9_993), &json!(7)),
        "{again}"
    );
    assert_eq!(export(&t, key).await.len(), 9_993);
    t.shutdown().await;
}

async fn an_export_imports_into_another_app_as_it_was(db: Db) {
    let t = TestApp::spawn(db).await;
    let from = t.new_app().await;
    let to = t.new_app().await;
    let mut lines = String::new();
    for n in 0..2_345 {
        lines.push_str(
            &json!({"token": apns(n), "platform": "apns", "timezone": "Europe/Paris",
                               "attributes": {"n": n}})
            .to_string(),
        );
        lines.push('\n');
    }
    // A changed line and a token given twice: the last line of a token wins.
    lines.push_str(&json!({"token": apns(7), "platform": "apns", "user_id": "late"}).to_string());
    let (_, report) = import(&t, &from.server_key, lines).await;
    assert_eq!(
        (&report["created"], &report["updated"]),
        (&json!(2_345), &json!(1)),
        "{report}"
    );
    let exported = export(&t, &from.server_key).await;
    assert_eq!(exported.len(), 2_345);
    let tokens: Vec<&str> = exported
        .iter()
        .map(|d| d["token"].as_str().expect("token"))
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "in token order");
    let seven = exported
        .iter()
        .find(|d| d["token"] == apns(7))
        .expect("token 7");
    assert_eq!(seven["user_id"], "late");
    let body: String = exported.iter().map(|d| format!("{d}\n")).collect();
    let (_, copied) = import(&t, &to.server_key, body).await;
    assert_eq!(
        (&copied["created"], &copied["rejected"]),
        (&json!(2_345), &json!(0)),
        "{copied}"
    );
    assert_eq!(export(&t, &to.server_key).await, exported);
    t.shutdown().await;
}

async fn an_import_needs_a_server_key_and_ndjson(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let line = json!({"token": apns(1), "platform": "apns"}).to_string();
    let (status, body) = import(&t, &app.client_key, line.clone()).await;
    assert_eq!(status, 403, "{body}");
    let resp = t
        .client
        .post(t.url("/v1/devices/import"))
        .bearer_auth(&app.server_key)
        .header("content-type", "text/plain")
        .body(line)
        .send()
        .await
        .expect("import");
    assert_eq!(resp.status(), 415);
    let (status, body) = t
        .call(
            Method::GET,
            "/v1/devices/export?state=gone",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    t.shutdown().await;
}

async fn the_cli_imports_a_file_and_exports_it(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("devices.ndjson");
    let mut lines = String::new();
    for n in 0..1_500 {
        lines.push_str(&json!({"token": apns(n), "platform": "apns"}).to_string());
        lines.push('\n');
    }
    lines.push_str("{\"token\": 1}\n");
    std::fs::write(&file, lines).expect("write");
    let (db_url, id, path) = (t.db_url().to_string(), app.app.id.clone(), file.clone());
    let dir_path = dir.path().to_path_buf();
    let (imported, exported) = tokio::task::spawn_blocking(move || {
        let file = path.to_str().expect("utf-8 path");
        let run = |args: &[&str]| crate::harness::process::run_cli(&db_url, &dir_path, args);
        (
            run(&["devices", "import", "--app", &id, file]),
            run(&["devices", "export", "--app", &id]),
        )
    })
    .await
    .expect("cli");
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let report: Value = serde_json::from_slice(&imported.stdout).expect("a JSON report");
    assert_eq!(
        (&report["created"], &report["rejected"]),
        (&json!(1_500), &json!(1)),
        "{report}"
    );
    assert_eq!(report["rejected_lines"][0]["line"], 1_501);
    assert!(exported.status.success());
    let out = String::from_utf8(exported.stdout).expect("utf-8");
    assert_eq!(out.lines().count(), 1_500);
    assert_eq!(export(&t, &app.server_key).await.len(), 1_500);
    t.shutdown().await;
}

backend_tests!(
    an_import_reports_its_bad_lines_and_stores_the_rest,
    an_export_imports_into_another_app_as_it_was,
    an_import_needs_a_server_key_and_ndjson,
    the_cli_imports_a_file_and_exports_it,
);
