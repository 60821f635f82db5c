//! The device-side addressing of one send.

use serde::{Deserialize, Serialize};

use crate::model::{ApnsEnvironment, Platform};

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
