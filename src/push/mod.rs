//! Provider transport: the neutral [`Outcome`] of a send, the [`Target`] it goes to, and the
//! [`Providers`] that hold one sender per platform over pooled HTTP/2 connections.
//!
//! The delivery pipeline hands a [`Target`] and a rendered [`Notification`] to
//! [`Providers::send`] and gets back one [`Outcome`]; everything platform-specific (settings,
//! payload format, authentication, error vocabulary, wire constants) stays in [`apns`] and
//! [`fcm`].

pub mod apns;
pub mod fcm;
pub mod pool;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

// The settings `Providers::new` takes; each provider module owns its own.
pub use self::apns::ApnsConfig;
pub use self::fcm::FcmConfig;
pub use self::pool::PoolStats;
use self::pool::TransportError;
use crate::model::{ApnsEnvironment, Notification, Platform};

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

impl Outcome {
    /// A permanent failure for `reason`.
    pub(crate) fn failed(reason: &str) -> Self {
        Self::Failed {
            reason: reason.into(),
        }
    }

    /// A retry after a request that got no HTTP response (connect, timeout, reset).
    pub(crate) fn transport_retry(e: &TransportError) -> Self {
        Self::Retry {
            after: None,
            reason: e.reason().into(),
        }
    }
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

/// Checks that a settings field holds an `https://host` URL.
fn check_endpoint(field: &str, url: &str) -> Result<(), String> {
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(()),
        _ => Err(format!("{field}: must be an https:// URL")),
    }
}

/// Checks a provider's pool size and request timeout.
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
    Outcome::failed("ProviderNotConfigured")
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
}
