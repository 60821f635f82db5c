//! Administration subcommands: apps, API keys, user auth, webhook sources, rules and
//! templates, against the configured store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::SpecCommand;
use crate::config::Config;
use crate::model::source::new_source;
use crate::service::specs::{put_spec, Spec};
use crate::signature::Scheme;
use crate::store::{KeyKind, SpecKind};
use crate::user_auth::{ClientUserIds, KeyAlgorithm};

/// What to do with apps.
#[derive(Subcommand)]
pub enum AppsCommand {
    /// Create an app; prints its id, a server key and a client key.
    Create {
        /// Display name.
        name: String,
    },
    /// List apps.
    List,
    /// Delete an app and everything it owns.
    Delete {
        /// App id.
        app_id: String,
    },
    /// Show the app's user-auth settings (the secret that proves device user ids, whether
    /// client keys must prove them, the public keys for JWT proofs), after applying any
    /// changes given.
    UserAuth(UserAuthArgs),
}

/// Options of `apps user-auth`.
#[derive(clap::Args)]
pub struct UserAuthArgs {
    /// App id.
    app_id: String,
    /// Replace the secret; proofs made with the old one stop working at once.
    #[arg(long)]
    rotate: bool,
    /// Whether client keys must prove the user ids they register.
    #[arg(long, value_enum)]
    client_user_ids: Option<PolicyArg>,
    /// Register a public key (SubjectPublicKeyInfo PEM file) for JWT proofs.
    #[arg(long, value_name = "PEM_FILE", requires = "algorithm")]
    add_key: Option<PathBuf>,
    /// Algorithm of the key given with --add-key.
    #[arg(long, value_enum, requires = "add_key")]
    algorithm: Option<AlgorithmArg>,
    /// Remove a public key by id.
    #[arg(long, value_name = "KEY_ID")]
    remove_key: Option<String>,
}

/// A value of a command-line option.
#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Verified,
    Unverified,
}

/// A value of a command-line option.
#[derive(Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    Es256,
    Rs256,
}

/// A value of a command-line option.
#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Server,
    Client,
}

/// What to do with API keys.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an additional key (for rotation).
    Create {
        /// App id.
        app_id: String,
        /// Key kind.
        #[arg(long, value_enum, default_value = "server")]
        kind: KindArg,
    },
    /// List an app's keys (ids only; secrets are never stored).
    List {
        /// App id.
        app_id: String,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id (the third part of the key).
        key_id: String,
    },
}

/// A value of a command-line option.
#[derive(Clone, Copy, ValueEnum)]
pub enum SchemeArg {
    StandardWebhooks,
    Github,
    Stripe,
    Generic,
    /// `generic` with the id and timestamp signed too (recommended over `generic`).
    #[value(name = "generic_v2")]
    GenericV2,
}

/// What to do with webhook sources.
#[derive(Subcommand)]
pub enum SourcesCommand {
    /// Create a webhook source; prints its URL path and secret.
    Create {
        /// App id.
        app_id: String,
        /// Source name (used in the webhook URL).
        name: String,
        /// Signature scheme.
        #[arg(long, value_enum)]
        scheme: SchemeArg,
        /// Secret to use (generated when absent).
        #[arg(long)]
        secret: Option<String>,
        /// JSON path of the event type in the body.
        #[arg(long)]
        event_type_path: Option<String>,
        /// Allowed client network (repeatable).
        #[arg(long = "allow")]
        allowed_cidrs: Vec<String>,
    },
    /// List an app's sources.
    List {
        /// App id.
        app_id: String,
    },
}

pub(super) async fn apps(command: AppsCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    match command {
        AppsCommand::Create { name } => {
            let created = store.create_app(&name).await?;
            println!("app_id:     {}", created.app.id);
            println!("server_key: {}", created.server_key);
            println!("client_key: {}", created.client_key);
            println!("user_auth_secret: {}", created.user_auth_secret);
            println!("(keys are shown once; only their hashes are stored)");
            println!("(the user-auth secret signs user ids on your backend; `apps user-auth` shows it again)");
        }
        AppsCommand::List => {
            for app in store.list_apps().await? {
                println!("{}\t{}", app.id, app.name);
            }
        }
        AppsCommand::Delete { app_id } => {
            anyhow::ensure!(store.delete_app(&app_id).await?, "no app {app_id}");
            println!("deleted {app_id}");
        }
        AppsCommand::UserAuth(args) => user_auth(&store, args).await?,
    }
    Ok(())
}

