//! Prometheus metrics, owned by the app state (no global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::push::Outcome;
use prometheus_client::registry::Registry;

/// Labels of webhook ingest counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `<app id>/<source name>`.
    pub source: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: String,
    /// Why it was rejected; empty otherwise.
    pub reason: String,
}

/// Labels of delivery counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `apns` or `fcm`.
    pub provider: String,
    /// `delivered`, `invalid_token`, `retry` or `failed`.
    pub outcome: String,
    /// Provider reason; empty on success.
    pub reason: String,
}

/// Labels carrying only the provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `apns` or `fcm`.
    pub provider: String,
}

/// Labels of fan-out counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `queued`, or `dead` when rendering failed.
    pub status: String,
}

/// All metrics of one bridge instance.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    provider_latency: Family<ProviderLabels, Histogram>,
    jobs_created: Family<JobLabels, Counter>,
    retries: Counter,
    dead_letters: Counter,
    pruned: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pushbridge");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests by source, outcome (accepted, duplicate, rejected) and reason",
            webhooks.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by provider, outcome and reason",
            deliveries.clone(),
        );
        let provider_latency = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "provider_round_trip_seconds",
            "Provider request round trip",
            provider_latency.clone(),
        );
        let jobs_created = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs_created",
            "Delivery jobs created by fan-out, by initial status",
            jobs_created.clone(),
        );
        let retries = Counter::default();
        registry.register("retries", "Attempts scheduled for retry", retries.clone());
        let dead_letters = Counter::default();
        registry.register(
            "dead_letters",
            "Jobs that became dead letters",
            dead_letters.clone(),
        );
        let pruned = Counter::default();
        registry.register(
            "pruned_tokens",
            "Devices pruned after provider feedback",
            pruned.clone(),
        );
        Self {
            registry,
            webhooks,
            deliveries,
            provider_latency,
            jobs_created,
            retries,
            dead_letters,
            pruned,
        }
    }

    /// Counts one delivery attempt and its round trip.
    pub fn delivery(&self, provider: &str, outcome: &Outcome, elapsed: std::time::Duration) {
        let (label, reason) = match outcome {
            Outcome::Delivered { .. } => ("delivered", ""),
            Outcome::InvalidToken { reason, .. } => ("invalid_token", reason.as_str()),
            Outcome::Retry { reason, .. } => ("retry", reason.as_str()),
            Outcome::Failed { reason } => ("failed", reason.as_str()),
        };
        self.deliveries
            .get_or_create(&DeliveryLabels {
                provider: provider.to_string(),
                outcome: label.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        self.provider_latency
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts jobs created by one fan-out.
    pub fn fanned_out(&self, queued: u64, dead: u64) {
        for (status, n) in [("queued", queued), ("dead", dead)] {
            if n > 0 {
                self.jobs_created
                    .get_or_create(&JobLabels {
                        status: status.to_string(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Counts a scheduled retry.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts a dead letter.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    /// Counts pruned devices.
    pub fn pruned(&self, n: u64) {
        if n > 0 {
            self.pruned.inc_by(n);
        }
    }

    /// Counts one webhook request.
    pub fn webhook(&self, source: &str, outcome: &str, reason: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                source: source.to_string(),
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The current value of a webhook counter (0 when never incremented).
    pub fn webhook_count(&self, source: &str, outcome: &str, reason: &str) -> u64 {
        self.webhooks
            .get_or_create(&WebhookLabels {
                source: source.to_string(),
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .get()
    }

    /// Renders the OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
