//! The neutral result of one send, which the pipeline acts on without seeing a provider
//! string, and the `Retry-After` parsing both providers' response mapping shares.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::pool::TransportError;
use crate::model::AttemptOutcome;

/// What happened to one send, as the pipeline needs to act on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The provider accepted the notification.
    Delivered {
        /// `apns-id` or the FCM message name.
        provider_id: String,
    },
    /// The provider says the token is gone (APNs 410 `Unregistered`/`ExpiredToken`, FCM
    /// `UNREGISTERED`): prune the device (unless it registered again after `timestamp`).
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
        /// Why it is worth retrying: decides the wait and whether the attempt counts.
        #[serde(skip)]
        class: RetryClass,
    },
    /// The provider refused this token for this sender, topic or host without saying it is
    /// gone (APNs `BadDeviceToken`, `DeviceTokenNotForTopic`; FCM `SENDER_ID_MISMATCH`, an
    /// `INVALID_ARGUMENT` about the token): often a configuration mistake, so the device is
    /// kept (marked suspect) rather than deleted, and a burst of these holds the app's sends.
    TokenRejected {
        /// Provider reason.
        reason: String,
    },
    /// A permanent failure for this notification: dead-letter it.
    Failed {
        /// Provider reason, e.g. `PayloadTooLarge`.
        reason: String,
    },
    /// The provider refused the app's credential (or there is none), not this device or this
    /// notification: pause the app's sends to the provider and keep the job queued.
    CredentialRejected {
        /// Provider reason, e.g. `InvalidProviderToken` or `THIRD_PARTY_AUTH_ERROR`.
        reason: String,
    },
}

/// Why a send is worth retrying, which decides how long to wait and whether the attempt
/// counts against the job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryClass {
    /// The provider or the network failed for a moment: exponential backoff.
    #[default]
    Transient,
    /// A send rate or quota is exhausted (FCM `QUOTA_EXCEEDED`): without `Retry-After`,
    /// exponential backoff starting at a minute, as Google asks.
    Throttled,
    /// A reason neither provider documents: retried with backoff, and counted apart in the
    /// metrics so that it gets noticed.
    Unrecognized,
    /// The connection died under the request (it stopped answering and failed a ping): the
    /// attempt says nothing about the job and is not counted against it.
    ConnectionLost,
}

impl Outcome {
    /// The outcome's name in metrics: an attempt-log outcome, or one the metrics tell apart:
    /// `unrecognized` (a retry for an undocumented reason), `token_rejected`, and
    /// `credential_rejected` (which the attempt log never holds: such a send is not counted
    /// against its job).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => AttemptOutcome::Delivered.as_str(),
            Self::InvalidToken { .. } => AttemptOutcome::InvalidToken.as_str(),
            Self::Retry {
                class: RetryClass::Unrecognized,
                ..
            } => "unrecognized",
            Self::Retry { .. } => AttemptOutcome::Retry.as_str(),
            Self::TokenRejected { .. } => "token_rejected",
            Self::Failed { .. } => AttemptOutcome::Failed.as_str(),
            Self::CredentialRejected { .. } => "credential_rejected",
        }
    }

    /// The provider's reason or the transport failure; none for a delivery.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Delivered { .. } => None,
            Self::InvalidToken { reason, .. }
            | Self::Retry { reason, .. }
            | Self::TokenRejected { reason }
            | Self::Failed { reason }
            | Self::CredentialRejected { reason } => Some(reason),
        }
    }

    /// A permanent failure for `reason`.
    pub(crate) fn failed(reason: &str) -> Self {
        Self::Failed {
            reason: reason.into(),
        }
    }

    /// A credential-level refusal for `reason`.
    pub(crate) fn credential(reason: &str) -> Self {
        Self::CredentialRejected {
            reason: reason.into(),
        }
    }

    /// A retry of `class` for `reason`, no earlier than `after` when given.
    pub(crate) fn retry(
        reason: impl Into<String>,
        after: Option<Duration>,
        class: RetryClass,
    ) -> Self {
        Self::Retry {
            after,
            reason: reason.into(),
            class,
        }
    }

    /// A retry after a request that got no HTTP response (connect, timeout, reset).
    pub(crate) fn transport_retry(e: &TransportError) -> Self {
        let class = if e.connection_lost() {
            RetryClass::ConnectionLost
        } else {
            RetryClass::Transient
        };
        Self::retry(e.reason(), None, class)
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
        let retry = Outcome::retry(
            "UNAVAILABLE",
            Some(Duration::from_secs(2)),
            RetryClass::Transient,
        );
        assert_eq!(
            serde_json::to_value(&retry).unwrap(),
            serde_json::json!({"outcome": "retry", "after_ms": 2000, "reason": "UNAVAILABLE"})
        );
    }
}
