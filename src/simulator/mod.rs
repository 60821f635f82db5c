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
mod fcm;
pub use fcm::QUOTA_RETRY_AFTER_SECS;
mod server;
pub mod tokens;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use tokens::{
    apns_test_token, apns_test_token_failing_first, fcm_test_token, fcm_test_token_failing_first,
    ApnsTestKind, FcmTestKind,
};

/// Default APNs port of `pushbridge simulate`.
pub const DEFAULT_APNS_PORT: u16 = 2197;
/// Default FCM port of `pushbridge simulate` (the test service account's `token_uri` uses it).
pub const DEFAULT_FCM_PORT: u16 = 2198;
/// Key id of the test APNs key in `certs/`.
pub const TEST_KEY_ID: &str = "SIMKEY0001";
/// Team id the simulator expects by default.
pub const TEST_TEAM_ID: &str = "SIMTEAM001";

/// Simulator settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// APNs listener (port 0 picks a free port).
    pub apns_listen: SocketAddr,
    /// FCM and token-endpoint listener (port 0 picks a free port).
    pub fcm_listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert_path: PathBuf,
    /// Server private key (PEM).
    pub key_path: PathBuf,
    /// The `.p8` key whose public half verifies provider JWTs (or that public key as PEM).
    pub apns_key_path: PathBuf,
    /// Expected JWT `kid`.
    pub apns_key_id: String,
    /// Expected JWT `iss`.
    pub apns_team_id: String,
    /// Service-account file whose public key verifies OAuth assertions.
    pub fcm_service_account_path: PathBuf,
    /// Lifetime of issued access tokens.
    pub access_token_ttl_secs: u64,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (APNs uses 1000).
    pub max_concurrent_streams: u32,
    /// Oldest requests are forgotten beyond this many records; 0 records nothing (benchmarks).
    pub max_records: usize,
    /// Initial fault injection.
    pub faults: Faults,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self::with_certs_dir(Path::new("certs"))
    }
}

impl SimulatorConfig {
    /// Defaults with every credential taken from `dir` (the layout of `certs/`).
    pub fn with_certs_dir(dir: &Path) -> Self {
        Self {
            apns_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_APNS_PORT)),
            fcm_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_FCM_PORT)),
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
            apns_key_path: dir.join(format!("AuthKey_{TEST_KEY_ID}.p8")),
            apns_key_id: TEST_KEY_ID.into(),
            apns_team_id: TEST_TEAM_ID.into(),
            fcm_service_account_path: dir.join("fcm-service-account.json"),
            access_token_ttl_secs: 3600,
            max_concurrent_streams: 1000,
            max_records: 100_000,
            faults: Faults::default(),
        }
    }
}

/// Injected misbehaviour, changeable while running with [`SimulatorHandle::set_faults`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0–1) of sends answered 503 with `Retry-After`.
    pub error_rate: f64,
    /// `Retry-After` seconds on injected 503s.
    pub retry_after_secs: u64,
    /// Delay added to every send.
    pub latency_ms: u64,
    /// Fraction (0–1) of sends that get `spike_latency_ms` more.
    pub spike_probability: f64,
    /// Extra delay of a spike.
    pub spike_latency_ms: u64,
    /// Fraction (0–1) of sends whose connection is closed without an answer.
    pub reset_probability: f64,
    /// Send GOAWAY (graceful) after this many streams on a connection.
    pub goaway_after_streams: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            spike_probability: 0.0,
            spike_latency_ms: 0,
            reset_probability: 0.0,
            goaway_after_streams: None,
        }
    }
}

impl Faults {
    /// Checks ranges, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("error_rate", self.error_rate),
            ("spike_probability", self.spike_probability),
            ("reset_probability", self.reset_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("faults.{name}: must be between 0 and 1"));
            }
        }
        if self.goaway_after_streams == Some(0) {
            return Err("faults.goaway_after_streams: must be at least 1".into());
        }
        Ok(())
    }
}

/// Which simulated service answered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// APNs.
    Apns,
    /// FCM messages.
    Fcm,
    /// The OAuth2 token endpoint (on the FCM port).
    Token,
}

