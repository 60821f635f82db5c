//! Simulator settings: listeners, the identities it knows, limits and initial faults, and the
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
/// Apple's shortest interval between two updates of a key's provider token.
pub const APPLE_TOKEN_UPDATE_INTERVAL_SECS: u64 = 20 * 60;

/// An APNs signing key the simulator accepts provider tokens from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApnsKeyFile {
    /// The key id (JWT `kid`).
    pub key_id: String,
    /// The team id (JWT `iss`).
    pub team_id: String,
    /// The `.p8` key, or its public key as PEM.
    pub path: PathBuf,
}

impl std::str::FromStr for ApnsKeyFile {
    type Err = String;

    /// `KEY_ID:TEAM_ID:PATH`, as `--apns-key` takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(t), Some(p)) if !k.is_empty() && !t.is_empty() && !p.is_empty() => {
                Ok(Self {
                    key_id: k.into(),
                    team_id: t.into(),
                    path: p.into(),
                })
            }
            _ => Err(format!("expected KEY_ID:TEAM_ID:PATH, got {s:?}")),
        }
    }
}

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
    /// APNs keys whose provider tokens are accepted (more can be added at run time).
    pub apns_keys: Vec<ApnsKeyFile>,
    /// Service-account files whose OAuth assertions are accepted; each account's access
    /// tokens may send to its own `project_id` only.
    pub fcm_service_accounts: Vec<PathBuf>,
    /// Shortest time between two updates of one key's provider token before APNs answers 429
    /// `TooManyProviderTokenUpdates` (Apple: 1200; shorten it in tests).
    pub token_update_interval_secs: u64,
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
            apns_keys: vec![ApnsKeyFile {
                key_id: TEST_KEY_ID.into(),
                team_id: TEST_TEAM_ID.into(),
                path: dir.join(format!("AuthKey_{TEST_KEY_ID}.p8")),
            }],
            fcm_service_accounts: vec![dir.join("fcm-service-account.json")],
            token_update_interval_secs: APPLE_TOKEN_UPDATE_INTERVAL_SECS,
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
    /// Key id (JWT kid) of the .p8 key in the certs directory.
    #[arg(long, default_value = TEST_KEY_ID)]
    pub key_id: String,
    /// Team id (JWT iss) of the .p8 key in the certs directory.
    #[arg(long, default_value = TEST_TEAM_ID)]
    pub team_id: String,
    /// Another APNs key to accept, as KEY_ID:TEAM_ID:PATH (repeatable).
    #[arg(long = "apns-key", value_name = "KEY_ID:TEAM_ID:PATH")]
    pub apns_keys: Vec<ApnsKeyFile>,
    /// Another service-account file to accept (repeatable).
    #[arg(long = "fcm-service-account", value_name = "PATH")]
    pub fcm_service_accounts: Vec<PathBuf>,
    /// Shortest interval between two updates of a key's provider token, seconds.
    #[arg(long, default_value_t = APPLE_TOKEN_UPDATE_INTERVAL_SECS)]
    pub token_update_interval_secs: u64,
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
    /// Spread of each send's latency: drawn evenly from latency-ms ± this, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
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
    /// Let every connection go silent (no answers, no PING ACKs, TCP open) after this many
    /// streams.
    #[arg(long)]
    pub blackhole_after_streams: Option<u64>,
    /// Requests kept for inspection (0 = none, for benchmarks).
    #[arg(long, default_value_t = 100_000)]
    pub max_records: usize,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> SimulatorConfig {
        let defaults = SimulatorConfig::with_certs_dir(&self.certs_dir);
        let mut apns_keys = defaults.apns_keys.clone();
        for key in &mut apns_keys {
            key.key_id.clone_from(&self.key_id);
            key.team_id.clone_from(&self.team_id);
        }
        apns_keys.extend(self.apns_keys.iter().cloned());
        let mut fcm_service_accounts = defaults.fcm_service_accounts.clone();
        fcm_service_accounts.extend(self.fcm_service_accounts.iter().cloned());
        SimulatorConfig {
            apns_listen: self.apns_listen,
            fcm_listen: self.fcm_listen,
            apns_keys,
            fcm_service_accounts,
            token_update_interval_secs: self.token_update_interval_secs,
            access_token_ttl_secs: self.access_token_ttl_secs,
            max_records: self.max_records,
            faults: Faults {
                error_rate: self.error_rate,
                retry_after_secs: self.retry_after_secs,
                latency_ms: self.latency_ms,
                latency_jitter_ms: self.latency_jitter_ms,
                spike_probability: self.spike_probability,
                spike_latency_ms: self.spike_latency_ms,
                reset_probability: self.reset_probability,
                goaway_after_streams: self.goaway_after_streams,
                blackhole_after_streams: self.blackhole_after_streams,
            },
            ..defaults
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
            "--blackhole-after-streams",
            "7",
            "--apns-key",
            "SIMKEY0002:SIMTEAM002:certs/AuthKey_SIMKEY0002.p8",
            "--token-update-interval-secs",
            "5",
        ])
        .unwrap();
        let cfg = cli.args.to_config();
        assert_eq!(cfg.apns_keys.len(), 2);
        assert_eq!(cfg.apns_keys[0].key_id, TEST_KEY_ID);
        assert_eq!(cfg.apns_keys[1].team_id, "SIMTEAM002");
        assert_eq!(cfg.token_update_interval_secs, 5);
        assert_eq!(cfg.fcm_service_accounts.len(), 1);
        assert_eq!(cfg.apns_listen.port(), 0);
        assert_eq!(cfg.fcm_listen.port(), DEFAULT_FCM_PORT);
        assert_eq!(cfg.faults.error_rate, 0.25);
        assert_eq!(cfg.faults.goaway_after_streams, Some(100));
        assert_eq!(cfg.faults.blackhole_after_streams, Some(7));
        assert_eq!(cfg.cert_path, Path::new("certs").join("server.pem"));
    }
}
