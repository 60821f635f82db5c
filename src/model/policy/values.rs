//! The small values of delivery policy, each with its wire form: durations such as `"1h30m"`,
//! wall-clock times such as `"22:00"`, quiet-hour windows, urgency, and event categories.

use std::fmt;
use std::str::FromStr;

use jiff::civil;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{InvalidField, UnknownValue};

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A policy value that does not parse: which kind of value, what was given, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct PolicyParseError {
    /// The vocabulary, e.g. `duration` or `local time`.
    pub kind: &'static str,
    /// The text given (at most 64 characters of it).
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PolicyParseError {
    fn new(kind: &'static str, input: &str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            input: input.chars().take(64).collect(),
            reason: reason.into(),
        }
    }
}

/// A duration written as whole days, hours, minutes and seconds, largest unit first:
/// `"30s"`, `"15m"`, `"2h"`, `"1d"`, `"1h30m"`. At most 366 days; `"0s"` parses (callers
/// that need more than zero use [`PolicyDuration::positive`]). Serializes in canonical form
/// (`"90m"` becomes `"1h30m"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
#[schema(value_type = String, example = "1h30m")]
pub struct PolicyDuration(i64);

impl PolicyDuration {
    /// The longest duration accepted: 366 days.
    pub const MAX: PolicyDuration = PolicyDuration(366 * DAY_MS);

    /// A duration of `secs` seconds, if it is between 0 and 366 days.
    pub fn from_secs(secs: i64) -> Option<Self> {
        let ms = secs.checked_mul(SECOND_MS)?;
        (0..=Self::MAX.0).contains(&ms).then_some(Self(ms))
    }

    /// Length in milliseconds.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// Whether it is `0s`.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// This duration, or an error on `field` when it is zero.
    pub fn positive(self, field: &str) -> Result<Self, InvalidField> {
        if self.is_zero() {
            Err(InvalidField::new(field, "must be longer than 0s"))
        } else {
            Ok(self)
        }
    }
}

impl FromStr for PolicyDuration {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PolicyParseError::new("duration", s, reason);
        if s.is_empty() {
            return Err(err("is empty; write e.g. 30s, 15m, 2h, 1d or 1h30m"));
        }
        let units = [
            ('d', DAY_MS),
            ('h', HOUR_MS),
            ('m', MINUTE_MS),
            ('s', SECOND_MS),
        ];
        let mut rest = s;
        let mut total: i64 = 0;
        let mut next_unit = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("expected a number before each unit (d, h, m, s)"));
            }
            let (number, tail) = rest.split_at(digits);
            let Some(unit) = tail.chars().next() else {
                return Err(err("a number needs a unit: d, h, m or s"));
            };
            let Some(pos) = units.iter().position(|(u, _)| *u == unit) else {
                return Err(err("units are d, h, m and s"));
            };
            if pos < next_unit {
                return Err(err("units go largest first, each at most once (1h30m)"));
            }
            next_unit = pos + 1;
            let part = number
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(units[pos].1))
                .and_then(|ms| total.checked_add(ms));
            match part {
                Some(t) if t <= Self::MAX.0 => total = t,
                _ => return Err(err("is longer than 366 days")),
            }
            rest = &tail[unit.len_utf8()..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for PolicyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut left = self.0 / SECOND_MS;
        for (unit, secs) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
            if left >= secs {
                write!(f, "{}{unit}", left / secs)?;
                left %= secs;
            }
        }
        Ok(())
    }
}

impl Serialize for PolicyDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A wall-clock time of day, `"HH:MM"` in 24-hour form (`"00:00"` to `"23:59"`); ordered
/// from midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
#[schema(value_type = String, example = "09:00")]
pub struct LocalTime(u16);

impl LocalTime {
    /// `hour:minute`, if it is a time of day.
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(Self(u16::from(hour) * 60 + u16::from(minute)))
    }

    /// The hour, 0-23.
    pub fn hour(self) -> u8 {
        // At most 23 by construction.
        (self.0 / 60) as u8
    }

    /// The minute, 0-59.
    pub fn minute(self) -> u8 {
        (self.0 % 60) as u8
    }

    /// As a civil time at second 0.
    pub fn civil(self) -> civil::Time {
        // In range by construction: hour < 24, minute < 60.
        civil::time(self.hour() as i8, self.minute() as i8, 0, 0)
    }
}

