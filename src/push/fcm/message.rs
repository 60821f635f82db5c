//! The FCM HTTP v1 `Message` resource, as far as we send it: typed fields for the parts of
//! Google's reference that the request builder fills. Owned here so the sender needs no HTTP
//! client crate (and no native TLS) just for a handful of serde structs.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// `Message`: the target is added by the caller, so the same message renders for any token.
#[derive(Debug, Default, Serialize)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<HashMap<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub android: Option<AndroidConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webpush: Option<WebpushConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsConfig>,
}

/// The cross-platform `notification` (what FCM counts toward its payload limit with `data`).
#[derive(Debug, Default, Serialize)]
pub struct Notification {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// `AndroidConfig`: delivery options for Android devices.
#[derive(Debug, Default, Serialize)]
pub struct AndroidConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<AndroidMessagePriority>,
    /// A protobuf `Duration` in its JSON form, e.g. `"3600s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<AndroidNotification>,
}

/// `AndroidMessagePriority`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AndroidMessagePriority {
    Normal,
    High,
}

/// `AndroidNotification`: the display options we map from the neutral notification.
#[derive(Debug, Default, Serialize)]
pub struct AndroidNotification {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_action: Option<String>,
    /// The badge count (a non-negative int32 in Google's reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_count: Option<u32>,
}

/// `ApnsConfig`: headers and payload FCM forwards to APNs as they are.
#[derive(Debug, Default, Serialize)]
pub struct ApnsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<HashMap<String, Value>>,
}

/// `WebpushConfig`: the Web Push protocol headers (`TTL`, `Urgency`).
#[derive(Debug, Default, Serialize)]
pub struct WebpushConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<String, Value>>,
}
