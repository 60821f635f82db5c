//! Per-app credentials as a user tries them locally: a key generated with `openssl`, uploaded
//! to a bridge whose simulator learns uploaded keys (`serve --simulator`), then managed with
//! the `pushbridge credentials` commands while the bridge runs. Also the provider layer's
//! pooling rules: idle connections close, and the connection cap holds across credentials.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::{apns_token, certs_dir, fast_worker_on, simulator, Db, TestApp};
use pushbridge::config::Config;
use pushbridge::model::{ApnsEnvironment, Notification, Platform};
use pushbridge::push::{
    ApnsCredential, AppCredential, CredentialKey, Outcome, Providers, ProvidersConfig, Target,
};
use pushbridge::simulator::{apns_test_token, ApnsTestKind, SimulatorHandle};
use reqwest::Method;
use serde_json::{json, Value};

/// A P-256 key in PKCS#8 PEM made the way Apple's documentation and most guides do it:
/// `openssl genpkey`. Falls back to generating it in process where openssl is missing.
fn user_generated_p8(dir: &std::path::Path) -> String {
    let path = dir.join("AuthKey_LOCALKEY01.p8");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        std::fs::read_to_string(&path).expect("generated key")
    } else {
        eprintln!("notice: openssl not found; generating the test key in process");
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("P-256 key")
            .serialize_pem()
    }
}

/// The `kid` of the provider token on each APNs request to `token`.
fn kids_for(sim: &SimulatorHandle, token: &str) -> Vec<String> {
    use base64::Engine;
    sim.records()
        .iter()
        .filter(|r| r.token.as_deref() == Some(token))
        .filter_map(|r| r.headers.get("authorization"))
        .map(|auth| {
            let jwt = auth.trim_start_matches("bearer ");
            let header = jwt.split('.').next().expect("header");
            let header: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(header)
                    .expect("base64url"),
            )
            .expect("JSON header");
            header["kid"].as_str().expect("kid").to_string()
        })
        .collect()
}

async fn register(t: &TestApp, server_key: &str, token: &str) {
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("/v1/devices/{token}"),
            Some(server_key),
            Some(json!({"platform": "apns", "user_id": "local-user"})),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
}

