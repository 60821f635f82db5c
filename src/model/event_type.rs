//! The vocabulary of event endpoints: the event types an app can subscribe to (with the
//! catalog that documents each one's body), and the states of a message to an endpoint and
//! of each attempt to deliver it.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::UnknownValue;

/// What an endpoint can subscribe to.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    /// Every delivery of an event reached a final status.
    #[serde(rename = "event.completed")]
    EventCompleted,
    /// Deliveries became dead letters.
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    /// Deliveries were accepted by the provider (batched).
    #[serde(rename = "delivery.succeeded")]
    DeliverySucceeded,
    /// Devices were pruned because the provider said their token is gone.
    #[serde(rename = "device.pruned")]
    DevicePruned,
    /// A provider refuses the app's credential; its sends are held.
    #[serde(rename = "credential.failing")]
    CredentialFailing,
    /// The provider accepts the app's credential again.
    #[serde(rename = "credential.recovered")]
    CredentialRecovered,
    /// Another endpoint of the app was disabled after failing for too long.
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}

impl EventType {
    /// Every type, in catalog order.
    pub const ALL: [EventType; 7] = [
        Self::EventCompleted,
        Self::DeliveryFailed,
        Self::DeliverySucceeded,
        Self::DevicePruned,
        Self::CredentialFailing,
        Self::CredentialRecovered,
        Self::EndpointDisabled,
    ];

    /// Stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventCompleted => "event.completed",
            Self::DeliveryFailed => "delivery.failed",
            Self::DeliverySucceeded => "delivery.succeeded",
            Self::DevicePruned => "device.pruned",
            Self::CredentialFailing => "credential.failing",
            Self::CredentialRecovered => "credential.recovered",
            Self::EndpointDisabled => "endpoint.disabled",
        }
    }

    /// Whether messages of this type gather many items each (high-volume types), sent when
    /// a batch is full or has waited long enough.
    pub fn is_batched(self) -> bool {
        matches!(self, Self::DeliverySucceeded)
    }

    /// One sentence for the catalog.
    pub fn description(self) -> &'static str {
        match self {
            Self::EventCompleted => {
                "Every delivery of an event reached a final status; the counts by status."
            }
            Self::DeliveryFailed => {
                "Deliveries became dead letters, each with the provider's reason."
            }
            Self::DeliverySucceeded => {
                "Deliveries the provider accepted, sent in batches (opt-in: high volume)."
            }
            Self::DevicePruned => "Devices whose token the provider declared gone were pruned.",
            Self::CredentialFailing => {
                "A provider refuses the app's credential: sends to it are held."
            }
            Self::CredentialRecovered => {
                "The provider accepts the app's credential again: held sends resume."
            }
            Self::EndpointDisabled => {
                "An endpoint of the app failed for too long and was disabled."
            }
        }
    }

    /// The `data` of a message of this type, as a JSON schema.
    pub fn data_schema(self) -> Value {
        let string = json!({"type": "string"});
        let time = json!({"type": "string", "format": "date-time"});
        let object = |required: &[&str], properties: Value| json!({"type": "object", "required": required, "properties": properties});
        let list = |items: Value| json!({"type": "array", "items": items});
        match self {
            Self::EventCompleted => object(
                &["app_id", "event_id", "deliveries"],
                json!({"app_id": string, "event_id": string, "completed_at": time,
                       "deliveries": {"type": "object", "additionalProperties": {"type": "integer"}}}),
            ),
            Self::DeliveryFailed | Self::DeliverySucceeded => object(
                &["app_id", "deliveries"],
                json!({"app_id": string, "deliveries": list(object(
                    &["delivery_id", "event_id", "platform", "token"],
                    json!({"delivery_id": string, "event_id": string, "platform": string,
                           "token": string, "reason": string}),
                ))}),
            ),
            Self::DevicePruned => object(
                &["app_id", "tokens"],
                json!({"app_id": string, "tokens": list(object(
                    &["token", "platform", "reason"],
                    json!({"token": string, "platform": string, "reason": string,
                           "provider_timestamp": {"type": ["integer", "null"]}}),
                ))}),
            ),
            Self::CredentialFailing | Self::CredentialRecovered => object(
                &["app_id", "provider"],
                json!({"app_id": string, "provider": string, "reason": string}),
            ),
            Self::EndpointDisabled => object(
                &["app_id", "endpoint_id", "url", "failing_since"],
                json!({"app_id": string, "endpoint_id": string, "url": string,
                       "failing_since": time}),
            ),
        }
    }

    /// An example `data` of this type.
    pub fn example_data(self) -> Value {
        let delivery = |reason: Option<&str>| {
            let mut d = json!({"delivery_id": "job_0190b7c2", "event_id": "evt_0190b7c1",
                               "platform": "apns", "token": "a1b2c3"});
            if let Some(reason) = reason {
                d["reason"] = json!(reason);
            }
            d
        };
        match self {
            Self::EventCompleted => json!({"app_id": "app_0190", "event_id": "evt_0190b7c1",
                "completed_at": "2026-01-01T12:00:00.000Z",
                "deliveries": {"delivered": 98, "dead": 1, "invalid": 1}}),
            Self::DeliveryFailed => {
                json!({"app_id": "app_0190", "deliveries": [delivery(Some("PayloadTooLarge"))]})
            }
            Self::DeliverySucceeded => {
                json!({"app_id": "app_0190", "deliveries": [delivery(None)]})
            }
            Self::DevicePruned => json!({"app_id": "app_0190", "tokens": [{"token": "a1b2c3",
                "platform": "apns", "reason": "Unregistered", "provider_timestamp": null}]}),
            Self::CredentialFailing => {
                json!({"app_id": "app_0190", "provider": "apns", "reason": "InvalidProviderToken"})
            }
            Self::CredentialRecovered => json!({"app_id": "app_0190", "provider": "apns"}),
            Self::EndpointDisabled => json!({"app_id": "app_0190", "endpoint_id": "ep_0190",
                "url": "https://backend.example.com/hooks", "failing_since": "2026-01-01T12:00:00.000Z"}),
        }
    }
}

impl FromStr for EventType {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownValue::new("event type", s))
    }
}

/// Where a message to an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EndpointMessageStatus)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt of the schedule failed (or its endpoint was disabled).
    Failed,
}

impl MessageStatus {
    /// Every status.
    pub const ALL: [MessageStatus; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for MessageStatus {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownValue::new("message status", s))
    }
}

/// The result of one attempt to deliver a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EndpointAttemptOutcome)]
#[serde(rename_all = "snake_case")]
pub enum EndpointOutcome {
    /// The endpoint answered 2xx.
    Succeeded,
    /// Any other answer, a timeout, or no connection.
    Failed,
}

impl EndpointOutcome {
    /// Every outcome.
    pub const ALL: [EndpointOutcome; 2] = [Self::Succeeded, Self::Failed];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for EndpointOutcome {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownValue::new("attempt outcome", s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_round_trips_and_its_example_has_the_required_fields() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).ok(), Some(json!(t.as_str())));
            let schema = t.data_schema();
            let example = t.example_data();
            for field in schema["required"].as_array().into_iter().flatten() {
                let name = field.as_str().unwrap_or_default();
                assert!(
                    example.get(name).is_some(),
                    "{}: example lacks {name}",
                    t.as_str()
                );
            }
        }
        assert!("devices.pruned".parse::<EventType>().is_err());
    }
}
