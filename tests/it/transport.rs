//! Provider transport against the in-process simulator: real TLS, real HTTP/2, real pool.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::wire::tls_connect;
use crate::harness::{certs_dir, simulator};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushbridge::clock::Clock;
use pushbridge::config::Config;
use pushbridge::model::{ApnsEnvironment, Notification, Platform, Priority};
use pushbridge::push::{ApnsConfig, FcmConfig, Outcome, Providers, RetryClass, Target};
use pushbridge::simulator::{
    self, apns_test_token, apns_test_token_failing_first, fcm_test_token,
    fcm_test_token_failing_first, ApnsTestKind, Faults, FcmTestKind, RecordedRequest, Side,
    SimulatorHandle,
};
use serde_json::Value;

/// The counters of the config file's pool `name`, if there is one.
fn default_pool(providers: &Providers, name: &str) -> Option<pushbridge::push::PoolStats> {
    providers
        .stats()
        .into_iter()
        .find(|s| s.app.is_none() && s.pool == name)
        .map(|s| s.stats)
}

/// An app without credentials of its own: its sends use the config file's keys.
const NO_OWN_CREDENTIAL: &str = "app_without_credentials";

const TOPIC: &str = "com.example.app";

/// The providers' settings as the bridge gets them from `use_simulator`, with a small pool
/// and a short timeout.
fn provider_configs(sim: &SimulatorHandle) -> (ApnsConfig, FcmConfig) {
    let mut config = Config::default();
    pushbridge::use_simulator(&mut config, sim, &certs_dir());
    let apns = ApnsConfig {
        pool_size: 2,
        request_timeout_ms: 5_000,
        ..config.apns
    };
    let fcm = FcmConfig {
        pool_size: 2,
        request_timeout_ms: 5_000,
        ..config.fcm
    };
    (apns, fcm)
}

fn apns_config(sim: &SimulatorHandle) -> ApnsConfig {
    provider_configs(sim).0
}

fn fcm_config(sim: &SimulatorHandle) -> FcmConfig {
    provider_configs(sim).1
}

fn providers(sim: &SimulatorHandle) -> Providers {
    Providers::new(&apns_config(sim), &fcm_config(sim)).expect("providers")
}

fn apns(token: &str) -> Target {
    Target {
        platform: Platform::Apns,
        token: token.into(),
        environment: ApnsEnvironment::Production,
        topic: None,
    }
}

fn fcm(token: &str) -> Target {
    Target {
        platform: Platform::Fcm,
        token: token.into(),
        environment: ApnsEnvironment::Production,
        topic: None,
    }
}

fn hello() -> Notification {
    Notification {
        title: Some("Order shipped".into()),
        body: Some("Your order 42 is on its way".into()),
        ..Notification::default()
    }
}

fn records_of(sim: &SimulatorHandle, side: Side) -> Vec<RecordedRequest> {
    sim.records()
        .into_iter()
        .filter(|r| r.side == side)
        .collect()
}

fn jwt_claims(authorization: &str) -> Value {
    let jwt = authorization.trim_start_matches("bearer ");
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

fn retry(reason: &str) -> Outcome {
    Outcome::Retry {
        after: None,
        reason: reason.into(),
        class: RetryClass::Transient,
    }
}

fn rejected(reason: &str) -> Outcome {
    Outcome::TokenRejected {
        reason: reason.into(),
    }
}

fn invalid(reason: &str) -> Outcome {
    Outcome::InvalidToken {
        reason: reason.into(),
        timestamp: None,
    }
}

fn failed(reason: &str) -> Outcome {
    Outcome::Failed {
        reason: reason.into(),
    }
}

#[tokio::test]
async fn apns_notification_is_delivered_over_tls_and_http2() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let n = Notification {
        subtitle: Some("Tracking".into()),
        badge: Some(3),
        sound: Some("default".into()),
        thread_id: Some("orders".into()),
        collapse_key: Some("order-42".into()),
        priority: Some(Priority::High),
        ttl_seconds: Some(3600),
        mutable_content: true,
        data: [("order_id".to_string(), "42".to_string())].into(),
        ..hello()
    };

    let outcome = providers.send(NO_OWN_CREDENTIAL, &apns(&token), &n).await;

    let records = records_of(&sim, Side::Apns);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        outcome,
        Outcome::Delivered {
            provider_id: r.headers["apns-id"].clone()
        }
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.path, format!("/3/device/{token}"));
    assert_eq!(r.headers["apns-topic"], TOPIC);
    assert_eq!(r.headers["apns-push-type"], "alert");
    assert_eq!(r.headers["apns-priority"], "10");
    assert_eq!(r.headers["apns-collapse-id"], "order-42");
    assert!(r.headers["apns-expiration"].parse::<u64>().unwrap() > 0);
    assert_eq!(jwt_claims(&r.headers["authorization"])["iss"], "SIMTEAM001");
    assert_eq!(r.body["aps"]["alert"]["title"], "Order shipped");
    assert_eq!(r.body["aps"]["alert"]["subtitle"], "Tracking");
    assert_eq!(r.body["aps"]["badge"], 3);
    assert_eq!(r.body["aps"]["thread-id"], "orders");
    assert_eq!(r.body["aps"]["mutable-content"], 1);
    assert_eq!(r.body["order_id"], "42");
}