impl FromStr for LocalTime {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PolicyParseError::new("local time", s, reason);
        let b = s.as_bytes();
        let two = |i: usize| {
            (b[i].is_ascii_digit() && b[i + 1].is_ascii_digit())
                .then(|| (b[i] - b'0') * 10 + (b[i + 1] - b'0'))
        };
        if b.len() != 5 || b[2] != b':' {
            return Err(err("expected HH:MM in 24-hour form, e.g. 09:00 or 22:30"));
        }
        let (Some(hour), Some(minute)) = (two(0), two(3)) else {
            return Err(err("expected HH:MM in 24-hour form, e.g. 09:00 or 22:30"));
        };
        if hour > 23 {
            return Err(err("the hour must be 00-23"));
        }
        Self::new(hour, minute).ok_or_else(|| err("the minute must be 00-59"))
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour(), self.minute())
    }
}

impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A daily window of local wall-clock time in which only high-urgency sends go out. Start is
/// inclusive, end exclusive; `start > end` wraps midnight (`22:00`-`07:00`); `start == end`
/// is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// First quiet minute, e.g. `22:00`.
    pub start: LocalTime,
    /// First minute no longer quiet, e.g. `07:00`.
    pub end: LocalTime,
}

impl QuietHours {
    /// Checks the window; errors name `field` (e.g. `quiet_hours`).
    pub fn validate(&self, field: &str) -> Result<(), InvalidField> {
        if self.start == self.end {
            return Err(InvalidField::new(
                field,
                "start and end must differ (22:00-07:00 wraps midnight)",
            ));
        }
        Ok(())
    }

    /// Whether the window runs past midnight.
    pub fn wraps_midnight(&self) -> bool {
        self.start > self.end
    }

    /// Whether a wall-clock reading is inside the window (start inclusive, end exclusive).
    pub fn contains(&self, wall: civil::Time) -> bool {
        let (start, end) = (self.start.civil(), self.end.civil());
        if self.wraps_midnight() {
            wall >= start || wall < end
        } else {
            wall >= start && wall < end
        }
    }
}

/// How urgent a send is. `High` bypasses quiet hours; `Normal` (the default) waits for them
/// to end.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    /// Sent even during quiet hours.
    High,
    /// Held until quiet hours end.
    #[default]
    Normal,
}

impl Urgency {
    /// Every urgency.
    pub const ALL: [Urgency; 2] = [Self::High, Self::Normal];

    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
        }
    }
}

impl FromStr for Urgency {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| UnknownValue::new("urgency", s))
    }
}

