//! Typed configuration: defaults, then an optional TOML file, then `PUSHBRIDGE_*` env overrides.
//!
//! Nested keys use a double underscore in env vars: `PUSHBRIDGE_WEBHOOKS__MAX_BODY_BYTES=1048576`
//! sets `webhooks.max_body_bytes`. Every error names the field that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole bridge configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// `sqlite://path` (default, embedded) or `postgres://...`.
    pub database_url: String,
    /// Maximum connections in the database pool.
    pub database_max_connections: u32,
    /// Optional TLS for the listener; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Limits and timeouts of the API listener.
    pub http: crate::server::HttpConfig,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Credential for operator endpoints (`/metrics`, stats of all apps, the dashboard);
    /// they are disabled while unset. At least 24 characters.
    pub operator_key: Option<String>,
    /// Device registry limits.
    pub devices: crate::model::device::DeviceLimits,
    /// Webhook ingest settings.
    pub webhooks: WebhookConfig,
    /// Delivery worker settings.
    pub worker: WorkerConfig,
    /// APNs provider.
    pub apns: crate::push::apns::ApnsConfig,
    /// FCM provider.
    pub fcm: crate::push::fcm::FcmConfig,
    /// Settings every provider sender shares: connection cap, idle closing, credential
    /// refresh.
    pub providers: crate::push::ProvidersConfig,
    /// Request rate limits per API key and per webhook source (per instance).
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    /// The master key that seals stored secrets, and the keys it replaced.
    pub secrets: crate::secrets::SecretsConfig,
    /// Outbound webhooks to apps' event endpoints.
    pub endpoints: crate::service::endpoints::EndpointsConfig,
    /// How long delivered jobs, dead letters, events, callbacks and pruned devices are kept.
    pub retention: crate::worker::RetentionConfig,
    /// OpenTelemetry traces over OTLP (off unless a collector is named).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Giving freed heap back to the operating system.
    pub memory: crate::memory::MemoryConfig,
}

/// Default cap on sends in flight per process: the default pools (two connections each to
/// APNs production and FCM) at APNs' usual 1000 streams per connection. Each send in flight
/// holds a task and its rendered payload (a few KB), so a few thousand is a few MB.
pub const DEFAULT_CONCURRENCY: u32 = 4096;
/// Highest accepted `worker.concurrency`: 64 connections (the largest pool) at 1000 streams.
pub const MAX_CONCURRENCY: u32 = 64_000;

/// Delivery worker settings: claiming, concurrency, retry policy and shutdown.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Run the fan-out and delivery loops in this process.
    pub enabled: bool,
    /// Jobs claimed per batch.
    pub batch_size: u32,
    /// The most sends in flight at once per process. Below it, the limit is what the
    /// providers' open connections take (the concurrent streams their servers advertise).
    pub concurrency: u32,
    /// How long a claim lasts; a crashed worker's jobs are claimed again after it.
    pub lease_secs: u64,
    /// Idle poll interval when no wake-up arrives.
    pub poll_interval_ms: u64,
    /// Attempts before a job becomes a dead letter.
    pub max_attempts: u32,
    /// Age after which a job is not retried any more.
    pub max_age_secs: u64,
    /// First backoff step; doubles per attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Backoff ceiling.
    pub backoff_max_ms: u64,
    /// On shutdown, how long in-flight sends may take before their jobs are released.
    pub shutdown_grace_secs: u64,
    /// While an app's credential is refused by a provider, one of its jobs is sent as a
    /// probe this often.
    pub breaker_probe_secs: u64,
    /// The burst guard: when more than this share of an app's sends in 5 minutes are
    /// refused for the same token-level reason, the reason is taken for a configuration
    /// mistake and the app's sends to that provider are held instead.
    pub burst_guard_share: f64,
    /// ... counting only once the app made at least this many sends in the window.
    pub burst_guard_min_sends: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: 500,
            concurrency: DEFAULT_CONCURRENCY,
            lease_secs: 60,
            poll_interval_ms: 250,
            max_attempts: 8,
            max_age_secs: 24 * 3600,
            backoff_base_ms: 1000,
            backoff_max_ms: 15 * 60 * 1000,
            shutdown_grace_secs: 20,
            breaker_probe_secs: 60,
            burst_guard_share: 0.2,
            burst_guard_min_sends: 50,
        }
    }
}

/// Certificate and key for serving HTTPS directly.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Webhook ingest settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Bodies larger than this are rejected with 413.
    pub max_body_bytes: usize,
    /// Signed timestamps further than this from now (either direction) are rejected.
    pub timestamp_tolerance_secs: u64,
    /// Peers whose `X-Forwarded-For` header is believed (CIDRs).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            timestamp_tolerance_secs: 300,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://pushbridge.db".into(),
            database_max_connections: 8,
            tls: None,
            http: Default::default(),
            log_format: LogFormat::Text,
            operator_key: None,
            devices: crate::model::device::DeviceLimits::default(),
            webhooks: WebhookConfig::default(),
            worker: WorkerConfig::default(),
            apns: Default::default(),
            fcm: Default::default(),
            providers: Default::default(),
            rate_limits: Default::default(),
            secrets: Default::default(),
            endpoints: Default::default(),
            retention: Default::default(),
            telemetry: Default::default(),
            memory: Default::default(),
        }
    }
}

