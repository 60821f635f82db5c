//! Per-key and per-source request rate limits: token buckets kept in memory, per instance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Limits; a rate of 0 disables that limit.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per server key.
    pub server_key_per_sec: f64,
    /// Requests per second per client key (all of an app's installs share one).
    pub client_key_per_sec: f64,
    /// Webhooks per second per source.
    pub source_per_sec: f64,
    /// Bucket size as a multiple of one second's rate (bursts).
    pub burst_secs: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            server_key_per_sec: 1_000.0,
            client_key_per_sec: 2_000.0,
            source_per_sec: 2_000.0,
            burst_secs: 2.0,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refreshed: Instant,
}

/// Token buckets by name (`key:<id>`, `source:<id>`).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets idle this long are forgotten (they would be full anyway).
const IDLE_EVICTION: Duration = Duration::from_secs(300);
const EVICT_ABOVE: usize = 10_000;

impl RateLimiter {
    /// Takes one token from `name`'s bucket; `Err(retry_after)` when it is empty.
    pub fn check(&self, name: &str, per_sec: f64, burst_secs: f64) -> Result<(), Duration> {
        if per_sec <= 0.0 {
            return Ok(());
        }
        let capacity = (per_sec * burst_secs).max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > EVICT_ABOVE {
            buckets.retain(|_, b| now.duration_since(b.refreshed) < IDLE_EVICTION);
        }
        let bucket = buckets.entry(name.to_string()).or_insert(Bucket {
            tokens: capacity,
            refreshed: now,
        });
        let elapsed = now.duration_since(bucket.refreshed).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.refreshed = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

/// Whole seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limiter = RateLimiter::default();
        for _ in 0..10 {
            assert!(limiter.check("key:a", 5.0, 2.0).is_ok());
        }
        let wait = limiter.check("key:a", 5.0, 2.0).expect_err("burst used up");
        assert!(
            wait <= Duration::from_millis(200) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        assert!(
            limiter.check("key:b", 5.0, 2.0).is_ok(),
            "buckets are per name"
        );
        assert!(
            limiter.check("key:a", 0.0, 2.0).is_ok(),
            "0 disables the limit"
        );
    }

    #[test]
    fn tokens_refill_over_time() {
        let limiter = RateLimiter::default();
        assert!(limiter.check("s", 1000.0, 0.001).is_ok());
        assert!(limiter.check("s", 1000.0, 0.001).is_err());
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.check("s", 1000.0, 0.001).is_ok());
    }
}
