//! Shared state of a running simulator: the identities it knows, its clock, issued access
//! tokens, fail-first-N counters, current faults and the request records.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use anyhow::Context;

use super::config::SimulatorConfig;
use super::faults::Faults;
use super::identities::Identities;
use super::record::RecordedRequest;
use crate::clock::Clock;
use crate::push::fcm::ServiceAccount;

struct AccessToken {
    expires_at: i64,
    client_email: String,
}

/// Shared state of a running simulator.
pub(super) struct State {
    pub identities: Identities,
    pub clock: Clock,
    pub access_token_ttl_secs: u64,
    max_records: usize,
    records: Mutex<VecDeque<RecordedRequest>>,
    connections: AtomicU64,
    faults: RwLock<Faults>,
    access_tokens: Mutex<HashMap<String, AccessToken>>,
    attempts: Mutex<HashMap<String, u32>>,
}

impl State {
    /// Loads the identities named in `cfg`.
    pub fn load(cfg: &SimulatorConfig) -> anyhow::Result<Self> {
        let identities = Identities::new(cfg.token_update_interval_secs);
        for key in &cfg.apns_keys {
            let pem = std::fs::read_to_string(&key.path)
                .with_context(|| format!("simulator apns_keys: reading {}", key.path.display()))?;
            identities
                .add_apns_key(&key.key_id, &key.team_id, &pem)
                .with_context(|| format!("simulator apns_keys: {}", key.path.display()))?;
        }
        for path in &cfg.fcm_service_accounts {
            let account = ServiceAccount::load(path).context("simulator fcm_service_accounts")?;
            identities
                .add_fcm_account(&account)
                .with_context(|| format!("simulator fcm_service_accounts: {}", path.display()))?;
        }
        Ok(Self {
            identities,
            clock: Clock::system(),
            access_token_ttl_secs: cfg.access_token_ttl_secs,
            max_records: cfg.max_records,
            records: Mutex::new(VecDeque::new()),
            connections: AtomicU64::new(0),
            faults: RwLock::new(cfg.faults.clone()),
            access_tokens: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// The simulator's clock in unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        self.clock.unix_millis()
    }

    /// The simulator's clock in unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.clock.unix_secs()
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

    /// Remembers an access token issued to `client_email`, valid until `expires_at` (unix s).
    pub fn issue_access_token(&self, token: String, client_email: &str, expires_at: i64) {
        self.access_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token,
                AccessToken {
                    expires_at,
                    client_email: client_email.to_string(),
                },
            );
    }

    /// The account `token` was issued to, while it is unexpired at `now` (unix seconds).
    pub fn access_token_owner(&self, token: &str, now: i64) -> Option<String> {
        let tokens = self.access_tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(token)
            .filter(|t| now < t.expires_at)
            .map(|t| t.client_email.clone())
    }

    /// Invalidates every access token issued so far.
    pub fn revoke_access_tokens(&self) {
        self.access_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
