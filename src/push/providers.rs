//! The senders: one per provider credential. An app that uploaded its own APNs key or FCM
//! service account sends with it; every other app shares the config file's default. Each
//! sender owns its connection pools (APNs per key and host, FCM per project), which open on
//! first use, close when idle, and share one cap on open provider connections.
//!
//! The registry is in memory and is kept in step with the database by the worker (see
//! `worker::credentials`); a send never reads the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::apns::{ApnsConfig, ApnsSender};
use super::credentials::{
    apns_fingerprint, fcm_fingerprint, ApnsCredential, FcmCredential, Fingerprint,
};
use super::fcm::{FcmConfig, FcmSender};
use super::outcome::Outcome;
use super::pool::{ConnectionCap, PoolStats, FIRST_GUESS_STREAMS};
use super::target::Target;
use crate::clock::Clock;
use crate::model::{Notification, Platform};

/// Settings shared by every sender: the connection cap, idle closing, and how often
/// instances look for changed credentials.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Most provider connections open at once, over all credentials and hosts.
    pub max_connections: usize,
    /// A connection no send used for this long is closed.
    pub idle_close_secs: u64,
    /// How often an instance checks the database for changed credentials (a change made
    /// through this instance applies at once).
    pub credentials_refresh_ms: u64,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            max_connections: 512,
            idle_close_secs: 300,
            credentials_refresh_ms: 1000,
        }
    }
}

impl ProvidersConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_connections) {
            return Err("providers.max_connections: must be between 1 and 100000".into());
        }
        if self.idle_close_secs == 0 {
            return Err("providers.idle_close_secs: must be positive".into());
        }
        if !(10..=600_000).contains(&self.credentials_refresh_ms) {
            return Err("providers.credentials_refresh_ms: must be between 10 and 600000".into());
        }
        Ok(())
    }
}

/// The key material of one stored credential.
#[derive(Clone, Debug)]
pub enum CredentialKey {
    /// An APNs token-signing key.
    Apns(ApnsCredential),
    /// An FCM service account.
    Fcm(FcmCredential),
}

impl CredentialKey {
    /// The provider it is for.
    pub fn platform(&self) -> Platform {
        match self {
            Self::Apns(_) => Platform::Apns,
            Self::Fcm(_) => Platform::Fcm,
        }
    }
}

/// An app's own credential for one provider, as stored.
#[derive(Clone, Debug)]
pub struct AppCredential {
    /// The app.
    pub app_id: String,
    /// The key.
    pub key: CredentialKey,
    /// Its public key's fingerprint.
    pub fingerprint: Fingerprint,
    /// When it was stored (unix millis): a changed credential has a new time.
    pub updated_at: i64,
}

/// A stored credential that cannot be read (its key does not open under the master keys
/// this instance holds, or its stored settings do not parse): the app's sends to that
/// provider are refused with `CredentialUnusable` rather than sent with the default key.
#[derive(Clone, Debug)]
pub struct UnusableCredential {
    /// The app.
    pub app_id: String,
    /// The provider.
    pub provider: Platform,
    /// When it was stored (unix millis).
    pub updated_at: i64,
    /// Its fingerprint as stored.
    pub fingerprint: Fingerprint,
    /// Why it cannot be read (never any part of the key).
    pub error: String,
}

/// Which credential an app's sends to a provider use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// The app's own, uploaded through the API or the CLI.
    App,
    /// The config file's `[apns]` or `[fcm]` key.
    Default,
}

/// One pool's counters, for the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSample {
    /// The app whose credential the pool serves; `None` for the config file's default.
    pub app: Option<String>,
    /// `apns_production`, `apns_sandbox` or `fcm`.
    pub pool: &'static str,
    /// Its counters.
    pub stats: PoolStats,
}