#[tokio::test]
async fn fcm_notification_is_delivered_over_tls_and_http2() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = fcm_test_token(FcmTestKind::Success, 1);
    let n = Notification {
        priority: Some(Priority::High),
        ttl_seconds: Some(60),
        channel_id: Some("orders".into()),
        badge: Some(2),
        data: [("order_id".to_string(), "42".to_string())].into(),
        ..hello()
    };

    let outcome = providers.send(NO_OWN_CREDENTIAL, &fcm(&token), &n).await;

    let Outcome::Delivered { provider_id } = outcome else {
        panic!("expected delivery, got {outcome:?}");
    };
    assert!(provider_id.starts_with("projects/pushbridge-sim/messages/"));
    assert_eq!(records_of(&sim, Side::Token).len(), 1);
    let sends = records_of(&sim, Side::Fcm);
    assert_eq!(sends.len(), 1);
    let r = &sends[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.path, "/v1/projects/pushbridge-sim/messages:send");
    assert!(r.headers["authorization"].starts_with("Bearer ya29."));
    let m = &r.body["message"];
    assert_eq!(m["token"], token.as_str());
    assert_eq!(m["notification"]["title"], "Order shipped");
    assert_eq!(m["data"]["order_id"], "42");
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["ttl"], "60s");
    assert_eq!(m["android"]["notification"]["channel_id"], "orders");
    assert_eq!(m["apns"]["payload"]["aps"]["badge"], 2);
}

#[tokio::test]
async fn apns_errors_map_to_outcomes() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let cases = [
        (
            ApnsTestKind::Unregistered {
                timestamp_ms: Some(1_700_000_000_123),
            },
            Outcome::InvalidToken {
                reason: "Unregistered".into(),
                timestamp: Some(1_700_000_000_123),
            },
        ),
        (ApnsTestKind::BadDeviceToken, rejected("BadDeviceToken")),
        (
            ApnsTestKind::DeviceTokenNotForTopic,
            rejected("DeviceTokenNotForTopic"),
        ),
        (ApnsTestKind::TooManyRequests, retry("TooManyRequests")),
        (
            ApnsTestKind::ServiceUnavailable,
            retry("ServiceUnavailable"),
        ),
        (
            ApnsTestKind::InternalServerError,
            retry("InternalServerError"),
        ),
        // A fresh JWT is tried once; APNs still refusing it is worth a later retry.
        (
            ApnsTestKind::ExpiredProviderToken,
            retry("ExpiredProviderToken"),
        ),
        (ApnsTestKind::ConnectionReset, retry("ConnectionError")),
    ];
    for (seed, (kind, expected)) in cases.into_iter().enumerate() {
        let token = apns_test_token(kind, seed as u64);
        let outcome = providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await;
        assert_eq!(outcome, expected, "{kind:?}");
    }

    let expired = providers
        .send(
            NO_OWN_CREDENTIAL,
            &apns(&apns_test_token(ApnsTestKind::ExpiredToken, 99)),
            &hello(),
        )
        .await;
    assert!(
        matches!(&expired, Outcome::InvalidToken { reason, timestamp: Some(_) } if reason == "ExpiredToken"),
        "{expired:?}"
    );
}

