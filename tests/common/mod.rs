//! Test harness: the real app on port 0 against a real SQLite file.
#![allow(dead_code)]

use pushbridge::config::Config;
use pushbridge::store::{NewApp, Store};
use pushbridge::Running;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            database_url: format!("sqlite://{}", dir.path().join("bridge.db").display()),
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