/// Checks an event category (what frequency caps count): 1-64 characters of `[a-z0-9_.-]`.
pub fn validate_category(field: &str, category: &str) -> Result<(), InvalidField> {
    let ok = (1..=64).contains(&category.len())
        && category.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            "must be 1-64 characters of [a-z0-9_.-]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> Result<i64, String> {
        s.parse::<PolicyDuration>()
            .map(PolicyDuration::as_millis)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations_parse_in_every_unit_and_in_combinations() {
        assert_eq!(dur("30s"), Ok(30_000));
        assert_eq!(dur("15m"), Ok(900_000));
        assert_eq!(dur("2h"), Ok(7_200_000));
        assert_eq!(dur("1d"), Ok(86_400_000));
        assert_eq!(dur("1h30m"), Ok(5_400_000));
        assert_eq!(dur("1d2h3m4s"), Ok(93_784_000));
        assert_eq!(dur("0s"), Ok(0));
        assert_eq!(dur("366d"), Ok(366 * 86_400_000));
    }

    #[test]
    fn duration_errors_say_what_is_wrong() {
        let cases = [
            ("", "is empty"),
            ("15", "needs a unit"),
            ("m", "expected a number"),
            ("15x", "units are d, h, m and s"),
            ("30m1h", "largest first"),
            ("1h1h", "largest first"),
            ("367d", "longer than 366 days"),
            ("365d24h1s", "longer than 366 days"),
            ("99999999999999999999s", "longer than 366 days"),
            ("1h 30m", "expected a number"),
            ("-5m", "expected a number"),
            ("1.5h", "units are d, h, m and s"),
        ];
        for (input, reason) in cases {
            let e = dur(input).expect_err(input);
            assert!(e.starts_with("invalid duration"), "{input}: {e}");
            assert!(e.contains(reason), "{input}: {e}");
        }
    }

    #[test]
    fn durations_serialize_canonically_and_zero_can_be_refused() {
        let d: PolicyDuration = serde_json::from_str("\"90m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        for s in ["30s", "15m", "2h", "1d", "1d2h3m4s", "0s"] {
            assert_eq!(s.parse::<PolicyDuration>().unwrap().to_string(), s);
        }
        let e = serde_json::from_str::<PolicyDuration>("\"2 hours\"").unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        assert!(serde_json::from_str::<PolicyDuration>("3600").is_err());
        let zero = PolicyDuration::from_secs(0).unwrap();
        assert_eq!(zero.positive("ttl").unwrap_err().field, "ttl");
        assert!(PolicyDuration::from_secs(60)
            .unwrap()
            .positive("ttl")
            .is_ok());
        assert_eq!(PolicyDuration::from_secs(366 * 86_400 + 1), None);
        assert_eq!(PolicyDuration::from_secs(-1), None);
    }

    #[test]
    fn local_times_are_hh_mm_in_24_hours() {
        let t: LocalTime = "09:05".parse().unwrap();
        assert_eq!((t.hour(), t.minute()), (9, 5));
        assert_eq!(t.to_string(), "09:05");
        assert_eq!(t.civil(), civil::time(9, 5, 0, 0));
        assert!("00:00".parse::<LocalTime>().is_ok());
        assert!("23:59".parse::<LocalTime>().is_ok());
        let cases = [
            ("24:00", "hour must be 00-23"),
            ("12:60", "minute must be 00-59"),
            ("9:00", "expected HH:MM"),
            ("09:00:00", "expected HH:MM"),
            ("09h00", "expected HH:MM"),
            ("ab:cd", "expected HH:MM"),
            ("", "expected HH:MM"),
            ("0é:00", "expected HH:MM"),
        ];
        for (input, reason) in cases {
            let e = input.parse::<LocalTime>().expect_err(input).to_string();
            assert!(e.starts_with("invalid local time"), "{input}: {e}");
            assert!(e.contains(reason), "{input}: {e}");
        }
        let json: LocalTime = serde_json::from_str("\"22:30\"").unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), "\"22:30\"");
        assert!(serde_json::from_str::<LocalTime>("\"7:00\"").is_err());
    }

    #[test]
    fn quiet_hours_wrap_midnight_and_may_not_be_empty() {
        let q: QuietHours = serde_json::from_str(r#"{"start": "22:00", "end": "07:00"}"#).unwrap();
        assert!(q.wraps_midnight());
        assert!(q.validate("quiet_hours").is_ok());
        assert!(q.contains(civil::time(22, 0, 0, 0)));
        assert!(q.contains(civil::time(3, 0, 0, 0)));
        assert!(q.contains(civil::time(6, 59, 59, 999_999_999)));
        assert!(!q.contains(civil::time(7, 0, 0, 0)));
        assert!(!q.contains(civil::time(21, 59, 59, 0)));
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"start":"22:00","end":"07:00"}"#
        );
        let empty: QuietHours =
            serde_json::from_str(r#"{"start": "08:00", "end": "08:00"}"#).unwrap();
        assert_eq!(
            empty.validate("quiet_hours").unwrap_err().field,
            "quiet_hours"
        );
        assert!(serde_json::from_str::<QuietHours>(
            r#"{"start": "22:00", "end": "07:00", "tz": "UTC"}"#
        )
        .is_err());
    }

    #[test]
    fn urgency_and_categories() {
        assert_eq!(serde_json::to_string(&Urgency::High).unwrap(), "\"high\"");
        assert_eq!(
            serde_json::from_str::<Urgency>("\"normal\"").unwrap(),
            Urgency::Normal
        );
        for u in Urgency::ALL {
            assert_eq!(u.as_str().parse::<Urgency>(), Ok(u));
        }
        assert!("urgent".parse::<Urgency>().is_err());
        assert!(validate_category("category", "marketing.weekly-digest_2").is_ok());
        for bad in ["", "Marketing", "a b", &"x".repeat(65), "é"] {
            assert_eq!(
                validate_category("caps[0].category", bad)
                    .unwrap_err()
                    .field,
                "caps[0].category"
            );
        }
    }
}
