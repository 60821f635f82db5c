//! Provider-neutral push types (provisional until the transport lands).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Result of one send attempt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    /// Accepted by the provider.
    Delivered {
        /// Provider message id.
        provider_id: String,
    },
    /// The token is dead.
    InvalidToken {
        /// Provider reason.
        reason: String,
        /// Unix millis from APNs 410.
        timestamp: Option<i64>,
    },
    /// Transient failure.
    Retry {
        /// Provider-requested delay.
        after: Option<std::time::Duration>,
        /// Reason.
        reason: String,
    },
    /// Permanent failure.
    Failed {
        /// Reason.
        reason: String,
    },
}

/// Delivery priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Immediate.
    High,
    /// Power-considerate.
    Normal,
}

/// Provider-neutral rendered notification for one device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub title: Option<String>,
    pub subtitle: Option<String>,
    pub body: Option<String>,
    pub badge: Option<u32>,
    pub sound: Option<String>,
    pub category: Option<String>,
    pub thread_id: Option<String>,
    pub collapse_key: Option<String>,
    pub priority: Option<Priority>,
    pub ttl_seconds: Option<u64>,
    pub push_type: Option<String>,
    pub mutable_content: bool,
    pub content_available: bool,
    pub image: Option<String>,
    pub channel_id: Option<String>,
    pub data: BTreeMap<String, String>,
}

/// Platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apns,
    Fcm,
}

/// APNs environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    Production,
    Sandbox,
}

/// Device addressing.
#[derive(Clone, Debug)]
pub struct Target {
    pub platform: Platform,
    pub token: String,
    pub environment: ApnsEnvironment,
    pub topic: Option<String>,
}

// ---- provisional, replaced by the transport ----
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ApnsConfig {}
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct FcmConfig {}
pub struct Providers;
impl Providers {
    pub fn new(_a: &ApnsConfig, _f: &FcmConfig) -> anyhow::Result<Self> {
        Ok(Self)
    }
    pub async fn send(&self, _t: &Target, _n: &Notification) -> Outcome {
        Outcome::Failed {
            reason: "ProviderNotConfigured".into(),
        }
    }
}
