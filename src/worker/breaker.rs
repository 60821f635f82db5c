//! The circuit breaker per app and provider. A credential-level refusal (the provider
//! rejects the app's key, team, project or topic) says nothing about the device, and every
//! other send with the same credential would be refused alike, so it must not count against
//! jobs or dead-letter a whole audience:
//!
//! - the first refusal opens the breaker in the database (logged once, by the instance that
//!   opened it) and holds the app's queued jobs for that provider until the next probe;
//! - a job claimed while the breaker is open goes back to the queue unsent and uncounted;
//! - every `worker.breaker_probe_secs`, one job (one across all instances) is sent as a
//!   probe; when the provider takes it, the breaker closes and the held jobs are due at once;
//! - storing a new credential for the app closes the breaker too.
//!
//! Each instance keeps the open breakers in memory, refreshed from the database with the
//! credentials, so a claim does not read the database to learn that nothing is paused.

use std::collections::HashMap;
use std::sync::RwLock;

use super::Worker;
use crate::model::Platform;
use crate::store::Breaker;

/// The open breakers this instance knows of, shared by the delivery loop and the API (which
/// forgets a breaker at once when the app's credential is replaced).
#[derive(Default)]
pub struct Breakers {
    open: RwLock<HashMap<(String, Platform), Breaker>>,
}

impl Breakers {
    fn get(&self, app_id: &str, provider: Platform) -> Option<Breaker> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.get(&(app_id.to_string(), provider)).cloned()
    }

    fn set(&self, breaker: Breaker) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.insert((breaker.app_id.clone(), breaker.provider), breaker);
    }

    /// Forgets the breaker of `app_id` and `provider` (its credential was replaced).
    pub fn clear(&self, app_id: &str, provider: Platform) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.remove(&(app_id.to_string(), provider));
    }

    /// Replaces what this instance knows with the database's list.
    pub(crate) fn replace_all(&self, breakers: Vec<Breaker>) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        *open = breakers
            .into_iter()
            .map(|b| ((b.app_id.clone(), b.provider), b))
            .collect();
    }
}

/// What the breaker says about one claimed job.
pub(crate) enum Gate {
    /// Send it (nothing is paused, or it is the probe).
    Send {
        /// It is the probe of an open breaker.
        probe: bool,
    },
    /// Do not send it; it is due again at this time (unix millis).
    Hold {
        /// When.
        until: i64,
        /// The refusal that paused the app.
        reason: String,
    },
}

impl Worker {
    /// Whether this instance knows the breaker of `app_id` and `provider` to be open.
    pub(crate) fn breaker_known(&self, app_id: &str, provider: Platform) -> bool {
        self.breakers.get(app_id, provider).is_some()
    }

    fn probe_ms(&self) -> i64 {
        (self.config.breaker_probe_secs * 1000) as i64
    }

    /// Whether a claimed job of `app_id` for `provider` may be sent now.
    pub(crate) async fn gate(&self, app_id: &str, provider: Platform) -> Gate {
        let Some(breaker) = self.breakers.get(app_id, provider) else {
            return Gate::Send { probe: false };
        };
        // Boxed: the store calls behind an open breaker are rare, and inline they would make
        // every send's task larger.
        Box::pin(self.gate_open(app_id, provider, breaker)).await
    }

    /// [`Self::gate`] while the breaker is open.
    async fn gate_open(&self, app_id: &str, provider: Platform, breaker: Breaker) -> Gate {
        let now = self.store.now();
        if breaker.probe_at > now {
            return Gate::Hold {
                until: breaker.probe_at,
                reason: breaker.reason,
            };
        }
        let next = now + self.probe_ms();
        match self.store.take_probe(app_id, provider, next).await {
            Ok(true) => {
                tracing::info!(app = %app_id, provider = provider.as_str(), "probing a paused provider credential");
                self.breakers.set(Breaker {
                    probe_at: next,
                    ..breaker
                });
                Gate::Send { probe: true }
            }
            Ok(false) => match self.store.breakers().await {
                Ok(all) => {
                    let current = all
                        .iter()
                        .find(|b| b.app_id == app_id && b.provider == provider)
                        .cloned();
                    self.breakers.replace_all(all);
                    match current {
                        // Another instance took this probe.
                        Some(b) => Gate::Hold {
                            until: b.probe_at,
                            reason: b.reason,
                        },
                        // Closed meanwhile.
                        None => Gate::Send { probe: false },
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading provider breakers failed");
                    Gate::Hold {
                        until: next,
                        reason: breaker.reason,
                    }
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "taking a breaker probe failed");
                Gate::Hold {
                    until: next,
                    reason: breaker.reason,
                }
            }
        }
    }

    /// The provider refused `app_id`'s credential: opens the breaker (unless this instance
    /// knows it is open) and returns when the held job is due again.
    pub(crate) async fn trip(&self, app_id: &str, provider: Platform, reason: &str) -> i64 {
        let now = self.store.now();
        if let Some(known) = self.breakers.get(app_id, provider) {
            if known.probe_at > now {
                return known.probe_at;
            }
        }
        let probe_at = now + self.probe_ms();
        match self
            .store
            .open_breaker(app_id, provider, reason, probe_at)
            .await
        {
            Ok((breaker, opened)) => {
                if opened {
                    tracing::warn!(app = %app_id, provider = provider.as_str(), %reason,
                        probe_secs = self.config.breaker_probe_secs,
                        "the provider refused the app's credential; its sends to this provider \
                         are paused until a probe succeeds or the credential is replaced");
                }
                let until = breaker.probe_at.max(now);
                self.breakers.set(breaker);
                until
            }
            Err(e) => {
                tracing::error!(error = %e, "opening a provider breaker failed");
                probe_at
            }
        }
    }

    /// A send with `app_id`'s credential got an answer from the provider that was not a
    /// credential refusal: closes the breaker if it is open.
    pub(crate) async fn recovered(&self, app_id: &str, provider: Platform) {
        if self.breakers.get(app_id, provider).is_none() {
            return;
        }
        self.breakers.clear(app_id, provider);
        // Boxed, being rare (see `gate`).
        match Box::pin(self.store.close_breaker(app_id, provider)).await {
            Ok(true) => {
                tracing::info!(app = %app_id, provider = provider.as_str(),
                    "the provider accepts the app's credential again; its sends resume");
                self.wake.jobs.notify_one();
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "closing a provider breaker failed"),
        }
    }
}
