//! Injected misbehaviour: latency, random 503s, dropped connections, early GOAWAY and
//! connections that go silent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Injected misbehaviour, changeable while running with
/// [`SimulatorHandle::set_faults`](super::SimulatorHandle::set_faults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0–1) of sends answered 503 with `Retry-After`.
    pub error_rate: f64,
    /// `Retry-After` seconds on injected 503s.
    pub retry_after_secs: u64,
    /// Delay added to every send: its mean, when `latency_jitter_ms` spreads it.
    pub latency_ms: u64,
    /// Each send's delay is drawn evenly from `latency_ms` ± this (a real provider's round
    /// trip varies); at most `latency_ms`, so that the mean stays `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Fraction (0–1) of sends that get `spike_latency_ms` more.
    pub spike_probability: f64,
    /// Extra delay of a spike.
    pub spike_latency_ms: u64,
    /// Fraction (0–1) of sends whose connection is closed without an answer.
    pub reset_probability: f64,
    /// Send GOAWAY after this many streams on a connection (APNs: Apple's single GOAWAY
    /// with `{"reason":"Shutdown"}`; FCM: a graceful shutdown).
    pub goaway_after_streams: Option<u64>,
    /// Every connection goes silent after answering this many streams: later streams, PINGs
    /// and everything else get no answer, and TCP stays open (a dead network path). `0`:
    /// silent from its first stream (connections are accepted and nothing is answered).
    pub blackhole_after_streams: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            latency_jitter_ms: 0,
            spike_probability: 0.0,
            spike_latency_ms: 0,
            reset_probability: 0.0,
            goaway_after_streams: None,
            blackhole_after_streams: None,
        }
    }
}

impl Faults {
    /// Checks ranges, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("error_rate", self.error_rate),
            ("spike_probability", self.spike_probability),
            ("reset_probability", self.reset_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("faults.{name}: must be between 0 and 1"));
            }
        }
        if self.latency_jitter_ms > self.latency_ms {
            return Err(format!(
                "faults.latency_jitter_ms: {} is more than latency_ms ({}); a delay cannot be \
                 negative",
                self.latency_jitter_ms, self.latency_ms
            ));
        }
        if self.goaway_after_streams == Some(0) {
            return Err("faults.goaway_after_streams: must be at least 1".into());
        }
        Ok(())
    }
}

/// The fault (if any) injected into one message send.
pub(super) enum Injected {
    Reset,
    Unavailable { retry_after_secs: u64 },
}

/// Applies latency, then decides whether this send is reset or refused.
pub(super) async fn inject(faults: &Faults) -> Option<Injected> {
    delay(faults).await;
    if faults.reset_probability > 0.0 && rand::random::<f64>() < faults.reset_probability {
        return Some(Injected::Reset);
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        return Some(Injected::Unavailable {
            retry_after_secs: faults.retry_after_secs,
        });
    }
    None
}

/// Sleeps for the configured latency, plus a spike now and then.
async fn delay(faults: &Faults) {
    let delay = delay_ms(faults, rand::random::<f64>(), rand::random::<f64>());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

/// One send's delay, from two draws in `[0, 1)`: where in the jitter range it falls, and
/// whether it spikes.
fn delay_ms(faults: &Faults, jitter_draw: f64, spike_draw: f64) -> u64 {
    let spread = 2 * faults.latency_jitter_ms + 1;
    // Evenly over latency_ms - jitter ..= latency_ms + jitter (validated: jitter <= latency).
    let offset = ((jitter_draw * spread as f64) as u64).min(spread - 1);
    let mut delay = (faults.latency_ms - faults.latency_jitter_ms.min(faults.latency_ms)) + offset;
    if faults.spike_probability > 0.0 && spike_draw < faults.spike_probability {
        delay += faults.spike_latency_ms;
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_outside_their_range_are_rejected() {
        let faults = Faults {
            reset_probability: 1.5,
            ..Faults::default()
        };
        assert_eq!(
            faults.validate().unwrap_err(),
            "faults.reset_probability: must be between 0 and 1"
        );
        let faults = Faults {
            latency_ms: 100,
            latency_jitter_ms: 150,
            ..Faults::default()
        };
        assert!(faults
            .validate()
            .unwrap_err()
            .starts_with("faults.latency_jitter_ms: 150 is more than latency_ms (100)"));
    }

    #[test]
    fn jitter_spreads_the_delay_evenly_around_its_mean() {
        let faults = Faults {
            latency_ms: 100,
            latency_jitter_ms: 50,
            ..Faults::default()
        };
        faults.validate().expect("valid");
        assert_eq!(delay_ms(&faults, 0.0, 0.5), 50);
        assert_eq!(delay_ms(&faults, 0.5, 0.5), 100);
        assert_eq!(delay_ms(&faults, 0.999_999, 0.5), 150);
        // 101 evenly spaced draws land on each of the 101 delays once: the mean is 100 ms.
        let delays: Vec<u64> = (0..101)
            .map(|i| delay_ms(&faults, (i as f64 + 0.5) / 101.0, 0.5))
            .collect();
        assert_eq!(delays, (50..=150).collect::<Vec<u64>>());
        // Without jitter every send waits the same; a spike adds to it.
        let fixed = Faults {
            latency_ms: 100,
            spike_probability: 0.1,
            spike_latency_ms: 300,
            ..Faults::default()
        };
        assert_eq!(delay_ms(&fixed, 0.0, 0.5), 100);
        assert_eq!(delay_ms(&fixed, 0.999, 0.05), 400);
    }
}
