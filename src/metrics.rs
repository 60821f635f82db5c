//! Prometheus metrics, owned by the app state (no global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Method.
    pub method: String,
    /// Matched route pattern, e.g. `/v1/devices/{token}`.
    pub route: String,
    /// Status code.
    pub status: String,
}

/// Labels of connection-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `apns_production`, `apns_sandbox` or `fcm`.
    pub pool: String,
}

/// All metrics of one bridge instance.
pub struct Metrics {
    http_duration: Family<HttpLabels, Histogram>,
    event_to_delivery: Histogram,
    queue_depth: Family<JobLabels, Gauge>,
    oldest_job_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pool_open: Family<PoolLabels, Gauge>,
    pool_in_flight: Family<PoolLabels, Gauge>,
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
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration by method, route and status",
            http_duration.clone(),
        );
        let event_to_delivery = Histogram::new(exponential_buckets(0.005, 2.0, 18));
        registry.register(
            "event_to_delivery_seconds",
            "Time from receiving an event to the provider accepting a notification",
            event_to_delivery.clone(),
        );
        let queue_depth = Family::<JobLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Delivery jobs by status (sampled at scrape)",
            queue_depth.clone(),
        );
        let oldest_job_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "queue_oldest_due_job_age_seconds",
            "Age of the oldest due job (sampled at scrape)",
            oldest_job_age.clone(),
        );
        let pool_open = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_connections_open",
            "Open provider connections",
            pool_open.clone(),
        );
        let pool_in_flight = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_in_flight_streams",
            "Provider requests in flight",
            pool_in_flight.clone(),
        );
        Self {
            http_duration,
            event_to_delivery,
            queue_depth,
            oldest_job_age,
            pool_open,
            pool_in_flight,
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

    /// Observes one HTTP request.
    pub fn http_request(
        &self,
        method: &str,
        route: &str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        self.http_duration
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Observes the time from event receipt to delivery.
    pub fn event_delivered(&self, elapsed_ms: i64) {
        self.event_to_delivery
            .observe(elapsed_ms.max(0) as f64 / 1000.0);
    }

    /// Sets the sampled queue gauges.
    pub fn set_queue(&self, q: &crate::store::QueueStats) {
        for (status, n) in [
            ("queued", q.queued),
            ("in_flight", q.in_flight),
            ("dead", q.dead),
        ] {
            self.queue_depth
                .get_or_create(&JobLabels {
                    status: status.to_string(),
                })
                .set(n);
        }
        self.oldest_job_age.set(q.oldest_due_age_secs);
    }

    /// Sets the sampled connection-pool gauges.
    pub fn set_pools(&self, stats: &crate::push::ProviderStats) {
        for (pool, s) in [
            ("apns_production", &stats.apns_production),
            ("apns_sandbox", &stats.apns_sandbox),
            ("fcm", &stats.fcm),
        ] {
            if let Some(s) = s {
                let labels = PoolLabels {
                    pool: pool.to_string(),
                };
                self.pool_open
                    .get_or_create(&labels)
                    .set(s.connections_open as i64);
                self.pool_in_flight
                    .get_or_create(&labels)
                    .set(s.in_flight as i64);
            }
        }
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