/// Sends "hi" to every device of the app and waits until the event is completed.
async fn send_and_wait(t: &TestApp, server_key: &str) -> Value {
    let (status, sent) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(server_key),
            Some(json!({"to": {"devices": {}}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let event = sent["event_id"].as_str().expect("event id");
    t.wait_for(&format!("/v1/events/{event}"), server_key, |e| {
        e["status"] == "completed"
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_with_openssl_works_end_to_end_with_the_local_simulator() {
    let sim = simulator().await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let pem = user_generated_p8(dir.path());
    let url = Db::Sqlite.fresh_url(dir.path()).await;
    let observer: Arc<dyn pushbridge::service::credentials::CredentialObserver> =
        Arc::new(sim.registrar());
    let t = TestApp::spawn_observed(
        url,
        dir.clone(),
        |c| fast_worker_on(c, &sim),
        Some(observer),
    )
    .await;
    let app = t.new_app().await;
    let token = apns_token(41);
    register(&t, &app.server_key, &token).await;
    assert!(
        !sim.apns_keys().iter().any(|k| k.key_id == "LOCALKEY01"),
        "the simulator does not know the key before the upload"
    );

    let (status, view) = t
        .call(
            Method::PUT,
            "/v1/app/credentials/apns",
            Some(&app.server_key),
            Some(
                json!({"key_id": "LOCALKEY01", "team_id": "LOCALTEAM1", "private_key": pem,
                "default_topic": "com.example.local"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["source"], "app", "{view}");
    assert!(
        sim.apns_keys().iter().any(|k| k.key_id == "LOCALKEY01"),
        "uploading taught the simulator the key"
    );

    let event = send_and_wait(&t, &app.server_key).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    assert_eq!(kids_for(&sim, &token), vec!["LOCALKEY01".to_string()]);
    t.shutdown().await;
}

/// Runs `pushbridge credentials ARGS` against the database at `db_url`; returns stdout.
fn cli(db_url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .arg("credentials")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PUSHBRIDGE_DATABASE_URL", db_url)
        .output()
        .expect("run pushbridge");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pushbridge credentials {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_shows_and_deletes_credentials_of_a_running_bridge() {
    let sim = simulator_with_second_key().await;
    let t = TestApp::with_simulator(Db::Sqlite, &sim, |c| {
        c.providers.credentials_refresh_ms = 50;
    })
    .await;
    let app = t.new_app().await;
    let app_id = app.app.id.clone();
    let token = apns_token(42);
    register(&t, &app.server_key, &token).await;
    let db_url = t.running().state.config.database_url.clone();
    let key_file = certs_dir().join("AuthKey_SIMKEY0002.p8");

    let printed = cli(
        &db_url,
        &[
            "set-apns",
            &app_id,
            "--key-file",
            key_file.to_str().expect("path"),
            "--key-id",
            "SIMKEY0002",
            "--team-id",
            "SIMTEAM002",
            "--topic",
            "com.example.other",
        ],
    );
    assert!(printed.contains("sha256:"), "{printed}");
    let shown = cli(&db_url, &["show", &app_id]);
    assert!(
        shown.contains("apns: key SIMKEY0002 team SIMTEAM002 topic com.example.other"),
        "{shown}"
    );
    assert!(
        shown.contains("fcm: the config file's default; ok"),
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // The running bridge notices the change made from outside, without a restart.
    let view = t
        .wait_for("/v1/app/credentials", &app.server_key, |v| {
            v["apns"]["key_id"] == "SIMKEY0002"
        })
        .await;
    assert_eq!(view["apns"]["default_topic"], "com.example.other");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = send_and_wait(&t, &app.server_key).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    assert_eq!(
        kids_for(&sim, &token).last().map(String::as_str),
        Some("SIMKEY0002")
    );
    let topics: Vec<String> = sim
        .records()
        .iter()
        .filter(|r| r.token.as_deref() == Some(token.as_str()))
        .filter_map(|r| r.headers.get("apns-topic").cloned())
        .collect();
    assert_eq!(topics, vec!["com.example.other".to_string()]);

    cli(&db_url, &["delete", &app_id, "apns"]);
    let shown = cli(&db_url, &["show", &app_id]);
    assert!(shown.contains("apns: the config file's default"), "{shown}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = send_and_wait(&t, &app.server_key).await;
    assert_eq!(event["deliveries"]["delivered"], 1, "{event}");
    assert_eq!(
        kids_for(&sim, &token).last().map(String::as_str),
        Some(pushbridge::simulator::TEST_KEY_ID),
        "a removed credential stops being used"
    );

    // A bad key file is refused with the field named, and nothing changes.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(["credentials", "set-apns", &app_id, "--key-file"])
        .arg(certs_dir().join("server.pem"))
        .args(["--key-id", "SIMKEY0002", "--team-id", "SIMTEAM002"])
        .env_clear()
        .env("PUSHBRIDGE_DATABASE_URL", &db_url)
        .output()
        .expect("run pushbridge");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("private_key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    t.shutdown().await;
}

fn hello() -> Notification {
    Notification {
        title: Some("hi".into()),
        body: Some("there".into()),
        ..Notification::default()
    }
}

fn apns_target(seed: u64) -> Target {
    Target {
        platform: Platform::Apns,
        token: apns_test_token(ApnsTestKind::Success, seed),
        environment: ApnsEnvironment::Production,
        topic: None,
    }
}

fn second_key_pem() -> String {
    std::fs::read_to_string(certs_dir().join("AuthKey_SIMKEY0002.p8")).expect("key")
}

/// The simulator, knowing the repository's second APNs key too.
async fn simulator_with_second_key() -> SimulatorHandle {
    let sim = simulator().await;
    sim.add_apns_key("SIMKEY0002", "SIMTEAM002", &second_key_pem())
        .expect("second key");
    sim
}

fn second_key_credential(app_id: &str) -> AppCredential {
    let pem = second_key_pem();
    let key = ApnsCredential {
        key_id: "SIMKEY0002".into(),
        team_id: "SIMTEAM002".into(),
        private_key: pem,
        default_topic: Some("com.example.app".into()),
        environment: None,
    };
    let fingerprint = key.validate().expect("valid key");
    AppCredential {
        app_id: app_id.into(),
        key: CredentialKey::Apns(key),
        fingerprint,
        updated_at: 1,
    }
}

fn providers_for(sim: &SimulatorHandle, settings: &ProvidersConfig) -> Providers {
    let mut config = Config::default();
    pushbridge::use_simulator(&mut config, sim, &certs_dir());
    config.apns.pool_size = 1;
    Providers::with_settings(
        &config.apns,
        &config.fcm,
        settings,
        pushbridge::clock::Clock::system(),
    )
    .expect("providers")
}

fn open_connections(providers: &Providers) -> u64 {
    providers
        .stats()
        .iter()
        .map(|s| s.stats.connections_open)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_the_cap_holds_across_credentials() {
    let sim = simulator_with_second_key().await;
    let providers = providers_for(
        &sim,
        &ProvidersConfig {
            max_connections: 1,
            ..ProvidersConfig::default()
        },
    );
    assert!(providers.install(&second_key_credential("app_a")));
    assert!(
        !providers.install(&second_key_credential("app_a")),
        "the same version of a credential is not rebuilt"
    );

    // The default key's pool takes the one connection the cap allows.
    let outcome = providers.send("app_b", &apns_target(1), &hello()).await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    assert_eq!(open_connections(&providers), 1);
    assert_eq!(providers.connections_available(), 0);

    // App A's own pool must wait for it: within its request timeout it gets none...
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        providers.send("app_a", &apns_target(2), &hello()),
    )
    .await;
    assert!(waiting.is_err(), "no second connection under a cap of one");

    // ...until the idle one closes.
    assert_eq!(providers.close_idle(Duration::ZERO), 1);
    let mut closed = false;
    for _ in 0..100 {
        if providers.connections_available() == 1 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        closed,
        "closing the idle connection frees its place under the cap"
    );
    let outcome = providers.send("app_a", &apns_target(3), &hello()).await;
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let samples = providers.stats();
    let own = samples
        .iter()
        .find(|s| s.app.as_deref() == Some("app_a") && s.pool == "apns_production")
        .expect("app A's pool is reported with its app id");
    assert_eq!(own.stats.connections_open, 1);
    assert_eq!(open_connections(&providers), 1);

    // Removing the credential removes its pools; app A falls back to the default key.
    assert!(providers.remove("app_a", Platform::Apns));
    assert!(providers.stats().iter().all(|s| s.app.is_none()));
}
