//! pushbridge: signed webhooks in, personalized APNs/FCM notifications out.
//!
//! `start` is the one entry point used by `main` and by the tests: it connects and migrates
//! the store, builds the router and serves it on the given listener until shut down. `bind`
//! makes that listener from the config (the tests bind port 0 themselves).

pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod push;
pub mod ratelimit;
pub mod redact;
pub mod secrets;
pub mod server;
pub mod service;
pub mod signature;
pub mod simulator;
pub mod state;
pub mod store;
pub mod telemetry;
mod tls;
pub mod user_auth;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::push::Providers;
use crate::state::AppState;
use crate::store::Store;
use crate::worker::{Wake, Worker};

/// Binds the configured API address with the configured backlog (the CLI's `serve` uses it;
/// tests bind port 0 themselves).
pub fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    server::bind(config.listen, &config.http)
}

/// A running bridge: its address, its state, and the handle to stop it.
pub struct Running {
    /// The address the API is bound to.
    pub addr: SocketAddr,
    /// Shared state (store, config, metrics), for tests and embedding.
    pub state: AppState,
    stop: watch::Sender<bool>,
    server: JoinHandle<anyhow::Result<()>>,
    workers: JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, then closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after `shutdown` or a fatal error), then lets the
    /// background loops finish or release their in-flight work, then closes the store.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = self.server.await.context("server task panicked")?;
        // The HTTP server may have stopped on an error; make sure the loops stop too.
        let _ = self.stop.send(true);
        while self.workers.join_next().await.is_some() {}
        self.state.store.close().await;
        result
    }

    /// Aborts the background loops without letting them record or release anything: what a
    /// crash does to in-flight work. For crash-recovery tests.
    pub fn crash_workers(&mut self) {
        self.workers.abort_all();
    }

    /// A handle that triggers shutdown from elsewhere (signal handlers).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Points APNs and FCM at a running provider simulator, using the test credentials in
/// `certs_dir` (the repository's `certs/`). Used by `serve --simulator` and by the tests.
pub fn use_simulator(
    config: &mut Config,
    sim: &simulator::SimulatorHandle,
    certs_dir: &std::path::Path,
) {
    use_simulator_at(config, &sim.apns_url(), &sim.fcm_url(), certs_dir);
}

/// [`use_simulator`] for a simulator running elsewhere (e.g. `pushbridge simulate` in another
/// process), given the base URLs it printed.
pub fn use_simulator_at(
    config: &mut Config,
    apns_url: &str,
    fcm_url: &str,
    certs_dir: &std::path::Path,
) {
    let ca = vec![certs_dir.join("ca.pem")];
    config.apns = push::ApnsConfig {
        enabled: true,
        endpoint: apns_url.to_string(),
        sandbox_endpoint: apns_url.to_string(),
        key_path: certs_dir.join(format!("AuthKey_{}.p8", simulator::TEST_KEY_ID)),
        key_id: simulator::TEST_KEY_ID.into(),
        team_id: simulator::TEST_TEAM_ID.into(),
        default_topic: Some("com.example.app".into()),
        extra_root_certs: ca.clone(),
        ..config.apns.clone()
    };
    config.fcm = push::FcmConfig {
        enabled: true,
        endpoint: fcm_url.to_string(),
        service_account_path: certs_dir.join("fcm-service-account.json"),
        token_uri: Some(format!("{fcm_url}/token")),
        extra_root_certs: ca,
        ..config.fcm.clone()
    };
}

/// Opens the configured store with the configured master key (see [`secrets::keyring_for`]),
/// migrates it and seals any secret still stored in plaintext.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let keyring = secrets::keyring_for(&config.secrets, &config.database_url)?;
    let made_key_file = match keyring.source() {
        secrets::KeySource::KeyFile {
            path,
            created: true,
        } => Some(path.clone()),
        _ => None,
    };
    let store = Store::connect(
        &config.database_url,
        config.database_max_connections,
        keyring,
    )
    .await?;
    if let Err(e) = store.migrate().await {
        // A key file made on this start has sealed nothing when the stored secrets need
        // another key: removing it lets the next start find the right one restored.
        if let (Some(path), Some(_)) = (&made_key_file, e.downcast_ref::<store::WrongKey>()) {
            let _ = std::fs::remove_file(path);
        }
        store.close().await;
        return Err(e);
    }
    Ok(store)
}

/// Starts the bridge on `listener` with `config`.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Running> {
    start_with(config, listener, StartOptions::default()).await
}

/// What a start may add to the config: parts a config file cannot name.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Told about every credential stored through this instance (as `serve --simulator`
    /// tells its simulator).
    pub credential_observer: Option<Arc<dyn service::credentials::CredentialObserver>>,
    /// The clock the store, the worker and the providers share (tests shift it).
    pub clock: clock::Clock,
}

/// Like [`start`], with `options`.
pub async fn start_with(
    config: Config,
    listener: TcpListener,
    options: StartOptions,
) -> anyhow::Result<Running> {
    let StartOptions {
        credential_observer: observer,
        clock,
    } = options;
    let store = open_store(&config).await?.with_clock(clock.clone());
    warn_unverified_apps(&store).await?;
    let providers = Arc::new(Providers::with_settings(
        &config.apns,
        &config.fcm,
        &config.providers,
        clock.clone(),
    )?);
    // Before any send: an app with its own key must never send with the default one.
    let (_, credentials) = store.all_credentials().await?;
    providers.sync(&credentials);
    if let Some(observer) = &observer {
        credentials.iter().flatten().for_each(|c| observer.saved(c));
    }
    let state = AppState::new(state::Shared {
        config: Arc::new(config),
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        wake: Wake::default(),
        providers: providers.clone(),
        breakers: Arc::default(),
        policies: Arc::default(),
        events: store::EventWriter::spawn(store.clone()),
        limiter: Default::default(),
        credential_observer: observer,
    });
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut workers = if state.config.worker.enabled {
        Worker::new(&state)?.spawn(stopped.clone())
    } else {
        JoinSet::new()
    };
    workers.spawn(memory::trim_loop(
        state.config.memory.clone(),
        stopped.clone(),
    ));
    let app = http::router(state.clone());
    let acceptor = match &state.config.tls {
        None => None,
        Some(tls) => Some(tls::acceptor(&tls.cert_path, &tls.key_path)?),
    };
    let config = state.config.clone();
    let server = tokio::spawn(async move {
        server::serve(listener, acceptor, app, &config.http, stopped)
            .await
            .context("HTTP server failed")
    });
    tracing::info!(%addr, tls = state.config.tls.is_some(), "pushbridge listening");
    Ok(Running {
        addr,
        state,
        stop,
        server,
        workers,
    })
}

/// Apps that let client keys set any user id (apps that existed before user verification)
/// are a risk their operators should hear about on every start.
async fn warn_unverified_apps(store: &Store) -> anyhow::Result<()> {
    let unverified = store.count_unverified_apps().await?;
    if unverified > 0 {
        tracing::warn!(
            apps = unverified,
            "some apps accept client-key device registrations for any user id without proof \
             (client_user_ids = unverified); see the README's \"Verified user ids\""
        );
    }
    Ok(())
}
