//! The one test harness: the real app on port 0 against a fresh SQLite file or PostgreSQL
//! database, the simulator with the repository's test credentials, and the helpers the test
//! modules share. `process` runs the real binary as a child; `wire` talks raw TCP and TLS.

pub mod process;
pub mod schedule;
pub mod wire;

pub use process::{bridge_env, open_store, BridgeProcess};

use pushbridge::config::Config;
use pushbridge::store::{NewApp, Store};
use pushbridge::Running;
use serde_json::Value;

/// Which store a test runs against.
#[derive(Clone, Debug)]
pub enum Db {
    /// A fresh SQLite file in a temp dir.
    Sqlite,
    /// A fresh database on the server `DATABASE_URL` points at.
    Postgres(String),
}

impl Db {
    /// The Postgres backend when `DATABASE_URL` is set; otherwise prints (once) that the
    /// Postgres variants are skipped.
    pub fn postgres() -> Option<Self> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => Some(Db::Postgres(url)),
            _ => {
                static NOTICE: std::sync::Once = std::sync::Once::new();
                NOTICE.call_once(|| {
                    use std::io::Write;
                    // Written straight to stderr so the test harness does not swallow it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "notice: DATABASE_URL is not set; PostgreSQL variants of the tests are skipped"
                    );
                });
                None
            }
        }
    }

    /// A database URL for one test: a new SQLite file, or a new Postgres database.
    pub async fn fresh_url(&self, dir: &std::path::Path) -> String {
        match self {
            Db::Sqlite => format!("sqlite://{}", dir.join("bridge.db").display()),
            Db::Postgres(url) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .expect("connect to DATABASE_URL");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                // Best-effort cleanup of test databases left by runs more than an hour ago.
                let stale: Vec<(String,)> = sqlx::query_as(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'pbtest\\_%'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                for (name,) in stale {
                    let ts = name
                        .split('_')
                        .nth(1)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(now);
                    if ts + 3600 < now {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                            .execute(&mut conn)
                            .await;
                    }
                }
                let name = format!("pbtest_{now}_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = match url.rfind('/') {
                    Some(i) if i > "postgres://".len() => &url[..i],
                    _ => url.as_str(),
                };
                format!("{base}/{name}")
            }
        }
    }
}

/// Generates a SQLite and a PostgreSQL test for each `async fn name(db: Db)`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::harness::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::harness::Db::postgres() {
                    super::$name(db).await
                }
            }
        }
    )*};
}

/// The operator key every test app is configured with.
pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef";

/// The master key of every test bridge on PostgreSQL, which refuses to start without one.
/// On SQLite the tests leave it unset, so the bridge uses the key file beside the database.
pub const TEST_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The `[secrets]` config a test bridge on `db_url` starts with (see [`TEST_MASTER_KEY`]).
pub fn test_secrets(db_url: &str) -> pushbridge::secrets::SecretsConfig {
    let master_key = db_url.starts_with("postgres").then(|| {
        pushbridge::secrets::MasterKey::from_base64(TEST_MASTER_KEY).expect("test master key")
    });
    pushbridge::secrets::SecretsConfig {
        master_key,
        previous_keys: Vec::new(),
    }
}

/// The bridge running in this process on its own database, and a client for its API.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client for the API.
    pub client: reqwest::Client,
    running: Option<Running>,
    db_url: String,
    dir: std::sync::Arc<tempfile::TempDir>,
    clock: pushbridge::clock::Clock,
}

impl TestApp {
    /// The app with the test config on a fresh database.
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    /// The app on a fresh database, with the test config changed by `tweak`.
    pub async fn spawn_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        let url = db.fresh_url(dir.path()).await;
        Self::spawn_on(url, dir, tweak).await
    }

    /// The app on an existing database (e.g. one prepared at an older schema).
    pub async fn spawn_on(
        db_url: String,
        dir: std::sync::Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_observed(db_url, dir, tweak, None).await
    }

    /// Like [`TestApp::spawn_on`], telling `observer` about every stored credential (as
    /// `serve --simulator` tells its simulator).
    pub async fn spawn_observed(
        db_url: String,
        dir: std::sync::Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
        observer: Option<std::sync::Arc<dyn pushbridge::service::credentials::CredentialObserver>>,
    ) -> Self {
        let mut config = Config {
            database_url: db_url.clone(),
            operator_key: Some(OPERATOR_KEY.to_string()),
            secrets: test_secrets(&db_url),
            ..Config::default()
        };
        // Tests' webhook receivers listen on loopback, over plain HTTP.
        config.endpoints.allow_insecure = true;
        config.endpoints.allowed_private_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
        tweak(&mut config);
        config.validate().expect("valid test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let clock = pushbridge::clock::Clock::system();
        let options = pushbridge::StartOptions {
            credential_observer: observer,
            clock: clock.clone(),
        };
        let running = pushbridge::start_with(config, listener, options)
            .await
            .expect("start");
        Self {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            running: Some(running),
            db_url,
            dir,
            clock,
        }
    }

    /// The app's clock: shift it to move the bridge's time without sleeping.
    pub fn clock(&self) -> &pushbridge::clock::Clock {
        &self.clock
    }

    /// The database URL the app runs on.
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The app's own store handle.
    pub fn store(&self) -> &Store {
        &self.running.as_ref().expect("running").state.store
    }

    /// The event's stored count of jobs still to send (zero once it is completed).
    pub async fn open_jobs(&self, event_id: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.db_url).await.expect("connect");
        let (n,): (i64,) = sqlx::query_as("SELECT open_jobs FROM events WHERE id = $1")
            .bind(event_id)
            .fetch_one(&pool)
            .await
            .expect("open_jobs");
        pool.close().await;
        n
    }

    /// The running app (address, state, background loops).
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// The absolute URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A new tenant app with its keys and secrets.
    pub async fn new_app(&self) -> NewApp {
        self.store()
            .create_app("test app")
            .await
            .expect("create app")
    }

    /// Sends a request and returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}"))
        };
        (status, json)
    }

    /// Graceful shutdown; panics unless it is clean.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

