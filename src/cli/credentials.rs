//! `pushbridge credentials`: an app's own APNs key and FCM service account. Running bridges
//! use a change from their next send on (within `providers.credentials_refresh_ms`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::model::{ApnsEnvironment, Platform};
use crate::push::{ApnsCredential, CredentialKey};
use crate::service::credentials::{self, Upload};
use crate::store::rfc3339;

/// What to do with an app's provider credentials.
#[derive(Subcommand)]
pub enum CredentialsCommand {
    /// Send to APNs with the app's own token-signing key (.p8).
    SetApns {
        /// App id.
        app_id: String,
        /// The .p8 key file.
        #[arg(long)]
        key_file: PathBuf,
        /// The key's 10-character id.
        #[arg(long)]
        key_id: String,
        /// The 10-character team id.
        #[arg(long)]
        team_id: String,
        /// Topic (bundle id) for devices registered without one.
        #[arg(long)]
        topic: Option<String>,
        /// Limit the key to one environment: production or sandbox.
        #[arg(long)]
        environment: Option<ApnsEnvironment>,
    },
    /// Send to FCM with the app's own service account (its JSON key file).
    SetFcm {
        /// App id.
        app_id: String,
        /// The service account's JSON key file.
        #[arg(long)]
        service_account: PathBuf,
    },
    /// Print the app's own credentials (never their private keys) and their state.
    Show {
        /// App id.
        app_id: String,
    },
    /// Remove the app's own credential for a provider; it uses the config file's again.
    Delete {
        /// App id.
        app_id: String,
        /// apns or fcm.
        provider: Platform,
    },
}

/// Runs a `credentials` subcommand.
pub async fn run(command: CredentialsCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let result = match command {
        CredentialsCommand::SetApns {
            app_id,
            key_file,
            key_id,
            team_id,
            topic,
            environment,
        } => {
            let private_key = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let upload = Upload::Apns(ApnsCredential {
                key_id,
                team_id,
                private_key,
                default_topic: topic,
                environment,
            });
            let stored = credentials::put(&store, &app_id, upload).await?;
            println!(
                "stored the APNs key of app {app_id} ({})",
                stored.fingerprint
            );
            Ok(())
        }
        CredentialsCommand::SetFcm {
            app_id,
            service_account,
        } => {
            let text = std::fs::read_to_string(&service_account)
                .with_context(|| format!("reading {}", service_account.display()))?;
            let file: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON key file", service_account.display()))?;
            let stored = credentials::put(&store, &app_id, Upload::Fcm(file)).await?;
            println!(
                "stored the FCM service account of app {app_id} ({})",
                stored.fingerprint
            );
            Ok(())
        }
        CredentialsCommand::Show { app_id } => show(&store, &app_id).await,
        CredentialsCommand::Delete { app_id, provider } => {
            credentials::delete(&store, &app_id, provider).await?;
            println!(
                "removed the {} credential of app {app_id}; it uses the config file's again",
                provider.as_str()
            );
            Ok(())
        }
    };
    store.close().await;
    result
}

async fn show(store: &crate::store::Store, app_id: &str) -> anyhow::Result<()> {
    if store.get_app(app_id).await?.is_none() {
        anyhow::bail!("no app {app_id}");
    }
    let own = store.app_credentials(app_id).await?;
    let breakers = store.breakers().await?;
    for provider in [Platform::Apns, Platform::Fcm] {
        let state = match breakers
            .iter()
            .find(|b| b.app_id == app_id && b.provider == provider)
        {
            Some(b) => format!("failing since {}: {}", rfc3339(b.since), b.reason),
            None => "ok".to_string(),
        };
        match own.iter().find(|c| c.key.platform() == provider) {
            Some(c) => {
                let what = match &c.key {
                    CredentialKey::Apns(k) => format!(
                        "key {} team {} topic {} environment {}",
                        k.key_id,
                        k.team_id,
                        k.default_topic.as_deref().unwrap_or("-"),
                        k.environment.map_or("both", |e| e.as_str())
                    ),
                    CredentialKey::Fcm(k) => format!(
                        "project {} account {}",
                        k.account.project_id, k.account.client_email
                    ),
                };
                println!(
                    "{}: {what} ({}, set {}); {state}",
                    provider.as_str(),
                    c.fingerprint,
                    rfc3339(c.updated_at)
                );
            }
            None => println!("{}: the config file's default; {state}", provider.as_str()),
        }
    }
    Ok(())
}
