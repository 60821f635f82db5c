//! Prometheus metrics, owned by the app state (no global registry), and their exposition in
//! the OpenMetrics and the classic Prometheus text formats.
//!
//! No label value comes from unauthenticated input: webhook sources are labelled only once
//! they are found (`unknown` otherwise), methods and routes come from closed sets, and every
//! free-text value (a provider's reason) is escaped by [`LabelText`].

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::model::{JobStatus, Platform};
use crate::push::Outcome;
use prometheus_client::registry::Registry;

/// A label value holding text the bridge does not choose itself, written with the escapes
/// both text formats require (`\\`, `\"`, `\n`), so no value can end its quotes early or
/// start a line of its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LabelText(String);

impl LabelText {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The source label of a webhook whose source was not found: one series, however many
/// different paths strangers post to.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// Labels of webhook ingest counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `<app id>/<source name>` of a stored source, or `unknown`.
    pub source: LabelText,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    /// Why it was rejected; empty otherwise.
    pub reason: &'static str,
}

/// Labels of delivery counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `apns` or `fcm`.
    pub provider: &'static str,
    /// `delivered`, `invalid_token`, `retry`, `failed` or `credential_rejected`.
    pub outcome: &'static str,
    /// Provider reason; empty on success.
    pub reason: LabelText,
}

/// Labels carrying only the provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `apns` or `fcm`.
    pub provider: &'static str,
}

/// Labels of fan-out counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `queued`, or `dead` when rendering failed.
    pub status: String,
}

/// Labels of the queue gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// A job status (`queued`, `in_flight`, `dead`), or a part of the queued jobs waiting
    /// for a later time: `scheduled` (their policy's time) or `held` (quiet hours).
    pub status: &'static str,
}

/// Labels of the counter of jobs a delivery policy ended without sending them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WithheldLabels {
    /// One of [`JobStatus::WITHHELD`]: `capped`, `superseded`, `expired` or `cancelled`.
    pub status: &'static str,
}

/// The queue gauge's label for queued jobs waiting for their policy's time.
pub const QUEUE_SCHEDULED: &str = "scheduled";

/// The queue gauge's label for queued jobs held until quiet hours end.
pub const QUEUE_HELD: &str = "held";

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Method: one of the standard ones, or `other`.
    pub method: &'static str,
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
    /// The app whose own credential the pool serves, or `default` for the config file's.
    pub app: LabelText,
}

/// Labels carrying a provider and a provider's reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryReasonLabels {
    /// `apns` or `fcm`.
    pub provider: &'static str,
    /// Provider reason.
    pub reason: LabelText,
}

/// Labels of the breaker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// The app.
    pub app: LabelText,
    /// `apns` or `fcm`.
    pub provider: &'static str,
}

/// All metrics of one bridge instance.
pub struct Metrics {
    http_duration: Family<HttpLabels, Histogram>,
    event_to_delivery: Histogram,
    queue_depth: Family<QueueLabels, Gauge>,
    oldest_job_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pool_open: Family<PoolLabels, Gauge>,
    pool_in_flight: Family<PoolLabels, Gauge>,
    breaker_open: Family<BreakerLabels, Gauge>,
    burst_guard: Family<DeliveryReasonLabels, Counter>,
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    provider_latency: Family<ProviderLabels, Histogram>,
    jobs_created: Family<JobLabels, Counter>,
    withheld: Family<WithheldLabels, Counter>,
    retries: Counter,
    dead_letters: Counter,
    pruned: Counter,
    retention_swept: Family<RetentionLabels, Counter>,
}

