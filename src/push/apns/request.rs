//! APNs request building: the `aps` payload, the `apns-*` headers, and the one rule set that
//! decides push type, priority and expiration (FCM's APNs override reuses it).

use a2::request::notification::{DefaultNotificationBuilder, NotificationBuilder};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use serde_json::Value;

use super::wire::{self, header, priority, push_type, reason};
use crate::model::{Notification, Priority};
use crate::push::outcome::Outcome;

/// The delivery headers a notification asks for. `None` leaves APNs' default in place
/// (`alert`, priority 10, no expiration); FCM omits such headers, APNs sends the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryOptions<'a> {
    /// `apns-push-type`: as stated, or `background` for a silent push.
    pub push_type: Option<&'a str>,
    /// `apns-priority`: as stated, or 5 for a background push (Apple rejects 10 there).
    pub priority: Option<&'static str>,
    /// `apns-expiration` in unix seconds from the time to live (0 = try once).
    pub expiration: Option<i64>,
}

impl<'a> DeliveryOptions<'a> {
    /// Decides push type, priority and expiration for `n` at `now_secs`. A background push
    /// always gets priority 5: Apple refuses 10 for it, and so does Google in FCM's APNs
    /// block of a data message (a stated `high` there is for Android alone).
    pub fn of(n: &'a Notification, now_secs: i64) -> Self {
        let push_type = n
            .push_type
            .as_deref()
            .or(n.is_background().then_some(push_type::BACKGROUND));
        let priority = match n.priority {
            _ if push_type == Some(push_type::BACKGROUND) => Some(priority::POWER_SAVING),
            Some(Priority::High) => Some(priority::IMMEDIATE),
            Some(Priority::Normal) => Some(priority::POWER_SAVING),
            None => None,
        };
        let expiration = n.ttl_seconds.map(|ttl| {
            if ttl == 0 {
                0
            } else {
                now_secs.saturating_add(ttl.min(i64::MAX as u64) as i64)
            }
        });
        Self {
            push_type,
            priority,
            expiration,
        }
    }

    /// Whether this goes out as a background push, whose `aps` is only `content-available`.
    pub fn is_background(&self) -> bool {
        self.push_type == Some(push_type::BACKGROUND)
    }
}

/// A rendered APNs request, minus the `authorization` header.
#[derive(Debug)]
pub struct ApnsRequest {
    /// The JSON payload.
    pub payload: Bytes,
    /// `apns-*` headers.
    pub headers: HeaderMap,
    /// The `apns-id` we assigned.
    pub apns_id: String,
}

impl ApnsRequest {
    /// Builds payload and headers, or the [`Outcome::Failed`] that makes sending pointless.
    pub fn build(n: &Notification, topic: &str, now_secs: i64) -> Result<Self, Outcome> {
        let options = DeliveryOptions::of(n, now_secs);
        let push_type = options.push_type.unwrap_or(push_type::ALERT);
        let payload = payload_json(n, options.is_background()).map_err(|e| {
            tracing::error!(error = %e, "serializing an APNs payload failed");
            Outcome::failed("PayloadSerializationFailed")
        })?;
        if payload.len() > wire::payload_limit(push_type) {
            return Err(Outcome::failed(reason::PAYLOAD_TOO_LARGE));
        }
        let apns_id = uuid::Uuid::new_v4().to_string();
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| -> Result<(), Outcome> {
            let value =
                HeaderValue::from_str(value).map_err(|_| Outcome::failed(bad_header(name)))?;
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        set(header::TOPIC, topic)?;
        set(header::PUSH_TYPE, push_type)?;
        set(
            header::PRIORITY,
            options.priority.unwrap_or(priority::IMMEDIATE),
        )?;
        set(header::ID, &apns_id)?;
        if let Some(expiration) = options.expiration {
            set(header::EXPIRATION, &expiration.to_string())?;
        }
        if let Some(collapse) = &n.collapse_key {
            if collapse.len() > wire::MAX_COLLAPSE_ID_BYTES {
                return Err(Outcome::failed(reason::BAD_COLLAPSE_ID));
            }
            set(header::COLLAPSE_ID, collapse)?;
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Self {
            payload: Bytes::from(payload),
            headers,
            apns_id,
        })
    }
}

fn bad_header(name: &str) -> &'static str {
    match name {
        header::TOPIC => reason::BAD_TOPIC,
        header::COLLAPSE_ID => reason::BAD_COLLAPSE_ID,
        header::PUSH_TYPE => reason::INVALID_PUSH_TYPE,
        _ => "BadHeader",
    }
}

/// The background `aps`: Apple allows nothing in it but `content-available`.
pub fn background_aps() -> Value {
    serde_json::json!({ "content-available": 1 })
}

