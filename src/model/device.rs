//! Devices: the platform a token belongs to and, for APNs, the environment that issued it;
//! what a valid registration is.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{canonical_locale, InvalidField, UnknownValue};

/// Push platform of a device.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

impl Platform {
    /// Every platform, in a fixed order.
    pub const ALL: [Platform; 2] = [Platform::Apns, Platform::Fcm];

    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::Fcm => "fcm",
        }
    }

    /// Checks a provider token's shape for this platform and returns its stored form (APNs
    /// tokens lower-case).
    pub fn validate_token(self, token: &str) -> Result<String, InvalidField> {
        match self {
            Self::Apns => {
                let ok = (64..=200).contains(&token.len())
                    && token.len().is_multiple_of(2)
                    && token.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(InvalidField::new(
                        "token",
                        "an APNs token is an even number (64-200) of hex characters",
                    ));
                }
                Ok(token.to_ascii_lowercase())
            }
            Self::Fcm => {
                let ok = (100..=4096).contains(&token.len())
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
                if !ok {
                    return Err(InvalidField::new(
                        "token",
                        "an FCM token is 100-4096 characters of [A-Za-z0-9_:-]",
                    ));
                }
                Ok(token.to_string())
            }
        }
    }
}

impl FromStr for Platform {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownValue::new("platform", s))
    }
}

/// Whether a device is sent to.
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Sent to.
    #[default]
    Active,
    /// The provider refused the token without saying it is gone (a wrong environment,
    /// topic or sender): not sent to, kept, restorable.
    Suspect,
    /// The provider said the token is gone: not sent to, kept for
    /// `retention.pruned_devices_days`, restorable until then.
    Pruned,
}

impl DeviceState {
    /// Every state.
    pub const ALL: [Self; 3] = [Self::Active, Self::Suspect, Self::Pruned];

    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspect => "suspect",
            Self::Pruned => "pruned",
        }
    }
}

impl FromStr for DeviceState {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue::new("device state", s))
    }
}

/// Which APNs host a device token belongs to.
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// `api.push.apple.com`: App Store and TestFlight builds.
    #[default]
    Production,
    /// `api.sandbox.push.apple.com`: development builds.
    Sandbox,
}

impl ApnsEnvironment {
    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Sandbox => "sandbox",
        }
    }
}

impl FromStr for ApnsEnvironment {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Production, Self::Sandbox]
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownValue::new("APNs environment", s))
    }
}

/// The stored form of a token given without its platform (lookups, direct sends to tokens):
/// APNs tokens are hex and case-insensitive and are stored lower-case, so a token of at least
/// 64 hex digits is lower-cased; anything else is kept as given.
pub fn normalize_token(token: &str) -> String {
    if token.len() >= 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        token.to_ascii_lowercase()
    } else {
        token.to_string()
    }
}

/// Size limits on device registrations.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceLimits {
    /// Maximum size of the serialized `attributes` object.
    pub max_attributes_bytes: usize,
    /// Maximum number of tags per device.
    pub max_tags: usize,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self {
            max_attributes_bytes: 8 * 1024,
            max_tags: 64,
        }
    }
}

/// Validated input for registering or updating a device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRegistration {
    /// Push platform.
    pub platform: Platform,
    /// Owner.
    pub user_id: Option<String>,
    /// BCP-47 locale.
    pub locale: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// App version.
    pub app_version: Option<String>,
    /// APNs environment (APNs devices only).
    pub environment: Option<ApnsEnvironment>,
    /// APNs topic.
    pub topic: Option<String>,
    /// JSON object.
    pub attributes: Value,
    /// Tags.
    pub tags: Vec<String>,
}

/// A device registration as submitted, before validation.
#[derive(Clone, Debug, Default)]
pub struct RegistrationRequest {
    /// `apns` or `fcm`.
    pub platform: String,
    /// The owning user.
    pub user_id: Option<String>,
    /// BCP-47 language tag.
    pub locale: Option<String>,
    /// IANA time zone name.
    pub timezone: Option<String>,
    /// App version.
    pub app_version: Option<String>,
    /// APNs only: `production` (the default) or `sandbox`.
    pub environment: Option<String>,
    /// APNs only: the bundle id.
    pub topic: Option<String>,
    /// Free-form JSON object.
    pub attributes: Option<Value>,
    /// Tags for device audiences.
    pub tags: Vec<String>,
}