/// Labels of the retention counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionLabels {
    /// What was deleted (`delivered_jobs`, `dead_letters`, `events`, ...).
    pub kind: &'static str,
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
        let withheld = register_withheld(&mut registry);
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
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Delivery jobs by status, and the queued ones waiting for a later time: scheduled \
             (their policy's time) and held (quiet hours) (sampled at scrape)",
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
        let burst_guard = Family::<DeliveryReasonLabels, Counter>::default();
        registry.register(
            "burst_guard_trips",
            "Times a burst of one token-level refusal held an app's sends (a configuration \
             mistake, not bad devices)",
            burst_guard.clone(),
        );
        let breaker_open = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "provider_breaker_open",
            "1 while the provider refuses an app's credential and its sends are paused",
            breaker_open.clone(),
        );
        let pool_in_flight = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_in_flight_streams",
            "Provider requests in flight",
            pool_in_flight.clone(),
        );
        let retention_swept = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_swept",
            "Rows deleted because they were past their retention, by kind",
            retention_swept.clone(),
        );
        Self {
            retention_swept,
            http_duration,
            event_to_delivery,
            queue_depth,
            oldest_job_age,
            pool_open,
            pool_in_flight,
            breaker_open,
            burst_guard,
            registry,
            webhooks,
            deliveries,
            provider_latency,
            jobs_created,
            withheld,
            retries,
            dead_letters,
            pruned,
        }
    }

    /// Counts one delivery attempt and its round trip.
    pub fn delivery(&self, provider: Platform, outcome: &Outcome, elapsed: std::time::Duration) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                provider: provider.as_str(),
                outcome: outcome.label(),
                reason: LabelText::new(outcome.reason().unwrap_or_default()),
            })
            .inc();
        self.provider_latency
            .get_or_create(&ProviderLabels {
                provider: provider.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Observes one HTTP request.
    pub fn http_request(
        &self,
        method: &http::Method,
        route: &str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        self.http_duration
            .get_or_create(&HttpLabels {
                method: method_label(method),
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
            (JobStatus::Queued.as_str(), q.queued),
            (QUEUE_SCHEDULED, q.scheduled),
            (QUEUE_HELD, q.held),
            (JobStatus::InFlight.as_str(), q.in_flight),
            (JobStatus::Dead.as_str(), q.dead),
        ] {
            self.queue_depth
                .get_or_create(&QueueLabels { status })
                .set(n);
        }
        self.oldest_job_age.set(q.oldest_due_age_secs);
    }

    /// Sets the sampled connection-pool gauges (a removed credential's pools disappear).
    pub fn set_pools(&self, samples: &[crate::push::PoolSample]) {
        self.pool_open.clear();
        self.pool_in_flight.clear();
        for sample in samples {
            let labels = PoolLabels {
                pool: sample.pool.to_string(),
                app: LabelText::new(sample.app.as_deref().unwrap_or("default")),
            };
            self.pool_open
                .get_or_create(&labels)
                .set(sample.stats.connections_open as i64);
            self.pool_in_flight
                .get_or_create(&labels)
                .set(sample.stats.in_flight as i64);
        }
    }

    /// Counts one trip of the burst guard.
    pub fn burst_guard_tripped(&self, provider: Platform, reason: &str) {
        self.burst_guard
            .get_or_create(&DeliveryReasonLabels {
                provider: provider.as_str(),
                reason: LabelText::new(reason),
            })
            .inc();
    }

    /// Sets the breaker gauge: 1 for each app and provider whose sends are paused.
    pub fn set_breakers(&self, open: &[crate::store::Breaker]) {
        self.breaker_open.clear();
        for b in open {
            self.breaker_open
                .get_or_create(&BreakerLabels {
                    app: LabelText::new(&b.app_id),
                    provider: b.provider.as_str(),
                })
                .set(1);
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

    /// Counts `n` jobs a delivery policy ended with `status` (one of
    /// [`JobStatus::WITHHELD`]) without sending them; any other status is not counted here.
    pub fn withheld(&self, status: JobStatus, n: u64) {
        if n == 0 {
            return;
        }
        if !JobStatus::WITHHELD.contains(&status) {
            tracing::warn!(
                status = status.as_str(),
                "not a withheld status; not counted"
            );
            return;
        }
        self.withheld
            .get_or_create(&WithheldLabels {
                status: status.as_str(),
            })
            .inc_by(n);
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

    /// Counts `n` rows of `kind` deleted past their retention.
    pub fn retention_swept(&self, kind: crate::store::retention::RetentionKind, n: u64) {
        self.retention_swept
            .get_or_create(&RetentionLabels {
                kind: kind.as_str(),
            })
            .inc_by(n);
    }

    /// Counts one webhook request; `source` is the stored source's label, or `None` when
    /// no source was found for the path.
    pub fn webhook(&self, source: Option<&str>, outcome: &'static str, reason: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                source: LabelText::new(source.unwrap_or(UNKNOWN_SOURCE)),
                outcome,
                reason,
            })
            .inc();
    }

    /// Renders the exposition in `format`.
    pub fn encode(&self, format: ExpositionFormat) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        match format {
            ExpositionFormat::OpenMetrics => out,
            ExpositionFormat::Classic => classic_text(&out),
        }
    }
}

/// Registers the counter of withheld jobs, with a series for each withheld status from the
/// start, so that a rate over one never starts from nothing.
fn register_withheld(registry: &mut Registry) -> Family<WithheldLabels, Counter> {
    let withheld = Family::<WithheldLabels, Counter>::default();
    registry.register(
        "jobs_withheld",
        "Delivery jobs a delivery policy ended without sending them, by final status \
         (capped, superseded, expired, cancelled)",
        withheld.clone(),
    );
    for status in JobStatus::WITHHELD {
        drop(withheld.get_or_create(&WithheldLabels {
            status: status.as_str(),
        }));
    }
    withheld
}

/// The method label: the standard methods by name, anything else (extension methods a
/// client can invent freely) as `other`.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The two text expositions a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// The classic Prometheus text format (`text/plain; version=0.0.4`).
    Classic,
}

impl ExpositionFormat {
    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Picks the format from an `Accept` header: the acceptable one with the higher quality,
    /// OpenMetrics on a tie, for `*/*` or when the header is absent or unreadable.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::OpenMetrics;
        };
        let (mut open, mut classic) = (None::<f32>, None::<f32>);
        for range in accept.split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut open,
                "text/plain" | "text/*" => &mut classic,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
        match (open.filter(|q| *q > 0.0), classic.filter(|q| *q > 0.0)) {
            (_, None) => Self::OpenMetrics,
            (None, Some(_)) => Self::Classic,
            (Some(o), Some(c)) if c > o => Self::Classic,
            _ => Self::OpenMetrics,
        }
    }
}

