//! Provider identities: bridge instances that share an APNs key present one provider token,
//! and the simulator tells keys, teams, service accounts and projects apart the way Apple and
//! Google do (unknown or revoked identities, a project that is not the token's, and a key's
//! token replaced too often).

use std::collections::{BTreeMap, BTreeSet};

use crate::harness::wire::tls_connect;
use crate::harness::{certs_dir, simulator, simulator_with, Db, TestApp};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushbridge::config::Config;
use pushbridge::model::device::DeviceRegistration;
use pushbridge::model::{ApnsEnvironment, Notification, Platform};
use pushbridge::push::fcm::ServiceAccount;
use pushbridge::push::{ApnsConfig, FcmConfig, Outcome, Providers, Target};
use pushbridge::simulator::{
    apns_test_token, fcm_test_token, ApnsKeyFile, ApnsTestKind, FcmTestKind, Side, SimulatorHandle,
};
use reqwest::Method;
use serde_json::{json, Value};

/// An app without credentials of its own: its sends use the config file's keys.
const NO_OWN_CREDENTIAL: &str = "app_without_credentials";

const SECOND_KEY_ID: &str = "SIMKEY0002";
const SECOND_TEAM_ID: &str = "SIMTEAM002";
const SECOND_PROJECT: &str = "pushbridge-sim-2";

fn second_key() -> ApnsKeyFile {
    ApnsKeyFile {
        key_id: SECOND_KEY_ID.into(),
        team_id: SECOND_TEAM_ID.into(),
        path: certs_dir().join(format!("AuthKey_{SECOND_KEY_ID}.p8")),
    }
}

fn second_account_path() -> std::path::PathBuf {
    certs_dir().join("fcm-service-account-2.json")
}

/// The bridge's provider settings for `sim`, with the default test identities.
fn configs(sim: &SimulatorHandle) -> (ApnsConfig, FcmConfig) {
    let mut config = Config::default();
    pushbridge::use_simulator(&mut config, sim, &certs_dir());
    (config.apns, config.fcm)
}

fn send_apns(apns: &ApnsConfig) -> impl std::future::Future<Output = Outcome> {
    let providers = Providers::new(apns, &FcmConfig::default()).expect("providers");
    async move {
        let target = Target {
            platform: Platform::Apns,
            token: apns_test_token(ApnsTestKind::Success, 1),
            environment: ApnsEnvironment::Production,
            topic: None,
        };
        providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await
    }
}

async fn send_fcm(fcm: &FcmConfig) -> Outcome {
    let providers = Providers::new(&ApnsConfig::default(), fcm).expect("providers");
    let target = Target {
        platform: Platform::Fcm,
        token: fcm_test_token(FcmTestKind::Success, 1),
        environment: ApnsEnvironment::Production,
        topic: None,
    };
    providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await
}

fn hello() -> Notification {
    Notification {
        title: Some("Hello".into()),
        body: Some("from a second identity".into()),
        ..Notification::default()
    }
}

fn refused(reason: &str) -> Outcome {
    Outcome::CredentialRejected {
        reason: reason.into(),
    }
}

fn claims(authorization: &str) -> Value {
    let payload = authorization
        .trim_start_matches("bearer ")
        .split('.')
        .nth(1)
        .expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

async fn register_apns_devices(app: &TestApp, app_id: &str, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let reg = DeviceRegistration {
            platform: Platform::Apns,
            user_id: None,
            locale: None,
            timezone: None,
            app_version: None,
            environment: Some(ApnsEnvironment::Production),
            topic: None,
            attributes: json!({}),
            tags: vec![],
        };
        app.store()
            .upsert_device(app_id, &apns_test_token(ApnsTestKind::Success, seed), &reg)
            .await
            .expect("register");
    }
}

