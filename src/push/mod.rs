//! Provider transport: APNs and FCM senders over pooled HTTP/2 connections.
//!
//! The delivery pipeline hands a [`Target`] and a rendered [`Notification`] to
//! [`Providers::send`] and gets back one [`Outcome`]; everything platform-specific (payload
//! format, authentication, error vocabulary) stays in [`apns`] and [`fcm`].

pub mod apns;
pub mod fcm;
pub mod pool;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{ApnsEnvironment, Notification, Platform};
pub use pool::PoolStats;

/// What happened to one send, as the pipeline needs to act on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The provider accepted the notification.
    Delivered {
        /// `apns-id` or the FCM message name.
        provider_id: String,
    },
    /// The token is dead: prune the device (unless it registered again after `timestamp`).
    InvalidToken {
        /// Provider reason, e.g. `Unregistered` or `UNREGISTERED`.
        reason: String,
        /// Unix millis from an APNs 410: when the token was last known to be invalid.
        timestamp: Option<i64>,
    },
    /// A transient failure: try again later, no earlier than `after` when given.
    Retry {
        /// The provider's `Retry-After`, when it sent one (serialized as `after_ms`).
        #[serde(rename = "after_ms", serialize_with = "serialize_millis")]
        after: Option<Duration>,
        /// Provider reason or transport failure.
        reason: String,
    },
    /// A permanent failure for this notification: dead-letter it.
    Failed {
        /// Provider reason, e.g. `PayloadTooLarge`.
        reason: String,
    },
}

fn serialize_millis<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&(d.as_millis() as u64)),
        None => serializer.serialize_none(),
    }
}

/// The device-side addressing a send needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// Platform of the token.
    pub platform: Platform,
    /// Device token (APNs hex token or FCM registration token).
    pub token: String,
    /// APNs environment; ignored for FCM.
    #[serde(default)]
    pub environment: ApnsEnvironment,
    /// APNs topic (bundle id); falls back to `apns.default_topic`.
    #[serde(default)]
    pub topic: Option<String>,
}

/// APNs settings (token-based authentication).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// Send to APNs at all.
    pub enabled: bool,
    /// Production host.
    pub endpoint: String,
    /// Sandbox (development) host.
    pub sandbox_endpoint: String,
    /// The `.p8` token-signing key from the Apple developer account.
    pub key_path: PathBuf,
    /// The key's 10-character id.
    pub key_id: String,
    /// The developer team id (JWT issuer).
    pub team_id: String,
    /// Topic (bundle id) for devices that do not carry one.
    pub default_topic: Option<String>,
    /// HTTP/2 connections per host.
    pub pool_size: usize,
    /// Limit for one send, including connecting.
    pub request_timeout_ms: u64,
    /// Extra trusted root certificates (PEM), e.g. the simulator's CA.
    pub extra_root_certs: Vec<PathBuf>,
    /// Age after which the provider JWT is replaced (Apple: 20 to 60 minutes).
    pub jwt_refresh_secs: u64,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: apns::PRODUCTION_ENDPOINT.into(),
            sandbox_endpoint: apns::SANDBOX_ENDPOINT.into(),
            key_path: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            default_topic: None,
            pool_size: 2,
            request_timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
            jwt_refresh_secs: 50 * 60,
        }
    }
}

impl ApnsConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        check_endpoint("apns.endpoint", &self.endpoint)?;
        check_endpoint("apns.sandbox_endpoint", &self.sandbox_endpoint)?;
        check_pool("apns", self.pool_size, self.request_timeout_ms)?;
        if !(20 * 60..=55 * 60).contains(&self.jwt_refresh_secs) {
            return Err("apns.jwt_refresh_secs: must be between 1200 and 3300".into());
        }
        if self.enabled {
            if self.key_path.as_os_str().is_empty() {
                return Err("apns.key_path: must not be empty when apns.enabled".into());
            }
            if self.key_id.trim().is_empty() {
                return Err("apns.key_id: must not be empty when apns.enabled".into());
            }
            if self.team_id.trim().is_empty() {
                return Err("apns.team_id: must not be empty when apns.enabled".into());
            }
        }
        if matches!(&self.default_topic, Some(t) if t.trim().is_empty()) {
            return Err("apns.default_topic: must not be empty when set".into());
        }
        Ok(())
    }
}

/// FCM HTTP v1 settings (service-account authentication).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// Send to FCM at all.
    pub enabled: bool,
    /// FCM host.
    pub endpoint: String,
    /// Service-account key file (JSON) from the Firebase console.
    pub service_account_path: PathBuf,
    /// Overrides the key file's `project_id`.
    pub project_id: Option<String>,
    /// Overrides the key file's `token_uri` (the OAuth2 token endpoint).
    pub token_uri: Option<String>,
    /// HTTP/2 connections to the FCM host.
    pub pool_size: usize,
    /// Limit for one send, including connecting.
    pub request_timeout_ms: u64,
    /// Extra trusted root certificates (PEM), e.g. the simulator's CA.
    pub extra_root_certs: Vec<PathBuf>,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: fcm::PRODUCTION_ENDPOINT.into(),
            service_account_path: PathBuf::new(),
            project_id: None,
            token_uri: None,
            pool_size: 2,
            request_timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
        }
    }
}

