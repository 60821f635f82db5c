//! OpenTelemetry traces (off unless `telemetry.otlp_endpoint` is set): the `[telemetry]`
//! config, the tracer that exports over OTLP/HTTP, the target that marks the bridge's trace
//! spans, and the W3C `traceparent` an event and its jobs carry so that accept, fan-out and
//! every provider send form one trace across tasks, instances and restarts.
//!
//! Spans are plain `tracing` spans with target [`SPANS`]. The log output never shows them,
//! and while no exporter runs nothing enables them, so they cost a disabled callsite check.
//! Their fields become span attributes: ids, types, platforms and outcomes only, never a
//! token, a secret or a payload.

mod export;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span meant for traces (`tracing::info_span!(target: SPANS, ...)`).
pub const SPANS: &str = "pushbridge::trace";

/// The W3C header name the context is stored under.
const TRACEPARENT: &str = "traceparent";

/// Where and how traces are exported.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`); spans are posted to
    /// `{url}/v1/traces`. Unset: no traces are made or exported.
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces kept (0 to 1); the spans of a kept trace are all kept.
    pub sample_ratio: f64,
    /// Longest wait before finished spans are exported in a batch.
    pub batch_delay_ms: u64,
    /// Time allowed for one export request.
    pub export_timeout_ms: u64,
    /// Extra trusted CA files (PEM) for an https collector.
    pub extra_root_certs: Vec<PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "pushbridge".into(),
            sample_ratio: 1.0,
            batch_delay_ms: 5000,
            export_timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
        }
    }
}

impl TelemetryConfig {
    /// Checks the settings; the error reads `field: why`.
    pub fn validate(&self) -> Result<(), String> {
        if self.service_name.trim().is_empty() {
            return Err("telemetry.service_name: must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("telemetry.sample_ratio: must be between 0 and 1".into());
        }
        for (field, value) in [
            ("telemetry.batch_delay_ms", self.batch_delay_ms),
            ("telemetry.export_timeout_ms", self.export_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{field}: must be at least 1"));
            }
        }
        for path in &self.extra_root_certs {
            if !path.exists() {
                return Err(format!(
                    "telemetry.extra_root_certs: file {} does not exist",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// A collector's base URL: `http` or `https`, with a host, without query or fragment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OtlpEndpoint(http::Uri);

impl OtlpEndpoint {
    /// The URL spans are posted to: the base's path followed by `/v1/traces`.
    pub fn traces_url(&self) -> String {
        let base = self.0.to_string();
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("`{text}` must start with http:// or https://"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{text}` has no host"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!(
                "`{text}` must be a base URL without query or fragment"
            ));
        }
        Ok(Self(uri))
    }
}

impl From<OtlpEndpoint> for String {
    fn from(endpoint: OtlpEndpoint) -> String {
        endpoint.0.to_string()
    }
}

/// The running exporter: its tracer for the `tracing` layer, and the flush at exit.
pub struct Telemetry {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Telemetry {
    /// Starts exporting when `config` names a collector; `None` when traces are off. Exports
    /// run on `runtime`, which must outlive [`Telemetry::shutdown`].
    pub fn start(
        config: &TelemetryConfig,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let url = endpoint.traces_url();
        let client =
            export::CollectorClient::new(runtime.clone(), &config.extra_root_certs, timeout)
                .context("telemetry: setting up the collector's client")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(timeout)
            .build()
            .context("telemetry: building the OTLP exporter")?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(config.batch_delay_ms))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Some(Self {
            provider,
            endpoint: url,
        }))
    }

    /// The tracer the `tracing-opentelemetry` layer turns [`SPANS`] spans into spans with.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("pushbridge")
    }

    /// Where spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports the spans still waiting, then stops. Call outside the runtime's tasks.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry: flushing the last spans failed");
        }
    }
}

/// The W3C `traceparent` of `span` when it is part of a sampled trace; `None` while traces
/// are off (the span is disabled), so nothing is stored then.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names. A missing or malformed value leaves
/// the span a root of its own trace. Call before the span is first entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|_| !span.is_disabled()) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started, which callers rule out.
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_off_by_default() {
        let config = TelemetryConfig::default();
        assert!(config.otlp_endpoint.is_none());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let started = Telemetry::start(&config, runtime.handle()).expect("start");
        assert!(started.is_none(), "no exporter without an endpoint");
    }

    #[test]
    fn endpoints_must_be_http_base_urls() {
        let ok = OtlpEndpoint::try_from("http://127.0.0.1:4318".to_string()).expect("valid");
        assert_eq!(ok.traces_url(), "http://127.0.0.1:4318/v1/traces");
        let with_path = OtlpEndpoint::try_from("https://c.example/otlp/".to_string()).expect("ok");
        assert_eq!(with_path.traces_url(), "https://c.example/otlp/v1/traces");
        for bad in [
            "collector:4318",
            "ftp://c.example",
            "not a url",
            "http://c.example/?a=1",
            "",
        ] {
            assert!(
                OtlpEndpoint::try_from(bad.to_string()).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn a_stored_traceparent_makes_the_next_span_its_child() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let accept = tracing::info_span!(target: SPANS, "accept");
            let stored = traceparent(&accept).expect("a sampled span has a context");
            let parts: Vec<&str> = stored.split('-').collect();
            assert_eq!(parts.len(), 4, "{stored}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{stored}");
            drop(accept);
            // Another task, or another process after a restart: only the text is left.
            let send = tracing::info_span!(target: SPANS, "send");
            continue_trace(&send, Some(&stored));
            let child = traceparent(&send).expect("context");
            let child: Vec<&str> = child.split('-').collect();
            assert_eq!(child[1], parts[1], "same trace");
            assert_ne!(child[2], parts[2], "a span of its own");
            let orphan = tracing::info_span!(target: SPANS, "orphan");
            continue_trace(&orphan, Some("not a traceparent"));
            let orphan = traceparent(&orphan).expect("context");
            assert_ne!(
                orphan.split('-').nth(1),
                Some(parts[1]),
                "a trace of its own"
            );
        });
    }

    #[test]
    fn a_disabled_span_carries_no_context() {
        let span = tracing::Span::none();
        assert_eq!(traceparent(&span), None);
        continue_trace(
            &span,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(traceparent(&span), None);
    }
}
