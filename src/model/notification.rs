//! The rendered notification: what templates produce for one device and what the providers
//! send, before either provider's wire format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Notification priority, mapped to `apns-priority` 10/5 and FCM `HIGH`/`NORMAL`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Deliver immediately.
    High,
    /// Deliver at a time that saves power.
    Normal,
}

/// Provider-neutral rendered notification for one device (the pipeline fills it from templates).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Notification {
    /// Alert title.
    pub title: Option<String>,
    /// Alert subtitle (APNs only; FCM carries it in the APNs override).
    pub subtitle: Option<String>,
    /// Alert body.
    pub body: Option<String>,
    /// App icon badge count.
    pub badge: Option<u32>,
    /// Sound name.
    pub sound: Option<String>,
    /// APNs category / notification actions.
    pub category: Option<String>,
    /// APNs thread id for grouping.
    pub thread_id: Option<String>,
    /// `apns-collapse-id` / FCM `collapse_key` (≤ 64 bytes for APNs).
    pub collapse_key: Option<String>,
    /// Delivery priority.
    pub priority: Option<Priority>,
    /// How long the provider should keep trying; 0 = deliver now or never.
    pub ttl_seconds: Option<u64>,
    /// `apns-push-type`; defaults to `alert`, or `background` for a push that shows nothing.
    pub push_type: Option<String>,
    /// Let a notification service extension modify the content (sent only when true).
    pub mutable_content: bool,
    /// Wake the app in the background (sent only when true; a background push always is).
    pub content_available: bool,
    /// Image URL (FCM notification image).
    pub image: Option<String>,
    /// Android notification channel.
    pub channel_id: Option<String>,
    /// Custom key/value data delivered to the app.
    pub data: BTreeMap<String, String>,
}

impl Notification {
    /// Whether any user-visible alert text is set.
    pub fn has_alert(&self) -> bool {
        self.title.is_some() || self.subtitle.is_some() || self.body.is_some()
    }

    /// Whether it shows the user nothing (no alert text, badge or sound): then it can only
    /// wake the app, so it goes out as a background push (`apns-push-type: background`,
    /// priority 5, `aps` holding only `content-available`) unless a push type is stated.
    pub fn is_background(&self) -> bool {
        !self.has_alert() && self.badge.is_none() && self.sound.is_none()
    }
}