impl FcmConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        check_endpoint("fcm.endpoint", &self.endpoint)?;
        if let Some(uri) = &self.token_uri {
            check_endpoint("fcm.token_uri", uri)?;
        }
        check_pool("fcm", self.pool_size, self.request_timeout_ms)?;
        if self.enabled && self.service_account_path.as_os_str().is_empty() {
            return Err("fcm.service_account_path: must not be empty when fcm.enabled".into());
        }
        if matches!(&self.project_id, Some(p) if p.trim().is_empty()) {
            return Err("fcm.project_id: must not be empty when set".into());
        }
        Ok(())
    }
}

fn check_endpoint(field: &str, url: &str) -> Result<(), String> {
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(()),
        _ => Err(format!("{field}: must be an https:// URL")),
    }
}

fn check_pool(prefix: &str, size: usize, timeout_ms: u64) -> Result<(), String> {
    if !(1..=64).contains(&size) {
        return Err(format!("{prefix}.pool_size: must be between 1 and 64"));
    }
    if timeout_ms == 0 {
        return Err(format!("{prefix}.request_timeout_ms: must be positive"));
    }
    Ok(())
}

/// Wall-clock time for credential lifetimes. Tests shift it instead of sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock, unshifted.
    pub fn system() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone) by `secs`, forward or back.
    pub fn shift(&self, secs: i64) {
        self.offset_ms.fetch_add(secs * 1000, Ordering::Relaxed);
    }

    /// Current time in unix milliseconds.
    pub fn unix_millis(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Current time in unix seconds.
    pub fn unix_secs(&self) -> i64 {
        self.unix_millis().div_euclid(1000)
    }
}

/// Connection counters per provider endpoint; `None` when the provider is not configured.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProviderStats {
    /// APNs production host.
    pub apns_production: Option<PoolStats>,
    /// APNs sandbox host.
    pub apns_sandbox: Option<PoolStats>,
    /// FCM host (message sends; token fetches are not counted).
    pub fcm: Option<PoolStats>,
}

/// The configured senders.
pub struct Providers {
    apns: Option<apns::ApnsSender>,
    fcm: Option<fcm::FcmSender>,
}

impl Providers {
    /// Loads keys and prepares connection pools for every enabled provider.
    pub fn new(apns: &ApnsConfig, fcm: &FcmConfig) -> anyhow::Result<Self> {
        Self::with_clock(apns, fcm, Clock::system())
    }

    /// Like [`Providers::new`], with an explicit clock for credential lifetimes.
    pub fn with_clock(apns: &ApnsConfig, fcm: &FcmConfig, clock: Clock) -> anyhow::Result<Self> {
        apns.validate().map_err(anyhow::Error::msg)?;
        fcm.validate().map_err(anyhow::Error::msg)?;
        let apns = if apns.enabled {
            Some(apns::ApnsSender::new(apns, clock.clone())?)
        } else {
            None
        };
        let fcm = if fcm.enabled {
            Some(fcm::FcmSender::new(fcm, clock)?)
        } else {
            None
        };
        Ok(Self { apns, fcm })
    }

    /// Sends one notification to one device.
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        match target.platform {
            Platform::Apns => match &self.apns {
                Some(sender) => sender.send(target, n).await,
                None => not_configured(),
            },
            Platform::Fcm => match &self.fcm {
                Some(sender) => sender.send(&target.token, n).await,
                None => not_configured(),
            },
        }
    }

    /// Connection counters for metrics.
    pub fn stats(&self) -> ProviderStats {
        let (apns_production, apns_sandbox) = match &self.apns {
            Some(s) => {
                let (p, s) = s.stats();
                (Some(p), Some(s))
            }
            None => (None, None),
        };
        ProviderStats {
            apns_production,
            apns_sandbox,
            fcm: self.fcm.as_ref().map(|s| s.stats()),
        }
    }
}

fn not_configured() -> Outcome {
    Outcome::Failed {
        reason: "ProviderNotConfigured".into(),
    }
}

/// Parses `Retry-After` as delay seconds or an HTTP date.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The first 8 characters of a token, for logs.
pub(crate) fn short(token: &str) -> crate::redact::Redacted<'_> {
    crate::redact::Redacted(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(30)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
    }

    #[test]
    fn outcomes_serialize_flat_with_millis() {
        let retry = Outcome::Retry {
            after: Some(Duration::from_secs(2)),
            reason: "UNAVAILABLE".into(),
        };
        assert_eq!(
            serde_json::to_value(&retry).unwrap(),
            serde_json::json!({"outcome": "retry", "after_ms": 2000, "reason": "UNAVAILABLE"})
        );
    }

    #[test]
    fn validation_names_the_field() {
        let apns = ApnsConfig {
            enabled: true,
            key_path: "k.p8".into(),
            team_id: "T".into(),
            ..ApnsConfig::default()
        };
        assert_eq!(
            apns.validate().unwrap_err(),
            "apns.key_id: must not be empty when apns.enabled"
        );
        let fcm = FcmConfig {
            endpoint: "http://fcm".into(),
            ..FcmConfig::default()
        };
        assert_eq!(
            fcm.validate().unwrap_err(),
            "fcm.endpoint: must be an https:// URL"
        );
        assert!(ApnsConfig::default().validate().is_ok());
        assert!(FcmConfig::default().validate().is_ok());
    }
}
