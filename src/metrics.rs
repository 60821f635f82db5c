//! Prometheus metrics, owned by the app state (no global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// All metrics of one bridge instance.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
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
        Self { registry, webhooks }
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
