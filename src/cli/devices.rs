//! `pushbridge devices import` and `export`: the bulk transfer of `POST /v1/devices/import`
//! and `GET /v1/devices/export`, straight against the database (`service::device_import`),
//! so a large file is not bound by the API's body deadline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::model::device::DeviceState;
use crate::service::device_import::{DeviceLine, Importer};

/// What to do with devices.
#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Import NDJSON registrations (one `{"token", "platform", ...}` per line); prints the
    /// report as JSON.
    Import {
        /// App id.
        #[arg(long)]
        app: String,
        /// NDJSON file (`-` for stdin).
        file: PathBuf,
    },
    /// Print the app's devices as NDJSON, in the form `import` takes.
    Export {
        /// App id.
        #[arg(long)]
        app: String,
        /// Only devices in this state.
        #[arg(long, default_value = "active")]
        state: String,
    },
}

/// Runs a `devices` subcommand.
pub async fn run(command: DevicesCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    match command {
        DevicesCommand::Import { app, file } => {
            if store.get_app(&app).await?.is_none() {
                anyhow::bail!("no app {app}");
            }
            let mut input: Box<dyn tokio::io::AsyncRead + Unpin> = if file.as_os_str() == "-" {
                Box::new(tokio::io::stdin())
            } else {
                Box::new(
                    tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("opening {}", file.display()))?,
                )
            };
            let mut importer = Importer::new(&store, &app, &config.devices);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = input.read(&mut buf).await.context("reading the input")?;
                if n == 0 {
                    break;
                }
                importer.feed(&buf[..n]).await?;
            }
            let report = importer.finish().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        DevicesCommand::Export { app, state } => {
            let state: DeviceState = serde_json::from_value(serde_json::Value::String(state))
                .context("--state must be active, suspect or pruned")?;
            let mut after: Option<String> = None;
            loop {
                let page = store
                    .devices_in_state(&app, state, after.as_deref(), 1_000)
                    .await?;
                let mut out = Vec::with_capacity(page.len() * 256);
                for device in &page {
                    serde_json::to_writer(&mut out, &DeviceLine::of(device))?;
                    out.push(b'\n');
                }
                std::io::stdout().write_all(&out)?;
                if page.len() < 1_000 {
                    break;
                }
                after = page.last().map(|d| d.token.clone());
            }
            std::io::stdout().flush()?;
            Ok(())
        }
    }
}