/// One request the simulator received, and what it answered.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecordedRequest {
    /// Service that answered.
    pub side: Side,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// `HTTP/2.0` or `HTTP/1.1`.
    pub version: String,
    /// `authorization`, `content-type` and every `apns-*` header.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (form fields as an object for the token endpoint; `null` if neither).
    pub body: serde_json::Value,
    /// Device token addressed, if any.
    pub token: Option<String>,
    /// Status answered (0 when the connection was closed instead).
    pub status: u16,
    /// Connection the request arrived on (numbered from 1 in accept order).
    pub connection_id: u64,
}

/// Shared state of a running simulator.
struct State {
    apns_key: DecodingKey,
    apns_key_id: String,
    apns_team_id: String,
    fcm_key: DecodingKey,
    fcm_client_email: String,
    fcm_project_id: String,
    access_token_ttl_secs: u64,
    max_records: usize,
    records: Mutex<VecDeque<RecordedRequest>>,
    connections: AtomicU64,
    faults: RwLock<Faults>,
    access_tokens: Mutex<HashMap<String, i64>>,
    attempts: Mutex<HashMap<String, u32>>,
}

impl State {
    fn record(&self, request: RecordedRequest) {
        if self.max_records == 0 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.max_records {
            records.pop_front();
        }
        records.push_back(request);
    }

    fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a request for a fail-first-N token; true while it should still fail.
    fn should_fail(&self, token: &str, times: u32) -> bool {
        if times == 0 {
            return true;
        }
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let seen = attempts.entry(token.to_string()).or_insert(0);
        *seen += 1;
        *seen <= times
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
        let records = self.state.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }

    /// Forgets the records (and the fail-first-N counters).
    pub fn clear_records(&self) {
        self.state
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.state
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// TLS connections accepted on both sides since start.
    pub fn connections_accepted(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Invalidates every access token issued so far (the next send with one gets 401).
    pub fn revoke_access_tokens(&self) {
        self.state
            .access_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
    let apns_key = apns_decoding_key(&cfg.apns_key_path)?;
    let account = crate::push::fcm::ServiceAccount::load(&cfg.fcm_service_account_path)
        .context("simulator fcm_service_account_path")?;
    let fcm_key = rsa_decoding_key(&account.private_key).with_context(|| {
        format!(
            "{}: private_key is not a PKCS#8 RSA key",
            cfg.fcm_service_account_path.display()
        )
    })?;
    let state = Arc::new(State {
        apns_key,
        apns_key_id: cfg.apns_key_id.clone(),
        apns_team_id: cfg.apns_team_id.clone(),
        fcm_key,
        fcm_client_email: account.client_email,
        fcm_project_id: account.project_id,
        access_token_ttl_secs: cfg.access_token_ttl_secs,
        max_records: cfg.max_records,
        records: Mutex::new(VecDeque::new()),
        connections: AtomicU64::new(0),
        faults: RwLock::new(cfg.faults.clone()),
        access_tokens: Mutex::new(HashMap::new()),
        attempts: Mutex::new(HashMap::new()),
    });
    let apns_tls = server::acceptor(&cfg.cert_path, &cfg.key_path, &[b"h2"])?;
    let fcm_tls = server::acceptor(&cfg.cert_path, &cfg.key_path, &[b"h2", b"http/1.1"])?;
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
            server::Service::Apns,
            state.clone(),
            connection_ids.clone(),
            cfg.max_concurrent_streams,
            stopped.clone(),
        )),
        tokio::spawn(server::serve(
            fcm_listener,
            fcm_tls,
            server::Service::Fcm,
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

/// The ES256 verification key: from a public-key PEM, or derived from the `.p8` private key.
fn apns_decoding_key(path: &Path) -> anyhow::Result<DecodingKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("simulator apns_key_path: reading {}", path.display()))?;
    if pem.contains("BEGIN PUBLIC KEY") {
        return DecodingKey::from_ec_pem(pem.as_bytes())
            .with_context(|| format!("{} is not an EC public key", path.display()));
    }
    let pair = rcgen::KeyPair::from_pem(&pem)
        .with_context(|| format!("{} is not a PKCS#8 EC key", path.display()))?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256),
        "{} is not a P-256 key",
        path.display()
    );
    Ok(DecodingKey::from_ec_der(pair.public_key_raw()))
}

