//! The real `pushbridge` binary as a child process, for the tests that kill it with SIGKILL,
//! read its logs or sample its memory, and a store handle on the database it uses.

use pushbridge::store::Store;

use super::{certs_dir, test_secrets, OPERATOR_KEY, TEST_MASTER_KEY};

/// The real `pushbridge` binary as a child process (for kill -9, log and memory tests).
pub struct BridgeProcess {
    /// The child; `Drop` kills it.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// Environment that points a `pushbridge serve` child at `sim` with the test credentials, a
/// fast worker and the test operator key, as `TestApp::with_simulator` does in process.
pub fn bridge_env(
    db_url: &str,
    sim: &pushbridge::simulator::SimulatorHandle,
) -> Vec<(String, String)> {
    let certs = certs_dir();
    let ca = format!("[\"{}\"]", certs.join("ca.pem").display());
    let pairs = [
        ("DATABASE_URL", db_url.to_string()),
        ("OPERATOR_KEY", OPERATOR_KEY.to_string()),
        ("APNS__ENABLED", "true".into()),
        ("APNS__ENDPOINT", sim.apns_url()),
        ("APNS__SANDBOX_ENDPOINT", sim.apns_url()),
        (
            "APNS__KEY_PATH",
            certs
                .join(format!("AuthKey_{}.p8", pushbridge::simulator::TEST_KEY_ID))
                .display()
                .to_string(),
        ),
        ("APNS__KEY_ID", pushbridge::simulator::TEST_KEY_ID.into()),
        ("APNS__TEAM_ID", pushbridge::simulator::TEST_TEAM_ID.into()),
        ("APNS__DEFAULT_TOPIC", "com.example.app".into()),
        ("APNS__EXTRA_ROOT_CERTS", ca.clone()),
        ("FCM__ENABLED", "true".into()),
        ("FCM__ENDPOINT", sim.fcm_url()),
        (
            "FCM__SERVICE_ACCOUNT_PATH",
            certs.join("fcm-service-account.json").display().to_string(),
        ),
        ("FCM__TOKEN_URI", sim.token_uri()),
        ("FCM__EXTRA_ROOT_CERTS", ca),
        // Tests' webhook receivers listen on loopback, over plain HTTP.
        ("ENDPOINTS__ALLOW_INSECURE", "true".into()),
        (
            "ENDPOINTS__ALLOWED_PRIVATE_CIDRS",
            "[\"127.0.0.0/8\"]".into(),
        ),
        ("WORKER__POLL_INTERVAL_MS", "20".into()),
        ("WORKER__BACKOFF_BASE_MS", "20".into()),
        ("WORKER__BACKOFF_MAX_MS", "100".into()),
    ];
    let master_key = db_url
        .starts_with("postgres")
        .then(|| ("SECRETS__MASTER_KEY", TEST_MASTER_KEY.to_string()));
    pairs
        .into_iter()
        .chain(master_key)
        .map(|(k, v)| (format!("PUSHBRIDGE_{k}"), v))
        .collect()
}

impl BridgeProcess {
    /// Starts `pushbridge serve` in `dir` with `env` (see [`bridge_env`]) plus `extra`, its
    /// stderr appended to `stderr` when given, and waits until `/healthz` answers.
    pub async fn start(
        dir: &std::path::Path,
        env: &[(String, String)],
        extra: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> Self {
        for _ in 0..5 {
            // A free port can be taken between the probe and the child's bind; retry then.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
            cmd.arg("serve").current_dir(dir);
            for (k, _) in std::env::vars() {
                if k.starts_with("PUSHBRIDGE_") || k == "RUST_LOG" {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("PUSHBRIDGE_LISTEN", format!("127.0.0.1:{port}"))
                .envs(extra.iter().copied())
                .stdout(std::process::Stdio::null());
            match stderr {
                Some(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("stderr file");
                    cmd.stderr(file);
                }
                None => {
                    cmd.stderr(std::process::Stdio::null());
                }
            }
            let child = cmd.spawn().expect("spawn pushbridge");
            let mut bridge = Self {
                child,
                base: format!("http://127.0.0.1:{port}"),
            };
            let client = reqwest::Client::new();
            for _ in 0..600 {
                if let Ok(Some(_)) = bridge.child.try_wait() {
                    break;
                }
                if let Ok(r) = client.get(format!("{}/healthz", bridge.base)).send().await {
                    if r.status().is_success() {
                        return bridge;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bridge.kill9();
        }
        panic!("pushbridge serve did not start");
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or the OOM killer would; waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown); waits for the exit.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Resident set size of the child in kB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// The absolute URL of `path` on this child.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A store handle on the database a child bridge uses (apps, bulk import, job counts), with
/// the same master key.
pub async fn open_store(db_url: &str) -> Store {
    let config = pushbridge::config::Config {
        database_url: db_url.to_string(),
        database_max_connections: 4,
        secrets: test_secrets(db_url),
        ..Default::default()
    };
    pushbridge::open_store(&config).await.expect("open store")
}

/// Runs the real `pushbridge` binary with `args` on the database at `db_url` (with the test
/// master key on PostgreSQL; on SQLite the key file beside the database), in `dir`, and
/// returns its output.
pub fn run_cli(db_url: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHBRIDGE_")) {
        cmd.env_remove(k);
    }
    if db_url.starts_with("postgres") {
        cmd.env("PUSHBRIDGE_SECRETS__MASTER_KEY", TEST_MASTER_KEY);
    }
    cmd.args(args)
        .current_dir(dir)
        .env("PUSHBRIDGE_DATABASE_URL", db_url)
        .output()
        .expect("run pushbridge")
}