#[tokio::test]
async fn apns_local_checks_fail_without_a_network_call() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let too_big = Notification {
        body: Some("x".repeat(4100)),
        ..Notification::default()
    };
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &too_big)
            .await,
        failed("PayloadTooLarge")
    );
    let long_collapse = Notification {
        collapse_key: Some("c".repeat(65)),
        ..hello()
    };
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &long_collapse)
            .await,
        failed("BadCollapseId")
    );
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns("not-hex"), &hello())
            .await,
        rejected("BadDeviceToken")
    );
    assert!(sim.records().is_empty());
    assert_eq!(sim.connections_accepted(), 0);
}

#[tokio::test]
async fn apns_bad_credentials_are_credential_refusals() {
    let sim = simulator().await;
    let config = ApnsConfig {
        key_id: "WRONGKEY00".into(),
        ..apns_config(&sim)
    };
    let providers = Providers::new(&config, &FcmConfig::default()).unwrap();
    let outcome = providers
        .send(
            NO_OWN_CREDENTIAL,
            &apns(&apns_test_token(ApnsTestKind::Success, 1)),
            &hello(),
        )
        .await;
    assert_eq!(
        outcome,
        Outcome::CredentialRejected {
            reason: "InvalidProviderToken".into()
        }
    );
}

#[tokio::test]
async fn a_third_party_auth_error_pauses_without_refreshing_the_access_token() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = fcm_test_token(FcmTestKind::ThirdPartyAuthError, 1);
    let outcome = providers
        .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
        .await;
    assert_eq!(
        outcome,
        Outcome::CredentialRejected {
            reason: "THIRD_PARTY_AUTH_ERROR".into()
        }
    );
    // One message, one access token: no token can fix the APNs key configured at Google.
    let sent: Vec<RecordedRequest> = sim
        .records()
        .into_iter()
        .filter(|r| r.token.as_deref() == Some(token.as_str()))
        .collect();
    assert_eq!(sent.len(), 1, "sent once, not resent after a refresh");
    let token_fetches = sim
        .records()
        .into_iter()
        .filter(|r| r.path.starts_with("/token"))
        .count();
    assert_eq!(token_fetches, 1, "no access-token refresh");
}

#[tokio::test]
async fn fcm_errors_map_to_outcomes() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let cases = [
        (FcmTestKind::Unregistered, invalid("UNREGISTERED")),
        (
            FcmTestKind::SenderIdMismatch,
            rejected("SENDER_ID_MISMATCH"),
        ),
        (FcmTestKind::InvalidArgument, rejected("INVALID_ARGUMENT")),
        (
            FcmTestKind::QuotaExceeded,
            Outcome::Retry {
                after: Some(Duration::from_secs(
                    pushbridge::simulator::QUOTA_RETRY_AFTER_SECS,
                )),
                reason: "QUOTA_EXCEEDED".into(),
                class: RetryClass::Throttled,
            },
        ),
        (FcmTestKind::Unavailable, retry("UNAVAILABLE")),
        (FcmTestKind::Internal, retry("INTERNAL")),
        (FcmTestKind::ConnectionReset, retry("ConnectionError")),
    ];
    for (seed, (kind, expected)) in cases.into_iter().enumerate() {
        let token = fcm_test_token(kind, seed as u64);
        let outcome = providers
            .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
            .await;
        assert_eq!(outcome, expected, "{kind:?}");
    }
    // A malformed token is blamed on the token: the device is kept, as suspect.
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm("too-short"), &hello())
            .await,
        rejected("INVALID_ARGUMENT")
    );
    let too_big = Notification {
        body: Some("x".repeat(4100)),
        ..Notification::default()
    };
    let token = fcm_test_token(FcmTestKind::Success, 1);
    let before = sim.records().len();
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&token), &too_big)
            .await,
        failed("PayloadTooLarge")
    );
    assert_eq!(sim.records().len(), before);
}

#[tokio::test]
async fn tokens_failing_first_n_times_then_succeed() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let apns_token = apns_test_token_failing_first(ApnsTestKind::ServiceUnavailable, 2, 5);
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&apns_token), &hello())
            .await,
        retry("ServiceUnavailable")
    );
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&apns_token), &hello())
            .await,
        retry("ServiceUnavailable")
    );
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&apns_token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));

    let fcm_token = fcm_test_token_failing_first(FcmTestKind::Unavailable, 1, 5);
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&fcm_token), &hello())
            .await,
        retry("UNAVAILABLE")
    );
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&fcm_token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
}

