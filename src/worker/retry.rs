//! Retry policy: exponential backoff with full jitter, `Retry-After` honoured, bounded by
//! attempts and age.

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
        None => {
            let exp = config
                .backoff_base_ms
                .saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
            let cap = exp.min(config.backoff_max_ms);
            Duration::from_millis(rng.gen_range(0..=cap))
        }
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
}
