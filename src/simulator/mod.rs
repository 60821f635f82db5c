//! APNs- and FCM-compatible provider simulator (HTTP/2 over TLS), for tests, benchmarks and
//! local development (`pushbridge simulate`).
//!
//! # Identities
//! The simulator knows several APNs keys (key id, team id, public key) and several FCM service
//! accounts (each with its project); by default the one test key and the one service account
//! in `certs/`. More come from the config (`apns_keys`, `fcm_service_accounts`), the
//! `--apns-key` / `--fcm-service-account` flags, [`SimulatorHandle::add_apns_key`] and
//! [`SimulatorHandle::add_fcm_service_account`], or the control requests of [`admin`]. A key
//! or an account can be revoked while the simulator runs. See [`identities`] for the rule by
//! which a key's provider token may change at most once per 20 minutes.
//!
//! # APNs side
//! `POST /3/device/{token}` with the checks Apple makes: ES256 provider JWT (a known,
//! unrevoked `kid`, its signature, the key's team as `iss`, `iat` younger than one hour, and
//! no second token update within 20 minutes: 429 `TooManyProviderTokenUpdates`), `apns-topic`, `apns-push-type`, `apns-priority`,
//! `apns-expiration`, `apns-collapse-id` (≤ 64 bytes), `apns-id`, hex token of 64–200
//! characters, JSON payload of at most 4096 bytes (5120 for VoIP). Success is a HEADERS frame
//! with END_STREAM that echoes `apns-id` (generated when absent). Errors are
//! `{"reason": "..."}`; a 410 adds `"timestamp"` (unix ms). TLS clients may negotiate ALPN
//! `h2` or send no ALPN and start with the HTTP/2 preface.
//!
//! # FCM side
//! `POST /v1/projects/{project}/messages:send` over HTTP/2 or HTTP/1.1, with a bearer access
//! token issued by `POST /token` on the same port (standard form-encoded JWT-bearer grant; the
//! RS256 assertion is checked against the public key of the service account it names). Unknown,
//! expired or revoked access tokens, and those of a revoked account, get 401
//! `UNAUTHENTICATED`; a project in the path that is not the token's account's gets 403
//! `PERMISSION_DENIED`, as Google answers. Errors use the `google.rpc.Status` form with an
//! `FcmError` detail.
//!
//! # Test tokens
//! See [`tokens`]: APNs tokens starting with `fa11` and FCM tokens starting with `pbsim-`
//! select an error, optionally only for the first N requests; every other valid token succeeds.
//!
//! | APNs token (`fa11` `KK` `NN` `T×12` …) | answer |
//! |---|---|
//! | `KK=01` | 410 `Unregistered`, `timestamp` = `T…` (unix ms, hex) or now when 0 |
//! | `KK=02` | 410 `ExpiredToken` |
//! | `KK=03` | 400 `BadDeviceToken` |
//! | `KK=04` | 400 `DeviceTokenNotForTopic` |
//! | `KK=05` | 429 `TooManyRequests` |
//! | `KK=06` | 503 `ServiceUnavailable` |
//! | `KK=07` | 500 `InternalServerError` |
//! | `KK=08` | 403 `ExpiredProviderToken` |
//! | `KK=0f` | connection closed without an answer |
//!
//! | FCM token (`pbsim-<CODE>-<N>:` …) | answer |
//! |---|---|
//! | `UNREGISTERED` | 404 `NOT_FOUND`, errorCode `UNREGISTERED` |
//! | `SENDER_ID_MISMATCH` | 403 `PERMISSION_DENIED`, errorCode `SENDER_ID_MISMATCH` |
//! | `INVALID_ARGUMENT` | 400 `INVALID_ARGUMENT` about `message.token` |
//! | `QUOTA_EXCEEDED` | 429 `RESOURCE_EXHAUSTED` with `Retry-After: 2` |
//! | `UNAVAILABLE` | 503 `UNAVAILABLE` |
//! | `INTERNAL` | 500 `INTERNAL` |
//! | `RESET` | connection closed without an answer |
//!
//! `NN` / `N` = 0 fails every time; N > 0 fails the first N requests for that token, then
//! succeeds. Build tokens with [`apns_test_token`], [`apns_test_token_failing_first`],
//! [`fcm_test_token`] and [`fcm_test_token_failing_first`].
//!
//! # Fault injection
//! [`Faults`] adds latency (fixed plus random spikes), answers a fraction of requests with 503
//! and `Retry-After`, closes connections at random, sends GOAWAY after N streams per
//! connection (on the APNs side as Apple does: one GOAWAY with the last processed stream id
//! and `{"reason":"Shutdown"}`), and lets connections go silent after N streams (no answers,
//! no PING ACKs, TCP open). Latency, 503s and resets apply to message sends on both sides,
//! not to the token endpoint; GOAWAY and silence count every stream on a connection.