#[tokio::test]
async fn expired_provider_token_is_replaced_and_the_send_retried() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = apns_test_token_failing_first(ApnsTestKind::ExpiredProviderToken, 1, 3);

    let outcome = providers
        .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
        .await;

    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let records = records_of(&sim, Side::Apns);
    assert_eq!(
        records.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403, 200]
    );
    assert_ne!(
        records[0].headers["authorization"],
        records[1].headers["authorization"]
    );
}

#[tokio::test]
async fn provider_jwt_is_reused_until_its_refresh_age() {
    let sim = simulator().await;
    let clock = Clock::system();
    // Start 5 to 55 minutes in the past, one minute into a refresh window (tokens are
    // aligned to windows of `apns.jwt_refresh_secs`, 50 minutes by default).
    let refresh = ApnsConfig::default().jwt_refresh_secs as i64;
    clock.shift(-55 * 60);
    clock.shift((60 - clock.unix_secs()).rem_euclid(refresh));
    let providers =
        Providers::with_clock(&apns_config(&sim), &FcmConfig::default(), clock.clone()).unwrap();
    let token = apns_test_token(ApnsTestKind::Success, 1);
    for _ in 0..3 {
        assert!(matches!(
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await,
            Outcome::Delivered { .. }
        ));
    }
    clock.shift(51 * 60);
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));

    let auth: Vec<String> = records_of(&sim, Side::Apns)
        .into_iter()
        .map(|r| r.headers["authorization"].clone())
        .collect();
    assert_eq!(auth[0], auth[1]);
    assert_eq!(auth[1], auth[2]);
    assert_ne!(auth[2], auth[3]);
    let first_iat = jwt_claims(&auth[0])["iat"].as_i64().unwrap();
    let refreshed_iat = jwt_claims(&auth[3])["iat"].as_i64().unwrap();
    // Each token's iat is its window's start, so the refresh is exactly one window newer.
    assert_eq!(first_iat % refresh, 0);
    assert_eq!(refreshed_iat - first_iat, refresh);
}

#[tokio::test]
async fn oauth_token_is_cached_and_refreshed_on_401_and_expiry() {
    let sim = simulator().await;
    let clock = Clock::system();
    // Start nearly an hour in the past, so that moving to the present expires the token
    // without producing assertions from the future.
    clock.shift(-3570);
    let providers = Arc::new(
        Providers::with_clock(&ApnsConfig::default(), &fcm_config(&sim), clock.clone()).unwrap(),
    );
    let mut sends = tokio::task::JoinSet::new();
    for seed in 0..20 {
        let providers = providers.clone();
        sends.spawn(async move {
            let token = fcm_test_token(FcmTestKind::Success, seed);
            providers
                .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
                .await
        });
    }
    while let Some(outcome) = sends.join_next().await {
        assert!(matches!(outcome.unwrap(), Outcome::Delivered { .. }));
    }
    assert_eq!(records_of(&sim, Side::Token).len(), 1);

    sim.revoke_access_tokens();
    let token = fcm_test_token(FcmTestKind::Success, 100);
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(records_of(&sim, Side::Token).len(), 2);
    let statuses: Vec<u16> = records_of(&sim, Side::Fcm)
        .iter()
        .rev()
        .take(2)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 401]);

    // Within a minute of `expires_in` the token is replaced before use.
    clock.shift(3570);
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(records_of(&sim, Side::Token).len(), 3);
}

