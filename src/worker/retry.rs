//! Retry policy, the one place that says when to try again: exponential backoff with jitter
//! for delivery jobs (full jitter, `Retry-After` honoured, bounded by attempts and age) and
//! the fixed schedule of messages to event endpoints (±20 % jitter, `Retry-After` honoured). Pure: configuration and
//! randomness come in, a decision comes out.

use std::time::Duration;

use rand::Rng;

use crate::config::WorkerConfig;

/// What to do after a transient failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    After(Duration),
    /// Out of attempts or too old: dead-letter it.
    GiveUp,
}

/// How far below its cap a backoff delay may fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Anywhere from zero to the cap: spreads retries of many jobs failing at once.
    Full,
    /// From half the cap to the cap: never retries right away.
    Equal,
}

/// Exponential backoff: the cap starts at `base_ms` after the first failure, doubles with
/// each further failure up to `max_ms`, and the delay is drawn below it as `jitter` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Cap after the first failure, ms.
    pub base_ms: u64,
    /// Largest cap, ms.
    pub max_ms: u64,
    /// Where below the cap the delay falls.
    pub jitter: Jitter,
}

impl Backoff {
    /// The delay after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << failures.saturating_sub(1).min(30));
        let cap = exp.min(self.max_ms);
        let floor = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => cap / 2,
        };
        Duration::from_millis(rng.gen_range(floor..=cap))
    }
}

/// Waits between attempts of a message to an event endpoint: after the first failure 5 s,
/// then 5 min, 30 min, 2 h, 5 h, 10 h and 10 h; after the eighth attempt it has failed.
pub const ENDPOINT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How far (either way, per mille) a scheduled wait is moved at random, so messages that
/// failed together do not all come back together.
const ENDPOINT_JITTER_PER_MILLE: u64 = 200;

