//! What may be asked for: an app's policy (default zone, quiet hours, frequency caps), a
//! user's preferences, and the policy part of a rule or a direct send; with validation whose
//! errors name the JSON field at fault.

use std::collections::HashSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::clock::validate_timezone;
use super::values::{validate_category, LocalTime, PolicyDuration, QuietHours, Urgency};
use crate::model::InvalidField;

/// At most this many frequency caps per app.
pub const MAX_CAPS: usize = 100;

/// Longest `within` spread: a day.
const MAX_WITHIN_MS: i64 = 24 * 3_600_000;
/// Shortest cap window: a minute.
const MIN_CAP_PER_MS: i64 = 60_000;
/// Longest cap window: 31 days.
const MAX_CAP_PER_MS: i64 = 31 * 24 * 3_600_000;

/// At most `max` notifications of `category` to one user per `per`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    /// Category counted, 1-64 characters of `[a-z0-9_.-]`.
    #[schema(example = "marketing")]
    pub category: String,
    /// Most notifications in the window, at least 1.
    pub max: u32,
    /// The window, 1 minute to 31 days, e.g. `"1d"`.
    pub per: PolicyDuration,
}

impl FrequencyCap {
    /// Checks the cap; errors are named under `prefix` (e.g. `caps[1]`).
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidField> {
        validate_category(&format!("{prefix}.category"), &self.category)?;
        if self.max == 0 {
            return Err(InvalidField::new(
                format!("{prefix}.max"),
                "must be at least 1",
            ));
        }
        if !(MIN_CAP_PER_MS..=MAX_CAP_PER_MS).contains(&self.per.as_millis()) {
            return Err(InvalidField::new(
                format!("{prefix}.per"),
                "must be between 1m and 31d",
            ));
        }
        Ok(())
    }
}

/// An app's delivery policy: its default zone, its quiet hours and its frequency caps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AppPolicy {
    /// IANA zone for devices that report none (or one unknown); UTC when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "Europe/Paris")]
    pub timezone: Option<String>,
    /// Quiet hours for users who set none of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Frequency caps, at most one per category.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<FrequencyCap>,
}