fn rsa_decoding_key(private_pem: &str) -> anyhow::Result<DecodingKey> {
    let pair = rcgen::KeyPair::from_pem(private_pem)?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_RSA_SHA256),
        "not an RSA key"
    );
    // ring's raw RSA public key is the PKCS#1 DER that jsonwebtoken expects.
    Ok(DecodingKey::from_rsa_der(pair.public_key_raw()))
}

/// `pushbridge simulate`: run the provider simulator until interrupted.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateArgs {
    /// APNs listener address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_APNS_PORT)))]
    pub apns_listen: SocketAddr,
    /// FCM and token-endpoint listener address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_FCM_PORT)))]
    pub fcm_listen: SocketAddr,
    /// Directory with server.pem, server.key, the .p8 key and the service account.
    #[arg(long, default_value = "certs")]
    pub certs_dir: PathBuf,
    /// Expected APNs key id (JWT kid).
    #[arg(long, default_value = TEST_KEY_ID)]
    pub key_id: String,
    /// Expected APNs team id (JWT iss).
    #[arg(long, default_value = TEST_TEAM_ID)]
    pub team_id: String,
    /// Lifetime of issued FCM access tokens, seconds.
    #[arg(long, default_value_t = 3600)]
    pub access_token_ttl_secs: u64,
    /// Fraction of sends answered 503 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Retry-After seconds on injected 503s.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Latency added to every send, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of sends that get a latency spike.
    #[arg(long, default_value_t = 0.0)]
    pub spike_probability: f64,
    /// Extra latency of a spike, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub spike_latency_ms: u64,
    /// Fraction of sends whose connection is dropped without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub reset_probability: f64,
    /// Send GOAWAY after this many streams per connection.
    #[arg(long)]
    pub goaway_after_streams: Option<u64>,
    /// Requests kept for inspection (0 = none, for benchmarks).
    #[arg(long, default_value_t = 100_000)]
    pub max_records: usize,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            apns_listen: self.apns_listen,
            fcm_listen: self.fcm_listen,
            apns_key_id: self.key_id.clone(),
            apns_team_id: self.team_id.clone(),
            access_token_ttl_secs: self.access_token_ttl_secs,
            max_records: self.max_records,
            faults: Faults {
                error_rate: self.error_rate,
                retry_after_secs: self.retry_after_secs,
                latency_ms: self.latency_ms,
                spike_probability: self.spike_probability,
                spike_latency_ms: self.spike_latency_ms,
                reset_probability: self.reset_probability,
                goaway_after_streams: self.goaway_after_streams,
            },
            ..SimulatorConfig::with_certs_dir(&self.certs_dir)
        }
    }
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

/// Sleeps for the configured latency, plus a spike now and then.
async fn injected_delay(faults: &Faults) {
    let mut delay = faults.latency_ms;
    if faults.spike_probability > 0.0 && rand::random::<f64>() < faults.spike_probability {
        delay += faults.spike_latency_ms;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn cli_flags_become_faults() {
        let cli = Cli::try_parse_from([
            "simulate",
            "--apns-listen",
            "0.0.0.0:0",
            "--error-rate",
            "0.25",
            "--goaway-after-streams",
            "100",
        ])
        .unwrap();
        let cfg = cli.args.to_config();
        assert_eq!(cfg.apns_listen.port(), 0);
        assert_eq!(cfg.fcm_listen.port(), DEFAULT_FCM_PORT);
        assert_eq!(cfg.faults.error_rate, 0.25);
        assert_eq!(cfg.faults.goaway_after_streams, Some(100));
        assert_eq!(cfg.cert_path, Path::new("certs").join("server.pem"));
    }

    #[test]
    fn faults_outside_their_range_are_rejected() {
        let faults = Faults {
            reset_probability: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            faults.validate().unwrap_err(),
            "faults.reset_probability: must be between 0 and 1"
        );
    }
}