/// The `aps` dictionary from a2's builder, plus `thread-id` (not in a2) and custom data; a
/// background push gets [`background_aps`] instead. Flags that are off are left out (a2
/// writes `"mutable-content": 0`).
fn payload_json(n: &Notification, background: bool) -> Result<Vec<u8>, serde_json::Error> {
    let mut builder = DefaultNotificationBuilder::new();
    if let Some(title) = &n.title {
        builder = builder.set_title(title);
    }
    if let Some(subtitle) = &n.subtitle {
        builder = builder.set_subtitle(subtitle);
    }
    if let Some(body) = &n.body {
        builder = builder.set_body(body);
    }
    if let Some(badge) = n.badge {
        builder = builder.set_badge(badge);
    }
    if let Some(sound) = &n.sound {
        builder = builder.set_sound(sound);
    }
    if let Some(category) = &n.category {
        builder = builder.set_category(category);
    }
    if n.mutable_content {
        builder = builder.set_mutable_content();
    }
    if n.content_available {
        builder = builder.set_content_available();
    }
    let mut payload = builder.build("", Default::default());
    for (key, value) in &n.data {
        // `aps` belongs to Apple; a custom key of that name would clobber it (templates
        // with one are refused when saved).
        if key != "aps" {
            payload.data.insert(key, Value::String(value.clone()));
        }
    }
    let mut json = serde_json::to_value(&payload)?;
    if let Some(aps) = json.get_mut("aps") {
        if background {
            *aps = background_aps();
        } else if let Some(aps) = aps.as_object_mut() {
            if !n.mutable_content {
                aps.remove("mutable-content");
            }
            if let Some(thread) = &n.thread_id {
                aps.insert("thread-id".into(), Value::String(thread.clone()));
            }
        }
    }
    serde_json::to_vec(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_thread_id_and_custom_data() {
        let n = Notification {
            title: Some("Hi".into()),
            body: Some("There".into()),
            thread_id: Some("t1".into()),
            data: [("order".to_string(), "42".to_string())].into(),
            ..Notification::default()
        };
        let json: Value = serde_json::from_slice(&payload_json(&n, false).unwrap()).unwrap();
        assert_eq!(json["aps"]["thread-id"], "t1");
        assert_eq!(json["aps"]["alert"]["title"], "Hi");
        assert_eq!(json["order"], "42");
        assert!(
            json["aps"].get("mutable-content").is_none(),
            "a flag that is off is left out: {json}"
        );
    }

    #[test]
    fn a_push_that_shows_nothing_is_background_with_only_content_available() {
        let n = Notification {
            data: [("sync".to_string(), "inbox".to_string())].into(),
            category: Some("ignored-without-alert".into()),
            priority: Some(Priority::High),
            ..Notification::default()
        };
        let req = ApnsRequest::build(&n, "com.example", 0).unwrap();
        assert_eq!(req.headers["apns-push-type"], "background");
        assert_eq!(req.headers["apns-priority"], "5");
        let json: Value = serde_json::from_slice(&req.payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"aps": {"content-available": 1}, "sync": "inbox"})
        );
        // A badge or a sound is something the user notices: an alert push.
        let badge = Notification {
            badge: Some(1),
            ..Notification::default()
        };
        let req = ApnsRequest::build(&badge, "com.example", 0).unwrap();
        assert_eq!(req.headers["apns-push-type"], "alert");
        assert_eq!(req.headers["apns-priority"], "10");
    }

    #[test]
    fn oversized_payload_fails_before_sending() {
        let n = Notification {
            body: Some("x".repeat(5000)),
            ..Notification::default()
        };
        let err = ApnsRequest::build(&n, "com.example", 0).unwrap_err();
        assert_eq!(err, Outcome::failed("PayloadTooLarge"));
        let voip = Notification {
            body: Some("x".repeat(4500)),
            push_type: Some("voip".into()),
            ..Notification::default()
        };
        assert!(ApnsRequest::build(&voip, "com.example.voip", 0).is_ok());
    }

    #[test]
    fn content_available_without_alert_is_background_at_priority_5() {
        let n = Notification {
            content_available: true,
            ..Notification::default()
        };
        let req = ApnsRequest::build(&n, "com.example", 0).unwrap();
        assert_eq!(req.headers["apns-push-type"], "background");
        assert_eq!(req.headers["apns-priority"], "5");
    }

    #[test]
    fn priority_follows_the_push_type_that_is_sent() {
        let stated_background = Notification {
            title: Some("t".into()),
            push_type: Some("background".into()),
            ..Notification::default()
        };
        assert_eq!(
            DeliveryOptions::of(&stated_background, 0).priority,
            Some("5")
        );
        let stated_alert = Notification {
            content_available: true,
            push_type: Some("alert".into()),
            ..Notification::default()
        };
        assert_eq!(DeliveryOptions::of(&stated_alert, 0).priority, None);
        let plain = Notification {
            title: Some("t".into()),
            ttl_seconds: Some(60),
            ..Notification::default()
        };
        assert_eq!(
            DeliveryOptions::of(&plain, 1000),
            DeliveryOptions {
                push_type: None,
                priority: None,
                expiration: Some(1060),
            }
        );
        let once = Notification {
            ttl_seconds: Some(0),
            ..Notification::default()
        };
        assert_eq!(DeliveryOptions::of(&once, 1000).expiration, Some(0));
    }
}