async fn send_to_all_and_wait(app: &TestApp, server_key: &str) {
    let (status, sent) = app
        .call(
            Method::POST,
            "/v1/notifications",
            Some(server_key),
            Some(json!({"to": {"devices": {}}, "template": {"body": "hi"}})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let event_id = sent["event_id"].as_str().expect("event id");
    app.wait_for(&format!("/v1/events/{event_id}"), server_key, |e| {
        e["status"] == "completed"
    })
    .await;
}

async fn instances_sharing_a_key_present_one_jwt(db: Db) {
    let sim = simulator().await;
    let first = TestApp::with_simulator(db, &sim, |_| {}).await;
    let app = first.new_app().await;
    register_apns_devices(&first, &app.app.id, 0..20).await;
    send_to_all_and_wait(&first, &app.server_key).await;

    // A second instance, started later, takes over the same key.
    let second = first.another_instance(&sim, |_| {}).await;
    first.shutdown().await;
    send_to_all_and_wait(&second, &app.server_key).await;

    let apns: Vec<_> = sim
        .records()
        .into_iter()
        .filter(|r| r.side == Side::Apns)
        .collect();
    assert_eq!(apns.len(), 40);
    assert!(apns.iter().all(|r| r.status == 200));
    let connections: BTreeSet<u64> = apns.iter().map(|r| r.connection_id).collect();
    assert!(
        connections.len() >= 2,
        "both instances sent: {connections:?}"
    );
    // One token per window (the run may straddle a window boundary).
    let mut by_iat: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in &apns {
        let auth = r.headers["authorization"].clone();
        by_iat
            .entry(claims(&auth)["iat"].as_i64().expect("iat"))
            .or_default()
            .insert(auth);
    }
    assert!(
        by_iat.values().all(|tokens| tokens.len() == 1),
        "{by_iat:?}"
    );
    let first_conn = apns[0].connection_id;
    let last = &apns[apns.len() - 1];
    assert_ne!(last.connection_id, first_conn);
    if by_iat.len() == 1 {
        assert_eq!(
            apns[0].headers["authorization"],
            last.headers["authorization"]
        );
    }
    second.shutdown().await;
}

backend_tests!(instances_sharing_a_key_present_one_jwt);

#[tokio::test]
async fn a_second_apns_key_is_accepted_with_its_own_team() {
    let sim = simulator_with(|c| c.apns_keys.push(second_key())).await;
    let (mut apns, _) = configs(&sim);
    apns.key_path = second_key().path;
    apns.key_id = SECOND_KEY_ID.into();
    apns.team_id = SECOND_TEAM_ID.into();

    assert!(matches!(send_apns(&apns).await, Outcome::Delivered { .. }));
    let record = &sim.records()[0];
    let claims = claims(&record.headers["authorization"]);
    assert_eq!(claims["iss"], SECOND_TEAM_ID);
}

#[tokio::test]
async fn unknown_kid_wrong_team_or_wrong_signature_is_an_invalid_provider_token() {
    let sim = simulator().await;
    let (default, _) = configs(&sim);
    // A key the simulator was never told about.
    let unknown = ApnsConfig {
        key_path: second_key().path,
        key_id: SECOND_KEY_ID.into(),
        team_id: SECOND_TEAM_ID.into(),
        ..default.clone()
    };
    // The right key, claiming another team.
    let wrong_team = ApnsConfig {
        team_id: SECOND_TEAM_ID.into(),
        ..default.clone()
    };
    // The known key id, signed by another key.
    let wrong_signature = ApnsConfig {
        key_path: second_key().path,
        ..default.clone()
    };
    for config in [unknown, wrong_team, wrong_signature] {
        assert_eq!(
            send_apns(&config).await,
            Outcome::CredentialRejected {
                reason: "InvalidProviderToken".into()
            },
            "{}",
            config.team_id
        );
    }
    assert!(matches!(
        send_apns(&default).await,
        Outcome::Delivered { .. }
    ));
    let statuses: Vec<u16> = sim.records().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 403, 403, 200]);
}

