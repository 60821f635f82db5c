//! The time arithmetic of delivery policy: which zone a device lives in, the next instant a
//! wall clock shows a given time, where quiet hours end, how deliveries are spread, and when
//! a delivery is due and until when it may go out. Instants are unix milliseconds.
//!
//! Daylight-saving rules, the same everywhere in this module:
//! - A wall time that does not exist that day (spring forward: 02:30 in New York on
//!   2027-03-14) is read in the offset in force before the jump, as jiff's "compatible"
//!   disambiguation does: 02:30 EST, which the clock shows as 03:30 EDT. The user gets it
//!   one hour "late" by the wall clock, at the same elapsed time as on other days.
//! - A wall time that happens twice (fall back: 01:30 in New York on 2027-11-07) is the
//!   first occurrence (01:30 EDT) for sends; once it has passed, the next send is the next
//!   day's, never the second occurrence. Only the end of quiet hours may be the second
//!   occurrence (see [`quiet_until`]).

use std::str::FromStr;
use std::sync::OnceLock;

use jiff::tz::{AmbiguousTimestamp, TimeZoneDatabase};
use jiff::{civil, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::SendPolicy;
use super::values::{LocalTime, QuietHours, Urgency};
use crate::model::{InvalidField, UnknownValue};

/// jiff's time zone, re-exported so callers need not name jiff.
pub use jiff::tz::TimeZone;

/// The tz database bundled into the binary, whatever jiff features other crates enable.
fn tzdb() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// The IANA zone `name` (ASCII case ignored), if the bundled database knows it.
pub fn lookup_zone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    tzdb().get(name).ok().filter(|tz| !tz.is_unknown())
}

/// Checks a zone name given at device registration or in an app policy (field `timezone`).
pub fn validate_timezone(name: &str) -> Result<(), InvalidField> {
    match lookup_zone(name) {
        Some(_) => Ok(()),
        None => Err(InvalidField::new(
            "timezone",
            "must be an IANA time zone name such as Europe/Paris",
        )),
    }
}

/// The device's zone if it is known, else the app's default if known, else UTC.
pub fn zone_for(device_tz: Option<&str>, app_default: Option<&str>) -> TimeZone {
    device_tz
        .and_then(lookup_zone)
        .or_else(|| app_default.and_then(lookup_zone))
        .unwrap_or(TimeZone::UTC)
}

/// Milliseconds as a jiff instant, clamped to the range jiff supports (years -9999..=9999).
fn instant(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Which occurrence of a repeated wall time counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// Only the first (sends).
    First,
    /// Either, whichever comes next (the end of quiet hours).
    Either,
}