/// Rewrites an OpenMetrics exposition into the classic text format: a counter family is
/// named with its `_total` suffix there, and the `# EOF` and `# UNIT` lines do not exist.
/// Sample lines and label escaping are the same in both.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match header.and_then(|(p, rest)| rest.split_once(' ').map(|(name, tail)| (p, name, tail)))
        {
            Some((prefix, name, tail)) if counters.contains(name) => {
                let _ = writeln!(out, "{prefix}{name}_total {tail}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{ExpositionFormat, Metrics};
    use crate::model::JobStatus;
    use crate::store::QueueStats;

    /// The value of the sample line `series value` in an exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn withheld_jobs_are_counted_by_their_final_status() {
        let metrics = Metrics::new();
        metrics.withheld(JobStatus::Expired, 3);
        metrics.withheld(JobStatus::Expired, 2);
        metrics.withheld(JobStatus::Cancelled, 7);
        metrics.withheld(JobStatus::Superseded, 0);
        // Not a withheld status: not counted, and no series of its own.
        metrics.withheld(JobStatus::Delivered, 4);
        for (format, family) in [
            (ExpositionFormat::OpenMetrics, "pushbridge_jobs_withheld"),
            (ExpositionFormat::Classic, "pushbridge_jobs_withheld_total"),
        ] {
            let text = metrics.encode(format);
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{text}"
            );
            for (status, want) in [
                (JobStatus::Capped, 0.0),
                (JobStatus::Superseded, 0.0),
                (JobStatus::Expired, 5.0),
                (JobStatus::Cancelled, 7.0),
            ] {
                let series = format!(
                    "pushbridge_jobs_withheld_total{{status=\"{}\"}}",
                    status.as_str()
                );
                assert_eq!(sample(&text, &series), Some(want), "{series}\n{text}");
            }
            assert!(
                !text.contains("pushbridge_jobs_withheld_total{status=\"delivered\"}"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_queue_gauges_show_scheduled_and_held_jobs() {
        let metrics = Metrics::new();
        metrics.set_queue(&QueueStats {
            queued: 12,
            scheduled: 5,
            held: 4,
            in_flight: 2,
            dead: 1,
            oldest_due_age_secs: 1.5,
        });
        let text = metrics.encode(ExpositionFormat::OpenMetrics);
        for (status, want) in [
            ("queued", 12.0),
            ("scheduled", 5.0),
            ("held", 4.0),
            ("in_flight", 2.0),
            ("dead", 1.0),
        ] {
            let series = format!("pushbridge_queue_jobs{{status=\"{status}\"}}");
            assert_eq!(sample(&text, &series), Some(want), "{series}\n{text}");
        }
    }
}
