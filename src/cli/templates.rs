//! `pushbridge templates`: the spec commands it shares with `rules`, and `preview`, which
//! prints what `POST /v1/templates/{name}/preview` answers, straight against the database
//! and with the senders the config file and the app's stored credentials give.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Subcommand};
use serde_json::{Map, Value};

use super::SpecCommand;
use crate::config::Config;
use crate::push::Providers;
use crate::service::device_import::DeviceLine;
use crate::service::preview::{preview, PreviewRequest};
use crate::store::{SpecKind, Store};

/// What to do with templates.
#[derive(Subcommand)]
pub enum TemplatesCommand {
    #[command(flatten)]
    Spec(SpecCommand),
    /// Print the exact APNs or FCM request a device would get for an event, as JSON
    /// (nothing is stored or sent).
    Preview(PreviewArgs),
}

/// Options of `templates preview`.
#[derive(clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["token", "device"])))]
pub struct PreviewArgs {
    /// App id.
    app_id: String,
    /// Template name.
    name: String,
    /// The event payload, a JSON object (templates see it under `event`); `{}` when absent.
    #[arg(long, value_name = "JSON", conflicts_with = "event_file")]
    event: Option<String>,
    /// Read the event payload from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    event_file: Option<PathBuf>,
    /// Event type (`event.type` when the payload has none; default `preview`).
    #[arg(long)]
    event_type: Option<String>,
    /// A registered device's token.
    #[arg(long)]
    token: Option<String>,
    /// A device given inline, not stored: JSON as a line of `devices import`.
    #[arg(long, value_name = "JSON")]
    device: Option<String>,
}

/// Runs a `templates` subcommand.
pub async fn run(command: TemplatesCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        TemplatesCommand::Spec(command) => {
            super::admin::specs(SpecKind::Template, command, config).await
        }
        TemplatesCommand::Preview(args) => {
            // Malformed input is refused before the database is opened.
            let request = request_of(&args)?;
            let store = crate::open_store(config).await?;
            let result = show(&store, config, &args.app_id, &args.name, request).await;
            store.close().await;
            result
        }
    }
}

async fn show(
    store: &Store,
    config: &Config,
    app_id: &str,
    name: &str,
    request: PreviewRequest,
) -> anyhow::Result<()> {
    anyhow::ensure!(store.get_app(app_id).await?.is_some(), "no app {app_id}");
    let providers = senders(store, config, app_id).await?;
    let shown = preview(store, &providers, &config.devices, app_id, name, request)
        .await
        .with_context(|| format!("previewing template {name} of app {app_id}"))?;
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// The app's senders as `serve` builds them: its own stored credentials, else the config
/// file's; one that cannot be read refuses the preview as it would refuse a send.
async fn senders(store: &Store, config: &Config, app_id: &str) -> anyhow::Result<Providers> {
    let providers = Providers::with_settings(
        &config.apns,
        &config.fcm,
        &config.providers,
        store.clock().clone(),
    )?;
    let (_, all) = store.all_credentials().await?;
    let own: Vec<_> = all
        .into_iter()
        .filter(|c| match c {
            Ok(c) => c.app_id == app_id,
            Err(unusable) => unusable.app_id == app_id,
        })
        .collect();
    providers.sync(&own);
    Ok(providers)
}

fn request_of(args: &PreviewArgs) -> anyhow::Result<PreviewRequest> {
    let event = match (&args.event, &args.event_file) {
        (Some(text), _) => parse_event(text, "--event")?,
        (None, Some(file)) => {
            parse_event(&read(file)?, &format!("--event-file {}", file.display()))?
        }
        (None, None) => Map::new(),
    };
    let device = args
        .device
        .as_deref()
        .map(|text| {
            serde_json::from_str::<DeviceLine>(text)
                .context("--device: not a device (a JSON object as a line of `devices import`)")
        })
        .transpose()?;
    Ok(PreviewRequest {
        token: args.token.clone(),
        device,
        event,
        event_type: args.event_type.clone(),
    })
}

fn parse_event(text: &str, what: &str) -> anyhow::Result<Map<String, Value>> {
    serde_json::from_str(text).with_context(|| format!("{what}: not a JSON object"))
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the event from stdin")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}
