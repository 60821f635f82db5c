//! Tests of the time arithmetic, with instants pinned as RFC 3339 literals and checked back
//! against jiff's own civil-to-zoned conversion.

use jiff::civil::date;
use jiff::Timestamp;

use super::*;

/// Unix ms of an RFC 3339 instant.
fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
}

fn zone(name: &str) -> TimeZone {
    lookup_zone(name).unwrap()
}

fn at(hh_mm: &str) -> LocalTime {
    hh_mm.parse().unwrap()
}

/// The wall clock in `tz` at `ms`, e.g. `2027-03-28T09:00:00`.
fn wall(ms: i64, tz: &TimeZone) -> String {
    tz.to_datetime(Timestamp::from_millisecond(ms).unwrap())
        .to_string()
}

/// The UTC offset in `tz` at `ms`, in seconds.
fn offset(ms: i64, tz: &TimeZone) -> i32 {
    tz.to_offset(Timestamp::from_millisecond(ms).unwrap())
        .seconds()
}

/// jiff's own reading of a wall time on a date in `tz` (compatible disambiguation).
fn zoned(tz: &TimeZone, y: i16, m: i8, d: i8, hour: i8, minute: i8) -> i64 {
    tz.to_zoned_datetime(date(y, m, d).at(hour, minute, 0, 0))
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn quiet(start: &str, end: &str) -> QuietHours {
    QuietHours {
        start: at(start),
        end: at(end),
    }
}

fn policy(json: &str) -> SendPolicy {
    let p: SendPolicy = serde_json::from_str(json).unwrap();
    p.validate().unwrap();
    p
}

#[test]
fn nine_o_clock_is_a_different_instant_in_each_zone() {
    let from = ms("2027-06-01T00:00:00Z");
    let cases = [
        ("Europe/Paris", "2027-06-01T07:00:00Z"),
        ("America/New_York", "2027-06-01T13:00:00Z"),
        ("Asia/Kolkata", "2027-06-01T03:30:00Z"),
    ];
    for (name, expected) in cases {
        let tz = zone(name);
        let got = next_local(from, &tz, at("09:00"));
        assert_eq!(got, ms(expected), "{name}");
        assert_eq!(got, zoned(&tz, 2027, 6, 1, 9, 0), "{name}");
        assert_eq!(wall(got, &tz), "2027-06-01T09:00:00", "{name}");
    }
}

#[test]
fn next_local_is_at_or_after_and_strict_to_the_millisecond() {
    let paris = zone("Europe/Paris");
    let nine = ms("2027-06-01T07:00:00Z");
    assert_eq!(next_local(nine, &paris, at("09:00")), nine);
    assert_eq!(
        next_local(nine + 1, &paris, at("09:00")),
        ms("2027-06-02T07:00:00Z")
    );
    assert_eq!(
        next_local(nine - 1, &paris, at("09:00")),
        nine,
        "a millisecond before"
    );
    assert_eq!(
        next_local(ms("2027-06-01T21:59:00Z"), &paris, at("00:00")),
        ms("2027-06-01T22:00:00Z"),
        "midnight is the next day's"
    );
}

#[test]
fn nine_o_clock_on_a_dst_change_day_uses_the_new_offset() {
    let cases = [
        // Paris springs forward at 02:00 CET on 2027-03-28: 09:00 is CEST (+02:00).
        (
            "Europe/Paris",
            "2027-03-27T12:00:00Z",
            "2027-03-28T07:00:00Z",
            7_200,
        ),
        (
            "Europe/Paris",
            "2027-03-28T00:30:00Z",
            "2027-03-28T07:00:00Z",
            7_200,
        ),
        // New York springs forward on 2027-03-14: 09:00 is EDT (-04:00).
        (
            "America/New_York",
            "2027-03-13T18:00:00Z",
            "2027-03-14T13:00:00Z",
            -14_400,
        ),
        // and falls back on 2027-11-07: 09:00 is EST (-05:00).
        (
            "America/New_York",
            "2027-11-06T18:00:00Z",
            "2027-11-07T14:00:00Z",
            -18_000,
        ),
        (
            "America/New_York",
            "2027-11-07T05:00:00Z",
            "2027-11-07T14:00:00Z",
            -18_000,
        ),
    ];
    for (name, from, expected, offset_secs) in cases {
        let tz = zone(name);
        let got = next_local(ms(from), &tz, at("09:00"));
        assert_eq!(got, ms(expected), "{name} from {from}");
        assert!(wall(got, &tz).ends_with("T09:00:00"), "{name} from {from}");
        assert_eq!(offset(got, &tz), offset_secs, "{name} from {from}");
    }
    let paris = zone("Europe/Paris");
    assert_eq!(zoned(&paris, 2027, 3, 28, 9, 0), ms("2027-03-28T07:00:00Z"));
}

#[test]
fn a_time_in_the_spring_forward_gap_is_read_in_the_old_offset() {
    let ny = zone("America/New_York");
    // 02:30 does not exist on 2027-03-14: 02:30 EST = 07:30Z, which New York calls 03:30 EDT.
    let got = next_local(ms("2027-03-14T05:00:00Z"), &ny, at("02:30"));
    assert_eq!(got, ms("2027-03-14T07:30:00Z"));
    assert_eq!(wall(got, &ny), "2027-03-14T03:30:00");
    assert_eq!(
        got,
        zoned(&ny, 2027, 3, 14, 2, 30),
        "jiff's compatible reading"
    );
    // After the jump (03:10 EDT) it is still ahead; after 03:30 EDT it is the next day's.
    assert_eq!(
        next_local(ms("2027-03-14T07:10:00Z"), &ny, at("02:30")),
        got
    );
    assert_eq!(
        next_local(ms("2027-03-14T07:40:00Z"), &ny, at("02:30")),
        ms("2027-03-15T06:30:00Z")
    );
    let paris = zone("Europe/Paris");
    // 02:30 does not exist in Paris on 2027-03-28: 02:30 CET = 01:30Z = 03:30 CEST.
    let got = next_local(ms("2027-03-27T23:00:00Z"), &paris, at("02:30"));
    assert_eq!(got, ms("2027-03-28T01:30:00Z"));
    assert_eq!(wall(got, &paris), "2027-03-28T03:30:00");
}

#[test]
fn a_repeated_time_is_its_first_occurrence_and_never_sent_twice() {
    let ny = zone("America/New_York");
    // 01:30 happens twice on 2027-11-07: 05:30Z (EDT) and 06:30Z (EST).
    let first = next_local(ms("2027-11-07T04:00:00Z"), &ny, at("01:30"));
    assert_eq!(first, ms("2027-11-07T05:30:00Z"));
    assert_eq!(offset(first, &ny), -14_400);
    assert_eq!(first, zoned(&ny, 2027, 11, 7, 1, 30));
    let next_day = ms("2027-11-08T06:30:00Z");
    for after in [
        first + 1,
        ms("2027-11-07T05:45:00Z"),
        ms("2027-11-07T06:00:00Z"),
        ms("2027-11-07T06:30:00Z"),
    ] {
        assert_eq!(
            next_local(after, &ny, at("01:30")),
            next_day,
            "from {after}"
        );
    }
    assert_eq!(wall(next_day, &ny), "2027-11-08T01:30:00");
}

#[test]
fn quiet_hours_that_wrap_midnight() {
    let paris = zone("Europe/Paris");
    let q = quiet("22:00", "07:00");
    let end = Some(ms("2027-01-16T06:00:00Z"));
    // Winter, CET (+01:00).
    assert_eq!(
        quiet_until(ms("2027-01-15T22:30:00Z"), &paris, &q),
        end,
        "23:30"
    );
    assert_eq!(
        quiet_until(ms("2027-01-16T05:59:00Z"), &paris, &q),
        end,
        "06:59"
    );
    assert_eq!(
        quiet_until(ms("2027-01-16T06:00:00Z"), &paris, &q),
        None,
        "07:00"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T21:00:00Z"), &paris, &q),
        end,
        "22:00"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T20:59:59Z"), &paris, &q),
        None,
        "21:59:59"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T11:00:00Z"), &paris, &q),
        None,
        "12:00"
    );
}

#[test]
fn quiet_hours_within_a_day() {
    let paris = zone("Europe/Paris");
    let q = quiet("12:00", "13:00");
    let end = Some(ms("2027-01-15T12:00:00Z"));
    assert_eq!(
        quiet_until(ms("2027-01-15T11:00:00Z"), &paris, &q),
        end,
        "12:00"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T11:30:00Z"), &paris, &q),
        end,
        "12:30"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T12:00:00Z"), &paris, &q),
        None,
        "13:00"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T10:59:00Z"), &paris, &q),
        None,
        "11:59"
    );
    assert_eq!(
        quiet_until(ms("2027-01-15T22:00:00Z"), &paris, &q),
        None,
        "23:00"
    );
}

#[test]
fn quiet_hours_across_dst_changes() {
    let ny = zone("America/New_York");
    // The spring-forward night: 22:00 EST on the 13th to 07:00 EDT on the 14th.
    assert_eq!(
        quiet_until(ms("2027-03-14T03:00:00Z"), &ny, &quiet("22:00", "07:00")),
        Some(ms("2027-03-14T11:00:00Z"))
    );
    // An end in the gap comes at 03:30 EDT, as next_local reads it.
    assert_eq!(
        quiet_until(ms("2027-03-14T06:59:00Z"), &ny, &quiet("22:00", "02:30")),
        Some(ms("2027-03-14T07:30:00Z"))
    );
    // Fall back: 01:30 comes twice. Inside during the first pass, the end is the first
    // 01:30; the clock then reads 01:00-01:30 again, inside again, ending at the repeat.
    let q = quiet("22:00", "01:30");
    let cases = [
        ("2027-11-07T05:15:00Z", Some("2027-11-07T05:30:00Z")),
        ("2027-11-07T05:45:00Z", None),
        ("2027-11-07T06:15:00Z", Some("2027-11-07T06:30:00Z")),
        ("2027-11-07T06:30:00Z", None),
    ];
    for (now, end) in cases {
        assert_eq!(quiet_until(ms(now), &ny, &q), end.map(ms), "at {now}");
    }
}

#[test]
fn spread_is_stable_and_in_range() {
    assert_eq!(spread(0, 3_600_000, "device-token-1"), 3_174_426);
    assert_eq!(
        spread(1_000, 7_200_000, "device-token-2"),
        1_000 + 5_917_178
    );
    assert_eq!(spread(0, 60_000, ""), 21_652);
    assert_eq!(spread(5, 0, "k"), 5);
    assert_eq!(spread(5, -1, "k"), 5);
    assert_eq!(spread(i64::MAX - 1, 1_000, "device-token-1"), i64::MAX);
    let due = ms("2027-06-01T07:00:00Z");
    let mut distinct = std::collections::HashSet::new();
    for i in 0..1_000 {
        let key = format!("token-{i}");
        let got = spread(due, 3_600_000, &key);
        assert!((due..due + 3_600_000).contains(&got), "{key}");
        assert_eq!(got, spread(due, 3_600_000, &key), "{key}");
        distinct.insert(got);
    }
    assert!(distinct.len() > 990, "{}", distinct.len());
}

#[test]
fn due_now_scheduled_or_delayed() {
    let paris = zone("Europe/Paris");
    let now = ms("2027-01-15T10:00:00Z");
    let none = Due {
        at_ms: now,
        hold: None,
    };
    assert_eq!(
        due(now, now, &SendPolicy::default(), &paris, None, "k"),
        none
    );
    let later = policy(r#"{"send_at": "2027-01-15T12:00:00Z"}"#);
    assert_eq!(
        due(now, now, &later, &paris, None, "k"),
        Due {
            at_ms: ms("2027-01-15T12:00:00Z"),
            hold: Some(Hold::Scheduled)
        }
    );
    let past = policy(r#"{"send_at": "2027-01-15T09:00:00Z"}"#);
    assert_eq!(due(now, now, &past, &paris, None, "k"), none);
    let delay = policy(r#"{"delay": "15m"}"#);
    assert_eq!(
        due(now, now - 300_000, &delay, &paris, None, "k"),
        Due {
            at_ms: now + 600_000,
            hold: Some(Hold::Scheduled)
        }
    );
    assert_eq!(due(now, now - 3_600_000, &delay, &paris, None, "k"), none);
}

#[test]
fn due_at_a_local_time_spread_over_a_window() {
    let paris = zone("Europe/Paris");
    // 11:00 in Paris: today's 09:00 has passed, so tomorrow's, 08:00Z.
    let now = ms("2027-01-15T10:00:00Z");
    let nine = ms("2027-01-16T08:00:00Z");
    let local = policy(r#"{"deliver_at_local": "09:00"}"#);
    assert_eq!(
        due(now, now, &local, &paris, None, "device-token-1"),
        Due {
            at_ms: nine,
            hold: Some(Hold::Scheduled)
        }
    );
    let spread_out = policy(r#"{"deliver_at_local": "09:00", "within": "2h"}"#);
    let got = due(now, now, &spread_out, &paris, None, "device-token-1");
    assert_eq!(got.at_ms, nine + 3_174_426);
    assert_eq!(got.hold, Some(Hold::Scheduled));
    let other = due(now, now, &spread_out, &paris, None, "device-token-2");
    assert_eq!(other.at_ms, nine + 5_917_178);
    // With a delay, the local time is the first at or after event + delay.
    let delayed = policy(r#"{"delay": "1d", "deliver_at_local": "09:00"}"#);
    assert_eq!(
        due(now, now, &delayed, &paris, None, "k").at_ms,
        ms("2027-01-17T08:00:00Z")
    );
}

#[test]
fn due_waits_for_quiet_hours_unless_urgent() {
    let paris = zone("Europe/Paris");
    let q = quiet("22:00", "07:00");
    let now = ms("2027-01-15T22:30:00Z"); // 23:30 in Paris
    let morning = ms("2027-01-16T06:00:00Z"); // 07:00 in Paris
    let held = Due {
        at_ms: morning,
        hold: Some(Hold::QuietHours),
    };
    assert_eq!(
        due(now, now, &SendPolicy::default(), &paris, Some(&q), "k"),
        held
    );
    let normal = policy(r#"{"urgency": "normal"}"#);
    assert_eq!(due(now, now, &normal, &paris, Some(&q), "k"), held);
    let urgent = policy(r#"{"urgency": "high"}"#);
    assert_eq!(
        due(now, now, &urgent, &paris, Some(&q), "k"),
        Due {
            at_ms: now,
            hold: None
        }
    );
    // A scheduled instant that lands in quiet hours moves to their end.
    let day = ms("2027-01-15T10:00:00Z");
    let midnight = policy(r#"{"send_at": "2027-01-15T23:00:00Z"}"#);
    assert_eq!(due(day, day, &midnight, &paris, Some(&q), "k"), held);
    let late = policy(r#"{"deliver_at_local": "23:00"}"#);
    assert_eq!(due(day, day, &late, &paris, Some(&q), "k"), held);
    let urgent_late = policy(r#"{"deliver_at_local": "23:00", "urgency": "high"}"#);
    assert_eq!(
        due(day, day, &urgent_late, &paris, Some(&q), "k"),
        Due {
            at_ms: ms("2027-01-15T22:00:00Z"),
            hold: Some(Hold::Scheduled)
        }
    );
}

#[test]
fn the_device_zone_falls_back_to_the_app_default_then_utc() {
    let now = ms("2027-01-15T10:00:00Z");
    let nine = policy(r#"{"deliver_at_local": "09:00"}"#);
    let cases = [
        (
            Some("Asia/Kolkata"),
            Some("Europe/Paris"),
            "2027-01-16T03:30:00Z",
        ),
        (Some("asia/kolkata"), None, "2027-01-16T03:30:00Z"),
        (
            Some("Mars/Olympus"),
            Some("Europe/Paris"),
            "2027-01-16T08:00:00Z",
        ),
        (None, Some("Europe/Paris"), "2027-01-16T08:00:00Z"),
        (
            Some("Mars/Olympus"),
            Some("Also/Bad"),
            "2027-01-16T09:00:00Z",
        ),
        (Some(""), None, "2027-01-16T09:00:00Z"),
        (None, None, "2027-01-16T09:00:00Z"),
    ];
    for (device, app, expected) in cases {
        let tz = zone_for(device, app);
        assert_eq!(
            due(now, now, &nine, &tz, None, "k").at_ms,
            ms(expected),
            "{device:?} {app:?}"
        );
    }
    assert_eq!(
        zone_for(Some("asia/kolkata"), None).iana_name(),
        Some("Asia/Kolkata")
    );
    assert_eq!(zone_for(None, None), TimeZone::UTC);
}

#[test]
fn timezones_are_checked_against_the_bundled_database() {
    for ok in [
        "Europe/Paris",
        "America/New_York",
        "Asia/Kolkata",
        "UTC",
        "Etc/GMT+5",
    ] {
        assert!(validate_timezone(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Mars/Olympus",
        "Etc/Unknown",
        "+02:00",
        "../../etc/passwd",
    ] {
        assert_eq!(
            validate_timezone(bad).unwrap_err().field,
            "timezone",
            "{bad}"
        );
    }
    assert!(validate_timezone(&"A/".repeat(40)).is_err());
}

#[test]
fn expiry_is_expires_at_or_due_plus_ttl() {
    let due_ms = ms("2027-01-15T10:00:00Z");
    assert_eq!(expiry(&SendPolicy::default(), due_ms), None);
    let at = policy(r#"{"expires_at": "2027-01-15T12:00:00Z"}"#);
    assert_eq!(expiry(&at, due_ms), Some(ms("2027-01-15T12:00:00Z")));
    let ttl = policy(r#"{"ttl": "1h30m"}"#);
    assert_eq!(expiry(&ttl, due_ms), Some(due_ms + 5_400_000));
}

#[test]
fn holds_have_stored_names() {
    for h in Hold::ALL {
        assert_eq!(h.as_str().parse::<Hold>(), Ok(h));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            format!("\"{}\"", h.as_str())
        );
    }
    assert_eq!(Hold::QuietHours.as_str(), "quiet_hours");
    assert_eq!(
        serde_json::from_str::<Hold>("\"scheduled\"").unwrap(),
        Hold::Scheduled
    );
    assert!("later".parse::<Hold>().is_err());
}