/// Decides the next step for a message that has now failed `attempts` times (1-based). A
/// `Retry-After` longer than the scheduled wait is honoured, up to the schedule's longest
/// step (a receiver cannot park messages forever).
pub fn decide_endpoint(
    attempts: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> RetryDecision {
    let Some(step) = attempts
        .checked_sub(1)
        .and_then(|i| ENDPOINT_SCHEDULE.get(i as usize))
    else {
        return RetryDecision::GiveUp;
    };
    let ms = step.as_millis() as u64;
    let spread = ms * ENDPOINT_JITTER_PER_MILLE / 1000;
    let jittered = Duration::from_millis(rng.gen_range(ms - spread..=ms + spread));
    let longest = ENDPOINT_SCHEDULE[ENDPOINT_SCHEDULE.len() - 1];
    let delay = match retry_after {
        Some(after) if after > jittered => after.min(longest),
        _ => jittered,
    };
    RetryDecision::After(delay)
}

/// The wait after a throttled send (a quota or message rate exceeded) without `Retry-After`:
/// exponential from at least a minute, as Google asks, never below the usual backoff.
pub fn throttled_backoff(config: &WorkerConfig, attempts: u32, rng: &mut impl Rng) -> Duration {
    let floor_ms = crate::push::fcm::wire::QUOTA_BACKOFF_MIN_SECS * 1000;
    Backoff {
        // Equal jitter from twice the floor: the first wait is one to two minutes.
        base_ms: (2 * floor_ms).max(config.backoff_base_ms),
        max_ms: config.backoff_max_ms.max(2 * floor_ms),
        jitter: Jitter::Equal,
    }
    .delay(attempts, rng)
}

/// Decides the next step for a job that has now failed `attempts` times (1-based) and is
/// `age` old, given the provider's `Retry-After`, if any.
pub fn decide(
    config: &WorkerConfig,
    attempts: u32,
    age: Duration,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> RetryDecision {
    if attempts >= config.max_attempts {
        return RetryDecision::GiveUp;
    }
    let delay = match retry_after {
        // The provider named a time; waiting less would only earn another refusal.
        Some(after) => after,
        None => Backoff {
            base_ms: config.backoff_base_ms,
            max_ms: config.backoff_max_ms,
            jitter: Jitter::Full,
        }
        .delay(attempts, rng),
    };
    if age + delay > Duration::from_secs(config.max_age_secs) {
        return RetryDecision::GiveUp;
    }
    RetryDecision::After(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> WorkerConfig {
        WorkerConfig {
            max_attempts: 5,
            max_age_secs: 3600,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn throttled_sends_wait_at_least_a_minute_and_back_off() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let config = WorkerConfig::default();
        for attempt in 1..4u32 {
            let waits: Vec<Duration> = (0..100)
                .map(|_| throttled_backoff(&config, attempt, &mut rng))
                .collect();
            let floor = Duration::from_secs(60 << (attempt - 1));
            assert!(waits.iter().all(|w| *w >= floor), "attempt {attempt}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_up_to_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..5u32 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            let delays: Vec<u64> = (0..200)
                .map(
                    |_| match decide(&config(), attempt, Duration::ZERO, None, &mut rng) {
                        RetryDecision::After(d) => d.as_millis() as u64,
                        RetryDecision::GiveUp => panic!("should retry"),
                    },
                )
                .collect();
            assert!(
                delays.iter().all(|&d| d <= cap),
                "attempt {attempt} within cap {cap}"
            );
            // Full jitter spreads over the whole range, not just near the cap.
            assert!(
                delays.iter().any(|&d| d < cap / 2),
                "attempt {attempt} jittered low"
            );
            assert!(
                delays.iter().any(|&d| d > cap / 2),
                "attempt {attempt} jittered high"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_limits_apply() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let c = config();
        assert_eq!(
            decide(
                &c,
                1,
                Duration::ZERO,
                Some(Duration::from_secs(30)),
                &mut rng
            ),
            RetryDecision::After(Duration::from_secs(30))
        );
        assert_eq!(
            decide(&c, 5, Duration::ZERO, None, &mut rng),
            RetryDecision::GiveUp
        );
        assert_eq!(
            decide(
                &c,
                1,
                Duration::from_secs(3599),
                Some(Duration::from_secs(5)),
                &mut rng
            ),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn endpoint_messages_follow_the_schedule_within_twenty_percent_then_fail() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (i, step) in ENDPOINT_SCHEDULE.iter().enumerate() {
            let ms = step.as_millis() as u64;
            let delays: Vec<u64> = (0..200)
                .map(|_| match decide_endpoint(i as u32 + 1, None, &mut rng) {
                    RetryDecision::After(d) => d.as_millis() as u64,
                    RetryDecision::GiveUp => panic!("attempt {} should retry", i + 1),
                })
                .collect();
            assert!(delays
                .iter()
                .all(|d| (ms * 8 / 10..=ms * 12 / 10).contains(d)));
            assert!(delays.iter().any(|&d| d < ms) && delays.iter().any(|&d| d > ms));
        }
        assert_eq!(ENDPOINT_SCHEDULE[0], Duration::from_secs(5));
        assert_eq!(ENDPOINT_SCHEDULE[6], Duration::from_secs(36_000));
        assert_eq!(decide_endpoint(8, None, &mut rng), RetryDecision::GiveUp);
        assert_eq!(decide_endpoint(0, None, &mut rng), RetryDecision::GiveUp);
    }

    #[test]
    fn an_endpoints_longer_retry_after_is_honoured_up_to_ten_hours() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            decide_endpoint(1, Some(hour), &mut rng),
            RetryDecision::After(hour)
        );
        assert_eq!(
            decide_endpoint(1, Some(100 * hour), &mut rng),
            RetryDecision::After(10 * hour)
        );
        // A shorter one does not shorten the schedule.
        match decide_endpoint(2, Some(Duration::from_secs(1)), &mut rng) {
            RetryDecision::After(d) => assert!(d >= Duration::from_secs(240)),
            RetryDecision::GiveUp => panic!("should retry"),
        }
    }
}
