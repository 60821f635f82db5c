//! The command line: run the bridge or the simulator, migrate, administer apps, keys,
//! sources, rules, templates (and their previews) and provider credentials, and seal stored
//! secrets again under a new master key.
//! Subcommands call the use cases in `crate::service`, the same ones the HTTP API calls, so
//! both refuse the same input with the same messages.

mod admin;
mod credentials;
mod devices;
mod endpoints;
mod secrets;
mod templates;
mod webhooks;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::model::rules::{Audience, TemplateRef};
use crate::model::template::TemplateSpec;
use crate::service;
use crate::store::SpecKind;

/// The command line.
#[derive(Parser)]
#[command(
    name = "pushbridge",
    version,
    about = "Signed webhooks in, personalized APNs/FCM pushes out"
)]
pub struct Cli {
    /// Config file (TOML). Defaults to ./pushbridge.toml when present.
    #[arg(long, global = true, env = "PUSHBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do; `serve` when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// Run the bridge (the default).
    Serve(ServeArgs),
    /// Run only the APNs/FCM provider simulator.
    Simulate(crate::simulator::SimulateArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage apps.
    Apps {
        #[command(subcommand)]
        command: admin::AppsCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
    },
    /// Manage webhook sources.
    Sources {
        #[command(subcommand)]
        command: admin::SourcesCommand,
    },
    /// Manage rules (JSON specs, as for PUT /v1/rules/{name}).
    Rules {
        #[command(subcommand)]
        command: SpecCommand,
    },
    /// Manage templates (JSON specs, as for PUT /v1/templates/{name}) and preview them.
    Templates {
        #[command(subcommand)]
        command: templates::TemplatesCommand,
    },
    /// Queue a test push to a user's devices (a running bridge delivers it).
    Send {
        /// App id.
        #[arg(long)]
        app: String,
        /// User id.
        #[arg(long)]
        user: String,
        /// Title.
        #[arg(long)]
        title: String,
        /// Body.
        #[arg(long, default_value = "Test notification from pushbridge")]
        body: String,
    },
    /// Manage an app's own provider credentials (APNs key, FCM service account).
    Credentials {
        #[command(subcommand)]
        command: credentials::CredentialsCommand,
    },
    /// Manage an app's event endpoints (signed outbound webhooks).
    Endpoints {
        #[command(subcommand)]
        command: endpoints::EndpointsCommand,
    },
    /// Maintain the secrets stored sealed under the master key.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Import or export devices as NDJSON.
    Devices {
        #[command(subcommand)]
        command: devices::DevicesCommand,
    },
    /// Send test webhooks.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Print delivery stats (5 min, 1 h, 24 h).
    Stats {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
    },
}

/// What to do with rules or templates.
#[derive(Subcommand)]
pub enum SpecCommand {
    /// Create or replace from a JSON file (`-` for stdin).
    Put {
        /// App id.
        app_id: String,
        /// Name.
        name: String,
        /// JSON spec file.
        file: PathBuf,
    },
    /// List names.
    List {
        /// App id.
        app_id: String,
    },
    /// Print one spec.
    Show {
        /// App id.
        app_id: String,
        /// Name.
        name: String,
    },
    /// Delete one.
    Delete {
        /// App id.
        app_id: String,
        /// Name.
        name: String,
    },
}

/// Options of `serve`.
#[derive(clap::Args, Default)]
pub struct ServeArgs {
    /// Also start the provider simulator and send to it, with the test credentials in
    /// --certs-dir: end-to-end pushes without Apple or Google accounts.
    #[arg(long)]
    simulator: bool,
    /// Directory with the simulator's test certificates and keys.
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
}

/// Runs a subcommand (`serve` when none is given) to completion.
pub async fn run(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    let command = command.unwrap_or_else(|| {
        Command::Serve(ServeArgs {
            certs_dir: PathBuf::from("certs"),
            ..ServeArgs::default()
        })
    });
    match command {
        Command::Serve(args) => serve(config, args).await,
        Command::Simulate(args) => crate::simulator::run_cli(args).await,
        Command::Migrate => {
            crate::open_store(&config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Apps { command } => admin::apps(command, &config).await,
        Command::Keys { command } => admin::keys(command, &config).await,
        Command::Sources { command } => admin::sources(command, &config).await,
        Command::Secrets { command } => secrets::run(command, &config).await,
        Command::Credentials { command } => credentials::run(command, &config).await,
        Command::Endpoints { command } => endpoints::run(command, &config).await,
        Command::Rules { command } => admin::specs(SpecKind::Rule, command, &config).await,
        Command::Templates { command } => templates::run(command, &config).await,
        Command::Send {
            app,
            user,
            title,
            body,
        } => {
            let store = crate::open_store(&config).await?;
            let template = TemplateSpec {
                title: Some(title),
                body: Some(body),
                ..TemplateSpec::default()
            };
            let events = crate::store::EventWriter::spawn(store.clone());
            let id = service::sends::enqueue_direct(
                &store,
                &events,
                &app,
                service::sends::DirectSend {
                    audience: Audience::Users(vec![user]),
                    template: TemplateRef::Inline(Box::new(template)),
                    data: Default::default(),
                    event_type: Some("notification.test".into()),
                    delivery: Default::default(),
                },
            )
            .await?;
            println!("queued event {id}");
            Ok(())
        }
        Command::Stats { app } => stats(app.as_deref(), &config).await,
        Command::Webhooks { command } => webhooks::run(command, &config).await,
        Command::Devices { command } => devices::run(command, &config).await,
    }
}

/// `pushbridge stats`: the windows' figures, then the queue.
async fn stats(app: Option<&str>, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let now = store.now();
    println!(
        "{:<6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7}",
        "window", "finished", "success", "avg ms", "p95 ms", "attempts", "pruned"
    );
    for (name, w) in service::stats::windows(&store, app, now).await? {
        println!(
            "{:<6} {:>9} {:>8.1}% {:>8.0} {:>8} {:>8} {:>7}",
            name,
            w.finished,
            w.success_rate * 100.0,
            w.avg_latency_ms,
            w.p95_latency_ms,
            w.attempts,
            w.pruned_tokens
        );
        for f in w.failures.iter().take(5) {
            println!("         {} {}: {}", f.outcome.as_str(), f.reason, f.count);
        }
        if w.capped + w.superseded + w.expired + w.cancelled > 0 {
            println!(
                "         not sent (policy): {} capped, {} superseded, {} expired, {} cancelled",
                w.capped, w.superseded, w.expired, w.cancelled
            );
        }
    }
    let q = store.queue_stats(app, now).await?;
    println!(
        "queue: {} queued ({} scheduled, {} held for quiet hours), {} in flight, {} dead, \
         oldest due {:.1}s",
        q.queued, q.scheduled, q.held, q.in_flight, q.dead, q.oldest_due_age_secs
    );
    Ok(())
}

async fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    let simulator = if args.simulator {
        let sim_config = crate::simulator::SimulatorConfig::with_certs_dir(&args.certs_dir);
        let sim = crate::simulator::start(sim_config)
            .await
            .context("starting the provider simulator")?;
        crate::use_simulator(&mut config, &sim, &args.certs_dir);
        tracing::info!(apns = %sim.apns_url(), fcm = %sim.fcm_url(), "provider simulator running; APNs and FCM point at it");
        Some(sim)
    } else {
        None
    };
    let observer = simulator.as_ref().map(|sim| {
        std::sync::Arc::new(sim.registrar())
            as std::sync::Arc<dyn crate::service::credentials::CredentialObserver>
    });
    let listener = crate::bind(&config)?;
    let options = crate::StartOptions {
        credential_observer: observer,
        ..Default::default()
    };
    let running = crate::start_with(config, listener, options).await?;
    let stopper = running.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stopper.send(true);
    });
    running.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