impl AppPolicy {
    /// Checks the zone, the quiet hours and every cap; errors name e.g. `caps[1].max`.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(tz) = &self.timezone {
            validate_timezone(tz)?;
        }
        if let Some(q) = &self.quiet_hours {
            q.validate("quiet_hours")?;
        }
        if self.caps.len() > MAX_CAPS {
            return Err(InvalidField::new(
                "caps",
                format!("at most {MAX_CAPS} caps"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, cap) in self.caps.iter().enumerate() {
            cap.validate(&format!("caps[{i}]"))?;
            if !seen.insert(cap.category.as_str()) {
                return Err(InvalidField::new(
                    format!("caps[{i}].category"),
                    "another cap already counts this category",
                ));
            }
        }
        Ok(())
    }

    /// The cap on `category`, if any.
    pub fn cap(&self, category: &str) -> Option<&FrequencyCap> {
        self.caps.iter().find(|c| c.category == category)
    }
}

/// What one user asked for; it overrides the app's policy where set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UserPreferences {
    /// The user's own quiet hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

impl UserPreferences {
    /// Checks the quiet hours (field `quiet_hours`).
    pub fn validate(&self) -> Result<(), InvalidField> {
        match &self.quiet_hours {
            Some(q) => q.validate("quiet_hours"),
            None => Ok(()),
        }
    }
}

/// When and how long a rule's or a direct send's notifications may go out. Every field is
/// optional; `{}` (and a stored rule without a policy) means "now, normal urgency, no expiry".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
// Not `deny_unknown_fields`: it is flattened into rules and sends, which refuse unknown
// fields themselves.
#[serde(default)]
pub struct SendPolicy {
    /// Not before this instant (RFC 3339); excludes `delay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub send_at: Option<Timestamp>,
    /// Not before the event's time plus this; excludes `send_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<PolicyDuration>,
    /// At the next time the device's clock shows this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_local: Option<LocalTime>,
    /// Spread deliveries over this long after `deliver_at_local` (at most 24h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<PolicyDuration>,
    /// `high` bypasses quiet hours; absent means `normal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urgency: Option<Urgency>,
    /// Not after this instant (RFC 3339); excludes `ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Not later than this after it is due; excludes `expires_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<PolicyDuration>,
    /// Category for frequency caps, 1-64 characters of `[a-z0-9_.-]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl SendPolicy {
    /// Whether nothing is set (a send now, as without a policy).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the combinations; errors name the JSON field (`delay`, `within`, `ttl`, ...).
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.send_at.is_some() && self.delay.is_some() {
            return Err(InvalidField::new(
                "delay",
                "cannot be combined with send_at",
            ));
        }
        if let Some(within) = self.within {
            if self.deliver_at_local.is_none() {
                return Err(InvalidField::new("within", "needs deliver_at_local"));
            }
            if within.positive("within")?.as_millis() > MAX_WITHIN_MS {
                return Err(InvalidField::new("within", "must be at most 24h"));
            }
        }
        if let Some(ttl) = self.ttl {
            if self.expires_at.is_some() {
                return Err(InvalidField::new(
                    "ttl",
                    "cannot be combined with expires_at",
                ));
            }
            ttl.positive("ttl")?;
        }
        if let Some(category) = &self.category {
            validate_category("category", category)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: serde::de::DeserializeOwned>(
        json: &str,
        validate: fn(&T) -> Result<(), InvalidField>,
    ) -> String {
        let value: T = serde_json::from_str(json).expect(json);
        validate(&value).expect_err(json).field
    }

    #[test]
    fn app_policies_parse_and_validate() {
        let p: AppPolicy = serde_json::from_str(
            r#"{"timezone": "Europe/Paris",
                "quiet_hours": {"start": "22:00", "end": "07:00"},
                "caps": [{"category": "marketing", "max": 2, "per": "1d"}]}"#,
        )
        .unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.cap("marketing").map(|c| c.max), Some(2));
        assert_eq!(p.cap("billing"), None);
        let back: AppPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let empty: AppPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, AppPolicy::default());
        assert!(empty.validate().is_ok());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        assert!(serde_json::from_str::<AppPolicy>(r#"{"quiet": null}"#).is_err());
    }

    #[test]
    fn app_policy_errors_name_the_field() {
        let v = AppPolicy::validate;
        let cap =
            |c: &str| format!(r#"{{"caps": [{{"category": "a", "max": 1, "per": "1h"}}, {c}]}}"#);
        assert_eq!(field_of(r#"{"timezone": "Mars/Olympus"}"#, v), "timezone");
        assert_eq!(field_of(r#"{"timezone": "Etc/Unknown"}"#, v), "timezone");
        assert_eq!(
            field_of(r#"{"quiet_hours": {"start": "07:00", "end": "07:00"}}"#, v),
            "quiet_hours"
        );
        let cases = [
            (r#"{"category": "b", "max": 0, "per": "1h"}"#, "caps[1].max"),
            (
                r#"{"category": "B!", "max": 1, "per": "1h"}"#,
                "caps[1].category",
            ),
            (
                r#"{"category": "", "max": 1, "per": "1h"}"#,
                "caps[1].category",
            ),
            (
                r#"{"category": "a", "max": 1, "per": "2h"}"#,
                "caps[1].category",
            ),
            (
                r#"{"category": "b", "max": 1, "per": "59s"}"#,
                "caps[1].per",
            ),
            (
                r#"{"category": "b", "max": 1, "per": "31d1s"}"#,
                "caps[1].per",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(field_of(&cap(c), v), field, "{c}");
        }
        let ok = cap(r#"{"category": "b", "max": 1, "per": "31d"}"#);
        assert!(serde_json::from_str::<AppPolicy>(&ok)
            .unwrap()
            .validate()
            .is_ok());
        let e =
            serde_json::from_str::<AppPolicy>(&cap(r#"{"category": "b", "max": 1, "per": "1w"}"#))
                .unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        let e =
            serde_json::from_str::<AppPolicy>(&cap(r#"{"category": "b", "max": -1, "per": "1h"}"#));
        assert!(e.is_err());
        let many = AppPolicy {
            caps: (0..=MAX_CAPS)
                .map(|i| FrequencyCap {
                    category: format!("c{i}"),
                    max: 1,
                    per: "1h".parse().unwrap(),
                })
                .collect(),
            ..AppPolicy::default()
        };
        assert_eq!(many.validate().unwrap_err().field, "caps");
    }

    #[test]
    fn user_preferences_validate() {
        let v = UserPreferences::validate;
        let ok: UserPreferences =
            serde_json::from_str(r#"{"quiet_hours": {"start": "23:00", "end": "06:30"}}"#).unwrap();
        assert!(ok.validate().is_ok());
        assert!(serde_json::from_str::<UserPreferences>("{}")
            .unwrap()
            .validate()
            .is_ok());
        assert_eq!(
            field_of(r#"{"quiet_hours": {"start": "06:30", "end": "06:30"}}"#, v),
            "quiet_hours"
        );
        assert!(serde_json::from_str::<UserPreferences>(r#"{"timezone": "UTC"}"#).is_err());
    }

    #[test]
    fn send_policies_round_trip_and_default_to_empty() {
        let empty: SendPolicy = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert!(empty.validate().is_ok());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        let json = r#"{"send_at":"2027-03-28T07:00:00Z","deliver_at_local":"09:00","within":"2h","urgency":"high","expires_at":"2027-03-29T07:00:00.5Z","category":"digest"}"#;
        let p: SendPolicy = serde_json::from_str(json).unwrap();
        assert!(p.validate().is_ok());
        assert!(!p.is_empty());
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
        assert_eq!(
            p.send_at.map(|t| t.as_millisecond()),
            Some(1_806_217_200_000)
        );
        let offset: SendPolicy =
            serde_json::from_str(r#"{"send_at": "2027-03-28T09:00:00+02:00"}"#).unwrap();
        assert_eq!(offset.send_at, p.send_at);
        let p: SendPolicy = serde_json::from_str(r#"{"delay": "15m", "ttl": "1h"}"#).unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"delay":"15m","ttl":"1h"}"#
        );
    }

    #[test]
    fn send_policy_errors_name_the_json_field() {
        let v = SendPolicy::validate;
        let cases = [
            (
                r#"{"send_at": "2027-01-01T00:00:00Z", "delay": "1m"}"#,
                "delay",
            ),
            (r#"{"within": "1h"}"#, "within"),
            (
                r#"{"deliver_at_local": "09:00", "within": "24h1s"}"#,
                "within",
            ),
            (r#"{"deliver_at_local": "09:00", "within": "0s"}"#, "within"),
            (
                r#"{"expires_at": "2027-01-01T00:00:00Z", "ttl": "1h"}"#,
                "ttl",
            ),
            (r#"{"ttl": "0s"}"#, "ttl"),
            (r#"{"category": "Promo!"}"#, "category"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json, v), field, "{json}");
        }
        let ok: SendPolicy =
            serde_json::from_str(r#"{"deliver_at_local": "09:00", "within": "24h"}"#).unwrap();
        assert!(ok.validate().is_ok());
        for bad in [
            r#"{"send_at": "tomorrow"}"#,
            r#"{"send_at": "2027-01-01T00:00:00"}"#,
            r#"{"deliver_at_local": "9am"}"#,
            r#"{"urgency": "urgent"}"#,
            r#"{"delay": "5"}"#,
        ] {
            assert!(serde_json::from_str::<SendPolicy>(bad).is_err(), "{bad}");
        }
    }
}
