//! FCM request building: the `{"message": ...}` body with its Android, APNs and web push
//! overrides. The APNs override takes its headers from the APNs request rules.

use std::collections::HashMap;

use bytes::Bytes;
use fcm_v1::android::{AndroidConfig, AndroidMessagePriority, AndroidNotification};
use fcm_v1::apns::ApnsConfig as FcmApnsConfig;
use fcm_v1::message::{Message, Notification as FcmNotification};
use fcm_v1::webpush::WebpushConfig;
use serde::Serialize;
use serde_json::{json, Value};

use super::wire;
use crate::model::{Notification, Priority};
use crate::push::apns::request::DeliveryOptions;
use crate::push::apns::wire::header as apns_header;
use crate::push::outcome::Outcome;

#[derive(Serialize)]
struct SendRequest<'a> {
    message: &'a Message,
}

/// The `{"message": ...}` body, or the [`Outcome::Failed`] that makes sending pointless.
pub fn request_body(token: &str, n: &Notification, now_secs: i64) -> Result<Bytes, Outcome> {
    let mut message = message(n, now_secs);
    if payload_size(&message) > wire::MAX_PAYLOAD_BYTES {
        return Err(Outcome::failed("PayloadTooLarge"));
    }
    message.token = Some(token.to_string());
    serde_json::to_vec(&SendRequest { message: &message })
        .map(Bytes::from)
        .map_err(|_| Outcome::failed("PayloadSerializationFailed"))
}

/// What FCM counts against its 4096-byte limit: the `notification` and `data` objects.
pub fn payload_size(message: &Message) -> usize {
    let size = |v: Result<Vec<u8>, serde_json::Error>| v.map(|b| b.len()).unwrap_or(usize::MAX);
    let notification = message
        .notification
        .as_ref()
        .map_or(0, |n| size(serde_json::to_vec(n)));
    let data = message
        .data
        .as_ref()
        .map_or(0, |d| size(serde_json::to_vec(d)));
    notification.saturating_add(data)
}

/// The FCM message for `n`, without a target.
pub fn message(n: &Notification, now_secs: i64) -> Message {
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
    Message {
        data,
        android: android_config(n),
        apns: apns_config(n, now_secs),
        webpush: webpush_config(n),
        notification,
        ..Message::default()
    }
}

fn android_config(n: &Notification) -> Option<AndroidConfig> {
    let notification =
        (n.has_alert() && (n.channel_id.is_some() || n.sound.is_some())).then(|| {
            AndroidNotification {
                channel_id: n.channel_id.clone(),
                sound: n.sound.clone(),
                ..AndroidNotification::default()
            }
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

/// The `aps` dictionary for FCM's APNs override (title and body travel in `notification`).
fn aps_override(n: &Notification) -> serde_json::Map<String, Value> {
    let mut aps = serde_json::Map::new();
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
    let aps = aps_override(n);
    // FCM forwards these to APNs as they are; headers left out take FCM's defaults.
    let options = DeliveryOptions::of(n, now_secs);
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
        let apns = message(&silent, 100).apns.unwrap();
        let headers = apns.headers.unwrap();
        assert_eq!(headers["apns-push-type"], "background");
        assert_eq!(headers["apns-priority"], "5");
        assert_eq!(headers["apns-expiration"], "130");
        let alert = Notification {
            title: Some("t".into()),
            ..Notification::default()
        };
        assert!(message(&alert, 0).apns.is_none());
    }
}
