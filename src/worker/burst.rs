//! The burst guard. A token-level refusal that is not "gone" (APNs `BadDeviceToken`,
//! `DeviceTokenNotForTopic`; FCM `SENDER_ID_MISMATCH`) is usually right about one device, but
//! when it comes for a large share of an app's sends it is the app's configuration (a wrong
//! topic, environment or project), and acting on it device by device would mark a whole
//! audience suspect. So each instance counts, per app, its sends and these refusals by
//! reason over the last five minutes; past `worker.burst_guard_share` of at least
//! `worker.burst_guard_min_sends` sends, the reason stops being acted on: the delivery loop
//! opens the app's breaker for that provider (jobs held, operator alerted) and restores the
//! devices it marked suspect for that reason in the window. Over the share but with fewer
//! sends than that, a refusal is not acted on at once (past the first few, a tenth of the
//! minimum): the job is tried again shortly (up to a few attempts), so that a misconfigured
//! app's first sends do not mark many devices before the guard can tell.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Minutes in the window.
const WINDOW_MINUTES: i64 = 5;

#[derive(Default)]
struct Minute {
    at: i64,
    sends: u64,
    refusals: HashMap<String, u64>,
}

/// Sends and refusals per app over the last [`WINDOW_MINUTES`] minutes.
pub(crate) struct BurstGuard {
    share: f64,
    min_sends: u64,
    apps: Mutex<HashMap<String, VecDeque<Minute>>>,
}

/// What the guard says about one refusal.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Act on it (mark the device).
    Act,
    /// Too few sends in the window to tell, and the refusals are already over the share:
    /// try the job again a little later rather than mark its device now.
    Undecided,
    /// A burst: `refused` of `sends` in the window; hold instead, and undo since `since_ms`.
    Burst {
        /// Refusals for the reason in the window.
        refused: u64,
        /// Sends in the window.
        sends: u64,
        /// Start of the window, unix ms.
        since_ms: i64,
    },
}

impl BurstGuard {
    pub(crate) fn new(share: f64, min_sends: u64) -> Self {
        Self {
            share,
            min_sends,
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn with_minute<T>(
        &self,
        app_id: &str,
        now_ms: i64,
        f: impl FnOnce(&mut VecDeque<Minute>) -> T,
    ) -> T {
        let minute = now_ms.div_euclid(60_000);
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let window = apps.entry(app_id.to_string()).or_default();
        while window
            .front()
            .is_some_and(|m| m.at <= minute - WINDOW_MINUTES)
        {
            window.pop_front();
        }
        if window.back().is_none_or(|m| m.at != minute) {
            window.push_back(Minute {
                at: minute,
                ..Minute::default()
            });
        }
        f(window)
    }

    /// Counts one send of `app_id` that reached the provider.
    pub(crate) fn sent(&self, app_id: &str, now_ms: i64) {
        self.with_minute(app_id, now_ms, |w| {
            if let Some(m) = w.back_mut() {
                m.sends += 1;
            }
        });
    }

    /// Counts a refusal for `reason` (its send already counted) and says whether to act on it.
    pub(crate) fn refused(&self, app_id: &str, reason: &str, now_ms: i64) -> Verdict {
        let (sends, refused, since) = self.with_minute(app_id, now_ms, |w| {
            if let Some(m) = w.back_mut() {
                *m.refusals.entry(reason.to_string()).or_default() += 1;
            }
            let sends: u64 = w.iter().map(|m| m.sends).sum();
            let refused: u64 = w.iter().filter_map(|m| m.refusals.get(reason)).sum();
            let since = w.front().map_or(now_ms, |m| m.at * 60_000);
            (sends, refused, since)
        });
        let over = refused as f64 > self.share * sends as f64;
        // A handful of refusals is judged device by device: a small app with one bad token
        // should not wait for a verdict that needs many sends.
        let few = refused < (self.min_sends / 10).max(1);
        if !over || few {
            Verdict::Act
        } else if sends < self.min_sends {
            Verdict::Undecided
        } else {
            Verdict::Burst {
                refused,
                sends,
                since_ms: since,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "DeviceTokenNotForTopic";

    #[test]
    fn a_share_of_refusals_over_the_minimum_is_a_burst() {
        let guard = BurstGuard::new(0.2, 50);
        let t = 10 * 60_000;
        for _ in 0..40 {
            guard.sent("a", t);
        }
        // The first few refusals (under a tenth of the minimum) are acted on at once.
        for _ in 0..4 {
            assert_eq!(guard.refused("a", REASON, t), Verdict::Act);
        }
        // 8 of 40 is the share itself, not over it.
        for _ in 0..4 {
            assert_eq!(guard.refused("a", REASON, t), Verdict::Act);
        }
        // 9 of 40 is over it, but 40 sends are too few to judge.
        assert_eq!(guard.refused("a", REASON, t), Verdict::Undecided);
        for _ in 0..20 {
            guard.sent("a", t + 1000);
        }
        // 10 of 60 is under 20 %; 13 of 60 is over.
        assert_eq!(guard.refused("a", REASON, t + 1000), Verdict::Act);
        guard.refused("a", REASON, t + 1000);
        guard.refused("a", REASON, t + 1000);
        assert!(matches!(
            guard.refused("a", REASON, t + 1000),
            Verdict::Burst {
                refused: 13,
                sends: 60,
                ..
            }
        ));
        // Another reason, and another app, are counted apart.
        assert_eq!(guard.refused("a", "BadDeviceToken", t + 1000), Verdict::Act);
        guard.sent("b", t);
        assert_eq!(guard.refused("b", REASON, t), Verdict::Act);
        // Five minutes later the window has moved on.
        for _ in 0..60 {
            guard.sent("a", t + 6 * 60_000);
        }
        assert_eq!(guard.refused("a", REASON, t + 6 * 60_000), Verdict::Act);
    }
}
