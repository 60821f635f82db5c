//! The state shared by the HTTP handlers and handed over by `start`: configuration, store,
//! metrics, the background loops' wake-ups, providers, the event writer and rate limits.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::push::Providers;
use crate::ratelimit::RateLimiter;
use crate::service::credentials::CredentialObserver;
use crate::store::{EventWriter, Store};
use crate::worker::{Breakers, Wake};

/// State handed to every handler: one shared [`Shared`], so that cloning it (axum does for
/// every request, and again for each middleware) is one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What the handlers share: configuration, store, metrics, wake-ups, providers, the event
/// writer and rate limits.
pub struct Shared {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Wakes the background loops when new work is stored.
    pub wake: Wake,
    /// Provider senders: each app's credentials and their connection gauges.
    pub providers: Arc<Providers>,
    /// The open breakers per app and provider this instance knows of.
    pub breakers: Arc<Breakers>,
    /// App delivery policies, cached for fan-out and sends.
    pub policies: Arc<crate::service::policy::AppPolicies>,
    /// Group-commit writer for incoming events.
    pub events: EventWriter,
    /// Request rate limits per key and per source.
    pub limiter: Arc<RateLimiter>,
    /// Told about credentials stored through this instance (`serve --simulator`).
    pub credential_observer: Option<Arc<dyn CredentialObserver>>,
}