/// A sender built from a stored credential, or why it could not be: an app whose own key is
/// unusable must not silently send with the default one.
struct Installed<S> {
    updated_at: i64,
    fingerprint: Fingerprint,
    sender: Result<Arc<S>, String>,
}

#[derive(Default)]
struct AppSenders {
    apns: Option<Installed<ApnsSender>>,
    fcm: Option<Installed<FcmSender>>,
}

/// Every sender: the defaults from the config file and each app's own.
pub struct Providers {
    apns_settings: ApnsConfig,
    fcm_settings: FcmConfig,
    clock: Clock,
    cap: ConnectionCap,
    default_apns: Option<Arc<ApnsSender>>,
    default_fcm: Option<Arc<FcmSender>>,
    defaults: Defaults,
    apps: RwLock<HashMap<String, AppSenders>>,
}

/// The public part of the config file's APNs key.
#[derive(Clone, Debug)]
pub struct DefaultApnsKey {
    /// Key id.
    pub key_id: String,
    /// Team id.
    pub team_id: String,
    /// `apns.default_topic`.
    pub default_topic: Option<String>,
    /// The key's fingerprint.
    pub fingerprint: Option<Fingerprint>,
}

/// The public part of the config file's FCM service account.
#[derive(Clone, Debug)]
pub struct DefaultFcmAccount {
    /// Project sent to.
    pub project_id: String,
    /// The account.
    pub client_email: String,
    /// The key's id at Google.
    pub private_key_id: Option<String>,
    /// The key's fingerprint.
    pub fingerprint: Option<Fingerprint>,
}

#[derive(Default)]
struct Defaults {
    apns: Option<DefaultApnsKey>,
    fcm: Option<DefaultFcmAccount>,
}

impl Providers {
    /// The default senders of the config file, with default provider settings.
    pub fn new(apns: &ApnsConfig, fcm: &FcmConfig) -> anyhow::Result<Self> {
        Self::with_settings(apns, fcm, &ProvidersConfig::default(), Clock::system())
    }

    /// Like [`Providers::new`], with an explicit clock for credential lifetimes.
    pub fn with_clock(apns: &ApnsConfig, fcm: &FcmConfig, clock: Clock) -> anyhow::Result<Self> {
        Self::with_settings(apns, fcm, &ProvidersConfig::default(), clock)
    }

    /// Loads the config file's keys for every enabled provider; app credentials are added
    /// with [`Providers::install`].
    pub fn with_settings(
        apns: &ApnsConfig,
        fcm: &FcmConfig,
        settings: &ProvidersConfig,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        apns.validate().map_err(anyhow::Error::msg)?;
        fcm.validate().map_err(anyhow::Error::msg)?;
        settings.validate().map_err(anyhow::Error::msg)?;
        let cap = ConnectionCap::new(settings.max_connections);
        let mut defaults = Defaults::default();
        let default_apns = if apns.enabled {
            let key = ApnsSender::config_key(apns)?;
            defaults.apns = Some(DefaultApnsKey {
                key_id: key.key_id.clone(),
                team_id: key.team_id.clone(),
                default_topic: key.default_topic.clone(),
                fingerprint: apns_fingerprint(&key.private_key),
            });
            Some(Arc::new(ApnsSender::new(apns, &key, clock.clone(), &cap)?))
        } else {
            None
        };
        let default_fcm = if fcm.enabled {
            let account = FcmSender::config_account(fcm)?;
            defaults.fcm = Some(DefaultFcmAccount {
                project_id: account.project_id.clone(),
                client_email: account.client_email.clone(),
                private_key_id: account.private_key_id.clone(),
                fingerprint: fcm_fingerprint(&account.private_key),
            });
            Some(Arc::new(FcmSender::new(
                fcm,
                &account,
                clock.clone(),
                &cap,
            )?))
        } else {
            None
        };
        Ok(Self {
            apns_settings: apns.clone(),
            fcm_settings: fcm.clone(),
            clock,
            cap,
            default_apns,
            default_fcm,
            defaults,
            apps: RwLock::new(HashMap::new()),
        })
    }

