//! The `pushbridge` command: serve, migrate, and administer apps, keys and sources.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pushbridge::config::{Config, LogFormat};
use pushbridge::http::notifications::enqueue_direct;
use pushbridge::rules::{Audience, RuleSpec, TemplateRef};
use pushbridge::store::{KeyKind, Scheme, SpecKind};
use pushbridge::template::TemplateSpec;
use pushbridge::user_auth::{ClientUserIds, KeyAlgorithm};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pushbridge",
    version,
    about = "Signed webhooks in, personalized APNs/FCM pushes out"
)]
struct Cli {
    /// Config file (TOML). Defaults to ./pushbridge.toml when present.
    #[arg(long, global = true, env = "PUSHBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Serve(ServeArgs),
    /// Run only the APNs/FCM provider simulator.
    Simulate(pushbridge::simulator::SimulateArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage apps.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage webhook sources.
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
    },
    /// Manage rules (JSON specs, as for PUT /v1/rules/{name}).
    Rules {
        #[command(subcommand)]
        command: SpecCommand,
    },
    /// Manage templates (JSON specs, as for PUT /v1/templates/{name}).
    Templates {
        #[command(subcommand)]
        command: SpecCommand,
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
    /// Print delivery stats (5 min, 1 h, 24 h).
    Stats {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
enum SpecCommand {
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

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Also start the provider simulator and send to it, with the test credentials in
    /// --certs-dir: end-to-end pushes without Apple or Google accounts.
    #[arg(long)]
    simulator: bool,
    /// Directory with the simulator's test certificates and keys.
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
}

#[derive(Subcommand)]
enum AppsCommand {
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

#[derive(clap::Args)]
struct UserAuthArgs {
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

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Verified,
    Unverified,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Es256,
    Rs256,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Server,
    Client,
}

#[derive(Subcommand)]
enum KeysCommand {
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

#[derive(Clone, Copy, ValueEnum)]
enum SchemeArg {
    StandardWebhooks,
    Github,
    Stripe,
    Generic,
}

#[derive(Subcommand)]
enum SourcesCommand {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(
        cli.command.unwrap_or(Command::Serve(ServeArgs {
            certs_dir: PathBuf::from("certs"),
            ..ServeArgs::default()
        })),
        config,
    ))
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(config, args).await,
        Command::Simulate(args) => pushbridge::simulator::run_cli(args).await,
        Command::Migrate => {
            pushbridge::open_store(&config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Apps { command } => apps(command, &config).await,
        Command::Keys { command } => keys(command, &config).await,
        Command::Sources { command } => sources(command, &config).await,
        Command::Rules { command } => specs(SpecKind::Rule, command, &config).await,
        Command::Templates { command } => specs(SpecKind::Template, command, &config).await,
        Command::Send {
            app,
            user,
            title,
            body,
        } => {
            let store = pushbridge::open_store(&config).await?;
            let template = TemplateSpec {
                title: Some(title),
                body: Some(body),
                ..TemplateSpec::default()
            };
            let id = enqueue_direct(
                &store,
                &app,
                Audience::Users(vec![user]),
                TemplateRef::Inline(Box::new(template)),
                Default::default(),
                Some("notification.test".into()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("queued event {id}");
            Ok(())
        }
        Command::Stats { app } => {
            let store = pushbridge::open_store(&config).await?;
            let now = pushbridge::store::now_ms();
            println!(
                "{:<6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7}",
                "window", "finished", "success", "avg ms", "p95 ms", "attempts", "pruned"
            );
            for (name, secs) in pushbridge::http::WINDOWS {
                let w = store.window_stats(app.as_deref(), now, secs).await?;
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
                    println!("         {} {}: {}", f.outcome, f.reason, f.count);
                }
            }
            let q = store.queue_stats(app.as_deref(), now).await?;
            println!(
                "queue: {} queued, {} in flight, {} dead, oldest due {:.1}s",
                q.queued, q.in_flight, q.dead, q.oldest_due_age_secs
            );
            Ok(())
        }
    }
}

async fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    let _simulator = if args.simulator {
        let sim_config = pushbridge::simulator::SimulatorConfig::with_certs_dir(&args.certs_dir);
        let sim = pushbridge::simulator::start(sim_config)
            .await
            .context("starting the provider simulator")?;
        pushbridge::use_simulator(&mut config, &sim, &args.certs_dir);
        tracing::info!(apns = %sim.apns_url(), fcm = %sim.fcm_url(), "provider simulator running; APNs and FCM point at it");
        Some(sim)
    } else {
        None
    };
    let listener = pushbridge::bind(&config)?;
    let running = pushbridge::start(config, listener).await?;
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

async fn apps(command: AppsCommand, config: &Config) -> anyhow::Result<()> {
    let store = pushbridge::open_store(config).await?;
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

async fn user_auth(store: &pushbridge::store::Store, args: UserAuthArgs) -> anyhow::Result<()> {
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
        let pem = pushbridge::user_auth::check_public_key(algorithm, &text)?;
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

async fn keys(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    let store = pushbridge::open_store(config).await?;
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

async fn sources(command: SourcesCommand, config: &Config) -> anyhow::Result<()> {
    let store = pushbridge::open_store(config).await?;
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
            };
            let new = pushbridge::http::sources::new_source(
                name,
                scheme,
                secret.into_iter().collect(),
                event_type_path,
                &allowed_cidrs,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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

async fn specs(kind: SpecKind, command: SpecCommand, config: &Config) -> anyhow::Result<()> {
    let store = pushbridge::open_store(config).await?;
    match command {
        SpecCommand::Put { app_id, name, file } => {
            anyhow::ensure!(store.get_app(&app_id).await?.is_some(), "no app {app_id}");
            pushbridge::http::sources::validate_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            // Same checks as the API: parse, compile templates, validate rules.
            let normalized = match kind {
                SpecKind::Template => {
                    let spec: TemplateSpec = serde_json::from_str(&text)?;
                    spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                    serde_json::to_string(&spec)?
                }
                SpecKind::Rule => {
                    let spec: RuleSpec = serde_json::from_str(&text)?;
                    spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                    if let TemplateRef::Named(t) = &spec.template {
                        anyhow::ensure!(
                            store
                                .get_spec(SpecKind::Template, &app_id, t)
                                .await?
                                .is_some(),
                            "no template named {t}"
                        );
                    }
                    serde_json::to_string(&spec)?
                }
            };
            let (_, created) = store.put_spec(kind, &app_id, &name, &normalized).await?;
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