mod admin;
mod apns;
mod config;
mod exchange;
mod faults;
mod fcm;
mod identities;
mod oauth;
mod record;
mod server;
mod state;
mod tap;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::{
    ApnsKeyFile, SimulateArgs, SimulatorConfig, APPLE_TOKEN_UPDATE_INTERVAL_SECS,
    DEFAULT_APNS_PORT, DEFAULT_FCM_PORT, TEST_KEY_ID, TEST_TEAM_ID,
};
pub use self::faults::Faults;
pub use self::fcm::QUOTA_RETRY_AFTER_SECS;
pub use self::identities::{ApnsKeyInfo, FcmAccountInfo};
pub use self::record::{RecordedRequest, Side};
use self::server::Service;
use self::state::State;
pub use self::tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, fcm_test_token_failing_first,
    ApnsTestKind, FcmTestKind,
};
use crate::clock::Clock;
use crate::push::fcm::ServiceAccount;
use crate::tls::{server_acceptor, ALPN_H2, ALPN_HTTP1};

/// Makes every credential stored through the bridge known to the simulator, so that a key a
/// user generated works end to end in `serve --simulator`.
#[derive(Clone)]
pub struct Registrar {
    state: Arc<State>,
}

impl crate::service::credentials::CredentialObserver for Registrar {
    fn saved(&self, credential: &crate::push::AppCredential) {
        let added = match &credential.key {
            crate::push::CredentialKey::Apns(key) => {
                self.state
                    .identities
                    .add_apns_key(&key.key_id, &key.team_id, &key.private_key)
            }
            crate::push::CredentialKey::Fcm(key) => {
                self.state.identities.add_fcm_account(&key.account)
            }
        };
        match added {
            Ok(()) => tracing::info!(app = %credential.app_id,
                provider = credential.key.platform().as_str(),
                "the simulator accepts the uploaded credential"),
            Err(e) => tracing::warn!(app = %credential.app_id, error = %format!("{e:#}"),
                "the simulator could not learn the uploaded credential"),
        }
    }
}

/// A running simulator; stops when dropped or on [`SimulatorHandle::shutdown`].
pub struct SimulatorHandle {
    state: Arc<State>,
    apns_addr: SocketAddr,
    fcm_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// Base URL of the APNs side, e.g. `https://127.0.0.1:2197`.
    pub fn apns_url(&self) -> String {
        base_url(self.apns_addr)
    }

    /// Base URL of the FCM side.
    pub fn fcm_url(&self) -> String {
        base_url(self.fcm_addr)
    }