/// The first instant ≥ `after_ms` whose wall clock in `zone` reads `wall`, under the module's
/// DST rules; `after_ms` itself if none is found (only at the ends of jiff's range).
fn next_wall(after_ms: i64, zone: &TimeZone, wall: civil::Time, fold: Fold) -> i64 {
    let today = zone.to_datetime(instant(after_ms)).date();
    // From the day before: a gap near midnight can push that day's time past `after_ms`.
    let mut date = today.yesterday().unwrap_or(today);
    for _ in 0..4 {
        let ambiguous = zone.to_ambiguous_timestamp(date.to_datetime(wall));
        if let Some(found) = occurrences(ambiguous, fold)
            .into_iter()
            .flatten()
            .find(|&ms| ms >= after_ms)
        {
            return found;
        }
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    after_ms
}

/// The instants a wall time stands for on one day, earliest first.
fn occurrences(ambiguous: AmbiguousTimestamp, fold: Fold) -> [Option<i64>; 2] {
    // `compatible`: the only instant, the pre-jump offset in a gap, the first in a fold.
    let first = ambiguous.compatible().ok().map(Timestamp::as_millisecond);
    // `later` is the second occurrence in a fold (and the same instant otherwise).
    let second = match fold {
        Fold::First => None,
        Fold::Either => ambiguous.later().ok().map(Timestamp::as_millisecond),
    };
    [first, second]
}

/// The first instant ≥ `after_ms` whose wall clock in `zone` reads `at` (at second 0).
///
/// DST: a time in a gap is read in the offset before the jump (02:30 on New York's
/// spring-forward day is 02:30 EST, shown as 03:30 EDT); a repeated time is its first
/// occurrence (01:30 EDT on fall-back day), and once that has passed the answer is the next
/// day's 01:30, never the repeat.
pub fn next_local(after_ms: i64, zone: &TimeZone, at: LocalTime) -> i64 {
    next_wall(after_ms, zone, at.civil(), Fold::First)
}

/// `None` when `at_ms` is outside `quiet` in `zone`; else the instant quiet hours end.
///
/// Inside means the wall clock at `at_ms` reads from `start` (inclusive) to `end`
/// (exclusive), wrapping midnight when `start > end`. The end is the next instant the clock
/// reads `end`: in a gap, as in [`next_local`] (an end of 02:30 on spring-forward day comes
/// at 03:30 new time); in a fold, whichever occurrence is next, so a reading inside the
/// window during the repeated hour ends at the repeat, not a day later.
pub fn quiet_until(at_ms: i64, zone: &TimeZone, quiet: &QuietHours) -> Option<i64> {
    let wall = zone.to_datetime(instant(at_ms)).time();
    if !quiet.contains(wall) {
        return None;
    }
    Some(next_wall(at_ms, zone, quiet.end.civil(), Fold::Either))
}

/// `due_ms` plus a stable offset in `[0, within_ms)` derived from `key` (e.g. the device
/// token) by SHA-256; `due_ms` itself when `within_ms` ≤ 0.
pub fn spread(due_ms: i64, within_ms: i64, key: &str) -> i64 {
    let Ok(window) = u64::try_from(within_ms) else {
        return due_ms;
    };
    if window == 0 {
        return due_ms;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let offset = u64::from_be_bytes(head) % window;
    // `offset < window ≤ i64::MAX`, so it fits.
    due_ms.saturating_add(i64::try_from(offset).unwrap_or(0))
}

/// Why a delivery is not sent yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// Its policy puts it later: `send_at`, `delay` or `deliver_at_local`.
    Scheduled,
    /// It fell in quiet hours and waits for their end.
    QuietHours,
}

impl Hold {
    /// Every hold.
    pub const ALL: [Hold; 2] = [Self::Scheduled, Self::QuietHours];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::QuietHours => "quiet_hours",
        }
    }
}

impl FromStr for Hold {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| UnknownValue::new("hold", s))
    }
}

/// When a delivery is due, and why it waits if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The instant it may go out (unix ms); ≤ now when due now.
    pub at_ms: i64,
    /// `None` when due now.
    pub hold: Option<Hold>,
}

/// When a delivery of an event at `event_at_ms` to a device in `zone` is due under `policy`
/// and the device's `quiet` hours (the user's or the app's), as of `now_ms`.
///
/// In order: the base is `send_at`, else `event_at + delay`, else now, and never before now;
/// then `deliver_at_local` takes the next such local time at or after it, plus
/// [`spread`] over `within` by `spread_key`; then, unless `urgency` is `high`, an instant
/// inside quiet hours moves to their end (hold `QuietHours`). Otherwise the hold is
/// `Scheduled` when the instant is after now, `None` when it is not.
pub fn due(
    now_ms: i64,
    event_at_ms: i64,
    policy: &SendPolicy,
    zone: &TimeZone,
    quiet: Option<&QuietHours>,
    spread_key: &str,
) -> Due {
    let base = match (policy.send_at, policy.delay) {
        (Some(at), _) => at.as_millisecond(),
        (None, Some(delay)) => event_at_ms.saturating_add(delay.as_millis()),
        (None, None) => now_ms,
    };
    let mut at_ms = base.max(now_ms);
    if let Some(local) = policy.deliver_at_local {
        at_ms = next_local(at_ms, zone, local);
        if let Some(within) = policy.within {
            at_ms = spread(at_ms, within.as_millis(), spread_key);
        }
    }
    if policy.urgency != Some(Urgency::High) {
        if let Some(end) = quiet.and_then(|q| quiet_until(at_ms, zone, q)) {
            return Due {
                at_ms: end,
                hold: Some(Hold::QuietHours),
            };
        }
    }
    Due {
        at_ms,
        hold: (at_ms > now_ms).then_some(Hold::Scheduled),
    }
}

/// The instant after which a delivery due at `due_ms` must not go out: `expires_at`, else
/// `due_ms + ttl`, else none.
pub fn expiry(policy: &SendPolicy, due_ms: i64) -> Option<i64> {
    policy
        .expires_at
        .map(Timestamp::as_millisecond)
        .or_else(|| policy.ttl.map(|ttl| due_ms.saturating_add(ttl.as_millis())))
}