#[tokio::test]
async fn a_revoked_apns_key_gets_invalid_provider_token() {
    let sim = simulator().await;
    let (apns, _) = configs(&sim);
    let providers = Providers::new(&apns, &FcmConfig::default()).expect("providers");
    let target = Target {
        platform: Platform::Apns,
        token: apns_test_token(ApnsTestKind::Success, 9),
        environment: ApnsEnvironment::Production,
        topic: None,
    };
    assert!(matches!(
        providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await,
        Outcome::Delivered { .. }
    ));

    assert!(sim.revoke_apns_key(pushbridge::simulator::TEST_KEY_ID));
    assert!(!sim.revoke_apns_key("NOSUCHKEY0"));

    assert_eq!(
        providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await,
        refused("InvalidProviderToken")
    );
    assert!(sim.apns_keys()[0].revoked);
}

#[tokio::test]
async fn fcm_project_must_be_the_access_tokens_own() {
    let sim = simulator_with(|c| c.fcm_service_accounts.push(second_account_path())).await;
    let (_, fcm) = configs(&sim);
    // The first account's token, sent to the second account's project.
    let other_project = FcmConfig {
        project_id: Some(SECOND_PROJECT.into()),
        ..fcm.clone()
    };
    let outcome = send_fcm(&other_project).await;
    assert!(
        matches!(&outcome, Outcome::CredentialRejected { reason } if reason.contains("PERMISSION_DENIED")),
        "{outcome:?}"
    );
    let denied = sim
        .records()
        .into_iter()
        .find(|r| r.side == Side::Fcm)
        .expect("a send");
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.path,
        format!("/v1/projects/{SECOND_PROJECT}/messages:send")
    );

    // The second account sends to its own project.
    let second = FcmConfig {
        service_account_path: second_account_path(),
        ..fcm
    };
    assert!(matches!(send_fcm(&second).await, Outcome::Delivered { .. }));
}