async fn user_auth(store: &crate::store::Store, args: UserAuthArgs) -> anyhow::Result<()> {
    let app_id = &args.app_id;
    anyhow::ensure!(store.get_app(app_id).await?.is_some(), "no app {app_id}");
    if let Some(policy) = args.client_user_ids {
        let policy = match policy {
            PolicyArg::Verified => ClientUserIds::Verified,
            PolicyArg::Unverified => ClientUserIds::Unverified,
        };
        store.set_client_user_ids(app_id, policy).await?;
    }
    if args.rotate {
        store.rotate_user_auth_secret(app_id).await?;
        println!("rotated the secret; proofs made with the old one no longer work");
    }
    if let (Some(file), Some(algorithm)) = (&args.add_key, args.algorithm) {
        let algorithm = match algorithm {
            AlgorithmArg::Es256 => KeyAlgorithm::ES256,
            AlgorithmArg::Rs256 => KeyAlgorithm::RS256,
        };
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let pem = crate::user_auth::check_public_key(algorithm, &text)?;
        let key = store
            .add_user_auth_key(app_id, algorithm, &pem)
            .await?
            .context("the app already has the most user-auth keys allowed; remove one first")?;
        println!("added key {}", key.id);
    }
    if let Some(key_id) = &args.remove_key {
        anyhow::ensure!(
            store.remove_user_auth_key(app_id, key_id).await?,
            "no user-auth key {key_id} in {app_id}"
        );
        println!("removed key {key_id}");
    }
    let settings = store
        .user_auth(app_id)
        .await?
        .with_context(|| format!("no app {app_id}"))?;
    println!("secret:          {}", settings.secret);
    println!("client_user_ids: {}", settings.client_user_ids.as_str());
    for key in &settings.public_keys {
        println!("key:             {}\t{}", key.id, key.algorithm.as_str());
    }
    Ok(())
}

pub(super) async fn keys(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    match command {
        KeysCommand::Create { app_id, kind } => {
            anyhow::ensure!(store.get_app(&app_id).await?.is_some(), "no app {app_id}");
            let kind = match kind {
                KindArg::Server => KeyKind::Server,
                KindArg::Client => KeyKind::Client,
            };
            println!("{}", store.create_key(&app_id, kind).await?);
        }
        KeysCommand::List { app_id } => {
            for key in store.list_keys(&app_id).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{:?}\t{state}", key.id, key.kind);
            }
        }
        KeysCommand::Revoke { key_id } => {
            anyhow::ensure!(store.revoke_key(&key_id).await?, "no active key {key_id}");
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

pub(super) async fn sources(command: SourcesCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    match command {
        SourcesCommand::Create {
            app_id,
            name,
            scheme,
            secret,
            event_type_path,
            allowed_cidrs,
        } => {
            anyhow::ensure!(store.get_app(&app_id).await?.is_some(), "no app {app_id}");
            let scheme = match scheme {
                SchemeArg::StandardWebhooks => Scheme::StandardWebhooks,
                SchemeArg::Github => Scheme::Github,
                SchemeArg::Stripe => Scheme::Stripe,
                SchemeArg::Generic => Scheme::Generic,
                SchemeArg::GenericV2 => Scheme::GenericV2,
            };
            let new = new_source(
                name,
                scheme,
                secret.into_iter().collect(),
                event_type_path,
                &allowed_cidrs,
            )?;
            let source = store.create_source(&app_id, &new).await?;
            println!("source:  {}", source.name);
            println!("url:     /v1/webhooks/{}/{}", app_id, source.name);
            for s in &source.secrets {
                println!("secret:  {}", s.secret);
            }
        }
        SourcesCommand::List { app_id } => {
            for s in store.list_sources(&app_id).await? {
                println!(
                    "{}\t{}\t{} secret(s)",
                    s.name,
                    s.scheme.as_str(),
                    s.secrets.len()
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn specs(
    kind: SpecKind,
    command: SpecCommand,
    config: &Config,
) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    match command {
        SpecCommand::Put { app_id, name, file } => {
            anyhow::ensure!(store.get_app(&app_id).await?.is_some(), "no app {app_id}");
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            // The API's own checks: name, parse, compile and sample-render, named template.
            let spec = Spec::parse(kind, &text)?;
            let (_, created) = put_spec(&store, &app_id, &name, &spec).await?;
            println!("{} {name}", if created { "created" } else { "updated" });
        }
        SpecCommand::List { app_id } => {
            for spec in store.list_specs(kind, &app_id).await? {
                println!("{}", spec.name);
            }
        }
        SpecCommand::Show { app_id, name } => {
            let spec = store
                .get_spec(kind, &app_id, &name)
                .await?
                .with_context(|| format!("no {name}"))?;
            let value: serde_json::Value = serde_json::from_str(&spec.spec)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        SpecCommand::Delete { app_id, name } => {
            anyhow::ensure!(store.delete_spec(kind, &app_id, &name).await?, "no {name}");
            println!("deleted {name}");
        }
    }
    Ok(())
}
