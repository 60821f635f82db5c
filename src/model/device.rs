//! Devices: the platform a token belongs to and, for APNs, the environment that issued it.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{InvalidField, UnknownValue};

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