    /// The OAuth2 token endpoint (on the FCM side).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.fcm_url())
    }

    /// The APNs listener's address.
    pub fn apns_addr(&self) -> SocketAddr {
        self.apns_addr
    }

    /// The FCM listener's address.
    pub fn fcm_addr(&self) -> SocketAddr {
        self.fcm_addr
    }

    /// Everything received so far, oldest first.
    pub fn records(&self) -> Vec<RecordedRequest> {
        self.state.records()
    }

    /// Forgets the records (and the fail-first-N counters).
    pub fn clear_records(&self) {
        self.state.clear_records();
    }

    /// TLS connections accepted on both sides since start.
    pub fn connections_accepted(&self) -> u64 {
        self.state.connections()
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// Invalidates every access token issued so far (the next send with one gets 401).
    pub fn revoke_access_tokens(&self) {
        self.state.revoke_access_tokens();
    }

    /// Accepts provider tokens of another APNs key (or replaces a key, un-revoked and with no
    /// token history); `pem` is the `.p8` private key or its public key.
    pub fn add_apns_key(&self, key_id: &str, team_id: &str, pem: &str) -> anyhow::Result<()> {
        self.state.identities.add_apns_key(key_id, team_id, pem)
    }

    /// Revokes an APNs key: its tokens get 403 `InvalidProviderToken`. False when unknown.
    pub fn revoke_apns_key(&self, key_id: &str) -> bool {
        self.state.identities.revoke_apns_key(key_id)
    }

    /// Accepts assertions of another service account, whose access tokens may send to its
    /// `project_id` (or replaces it, un-revoked).
    pub fn add_fcm_service_account(&self, account: &ServiceAccount) -> anyhow::Result<()> {
        self.state.identities.add_fcm_account(account)
    }

    /// Revokes a service account: its access tokens get 401 and its assertions
    /// `invalid_grant`. False when unknown.
    pub fn revoke_fcm_service_account(&self, client_email: &str) -> bool {
        self.state.identities.revoke_fcm_account(client_email)
    }

    /// A handle that makes credentials known to this simulator as they are stored.
    pub fn registrar(&self) -> Registrar {
        Registrar {
            state: self.state.clone(),
        }
    }

    /// The APNs keys the simulator knows.
    pub fn apns_keys(&self) -> Vec<ApnsKeyInfo> {
        self.state.identities.apns_keys()
    }

    /// The service accounts the simulator knows.
    pub fn fcm_service_accounts(&self) -> Vec<FcmAccountInfo> {
        self.state.identities.fcm_accounts()
    }

    /// The simulator's clock (token ages, update intervals, access-token expiry); tests
    /// shift it instead of sleeping.
    pub fn clock(&self) -> Clock {
        self.state.clock.clone()
    }

    /// Stops listening and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn base_url(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            format!("https://localhost:{}", v4.port())
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            format!("https://localhost:{}", v6.port())
        }
        other => format!("https://{other}"),
    }
}

/// Starts both sides; returns once they are listening.
pub async fn start(cfg: SimulatorConfig) -> anyhow::Result<SimulatorHandle> {
    cfg.faults.validate().map_err(anyhow::Error::msg)?;
    let state = Arc::new(State::load(&cfg)?);
    // Both sides accept clients that send no ALPN and start straight with the HTTP/2 preface.
    let apns_tls = server_acceptor(&cfg.cert_path, &cfg.key_path, &[ALPN_H2])
        .context("simulator TLS (cert_path, key_path)")?;
    let fcm_tls = server_acceptor(&cfg.cert_path, &cfg.key_path, &[ALPN_H2, ALPN_HTTP1])
        .context("simulator TLS (cert_path, key_path)")?;
    let apns_listener = tokio::net::TcpListener::bind(cfg.apns_listen)
        .await
        .with_context(|| format!("binding the APNs simulator to {}", cfg.apns_listen))?;
    let fcm_listener = tokio::net::TcpListener::bind(cfg.fcm_listen)
        .await
        .with_context(|| format!("binding the FCM simulator to {}", cfg.fcm_listen))?;
    let apns_addr = apns_listener.local_addr()?;
    let fcm_addr = fcm_listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let connection_ids = Arc::new(AtomicU64::new(1));
    let tasks = vec![
        tokio::spawn(server::serve(
            apns_listener,
            apns_tls,
            Service::Apns,
            state.clone(),
            connection_ids.clone(),
            cfg.max_concurrent_streams,
            stopped.clone(),
        )),
        tokio::spawn(server::serve(
            fcm_listener,
            fcm_tls,
            Service::Fcm,
            state.clone(),
            connection_ids,
            cfg.max_concurrent_streams,
            stopped,
        )),
    ];
    tracing::info!(apns = %apns_addr, fcm = %fcm_addr, "provider simulator listening");
    Ok(SimulatorHandle {
        state,
        apns_addr,
        fcm_addr,
        stop,
        tasks,
    })
}

/// Runs the simulator in the foreground until Ctrl-C.
pub async fn run_cli(args: SimulateArgs) -> anyhow::Result<()> {
    let handle = start(args.to_config()).await?;
    println!("APNs simulator: {}", handle.apns_url());
    println!("FCM simulator:  {}", handle.fcm_url());
    println!("token_uri:      {}", handle.token_uri());
    for key in handle.apns_keys() {
        println!("APNs key:       {} (team {})", key.key_id, key.team_id);
    }
    for account in handle.fcm_service_accounts() {
        println!(
            "FCM account:    {} (project {})",
            account.client_email, account.project_id
        );
    }
    println!(
        "trust {}; control requests under {}/sim/; Ctrl-C stops",
        args.certs_dir.join("ca.pem").display(),
        handle.fcm_url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
