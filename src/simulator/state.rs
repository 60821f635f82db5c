//! Shared state of a running simulator: the credentials it verifies, issued access tokens,
//! fail-first-N counters, current faults and the request records.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use anyhow::Context;
use jsonwebtoken::DecodingKey;

use super::config::SimulatorConfig;
use super::faults::Faults;
use super::record::RecordedRequest;
use crate::push::fcm::ServiceAccount;
use crate::push::Clock;

/// Shared state of a running simulator.
pub(super) struct State {
    pub apns_key: DecodingKey,
    pub apns_key_id: String,
    pub apns_team_id: String,
    pub fcm_key: DecodingKey,
    pub fcm_client_email: String,
    pub fcm_project_id: String,
    pub access_token_ttl_secs: u64,
    max_records: usize,
    records: Mutex<VecDeque<RecordedRequest>>,
    connections: AtomicU64,
    faults: RwLock<Faults>,
    access_tokens: Mutex<HashMap<String, i64>>,
    attempts: Mutex<HashMap<String, u32>>,
}

impl State {
    /// Loads the verification keys named in `cfg`.
    pub fn load(cfg: &SimulatorConfig) -> anyhow::Result<Self> {
        let apns_key = apns_decoding_key(&cfg.apns_key_path)?;
        let account = ServiceAccount::load(&cfg.fcm_service_account_path)
            .context("simulator fcm_service_account_path")?;
        let fcm_key = rsa_decoding_key(&account.private_key).with_context(|| {
            format!(
                "{}: private_key is not a PKCS#8 RSA key",
                cfg.fcm_service_account_path.display()
            )
        })?;
        Ok(Self {
            apns_key,
            apns_key_id: cfg.apns_key_id.clone(),
            apns_team_id: cfg.apns_team_id.clone(),
            fcm_key,
            fcm_client_email: account.client_email,
            fcm_project_id: account.project_id,
            access_token_ttl_secs: cfg.access_token_ttl_secs,
            max_records: cfg.max_records,
            records: Mutex::new(VecDeque::new()),
            connections: AtomicU64::new(0),
            faults: RwLock::new(cfg.faults.clone()),
            access_tokens: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// Remembers one request, forgetting the oldest beyond `max_records`.
    pub fn record(&self, request: RecordedRequest) {
        if self.max_records == 0 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.max_records {
            records.pop_front();
        }
        records.push_back(request);
    }

    /// Everything recorded so far, oldest first.
    pub fn records(&self) -> Vec<RecordedRequest> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }

    /// Forgets the records and the fail-first-N counters.
    pub fn clear_records(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Counts an accepted TLS connection.
    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Counts a request for a fail-first-N token; true while it should still fail.
    pub fn should_fail(&self, token: &str, times: u32) -> bool {
        if times == 0 {
            return true;
        }
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let seen = attempts.entry(token.to_string()).or_insert(0);
        *seen += 1;
        *seen <= times
    }

    /// Remembers an issued access token until `expires_at` (unix seconds).
    pub fn issue_access_token(&self, token: String, expires_at: i64) {
        self.access_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, expires_at);
    }

    /// Whether `token` was issued and is still valid at `now` (unix seconds).
    pub fn access_token_valid(&self, token: &str, now: i64) -> bool {
        let tokens = self.access_tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).is_some_and(|expires| now < *expires)
    }

    /// Invalidates every access token issued so far.
    pub fn revoke_access_tokens(&self) {
        self.access_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The simulator's wall clock in unix milliseconds.
pub(super) fn now_millis() -> i64 {
    Clock::system().unix_millis()
}

/// The ES256 verification key: from a public-key PEM, or derived from the `.p8` private key.
fn apns_decoding_key(path: &Path) -> anyhow::Result<DecodingKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("simulator apns_key_path: reading {}", path.display()))?;
    if pem.contains("BEGIN PUBLIC KEY") {
        return DecodingKey::from_ec_pem(pem.as_bytes())
            .with_context(|| format!("{} is not an EC public key", path.display()));
    }
    let pair = rcgen::KeyPair::from_pem(&pem)
        .with_context(|| format!("{} is not a PKCS#8 EC key", path.display()))?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256),
        "{} is not a P-256 key",
        path.display()
    );
    Ok(DecodingKey::from_ec_der(pair.public_key_raw()))
}

fn rsa_decoding_key(private_pem: &str) -> anyhow::Result<DecodingKey> {
    let pair = rcgen::KeyPair::from_pem(private_pem)?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_RSA_SHA256),
        "not an RSA key"
    );
    // ring's raw RSA public key is the PKCS#1 DER that jsonwebtoken expects.
    Ok(DecodingKey::from_rsa_der(pair.public_key_raw()))
}
