//! Fair shares of the worker's send slots. Each app and provider may hold at most
//! `limit / (busy + 1)` of the `limit` slots (the current send limit: the providers' stream
//! capacity, at most `worker.concurrency`) while others may be waiting, where
//! `busy` is how many apps and providers have sends in flight: one more than there are, so a
//! newcomer always finds room. An app whose provider is slow therefore cannot take every
//! slot from the others; when nobody else has work due, it may use slots the others leave
//! free, up to three quarters of all of them.

use std::collections::HashMap;

use crate::model::Platform;

/// An app and a provider.
pub(crate) type ShareKey = (String, Platform);

/// Send slots in use per app and provider.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    in_flight: HashMap<ShareKey, usize>,
}

impl Shares {
    /// One more send of `key` is in flight.
    pub(crate) fn add(&mut self, key: ShareKey) {
        *self.in_flight.entry(key).or_default() += 1;
    }

    /// One send of `key` finished.
    pub(crate) fn remove(&mut self, key: &ShareKey) {
        if let Some(n) = self.in_flight.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(key);
            }
        }
    }

    /// The apps and providers that hold at least their fair share of `limit` slots.
    pub(crate) fn saturated(&self, limit: usize) -> Vec<ShareKey> {
        let fair = (limit / (self.in_flight.len() + 1)).max(1);
        self.in_flight
            .iter()
            .filter(|(_, n)| **n >= fair)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// How many slots saturated apps may still take when nobody else has work due: up to
    /// three quarters of `limit` in use overall, keeping the rest for a newcomer.
    pub(crate) fn spare(limit: usize, in_use: usize) -> usize {
        (limit - limit / 4).saturating_sub(in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str) -> ShareKey {
        (app.to_string(), Platform::Apns)
    }

    #[test]
    fn a_busy_app_leaves_room_for_a_newcomer() {
        let mut shares = Shares::default();
        assert!(shares.saturated(100).is_empty());
        for _ in 0..49 {
            shares.add(key("a"));
        }
        // Alone, "a" may hold up to half until a second app shows up.
        assert!(shares.saturated(100).is_empty());
        shares.add(key("a"));
        assert_eq!(shares.saturated(100), vec![key("a")]);
        // With "b" busy too, the fair share is a third each.
        for _ in 0..10 {
            shares.add(key("b"));
        }
        assert_eq!(shares.saturated(100), vec![key("a")]);
        for _ in 0..50 {
            shares.remove(&key("a"));
        }
        assert!(shares.saturated(100).is_empty());
        assert_eq!(Shares::spare(100, 70), 5);
        assert_eq!(Shares::spare(100, 80), 0);
    }
}