/// A configuration error that names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A field has the wrong type or an unknown name.
    #[error("config field `{field}`: {message}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

const ENV_PREFIX: &str = "PUSHBRIDGE_";
const DEFAULT_FILE: &str = "pushbridge.toml";

impl Config {
    /// Loads `path` (or `pushbridge.toml` when present), applies env overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Path::new(DEFAULT_FILE)
                .exists()
                .then(|| PathBuf::from(DEFAULT_FILE)),
        };
        let mut table = match &file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.clone(),
                        message: e.message().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, std::env::vars())?;
        Self::from_table(table)
    }

    /// Builds a config from a TOML table, naming the field on error, then validates it.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let field = e.path().to_string();
                ConfigError::field(&field, e.inner().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database_url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::field(
                "database_url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::field(
                "database_max_connections",
                "must be at least 1",
            ));
        }
        if self.webhooks.max_body_bytes < 64 {
            return Err(ConfigError::field(
                "webhooks.max_body_bytes",
                "must be at least 64",
            ));
        }
        if self.webhooks.timestamp_tolerance_secs == 0 {
            return Err(ConfigError::field(
                "webhooks.timestamp_tolerance_secs",
                "must be at least 1",
            ));
        }
        if self.operator_key.as_ref().is_some_and(|k| k.len() < 24) {
            return Err(ConfigError::field(
                "operator_key",
                "must be at least 24 characters",
            ));
        }
        for checked in [
            self.http.validate(),
            self.apns.validate(),
            self.fcm.validate(),
            self.providers.validate(),
            self.endpoints.validate(),
            self.telemetry.validate(),
            self.memory.validate(),
        ] {
            if let Err(message) = checked {
                let (field, why) = message
                    .split_once(": ")
                    .unwrap_or(("provider", message.as_str()));
                return Err(ConfigError::field(field, why));
            }
        }
        let r = &self.rate_limits;
        for (field, v) in [
            ("rate_limits.server_key_per_sec", r.server_key_per_sec),
            ("rate_limits.client_key_per_sec", r.client_key_per_sec),
            ("rate_limits.source_per_sec", r.source_per_sec),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(ConfigError::field(
                    field,
                    "must be 0 (unlimited) or positive",
                ));
            }
        }
        if !(r.burst_secs > 0.0 && r.burst_secs.is_finite()) {
            return Err(ConfigError::field(
                "rate_limits.burst_secs",
                "must be positive",
            ));
        }
        let w = &self.worker;
        for (field, value) in [
            ("worker.batch_size", u64::from(w.batch_size)),
            ("worker.concurrency", u64::from(w.concurrency)),
            ("worker.lease_secs", w.lease_secs),
            ("worker.poll_interval_ms", w.poll_interval_ms),
            ("worker.max_attempts", u64::from(w.max_attempts)),
            ("worker.backoff_base_ms", w.backoff_base_ms),
            ("worker.breaker_probe_secs", w.breaker_probe_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        if w.concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::field(
                "worker.concurrency",
                format!("must be at most {MAX_CONCURRENCY}"),
            ));
        }
        if !(w.burst_guard_share > 0.0 && w.burst_guard_share <= 1.0) {
            return Err(ConfigError::field(
                "worker.burst_guard_share",
                "must be above 0 and at most 1",
            ));
        }
        if w.backoff_max_ms < w.backoff_base_ms {
            return Err(ConfigError::field(
                "worker.backoff_max_ms",
                "must be at least worker.backoff_base_ms",
            ));
        }
        if let Some((field, reason)) = self.retention.invalid_field() {
            return Err(ConfigError::field(field, reason));
        }
        if let Some(tls) = &self.tls {
            for (field, path) in [
                ("tls.cert_path", &tls.cert_path),
                ("tls.key_path", &tls.key_path),
            ] {
                if !path.exists() {
                    return Err(ConfigError::field(
                        field,
                        format!("file {} does not exist", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Applies `PUSHBRIDGE_A__B=value` overrides onto the table. Values parse as TOML
/// scalars/arrays when they can (`8`, `true`, `["10.0.0.0/8"]`), else as strings.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let dotted = path.join(".");
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::field(
                &dotted,
                format!("bad env var name {name}"),
            ));
        }
        let value = parse_env_value(&raw);
        let mut cursor = &mut *table;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cursor.insert(key.clone(), value.clone());
                break;
            }
            let entry = cursor
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::field(
                        &dotted,
                        format!("{name} addresses inside a non-table value"),
                    ))
                }
            };
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_table(toml::Table::new()).expect("defaults");
        assert_eq!(c.database_url, "sqlite://pushbridge.db");
        assert_eq!(c.webhooks.max_body_bytes, 256 * 1024);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = Config::from_table(table("[webhooks]\nmax_body_bytes = \"big\""))
            .expect_err("must fail");
        assert!(err.to_string().contains("webhooks.max_body_bytes"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Config::from_table(table("[webhooks]\nmax_bdy = 1")).expect_err("must fail");
        assert!(err.to_string().contains("max_bdy"), "{err}");
    }

    #[test]
    fn env_overrides_nested_fields() {
        let mut t = table("listen = \"127.0.0.1:9000\"");
        apply_env(
            &mut t,
            vec![
                ("PUSHBRIDGE_WEBHOOKS__MAX_BODY_BYTES".into(), "1024".into()),
                ("PUSHBRIDGE_DATABASE_URL".into(), "sqlite://other.db".into()),
                (
                    "PUSHBRIDGE_WEBHOOKS__TRUSTED_PROXIES".into(),
                    "[\"10.0.0.0/8\"]".into(),
                ),
                ("UNRELATED".into(), "x".into()),
            ]
            .into_iter(),
        )
        .expect("env");
        let c = Config::from_table(t).expect("valid");
        assert_eq!(c.webhooks.max_body_bytes, 1024);
        assert_eq!(c.database_url, "sqlite://other.db");
        assert_eq!(c.webhooks.trusted_proxies.len(), 1);
        assert_eq!(c.listen.port(), 9000);
    }

    #[test]
    fn provider_errors_name_the_field() {
        let err = Config::from_table(table(
            "[apns]\nenabled = true\nkey_path = \"k.p8\"\nteam_id = \"T\"",
        ))
        .expect_err("missing key id");
        assert!(err.to_string().contains("apns.key_id"), "{err}");
    }

    #[test]
    fn master_keys_are_checked_and_named() {
        let err =
            Config::from_table(table("[secrets]\nmaster_key = \"c2hvcnQ=\"")).expect_err("5 bytes");
        assert!(err.to_string().contains("secrets.master_key"), "{err}");
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let key = crate::secrets::MasterKey::generate();
        let mut t = toml::Table::new();
        apply_env(
            &mut t,
            vec![
                ("PUSHBRIDGE_SECRETS__MASTER_KEY".into(), key.to_base64()),
                (
                    "PUSHBRIDGE_SECRETS__PREVIOUS_KEYS".into(),
                    "[\"not a key\"]".into(),
                ),
            ]
            .into_iter(),
        )
        .expect("env");
        let err = Config::from_table(t.clone()).expect_err("bad previous key");
        assert!(
            err.to_string().contains("secrets.previous_keys[0]"),
            "{err}"
        );
        t["secrets"]["previous_keys"] = toml::Value::Array(vec![]);
        let c = Config::from_table(t).expect("valid");
        assert_eq!(c.secrets.master_key, Some(key.clone()));
        assert!(
            !format!("{c:?}").contains(&key.to_base64()),
            "Debug hides the key"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let err = Config::from_table(table("database_url = \"mysql://x\"")).expect_err("fail");
        assert!(err.to_string().contains("database_url"), "{err}");
    }

    #[test]
    fn telemetry_endpoint_is_checked_at_load_and_named() {
        let err = Config::from_table(table("[telemetry]\notlp_endpoint = \"collector:4318\""))
            .expect_err("no scheme");
        let message = err.to_string();
        assert!(message.contains("telemetry.otlp_endpoint"), "{message}");
        assert!(message.contains("http:// or https://"), "{message}");
        let err = Config::from_table(table("[telemetry]\nsample_ratio = 1.5")).expect_err("ratio");
        assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
        let mut t = toml::Table::new();
        apply_env(
            &mut t,
            vec![(
                "PUSHBRIDGE_TELEMETRY__OTLP_ENDPOINT".into(),
                "http://127.0.0.1:4318".into(),
            )]
            .into_iter(),
        )
        .expect("env");
        let c = Config::from_table(t).expect("valid");
        let endpoint = c.telemetry.otlp_endpoint.expect("set");
        assert_eq!(endpoint.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.telemetry.service_name, "pushbridge");
    }

    #[test]
    fn concurrency_is_a_cap_within_bounds() {
        let config = Config::from_table(table("[worker]\nconcurrency = 4")).expect("valid");
        assert_eq!(config.worker.concurrency, 4);
        assert_eq!(Config::default().worker.concurrency, DEFAULT_CONCURRENCY);
        for bad in ["0", "64001"] {
            let err = Config::from_table(table(&format!("[worker]\nconcurrency = {bad}")))
                .expect_err("out of range");
            assert!(err.to_string().contains("worker.concurrency"), "{err}");
        }
    }
}
