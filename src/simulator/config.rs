//! Simulator settings: listeners, credentials, limits and initial faults, and the
//! `pushbridge simulate` flags that describe them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::faults::Faults;

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
}
