//! `pushbridge templates preview`: the answer of `POST /v1/templates/{name}/preview`, printed
//! by the command line straight from the database, and its refusals.

use crate::harness::{bridge_env, open_store, simulator, test_secrets, Db, TestApp};
use pushbridge::simulator::tokens::{apns_test_token, ApnsTestKind};
use reqwest::Method;
use serde_json::{json, Value};

/// Runs `pushbridge templates <args>` in `dir` with exactly the `PUSHBRIDGE_*` of `env`.
fn templates(
    dir: &std::path::Path,
    env: &[(String, String)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHBRIDGE_")) {
        cmd.env_remove(k);
    }
    cmd.arg("templates")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run pushbridge templates")
}

const SPEC: &str = r#"{
    "title": "Payment received",
    "body": "Hi {{ user.first_name }}, you got {{ event.data.amount }} €",
    "locales": {
        "fr": {"title": "Paiement reçu", "body": "Salut {{ user.first_name }}, {{ event.data.amount }} € reçus"},
        "de": {"body": "Hallo {{ user.first_name }}"}
    }
}"#;

/// The preview with the `apns-id` header removed: it is minted anew for every request.
fn without_apns_id(mut preview: Value) -> Value {
    if let Some(headers) = preview["apns"]["headers"].as_object_mut() {
        assert!(headers.remove("apns-id").is_some(), "an apns-id header");
    }
    preview
}

async fn the_cli_shows_an_fr_ca_device_the_fr_variant_and_the_api_s_exact_apns_request(db: Db) {
    let sim = simulator().await;
    let t = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = t.new_app().await;
    let app_id = app.app.id.as_str();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = bridge_env(t.db_url(), &sim);
    std::fs::write(dir.path().join("payment.json"), SPEC).expect("spec file");
    let put = templates(
        dir.path(),
        &env,
        &["put", app_id, "payment", "payment.json"],
    );
    assert!(put.status.success(), "{put:?}");

    let token = apns_test_token(ApnsTestKind::Success, 11);
    let device = json!({"token": token, "platform": "apns", "locale": "fr-CA",
                        "attributes": {"first_name": "Zoé"}});
    let event = json!({"data": {"amount": 42}});
    let out = templates(
        dir.path(),
        &env,
        &[
            "preview",
            app_id,
            "payment",
            "--event",
            &event.to_string(),
            "--device",
            &device.to_string(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert!(printed.starts_with("{\n  \""), "pretty-printed: {printed}");
    let shown: Value = serde_json::from_str(&printed).expect("JSON on stdout");
    assert_eq!(shown["platform"], "apns");
    assert_eq!(shown["locale"]["variant"], "fr", "{shown}");
    assert_eq!(shown["locale"]["chain"], json!(["fr"]));
    assert!(
        shown["locale"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fr-CA") && r.contains("language")),
        "{shown}"
    );
    let apns = &shown["apns"];
    let expected =
        json!({"aps": {"alert": {"title": "Paiement reçu", "body": "Salut Zoé, 42 € reçus"}}});
    assert_eq!(apns["body"], expected, "{shown}");
    assert_eq!(apns["path"], format!("/3/device/{token}"));
    assert_eq!(apns["headers"]["apns-topic"], "com.example.app");
    assert_eq!(apns["headers"]["apns-push-type"], "alert");
    assert_eq!(apns["headers"]["apns-priority"], "10");
    assert_eq!(apns["bytes"], expected.to_string().len());
    assert_eq!(apns["limit"], 4096);
    assert!(shown.get("fcm").is_none(), "{shown}");

    // The API answers the very same JSON for the same device and event.
    let (status, api) = t
        .call(
            Method::POST,
            "/v1/templates/payment/preview",
            Some(&app.server_key),
            Some(json!({"device": device, "event": event})),
        )
        .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(without_apns_id(shown), without_apns_id(api));
    t.shutdown().await;
}

async fn the_cli_refuses_an_unknown_template_or_app_and_malformed_json(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app_id = store.create_app("cli").await.expect("app").app.id;
    store.close().await;
    let mut env = vec![("PUSHBRIDGE_DATABASE_URL".to_string(), url.clone())];
    if let Some(key) = test_secrets(&url).master_key {
        env.push(("PUSHBRIDGE_SECRETS__MASTER_KEY".into(), key.to_base64()));
    }
    let device = json!({"token": apns_test_token(ApnsTestKind::Success, 12), "platform": "apns"})
        .to_string();
    let refusal = |args: &[&str]| {
        let out = templates(dir.path(), &env, args);
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!said.contains("panicked"), "{said}");
        said
    };

    let said = refusal(&["preview", &app_id, "nope", "--device", &device]);
    assert!(
        said.contains("template nope") && said.contains("template not found"),
        "{said}"
    );
    let said = refusal(&["preview", "app_nope", "nope", "--device", &device]);
    assert!(said.contains("no app app_nope"), "{said}");
    let said = refusal(&[
        "preview",
        &app_id,
        "nope",
        "--device",
        &device,
        "--event",
        "{\"data\":",
    ]);
    assert!(said.contains("--event: not a JSON object"), "{said}");
    let said = refusal(&["preview", &app_id, "nope", "--device", "{\"platform\": 7}"]);
    assert!(said.contains("--device: not a device"), "{said}");
}

backend_tests!(
    the_cli_shows_an_fr_ca_device_the_fr_variant_and_the_api_s_exact_apns_request,
    the_cli_refuses_an_unknown_template_or_app_and_malformed_json,
);