#[tokio::test]
async fn thousand_concurrent_sends_share_the_pool_connections() {
    let sim = simulator().await;
    // Latency keeps the streams open at the same time.
    sim.set_faults(Faults {
        latency_ms: 50,
        ..Faults::default()
    });
    let providers = Arc::new(providers(&sim));
    let mut sends = tokio::task::JoinSet::new();
    for seed in 0..1000 {
        let providers = providers.clone();
        sends.spawn(async move {
            let token = apns_test_token(ApnsTestKind::Success, seed);
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await
        });
    }
    while let Some(outcome) = sends.join_next().await {
        let outcome = outcome.unwrap();
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    }
    assert_eq!(records_of(&sim, Side::Apns).len(), 1000);
    assert!(
        sim.connections_accepted() <= 2,
        "{}",
        sim.connections_accepted()
    );
    let stats = default_pool(&providers, "apns_production").unwrap();
    assert!(stats.connections_opened <= 2);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn pool_reconnects_after_goaway() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        goaway_after_streams: Some(3),
        ..Faults::default()
    });
    let config = ApnsConfig {
        pool_size: 1,
        ..apns_config(&sim)
    };
    let providers = Providers::new(&config, &FcmConfig::default()).unwrap();
    for seed in 0..10 {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        let outcome = providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await;
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    }
    assert!(
        sim.connections_accepted() >= 4,
        "{}",
        sim.connections_accepted()
    );
    assert!(
        default_pool(&providers, "apns_production")
            .unwrap()
            .connections_opened
            >= 4
    );
}

#[tokio::test]
async fn pool_reconnects_after_a_connection_reset() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let reset = fcm_test_token(FcmTestKind::ConnectionReset, 1);
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &fcm(&reset), &hello())
            .await,
        retry("ConnectionError")
    );
    let token = apns_test_token(ApnsTestKind::ConnectionReset, 2);
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        retry("ConnectionError")
    );
    for seed in 0..3 {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        assert!(matches!(
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await,
            Outcome::Delivered { .. }
        ));
        let token = fcm_test_token(FcmTestKind::Success, seed);
        assert!(matches!(
            providers
                .send(NO_OWN_CREDENTIAL, &fcm(&token), &hello())
                .await,
            Outcome::Delivered { .. }
        ));
    }
    let apns_connections: std::collections::BTreeSet<u64> = records_of(&sim, Side::Apns)
        .iter()
        .map(|r| r.connection_id)
        .collect();
    assert_eq!(apns_connections.len(), 2);
}