impl DeviceRegistration {
    /// Validates a registration of `token`; returns the token's stored form and the
    /// registration. Every error names the field at fault.
    pub fn validate(
        token: &str,
        body: RegistrationRequest,
        limits: &DeviceLimits,
    ) -> Result<(String, Self), InvalidField> {
        let platform: Platform = body
            .platform
            .parse()
            .map_err(|_| InvalidField::new("platform", "must be \"apns\" or \"fcm\""))?;
        let token = platform.validate_token(token)?;
        let is_apns = platform == Platform::Apns;
        let locale = body
            .locale
            .map(|l| {
                canonical_locale(&l).ok_or_else(|| {
                    InvalidField::new("locale", "must be a BCP-47 language tag such as en-US")
                })
            })
            .transpose()?;
        let timezone = short_text("timezone", body.timezone, 64)?;
        if let Some(tz) = &timezone {
            if !tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'-'))
            {
                return Err(InvalidField::new(
                    "timezone",
                    "must be an IANA time zone name such as Europe/Paris",
                ));
            }
        }
        let environment = match (is_apns, body.environment.as_deref()) {
            // Unknown: sent to production first, and to the sandbox once if production
            // calls the token bad; the environment that works is recorded on the device.
            (true, None) => None,
            (true, Some(e)) => Some(e.parse::<ApnsEnvironment>().map_err(|_| {
                InvalidField::new("environment", "must be \"production\" or \"sandbox\"")
            })?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(InvalidField::new(
                    "environment",
                    "only applies to apns devices",
                ))
            }
        };
        if !is_apns && body.topic.is_some() {
            return Err(InvalidField::new("topic", "only applies to apns devices"));
        }
        let attributes = body
            .attributes
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !attributes.is_object() {
            return Err(InvalidField::new("attributes", "must be a JSON object"));
        }
        let size = attributes.to_string().len();
        if size > limits.max_attributes_bytes {
            return Err(InvalidField::new(
                "attributes",
                format!(
                    "is {size} bytes when serialized; the limit is {}",
                    limits.max_attributes_bytes
                ),
            ));
        }
        let tags = body.tags;
        if tags.len() > limits.max_tags {
            return Err(InvalidField::new(
                "tags",
                format!("at most {} tags", limits.max_tags),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            short_text(&format!("tags[{i}]"), Some(tag.clone()), 64)?;
        }
        Ok((
            token,
            Self {
                platform,
                user_id: short_text("user_id", body.user_id, 256)?,
                locale,
                timezone,
                app_version: short_text("app_version", body.app_version, 64)?,
                environment,
                topic: short_text("topic", body.topic, 255)?,
                attributes,
                tags,
            },
        ))
    }
}

fn short_text(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, InvalidField> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(InvalidField::new(
                field,
                format!("must be 1-{max} characters without control characters"),
            ))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_per_platform() {
        assert!(Platform::Apns.validate_token(&"ab".repeat(32)).is_ok());
        assert!(Platform::Apns.validate_token(&"ab".repeat(31)).is_err());
        assert!(Platform::Apns
            .validate_token(&format!("{}a", "ab".repeat(40)))
            .is_err());
        assert!(Platform::Apns.validate_token(&"zz".repeat(32)).is_err());
        assert!(Platform::Fcm.validate_token(&"a:b_c-".repeat(20)).is_ok());
        assert!(Platform::Fcm.validate_token(&"a".repeat(99)).is_err());
        assert!(Platform::Fcm
            .validate_token(&format!("{}!", "a".repeat(120)))
            .is_err());
        assert!("web".parse::<Platform>().is_err());
    }

    #[test]
    fn apns_tokens_normalize_to_lower_case_and_others_stay_as_given() {
        let upper = "AB".repeat(32);
        assert_eq!(normalize_token(&upper), "ab".repeat(32));
        assert_eq!(
            Platform::Apns.validate_token(&upper).ok(),
            Some(normalize_token(&upper))
        );
        assert_eq!(normalize_token("ABCDEF"), "ABCDEF");
        assert_eq!(normalize_token("Abc:def"), "Abc:def");
    }
}