#[tokio::test]
async fn a_revoked_service_account_loses_its_tokens_and_gets_no_new_ones() {
    let sim = simulator().await;
    let (_, fcm) = configs(&sim);
    let providers = Providers::new(&ApnsConfig::default(), &fcm).expect("providers");
    let target = Target {
        platform: Platform::Fcm,
        token: fcm_test_token(FcmTestKind::Success, 3),
        environment: ApnsEnvironment::Production,
        topic: None,
    };
    assert!(matches!(
        providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await,
        Outcome::Delivered { .. }
    ));
    let account = ServiceAccount::load(&fcm.service_account_path).expect("account");
    assert!(sim.revoke_fcm_service_account(&account.client_email));

    let outcome = providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await;
    assert!(!matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let after: Vec<(Side, u16)> = sim
        .records()
        .iter()
        .skip(2)
        .map(|r| (r.side, r.status))
        .collect();
    // The cached access token is refused, and the new assertion too.
    assert_eq!(after[0], (Side::Fcm, 401));
    assert!(after.contains(&(Side::Token, 400)), "{after:?}");
}

/// Posts one notification to the simulator's APNs side with `jwt`: status and reason.
async fn post_apns(sim: &SimulatorHandle, jwt: &str) -> (u16, String) {
    let tls = tls_connect(sim.apns_addr(), &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let request = http::Request::post(format!("{}/3/device/{token}", sim.apns_url()))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", "com.example.app")
        .body(Full::new(Bytes::from_static(br#"{"aps":{"alert":"hi"}}"#)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let reason = serde_json::from_slice::<Value>(&body)
        .map(|b| b["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, reason)
}

/// A provider token for the test key, issued at `iat`.
fn test_key_jwt(iat: i64) -> String {
    let key = std::fs::read(certs_dir().join("AuthKey_SIMKEY0001.p8")).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(pushbridge::simulator::TEST_KEY_ID.into());
    jsonwebtoken::encode(
        &header,
        &json!({"iss": pushbridge::simulator::TEST_TEAM_ID, "iat": iat}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).expect("p8"),
    )
    .expect("jwt")
}

#[tokio::test]
async fn a_key_whose_token_is_replaced_too_often_gets_too_many_provider_token_updates() {
    let sim = simulator_with(|c| c.token_update_interval_secs = 60).await;
    let now = sim.clock().unix_secs();
    let (first, update, too_soon) = (
        test_key_jwt(now - 30),
        test_key_jwt(now - 20),
        test_key_jwt(now - 10),
    );

    assert_eq!(post_apns(&sim, &first).await.0, 200);
    assert_eq!(post_apns(&sim, &update).await.0, 200, "one update is fine");
    assert_eq!(
        post_apns(&sim, &too_soon).await,
        (429, "TooManyProviderTokenUpdates".to_string())
    );
    // The current token keeps working, and so does an older one.
    assert_eq!(post_apns(&sim, &update).await.0, 200);
    assert_eq!(post_apns(&sim, &first).await.0, 200);
    // Once the interval has passed, the next update is accepted.
    sim.clock().shift(61);
    assert_eq!(post_apns(&sim, &too_soon).await.0, 200);
}

#[tokio::test]
async fn the_bridge_never_updates_its_token_too_often_for_apple() {
    // Apple's interval, and hours of the bridge's clock in 10-minute steps.
    let sim = simulator().await;
    let (apns, _) = configs(&sim);
    let clock = pushbridge::clock::Clock::system();
    let providers =
        Providers::with_clock(&apns, &FcmConfig::default(), clock.clone()).expect("providers");
    let target = Target {
        platform: Platform::Apns,
        token: apns_test_token(ApnsTestKind::Success, 5),
        environment: ApnsEnvironment::Production,
        topic: None,
    };
    for _ in 0..18 {
        assert!(matches!(
            providers.send(NO_OWN_CREDENTIAL, &target, &hello()).await,
            Outcome::Delivered { .. }
        ));
        clock.shift(600);
        sim.clock().shift(600);
    }
    let tokens: BTreeSet<String> = sim
        .records()
        .iter()
        .map(|r| r.headers["authorization"].clone())
        .collect();
    assert!(tokens.len() >= 3, "the token was refreshed along the way");
}

#[tokio::test]
async fn identities_can_be_listed_added_and_revoked_over_http() {
    let sim = simulator().await;
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(certs_dir().join("ca.pem")).expect("ca"))
            .expect("ca pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let base = sim.fcm_url();
    let pem = std::fs::read_to_string(second_key().path).expect("p8");

    let added = client
        .put(format!("{base}/sim/apns-keys/{SECOND_KEY_ID}"))
        .json(&json!({"team_id": SECOND_TEAM_ID, "key": pem}))
        .send()
        .await
        .expect("put");
    assert_eq!(added.status(), 200);
    let bad = client
        .put(format!("{base}/sim/apns-keys/BADKEY0001"))
        .json(&json!({"team_id": "T", "key": "-----BEGIN PRIVATE KEY-----\nAAAA"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.expect("json")["field"], "key");

    let revoked = client
        .post(format!(
            "{base}/sim/service-accounts/pushbridge-sim%40pushbridge-sim.iam.gserviceaccount.com/revoke"
        ))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let unknown = client
        .post(format!("{base}/sim/apns-keys/NOSUCHKEY0/revoke"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(unknown.status(), 404);

    let listed: Value = client
        .get(format!("{base}/sim/identities"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let key_ids: Vec<&str> = listed["apns_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().expect("id"))
        .collect();
    assert_eq!(key_ids, ["SIMKEY0001", SECOND_KEY_ID]);
    assert_eq!(listed["fcm_service_accounts"][0]["revoked"], true);
    // The key added over HTTP signs accepted tokens.
    let (mut apns, _) = configs(&sim);
    apns.key_path = second_key().path;
    apns.key_id = SECOND_KEY_ID.into();
    apns.team_id = SECOND_TEAM_ID.into();
    assert!(matches!(send_apns(&apns).await, Outcome::Delivered { .. }));
    // Control requests never record a body (it may hold a private key).
    assert!(sim
        .records()
        .iter()
        .filter(|r| r.side == Side::Admin)
        .all(|r| r.body.is_null()));
}
