//! Wall-clock time for everything the bridge stores or schedules (job due times, leases,
//! credential lifetimes), shiftable in tests.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time. One clock is shared by the store, the worker and the providers; tests
/// shift it instead of sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock, unshifted.
    pub fn system() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone) by `secs`, forward or back.
    pub fn shift(&self, secs: i64) {
        self.offset_ms.fetch_add(secs * 1000, Ordering::Relaxed);
    }

    /// Current time in unix milliseconds.
    pub fn unix_millis(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Current time in unix seconds.
    pub fn unix_secs(&self) -> i64 {
        self.unix_millis().div_euclid(1000)
    }
}

/// The system's current time in unix milliseconds, for tools outside the bridge (load
/// generators, test clients) that sign or time requests with real time.
pub fn now_ms() -> i64 {
    Clock::system().unix_millis()
}