    /// Sends one notification of `app_id` to one device, with the app's own credential for
    /// the device's provider, else the default one.
    pub async fn send(&self, app_id: &str, target: &Target, n: &Notification) -> Outcome {
        match target.platform {
            Platform::Apns => match self.apns_sender(app_id) {
                Ok(sender) => sender.send(target, n).await,
                Err(outcome) => outcome,
            },
            Platform::Fcm => match self.fcm_sender(app_id) {
                Ok(sender) => sender.send(&target.token, n).await,
                Err(outcome) => outcome,
            },
        }
    }

    fn apns_sender(&self, app_id: &str) -> Result<Arc<ApnsSender>, Outcome> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        match apps.get(app_id).and_then(|a| a.apns.as_ref()) {
            Some(installed) => own_sender(installed),
            None => self.default_apns.clone().ok_or_else(not_configured),
        }
    }

    fn fcm_sender(&self, app_id: &str) -> Result<Arc<FcmSender>, Outcome> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        match apps.get(app_id).and_then(|a| a.fcm.as_ref()) {
            Some(installed) => own_sender(installed),
            None => self.default_fcm.clone().ok_or_else(not_configured),
        }
    }

    /// The topic `app_id`'s APNs sends fall back to when a device has none, from the sender
    /// in use (previews); the refusal a send would meet when it has none.
    pub fn apns_default_topic(&self, app_id: &str) -> Result<Option<String>, Outcome> {
        self.apns_sender(app_id)
            .map(|s| s.default_topic().map(str::to_string))
    }

    /// The path `app_id`'s FCM sends are posted to, from the sender in use (previews).
    pub fn fcm_send_path(&self, app_id: &str) -> Result<String, Outcome> {
        self.fcm_sender(app_id).map(|s| s.send_path().to_string())
    }

    /// Which credential `app_id` sends to `platform` with; `None` when it has none and there
    /// is no default.
    pub fn source(&self, app_id: &str, platform: Platform) -> Option<CredentialSource> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let (own, default) = match platform {
            Platform::Apns => (
                apps.get(app_id).is_some_and(|a| a.apns.is_some()),
                self.default_apns.is_some(),
            ),
            Platform::Fcm => (
                apps.get(app_id).is_some_and(|a| a.fcm.is_some()),
                self.default_fcm.is_some(),
            ),
        };
        match (own, default) {
            (true, _) => Some(CredentialSource::App),
            (false, true) => Some(CredentialSource::Default),
            (false, false) => None,
        }
    }

    /// The config file's APNs key (without its private part), when APNs is enabled.
    pub fn default_apns(&self) -> Option<&DefaultApnsKey> {
        self.defaults.apns.as_ref()
    }

    /// The config file's FCM service account (without its key), when FCM is enabled.
    pub fn default_fcm(&self) -> Option<&DefaultFcmAccount> {
        self.defaults.fcm.as_ref()
    }

    /// Builds and uses a sender for `credential` from the next send on, unless the one in
    /// use is already for this version of it. Returns whether anything changed. A credential
    /// that cannot be used is installed as such: the app's sends are refused with a reason
    /// rather than sent with the default key.
    pub fn install(&self, credential: &AppCredential) -> bool {
        {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            let current = apps
                .get(&credential.app_id)
                .and_then(|a| match &credential.key {
                    CredentialKey::Apns(_) => {
                        a.apns.as_ref().map(|i| (i.updated_at, &i.fingerprint))
                    }
                    CredentialKey::Fcm(_) => a.fcm.as_ref().map(|i| (i.updated_at, &i.fingerprint)),
                });
            if current == Some((credential.updated_at, &credential.fingerprint)) {
                return false;
            }
        }
        // Built outside the lock: it reads root certificates and signs a token.
        let mut apps = match &credential.key {
            CredentialKey::Apns(key) => {
                let sender =
                    ApnsSender::new(&self.apns_settings, key, self.clock.clone(), &self.cap);
                let installed = self.installed(credential, sender);
                let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
                apps.entry(credential.app_id.clone()).or_default().apns = Some(installed);
                apps
            }
            CredentialKey::Fcm(key) => {
                let sender = FcmSender::new(
                    &self.fcm_settings,
                    &key.account,
                    self.clock.clone(),
                    &self.cap,
                );
                let installed = self.installed(credential, sender);
                let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
                apps.entry(credential.app_id.clone()).or_default().fcm = Some(installed);
                apps
            }
        };
        apps.retain(|_, a| a.apns.is_some() || a.fcm.is_some());
        true
    }

    fn installed<S>(&self, credential: &AppCredential, sender: anyhow::Result<S>) -> Installed<S> {
        let sender = sender.map(Arc::new).map_err(|e| {
            tracing::error!(app = %credential.app_id, provider = credential.key.platform().as_str(),
                fingerprint = %credential.fingerprint, error = %format!("{e:#}"),
                "the app's provider credential cannot be used; its sends are refused");
            format!("{e:#}")
        });
        Installed {
            updated_at: credential.updated_at,
            fingerprint: credential.fingerprint.clone(),
            sender,
        }
    }

    /// Stops using `app_id`'s own credential for `platform` (its sends use the default from
    /// the next one on). Returns whether it had one.
    pub fn remove(&self, app_id: &str, platform: Platform) -> bool {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let Some(senders) = apps.get_mut(app_id) else {
            return false;
        };
        let removed = match platform {
            Platform::Apns => senders.apns.take().is_some(),
            Platform::Fcm => senders.fcm.take().is_some(),
        };
        if senders.apns.is_none() && senders.fcm.is_none() {
            apps.remove(app_id);
        }
        removed
    }

    /// Refuses `app_id`'s sends to the credential's provider until a readable one is stored.
    fn install_unusable(&self, credential: &UnusableCredential) -> bool {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let senders = apps.entry(credential.app_id.clone()).or_default();
        let changed = match credential.provider {
            Platform::Apns => !is_unusable_at(&senders.apns, credential.updated_at),
            Platform::Fcm => !is_unusable_at(&senders.fcm, credential.updated_at),
        };
        if changed {
            tracing::error!(app = %credential.app_id, provider = credential.provider.as_str(),
                fingerprint = %credential.fingerprint, error = %credential.error,
                "the app's stored provider credential cannot be read; its sends are refused");
            match credential.provider {
                Platform::Apns => {
                    senders.apns = Some(Installed {
                        updated_at: credential.updated_at,
                        fingerprint: credential.fingerprint.clone(),
                        sender: Err(credential.error.clone()),
                    });
                }
                Platform::Fcm => {
                    senders.fcm = Some(Installed {
                        updated_at: credential.updated_at,
                        fingerprint: credential.fingerprint.clone(),
                        sender: Err(credential.error.clone()),
                    });
                }
            }
        }
        changed
    }

    /// Makes the app credentials in use exactly `all`: installs new and changed ones, keeps
    /// unchanged ones (and their open connections), refuses the sends of apps whose stored
    /// credential cannot be read, and removes the rest. Returns how many were installed and
    /// removed.
    pub fn sync(&self, all: &[Result<AppCredential, UnusableCredential>]) -> (usize, usize) {
        let installed = all
            .iter()
            .filter(|c| match c {
                Ok(c) => self.install(c),
                Err(unusable) => self.install_unusable(unusable),
            })
            .count();
        let wanted: std::collections::HashSet<(&str, Platform)> = all
            .iter()
            .map(|c| match c {
                Ok(c) => (c.app_id.as_str(), c.key.platform()),
                Err(u) => (u.app_id.as_str(), u.provider),
            })
            .collect();
        let stale: Vec<(String, Platform)> = {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            apps.iter()
                .flat_map(|(app, s)| {
                    let apns = s.apns.as_ref().map(|_| (app.clone(), Platform::Apns));
                    let fcm = s.fcm.as_ref().map(|_| (app.clone(), Platform::Fcm));
                    apns.into_iter().chain(fcm)
                })
                .filter(|(app, p)| !wanted.contains(&(app.as_str(), *p)))
                .collect()
        };
        let removed = stale.iter().filter(|(app, p)| self.remove(app, *p)).count();
        (installed, removed)
    }

    /// Closes every connection no send used for `idle`; returns how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let mut closed = self.default_apns.as_ref().map_or(0, |s| s.close_idle(idle))
            + self.default_fcm.as_ref().map_or(0, |s| s.close_idle(idle));
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        for senders in apps.values() {
            if let Some(Ok(s)) = senders.apns.as_ref().map(|i| &i.sender) {
                closed += s.close_idle(idle);
            }
            if let Some(Ok(s)) = senders.fcm.as_ref().map(|i| &i.sender) {
                closed += s.close_idle(idle);
            }
        }
        closed
    }

    /// How many more provider connections may open before the cap is reached.
    pub fn connections_available(&self) -> usize {
        self.cap.available()
    }

    /// Counters of every pool, with the app whose credential it serves.
    pub fn stats(&self) -> Vec<PoolSample> {
        let mut samples = Vec::new();
        self.each_pool(|app, pool, stats| {
            samples.push(PoolSample {
                app: app.map(str::to_string),
                pool,
                stats,
            })
        });
        samples
    }

    /// How many sends the providers' servers let this instance have in flight now: the
    /// concurrent streams their open connections allow, over the default and every app's
    /// pools. Before any connection is open (or after all closed idle), a first guess of
    /// [`FIRST_GUESS_STREAMS`]; the first sends open connections and the figure follows
    /// what their servers advertise.
    pub fn stream_capacity(&self) -> u64 {
        let mut allowed = 0u64;
        self.each_pool(|_, _, stats| allowed = allowed.saturating_add(stats.streams_allowed));
        if allowed == 0 {
            FIRST_GUESS_STREAMS
        } else {
            allowed
        }
    }

    /// Calls `f` with every pool's counters, the app whose credential it serves and its name.
    fn each_pool(&self, mut f: impl FnMut(Option<&str>, &'static str, PoolStats)) {
        let mut apns = |app: Option<&str>, s: &ApnsSender| {
            let (production, sandbox) = s.stats();
            f(app, "apns_production", production);
            f(app, "apns_sandbox", sandbox);
        };
        if let Some(s) = &self.default_apns {
            apns(None, s);
        }
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        for (app, senders) in apps.iter() {
            if let Some(Ok(s)) = senders.apns.as_ref().map(|i| &i.sender) {
                apns(Some(app), s);
            }
        }
        if let Some(s) = &self.default_fcm {
            f(None, "fcm", s.stats());
        }
        for (app, senders) in apps.iter() {
            if let Some(Ok(s)) = senders.fcm.as_ref().map(|i| &i.sender) {
                f(Some(app), "fcm", s.stats());
            }
        }
    }
}

/// Whether `installed` is the unusable version stored at `updated_at`.
fn is_unusable_at<S>(installed: &Option<Installed<S>>, updated_at: i64) -> bool {
    installed
        .as_ref()
        .is_some_and(|i| i.updated_at == updated_at && i.sender.is_err())
}

fn own_sender<S>(installed: &Installed<S>) -> Result<Arc<S>, Outcome> {
    match &installed.sender {
        Ok(sender) => Ok(sender.clone()),
        Err(_) => Err(Outcome::credential("CredentialUnusable")),
    }
}

fn not_configured() -> Outcome {
    Outcome::failed("ProviderNotConfigured")
}
