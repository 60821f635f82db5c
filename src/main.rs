//! The `pushbridge` command: parse the command line, load the config, start logging (and
//! trace export when configured), and hand over to the CLI.

use anyhow::Context;
use clap::Parser;
use pushbridge::cli::Cli;
use pushbridge::config::{Config, LogFormat};
use pushbridge::telemetry::{self, Telemetry};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let telemetry = Telemetry::start(&config.telemetry, runtime.handle())?;
    init_tracing(config.log_format, telemetry.as_ref());
    if let Some(t) = &telemetry {
        tracing::info!(
            endpoint = t.endpoint(),
            "telemetry: exporting traces over OTLP"
        );
    }
    let result = runtime.block_on(pushbridge::cli::run(cli.command, config));
    // After the runtime's work and before the runtime goes: the last spans are sent on it.
    if let Some(t) = telemetry {
        t.shutdown();
    }
    result
}

/// Log lines to stderr, filtered by `RUST_LOG`; and, with telemetry, the trace spans (and only
/// those) to the exporter. The log never shows trace spans, so its lines are the same either
/// way.
fn init_tracing(format: LogFormat, telemetry: Option<&Telemetry>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_trace_spans = filter_fn(|meta| meta.target() != telemetry::SPANS);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let traces = telemetry.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_filter(filter_fn(|meta| {
                meta.is_span() && meta.target() == telemetry::SPANS
            }))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter.and(not_trace_spans)))
        .with(traces)
        .init();
}