#[tokio::test]
async fn sandbox_devices_use_the_sandbox_host_and_connect_failures_retry() {
    let sim = simulator().await;
    let config = ApnsConfig {
        endpoint: "https://127.0.0.1:1".into(),
        ..apns_config(&sim)
    };
    let providers = Providers::new(&config, &FcmConfig::default()).unwrap();
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let sandbox = Target {
        environment: ApnsEnvironment::Sandbox,
        ..apns(&token)
    };
    assert!(matches!(
        providers.send(NO_OWN_CREDENTIAL, &sandbox, &hello()).await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        retry("ConnectFailed")
    );
}

#[tokio::test]
async fn unconfigured_platform_fails() {
    let providers = Providers::new(&ApnsConfig::default(), &FcmConfig::default()).unwrap();
    let outcome = providers
        .send(NO_OWN_CREDENTIAL, &fcm("token"), &hello())
        .await;
    assert_eq!(outcome, failed("ProviderNotConfigured"));
    assert_eq!(default_pool(&providers, "fcm"), None);
}

#[tokio::test]
async fn apns_side_accepts_clients_without_alpn() {
    let sim = simulator().await;
    let tls = tls_connect(sim.apns_addr(), &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let key = std::fs::read(certs_dir().join("AuthKey_SIMKEY0001.p8")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(simulator::TEST_KEY_ID.into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": simulator::TEST_TEAM_ID, "iat": now}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap(),
    )
    .unwrap();
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let request = http::Request::post(format!("{}/3/device/{token}", sim.apns_url()))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", TOPIC)
        .body(Full::new(Bytes::from_static(br#"{"aps":{"alert":"hi"}}"#)))
        .unwrap();

    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.status(), 200);
    // Generated because the request had none.
    let apns_id = response.headers()["apns-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(apns_id).is_ok());
    // HEADERS carried END_STREAM: there is no body, not even an empty DATA frame.
    assert!(response.body().is_end_stream());
}

#[tokio::test]
async fn fcm_side_answers_http1() {
    let sim = simulator().await;
    let tls = tls_connect(sim.fcm_addr(), &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let token = fcm_test_token(FcmTestKind::Success, 1);
    let request = http::Request::post("/v1/projects/pushbridge-sim/messages:send")
        .header("host", "localhost")
        .header("authorization", "Bearer not-issued")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({"message": {"token": token}}).to_string(),
        )))
        .unwrap();

    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.status(), 401);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(records_of(&sim, Side::Fcm)[0].version, "HTTP/1.1");
}

#[tokio::test]
async fn injected_errors_carry_retry_after() {
    let sim = simulator().await;
    let providers = providers(&sim);
    sim.set_faults(Faults {
        error_rate: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let after = Some(Duration::from_secs(7));
    assert_eq!(
        providers
            .send(
                NO_OWN_CREDENTIAL,
                &apns(&apns_test_token(ApnsTestKind::Success, 1)),
                &hello()
            )
            .await,
        Outcome::Retry {
            after,
            reason: "ServiceUnavailable".into(),
            class: RetryClass::Transient,
        }
    );
    assert_eq!(
        providers
            .send(
                NO_OWN_CREDENTIAL,
                &fcm(&fcm_test_token(FcmTestKind::Success, 1)),
                &hello()
            )
            .await,
        Outcome::Retry {
            after,
            reason: "UNAVAILABLE".into(),
            class: RetryClass::Transient,
        }
    );
}

#[tokio::test]
async fn injected_connection_resets_retry_and_the_pool_recovers() {
    let sim = simulator().await;
    let providers = providers(&sim);
    let token = apns_test_token(ApnsTestKind::Success, 1);
    sim.set_faults(Faults {
        reset_probability: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        retry("ConnectionError")
    );
    sim.set_faults(Faults::default());
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(sim.connections_accepted(), 2);
}

#[tokio::test]
async fn concurrent_sends_survive_repeated_goaways() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        goaway_after_streams: Some(50),
        ..Faults::default()
    });
    let providers = Arc::new(providers(&sim));
    let mut sends = tokio::task::JoinSet::new();
    for seed in 0..300 {
        let providers = providers.clone();
        sends.spawn(async move {
            let token = apns_test_token(ApnsTestKind::Success, seed);
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await
        });
    }
    let mut delivered = 0;
    while let Some(outcome) = sends.join_next().await {
        match outcome.unwrap() {
            Outcome::Delivered { .. } => delivered += 1,
            // Losing a race twice in a row is allowed; the pipeline retries it.
            Outcome::Retry { reason, .. } => assert_eq!(reason, "ConnectionError"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(delivered >= 290, "{delivered}");
    assert!(sim.connections_accepted() >= 6);
}

#[tokio::test]
async fn slow_provider_times_out_as_retry_and_the_connection_is_kept() {
    let sim = simulator().await;
    let config = ApnsConfig {
        request_timeout_ms: 100,
        pool_size: 1,
        ..apns_config(&sim)
    };
    let providers = Providers::new(&config, &FcmConfig::default()).unwrap();
    let token = apns_test_token(ApnsTestKind::Success, 1);
    // Warm the connection up first so the timeout hits the request, not the handshake.
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    sim.set_faults(Faults {
        latency_ms: 5_000,
        ..Faults::default()
    });
    assert_eq!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        retry("Timeout")
    );
    sim.set_faults(Faults::default());
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    // A timed-out stream is cancelled, not the connection under it.
    assert_eq!(sim.connections_accepted(), 1);
}

#[tokio::test]
async fn provider_jwt_older_than_an_hour_is_rejected_by_the_simulator() {
    let sim = simulator().await;
    let clock = Clock::system();
    // Two hours behind: even the replacement (at most an hour newer) is too old.
    clock.shift(-121 * 60);
    let providers =
        Providers::with_clock(&apns_config(&sim), &FcmConfig::default(), clock).unwrap();
    let token = apns_test_token(ApnsTestKind::Success, 1);

    let outcome = providers
        .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
        .await;

    // The replacement is the newest window the answer justifies, and APNs refuses it too.
    assert_eq!(outcome, retry("ExpiredProviderToken"));
    assert_eq!(records_of(&sim, Side::Apns).len(), 2);
}

#[tokio::test]
async fn apns_side_requires_a_provider_token() {
    let sim = simulator().await;
    let tls = tls_connect(sim.apns_addr(), &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let token = apns_test_token(ApnsTestKind::Success, 1);
    let request = http::Request::post(format!("{}/3/device/{token}", sim.apns_url()))
        .header("apns-topic", TOPIC)
        .header("apns-id", "0a6c4f32-6f0e-4b36-a1b5-3c0f6bd0a2f1")
        .body(Full::new(Bytes::from_static(br#"{"aps":{}}"#)))
        .unwrap();

    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["apns-id"],
        "0a6c4f32-6f0e-4b36-a1b5-3c0f6bd0a2f1"
    );
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body, serde_json::json!({"reason": "MissingProviderToken"}));
}

#[tokio::test]
async fn a_silent_connection_costs_one_timeout_and_one_ping_before_delivery_resumes() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        blackhole_after_streams: Some(2),
        ..Faults::default()
    });
    let request_timeout = Duration::from_millis(500);
    let config = ApnsConfig {
        pool_size: 1,
        request_timeout_ms: request_timeout.as_millis() as u64,
        ..apns_config(&sim)
    };
    let providers = Providers::new(&config, &FcmConfig::default()).unwrap();
    let budget = request_timeout + pushbridge::push::pool::DEAD_CONNECTION_PING_TIMEOUT;
    let mut slowest = Duration::ZERO;
    for seed in 0..3 {
        let token = apns_test_token(ApnsTestKind::Success, seed);
        let started = std::time::Instant::now();
        let outcome = providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await;
        slowest = slowest.max(started.elapsed());
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    }
    // The third send went into the silence; its resend on a new connection was answered.
    assert!(slowest >= budget, "{slowest:?}");
    assert!(slowest < budget + Duration::from_millis(500), "{slowest:?}");
    let records = records_of(&sim, Side::Apns);
    assert_eq!(records.len(), 3, "every send is recorded once");
    assert!(records.iter().all(|r| r.status == 200));
    assert_eq!(records[2].connection_id, records[0].connection_id + 1);
    assert_eq!(sim.connections_accepted(), 2);
    let stats = default_pool(&providers, "apns_production").unwrap();
    assert_eq!(stats.connections_opened, 2);
    // The dead connection was closed, not left to the 80 s keep-alive.
    assert_eq!(stats.connections_open, 1);
}

#[tokio::test]
async fn every_send_waiting_on_a_silent_connection_is_resent_when_its_ping_fails() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        blackhole_after_streams: Some(1),
        ..Faults::default()
    });
    let config = ApnsConfig {
        pool_size: 1,
        request_timeout_ms: 500,
        ..apns_config(&sim)
    };
    let providers = Arc::new(Providers::new(&config, &FcmConfig::default()).unwrap());
    let warm = apns_test_token(ApnsTestKind::Success, 100);
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&warm), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    let mut sends = tokio::task::JoinSet::new();
    for seed in 0..5 {
        let providers = providers.clone();
        sends.spawn(async move {
            let token = apns_test_token(ApnsTestKind::Success, seed);
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await
        });
    }
    // The first connection stays silent; the next one must answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.set_faults(Faults::default());
    while let Some(outcome) = sends.join_next().await {
        let outcome = outcome.unwrap();
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    }
    assert_eq!(records_of(&sim, Side::Apns).len(), 6);
    // One PING check closed the silent connection for all five; one new connection took them.
    assert_eq!(sim.connections_accepted(), 2);
}

#[tokio::test]
async fn a_send_whose_connection_died_and_whose_resend_failed_is_a_dead_connection_retry() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        blackhole_after_streams: Some(1),
        ..Faults::default()
    });
    let config = ApnsConfig {
        pool_size: 1,
        request_timeout_ms: 500,
        ..apns_config(&sim)
    };
    let providers = Arc::new(Providers::new(&config, &FcmConfig::default()).unwrap());
    let token = apns_test_token(ApnsTestKind::Success, 1);
    assert!(matches!(
        providers
            .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
            .await,
        Outcome::Delivered { .. }
    ));
    let send = {
        let providers = providers.clone();
        let token = token.clone();
        tokio::spawn(async move {
            providers
                .send(NO_OWN_CREDENTIAL, &apns(&token), &hello())
                .await
        })
    };
    // Once the send is lost in the silence, the next connection drops every request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.set_faults(Faults {
        reset_probability: 1.0,
        ..Faults::default()
    });
    // A lost connection is its own class: the worker does not count it against the job.
    assert_eq!(
        send.await.unwrap(),
        Outcome::Retry {
            after: None,
            reason: "DeadConnection".into(),
            class: RetryClass::ConnectionLost,
        }
    );
}
