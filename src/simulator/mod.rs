//! APNs- and FCM-compatible provider simulator (HTTP/2 over TLS), for tests, benchmarks and
//! local development (`pushbridge simulate`).
//!
//! # APNs side
//! `POST /3/device/{token}` with the checks Apple makes: ES256 provider JWT (`kid`, `iss`,
//! signature, `iat` younger than one hour), `apns-topic`, `apns-push-type`, `apns-priority`,
//! `apns-expiration`, `apns-collapse-id` (≤ 64 bytes), `apns-id`, hex token of 64–200
//! characters, JSON payload of at most 4096 bytes (5120 for VoIP). Success is a HEADERS frame
//! with END_STREAM that echoes `apns-id` (generated when absent). Errors are
//! `{"reason": "..."}`; a 410 adds `"timestamp"` (unix ms). TLS clients may negotiate ALPN
//! `h2` or send no ALPN and start with the HTTP/2 preface.
//!
//! # FCM side
//! `POST /v1/projects/{project}/messages:send` over HTTP/2 or HTTP/1.1, with a bearer access
//! token issued by `POST /token` on the same port (standard form-encoded JWT-bearer grant; the
//! RS256 assertion is checked against the service account's public key). Unknown, expired or
//! revoked access tokens get 401 `UNAUTHENTICATED`. Errors use the `google.rpc.Status` form
//! with an `FcmError` detail.
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
//! and `Retry-After`, closes connections at random, and sends GOAWAY after N streams per
//! connection. It applies to message sends on both sides, not to the token endpoint.

mod apns;
mod config;
mod exchange;
mod faults;
mod fcm;
mod oauth;
mod record;
mod server;
mod state;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::{
    SimulateArgs, SimulatorConfig, DEFAULT_APNS_PORT, DEFAULT_FCM_PORT, TEST_KEY_ID, TEST_TEAM_ID,
};
pub use self::faults::Faults;
pub use self::fcm::QUOTA_RETRY_AFTER_SECS;
pub use self::record::{RecordedRequest, Side};
use self::server::Service;
use self::state::State;
pub use self::tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, fcm_test_token_failing_first,
    ApnsTestKind, FcmTestKind,
};
use crate::tls::{server_acceptor, ALPN_H2, ALPN_HTTP1};

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
    println!(
        "trust {} and use key id {} / team id {}; Ctrl-C stops",
        args.certs_dir.join("ca.pem").display(),
        args.key_id,
        args.team_id
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