/// `HMAC-SHA256(user-auth secret, user_id)` in lowercase hex: the proof an app's backend
/// computes for the device registrations of a logged-in user.
pub fn user_proof(app: &NewApp, user_id: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(app.user_auth_secret.as_bytes())
        .expect("HMAC takes any key");
    mac.update(user_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A device registration body with the proof of its `user_id` added, as a mobile app sends it
/// with a client key (unchanged when it names no user).
pub fn proven(app: &NewApp, mut body: Value) -> Value {
    if let Some(user) = body
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::to_string)
    {
        body["user_auth"] = Value::String(user_proof(app, &user));
    }
    body
}

/// A well-formed APNs device token (64 hex digits) derived from `seed`.
pub fn apns_token(seed: u8) -> String {
    format!("{:02x}", seed).repeat(32)
}

/// A well-formed FCM registration token starting with `seed`.
pub fn fcm_token(seed: &str) -> String {
    format!("{seed}:{}", "A".repeat(140))
}

/// The repository's test credentials.
pub fn certs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A simulator on free ports with the repository's test credentials.
pub async fn simulator() -> pushbridge::simulator::SimulatorHandle {
    simulator_with(|_| {}).await
}

/// A simulator on free ports with the test credentials, its settings changed by `tweak`.
pub async fn simulator_with(
    tweak: impl FnOnce(&mut pushbridge::simulator::SimulatorConfig),
) -> pushbridge::simulator::SimulatorHandle {
    let mut config = pushbridge::simulator::SimulatorConfig::with_certs_dir(&certs_dir());
    config.apns_listen = "127.0.0.1:0".parse().expect("addr");
    config.fcm_listen = "127.0.0.1:0".parse().expect("addr");
    tweak(&mut config);
    pushbridge::simulator::start(config)
        .await
        .expect("simulator starts")
}

/// Points `config` at `sim` with the test credentials and gives it a fast worker (short polls
/// and backoff), as [`bridge_env`] does for a child process.
pub fn fast_worker_on(config: &mut Config, sim: &pushbridge::simulator::SimulatorHandle) {
    pushbridge::use_simulator(config, sim, &certs_dir());
    config.worker.poll_interval_ms = 20;
    config.worker.backoff_base_ms = 20;
    config.worker.backoff_max_ms = 100;
}

impl TestApp {
    /// The app wired to `sim`, with a fast worker (short polls and backoff) for tests.
    pub async fn with_simulator(
        db: Db,
        sim: &pushbridge::simulator::SimulatorHandle,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_with(db, |c| {
            fast_worker_on(c, sim);
            tweak(c);
        })
        .await
    }

    /// A second bridge instance on the same database (and simulator).
    pub async fn another_instance(
        &self,
        sim: &pushbridge::simulator::SimulatorHandle,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_on(self.db_url.clone(), self.dir.clone(), |c| {
            fast_worker_on(c, sim);
            tweak(c);
        })
        .await
    }

    /// Kills this instance's background loops mid-work, as a crash would: nothing is
    /// recorded or released.
    pub fn crash_workers(&mut self) {
        self.running.as_mut().expect("running").crash_workers();
    }

    /// Polls `GET path` until `done` holds (at most ~20 s), returning the last body.
    pub async fn wait_for(&self, path: &str, key: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..400 {
            let (status, body) = self.call(reqwest::Method::GET, path, Some(key), None).await;
            if status == 200 && done(&body) {
                return body;
            }
            last = body;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("timed out waiting on {path}; last answer: {last}");
    }
}
