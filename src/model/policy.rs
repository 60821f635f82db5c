//! Delivery policy: the vocabulary of scheduled and local-time sends, quiet hours, urgency,
//! expiry and frequency caps, and the pure time arithmetic that turns a policy into the
//! instant a delivery is due. No IO here: every instant is unix milliseconds (`i64`), and
//! every zone comes from the tz database bundled into the binary (jiff's
//! `tzdb-bundle-always`), never from the machine's `/usr/share/zoneinfo`.
//!
//! - [`values`]: durations (`"1h30m"`), wall-clock times (`"22:00"`), quiet hours, urgency.
//! - [`spec`]: what an app, a user and a rule or direct send may ask for, and its validation.
//! - [`clock`]: zones, the next local time, quiet-hour ends, spreading, and [`due`].

pub mod clock;
pub mod spec;
pub mod values;

#[cfg(test)]
mod tests;

pub use clock::{
    due, expiry, lookup_zone, next_local, quiet_until, spread, validate_timezone, zone_for, Due,
    Hold, TimeZone,
};
pub use spec::{AppPolicy, FrequencyCap, SendPolicy, UserPreferences};
pub use values::{
    validate_category, LocalTime, PolicyDuration, PolicyParseError, QuietHours, Urgency,
};
