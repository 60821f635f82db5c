//! Test harness: the real app on port 0 against a real SQLite file.
#![allow(dead_code)]

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
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = $crate::common::Db::postgres() {
                    super::$name(db).await
                }
            }
        }
    )*};
}

/// The operator key every test app is configured with.
pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            database_url: db.fresh_url(dir.path()).await,
            operator_key: Some(OPERATOR_KEY.to_string()),
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().expect("valid test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = pushbridge::start(config, listener).await.expect("start");
        Self {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn store(&self) -> &Store {
        &self.running.as_ref().expect("running").state.store
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

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

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

pub fn apns_token(seed: u8) -> String {
    format!("{:02x}", seed).repeat(32)
}

pub fn fcm_token(seed: &str) -> String {
    format!("{seed}:{}", "A".repeat(140))
}
