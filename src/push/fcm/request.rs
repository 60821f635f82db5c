//! FCM request building: the `{"message": ...}` body with its Android, APNs and web push
//! overrides. The APNs override takes its headers from the APNs request rules.

use std::collections::HashMap;

use bytes::Bytes;
use fcm_v1::android::{AndroidConfig, AndroidMessagePriority, AndroidNotification};
use fcm_v1::apns::ApnsConfig as FcmApnsConfig;
use fcm_v1::message::{Message, Notification as FcmNotification};
use fcm_v1::webpush::WebpushConfig;
use serde_json::{json, Value};

use super::wire;
use crate::model::{Notification, Priority};
use crate::push::apns::request::{background_aps, DeliveryOptions};
use crate::push::apns::wire::header as apns_header;
use crate::push::outcome::Outcome;

/// Whether Google reserves `key` in a message's `data` ("from", "message_type", and any
/// word starting with "google" or "gcm", per the v1 `Message.data` reference).
pub fn is_reserved_data_key(key: &str) -> bool {
    wire::RESERVED_DATA_KEYS.contains(&key)
        || wire::RESERVED_DATA_KEY_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

/// The `{"message": ...}` body, or the [`Outcome::Failed`] that makes sending pointless.
pub fn request_body(token: &str, n: &Notification, now_secs: i64) -> Result<Bytes, Outcome> {
    let mut message = message(n, now_secs)?;
    if payload_size(&message) > wire::MAX_PAYLOAD_BYTES {
        return Err(Outcome::failed("PayloadTooLarge"));
    }
    message["token"] = Value::String(token.to_string());
    serde_json::to_vec(&json!({ "message": message }))
        .map(Bytes::from)
        .map_err(|_| Outcome::failed("PayloadSerializationFailed"))
}

/// What FCM counts against its 4096-byte limit: the `notification` and `data` objects.
pub fn payload_size(message: &Value) -> usize {
    ["notification", "data"]
        .iter()
        .filter_map(|key| message.get(*key))
        .map(|v| v.to_string().len())
        .sum()
}

/// The FCM message for `n` as JSON, without a target.
pub fn message(n: &Notification, now_secs: i64) -> Result<Value, Outcome> {
    let notification =
        (n.title.is_some() || n.body.is_some() || n.image.is_some()).then(|| FcmNotification {
            title: n.title.clone(),
            body: n.body.clone(),
            image: n.image.clone(),
        });
    // FCM data values must be strings.
    let data = (!n.data.is_empty()).then(|| {
        n.data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<HashMap<_, _>>()
    });
    let message = Message {
        data,
        android: android_config(n),
        apns: apns_config(n, now_secs),
        webpush: webpush_config(n),
        notification,
        ..Message::default()
    };
    let mut json = serde_json::to_value(&message).map_err(|e| {
        tracing::error!(error = %e, "serializing an FCM message failed");
        Outcome::failed("PayloadSerializationFailed")
    })?;
    // fcm_v1 types `notification_count` as i8; Google's field is an int32.
    if let (Some(badge), Some(android)) = (n.badge, json.pointer_mut("/android/notification")) {
        android["notification_count"] = json!(badge);
    }
    Ok(json)
}

/// Android's priority, TTL and collapse key, and for a notification that shows text its
/// display options: channel, sound, badge count (`notification_count`, sent by
/// [`message`]), `tag` from the thread id and `click_action` from the category.
fn android_config(n: &Notification) -> Option<AndroidConfig> {
    let shown = n.has_alert()
        && (n.channel_id.is_some()
            || n.sound.is_some()
            || n.badge.is_some()
            || n.thread_id.is_some()
            || n.category.is_some());
    let notification = shown.then(|| AndroidNotification {
        channel_id: n.channel_id.clone(),
        sound: n.sound.clone(),
        tag: n.thread_id.clone(),
        click_action: n.category.clone(),
        ..AndroidNotification::default()
    });
    let config = AndroidConfig {
        collapse_key: n.collapse_key.clone(),
        priority: n.priority.map(|p| match p {
            Priority::High => AndroidMessagePriority::High,
            Priority::Normal => AndroidMessagePriority::Normal,
        }),
        ttl: n.ttl_seconds.map(|s| format!("{s}s")),
        notification,
        ..AndroidConfig::default()
    };
    let empty = config.collapse_key.is_none()
        && config.priority.is_none()
        && config.ttl.is_none()
        && config.notification.is_none();
    (!empty).then_some(config)
}

/// The `aps` dictionary for FCM's APNs override (title and body travel in `notification`);
/// a background push gets only `content-available`, as Apple requires.
fn aps_override(n: &Notification, background: bool) -> serde_json::Map<String, Value> {
    let mut aps = serde_json::Map::new();
    if background {
        if let Value::Object(only) = background_aps() {
            aps = only;
        }
        return aps;
    }
    if n.subtitle.is_some() {
        // FCM has no subtitle field; an explicit alert dictionary carries it.
        let mut alert = serde_json::Map::new();
        for (key, value) in [
            ("title", &n.title),
            ("subtitle", &n.subtitle),
            ("body", &n.body),
        ] {
            if let Some(v) = value {
                alert.insert(key.into(), Value::String(v.clone()));
            }
        }
        aps.insert("alert".into(), Value::Object(alert));
    }
    if let Some(badge) = n.badge {
        aps.insert("badge".into(), json!(badge));
    }
    if let Some(sound) = &n.sound {
        aps.insert("sound".into(), json!(sound));
    }
    if let Some(category) = &n.category {
        aps.insert("category".into(), json!(category));
    }
    if let Some(thread) = &n.thread_id {
        aps.insert("thread-id".into(), json!(thread));
    }
    if n.mutable_content {
        aps.insert("mutable-content".into(), json!(1));
    }
    if n.content_available {
        aps.insert("content-available".into(), json!(1));
    }
    aps
}

fn apns_config(n: &Notification, now_secs: i64) -> Option<FcmApnsConfig> {
    // FCM forwards these to APNs as they are; headers left out take FCM's defaults.
    let options = DeliveryOptions::of(n, now_secs);
    let aps = aps_override(n, options.is_background());
    let mut headers = HashMap::new();
    if let Some(p) = options.priority {
        headers.insert(apns_header::PRIORITY.to_string(), json!(p));
    }
    if let Some(push_type) = options.push_type {
        headers.insert(apns_header::PUSH_TYPE.to_string(), json!(push_type));
    }
    if let Some(collapse) = &n.collapse_key {
        headers.insert(apns_header::COLLAPSE_ID.to_string(), json!(collapse));
    }
    if let Some(expiration) = options.expiration {
        headers.insert(
            apns_header::EXPIRATION.to_string(),
            json!(expiration.to_string()),
        );
    }
    if aps.is_empty() && headers.is_empty() {
        return None;
    }
    let payload =
        (!aps.is_empty()).then(|| HashMap::from([("aps".to_string(), Value::Object(aps))]));
    Some(FcmApnsConfig {
        headers: (!headers.is_empty()).then_some(headers),
        payload,
        fcm_options: None,
    })
}

fn webpush_config(n: &Notification) -> Option<WebpushConfig> {
    let mut headers = HashMap::new();
    if let Some(ttl) = n.ttl_seconds {
        headers.insert("TTL".to_string(), json!(ttl.to_string()));
    }
    if let Some(p) = n.priority {
        let urgency = match p {
            Priority::High => "high",
            Priority::Normal => "normal",
        };
        headers.insert("Urgency".to_string(), json!(urgency));
    }
    (!headers.is_empty()).then(|| WebpushConfig {
        headers: Some(headers),
        ..WebpushConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_values_are_strings_and_size_is_checked() {
        let n = Notification {
            title: Some("t".into()),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Notification::default()
        };
        let body: Value = serde_json::from_slice(&request_body("tok", &n, 0).unwrap()).unwrap();
        assert_eq!(body["message"]["data"]["k"], "v");
        assert_eq!(body["message"]["token"], "tok");
        let big = Notification {
            body: Some("x".repeat(4100)),
            ..Notification::default()
        };
        assert_eq!(
            request_body("tok", &big, 0).unwrap_err(),
            Outcome::failed("PayloadTooLarge")
        );
    }

    #[test]
    fn apns_override_uses_the_apns_header_rules() {
        let silent = Notification {
            content_available: true,
            ttl_seconds: Some(30),
            ..Notification::default()
        };
        let apns = &message(&silent, 100).unwrap()["apns"];
        assert_eq!(apns["headers"]["apns-push-type"], "background");
        assert_eq!(apns["headers"]["apns-priority"], "5");
        assert_eq!(apns["headers"]["apns-expiration"], "130");
        let alert = Notification {
            title: Some("t".into()),
            ..Notification::default()
        };
        assert!(message(&alert, 0).unwrap().get("apns").is_none());
    }

    #[test]
    fn a_data_message_wakes_apple_devices_at_priority_5_even_when_android_gets_high() {
        let n = Notification {
            priority: Some(Priority::High),
            mutable_content: false,
            data: [("sync".to_string(), "1".to_string())].into(),
            ..Notification::default()
        };
        let m = message(&n, 0).unwrap();
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["apns"]["headers"]["apns-priority"], "5");
        assert_eq!(m["apns"]["headers"]["apns-push-type"], "background");
        assert_eq!(
            m["apns"]["payload"],
            json!({"aps": {"content-available": 1}})
        );
        assert!(m.get("notification").is_none());
        assert!(m["android"].get("notification").is_none());
    }

    #[test]
    fn android_gets_badge_thread_and_category() {
        let n = Notification {
            title: Some("t".into()),
            badge: Some(300),
            thread_id: Some("orders".into()),
            category: Some("OPEN_ORDER".into()),
            sound: Some("default".into()),
            channel_id: Some("orders".into()),
            ..Notification::default()
        };
        let android = &message(&n, 0).unwrap()["android"]["notification"];
        assert_eq!(
            android,
            &json!({"notification_count": 300, "tag": "orders", "click_action": "OPEN_ORDER",
                    "sound": "default", "channel_id": "orders"})
        );
    }

    #[test]
    fn reserved_data_keys_follow_googles_list() {
        for key in [
            "from",
            "message_type",
            "google.c.a",
            "googleplay",
            "gcm.n.e",
            "gcmx",
        ] {
            assert!(is_reserved_data_key(key), "{key}");
        }
        for key in [
            "notification",
            "collapse_key",
            "url",
            "fromage",
            "my.google",
        ] {
            assert!(!is_reserved_data_key(key), "{key}");
        }
    }
}
