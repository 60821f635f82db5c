//! Who the simulator knows: APNs signing keys (key id, team id, public key) and FCM service
//! accounts (client email, project, public key), their revocation, and the rule by which APNs
//! refuses a key's provider token that changes too often.
//!
//! # Token updates
//! Each key has a *current* token: the first valid token seen for it, then each accepted
//! update. A request's token, once its signature, `iss` and age have been checked, is
//! - the current token: accepted;
//! - a different token with an *older* `iat`: accepted and nothing changes (an instance that
//!   has not yet moved to the new token, or a token from another server still under an hour
//!   old; Apple accepts several valid tokens);
//! - a different token with the same or a newer `iat`: an **update**. It becomes the current
//!   token, unless it comes less than the update interval (Apple: 20 minutes) after the key's
//!   previous update, measured on the simulator's clock; then the request gets 429
//!   `TooManyProviderTokenUpdates` and the current token stays.
//!
//! The first token a key sees is not an update, and neither is a refused token. So a client
//! that signs once and keeps its token for 20 to 60 minutes never sees the 429, while one that
//! signs per request (same `iat`, new signature), or several servers that each sign their own
//! token, do. Apple's engineers say the count is kept per team; the simulator keeps it per key,
//! which is what matters for one key shared by several instances.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context;
use jsonwebtoken::DecodingKey;
use serde::Serialize;

use crate::push::fcm::ServiceAccount;

/// How APNs judged a token against its key's token history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenUse {
    /// Accepted (current, older, first or a timely update).
    Accepted,
    /// Refused: a second update within the update interval.
    TooManyUpdates,
}

/// What the simulator knows about an APNs key (for listings; no key material).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ApnsKeyInfo {
    /// The key id (JWT `kid`).
    pub key_id: String,
    /// The team id (JWT `iss`).
    pub team_id: String,
    /// Whether the key was revoked.
    pub revoked: bool,
}

/// What the simulator knows about an FCM service account (for listings; no key material).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FcmAccountInfo {
    /// The account (assertion `iss`).
    pub client_email: String,
    /// The project its access tokens may send to.
    pub project_id: String,
    /// Whether the account was revoked.
    pub revoked: bool,
}

struct CurrentToken {
    token: String,
    iat: i64,
    /// Simulator time (unix ms) of the last accepted update; `None` before the first.
    updated_at_ms: Option<i64>,
}

struct ApnsKey {
    team_id: String,
    verifier: DecodingKey,
    revoked: bool,
    current: Option<CurrentToken>,
}

struct FcmAccount {
    project_id: String,
    verifier: DecodingKey,
    revoked: bool,
}

/// A key a token names: what verifying it needs, copied out of the lock.
pub(super) struct KnownKey {
    /// Expected `iss`.
    pub team_id: String,
    /// ES256 public key.
    pub verifier: DecodingKey,
    /// Whether `token` is already the key's current token (its signature was checked then).
    pub is_current: bool,
}

/// A service account an assertion or access token names.
pub(super) struct KnownAccount {
    /// The project its tokens may send to.
    pub project_id: String,
    /// RS256 public key.
    pub verifier: DecodingKey,
}

/// The simulator's APNs keys and FCM service accounts.
pub(super) struct Identities {
    apns: Mutex<HashMap<String, ApnsKey>>,
    fcm: Mutex<HashMap<String, FcmAccount>>,
    update_interval_ms: i64,
}

impl Identities {
    /// No identities yet; updates closer than `update_interval_secs` are refused.
    pub fn new(update_interval_secs: u64) -> Self {
        Self {
            apns: Mutex::new(HashMap::new()),
            fcm: Mutex::new(HashMap::new()),
            update_interval_ms: update_interval_secs.saturating_mul(1000) as i64,
        }
    }

    /// Adds (or replaces, un-revoked and with no token history) an APNs key; `pem` is the
    /// `.p8` private key or its public key.
    pub fn add_apns_key(&self, key_id: &str, team_id: &str, pem: &str) -> anyhow::Result<()> {
        let verifier = apns_verifier(pem)?;
        let key = ApnsKey {
            team_id: team_id.to_string(),
            verifier,
            revoked: false,
            current: None,
        };
        lock(&self.apns).insert(key_id.to_string(), key);
        Ok(())
    }

    /// Adds (or replaces, un-revoked) a service account.
    pub fn add_fcm_account(&self, account: &ServiceAccount) -> anyhow::Result<()> {
        let verifier = rsa_verifier(&account.private_key).with_context(|| {
            format!(
                "service account {}: private_key is not a PKCS#8 RSA key",
                account.client_email
            )
        })?;
        let entry = FcmAccount {
            project_id: account.project_id.clone(),
            verifier,
            revoked: false,
        };
        lock(&self.fcm).insert(account.client_email.clone(), entry);
        Ok(())
    }

    /// Revokes an APNs key; false when it is unknown.
    pub fn revoke_apns_key(&self, key_id: &str) -> bool {
        lock(&self.apns)
            .get_mut(key_id)
            .map(|k| k.revoked = true)
            .is_some()
    }

    /// Revokes a service account; false when it is unknown.
    pub fn revoke_fcm_account(&self, client_email: &str) -> bool {
        lock(&self.fcm)
            .get_mut(client_email)
            .map(|a| a.revoked = true)
            .is_some()
    }

    /// The APNs keys, sorted by key id.
    pub fn apns_keys(&self) -> Vec<ApnsKeyInfo> {
        let mut keys: Vec<ApnsKeyInfo> = lock(&self.apns)
            .iter()
            .map(|(id, k)| ApnsKeyInfo {
                key_id: id.clone(),
                team_id: k.team_id.clone(),
                revoked: k.revoked,
            })
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        keys
    }

    /// The service accounts, sorted by client email.
    pub fn fcm_accounts(&self) -> Vec<FcmAccountInfo> {
        let mut accounts: Vec<FcmAccountInfo> = lock(&self.fcm)
            .iter()
            .map(|(email, a)| FcmAccountInfo {
                client_email: email.clone(),
                project_id: a.project_id.clone(),
                revoked: a.revoked,
            })
            .collect();
        accounts.sort_by(|a, b| a.client_email.cmp(&b.client_email));
        accounts
    }

    /// The usable (known, not revoked) key `key_id`.
    pub fn apns_key(&self, key_id: &str, token: &str) -> Option<KnownKey> {
        let keys = lock(&self.apns);
        let key = keys.get(key_id).filter(|k| !k.revoked)?;
        Some(KnownKey {
            team_id: key.team_id.clone(),
            verifier: key.verifier.clone(),
            is_current: key.current.as_ref().is_some_and(|c| c.token == token),
        })
    }

    /// The usable (known, not revoked) account `client_email`.
    pub fn fcm_account(&self, client_email: &str) -> Option<KnownAccount> {
        let accounts = lock(&self.fcm);
        let account = accounts.get(client_email).filter(|a| !a.revoked)?;
        Some(KnownAccount {
            project_id: account.project_id.clone(),
            verifier: account.verifier.clone(),
        })
    }

    /// Applies the update rule (module comment) to a verified `token` of `key_id` issued at
    /// `iat`, at simulator time `now_ms`.
    pub fn use_apns_token(&self, key_id: &str, token: &str, iat: i64, now_ms: i64) -> TokenUse {
        let mut keys = lock(&self.apns);
        let Some(key) = keys.get_mut(key_id) else {
            return TokenUse::Accepted;
        };
        let Some(current) = key.current.as_mut() else {
            key.current = Some(CurrentToken {
                token: token.to_string(),
                iat,
                updated_at_ms: None,
            });
            return TokenUse::Accepted;
        };
        if current.token == token || iat < current.iat {
            return TokenUse::Accepted;
        }
        if current
            .updated_at_ms
            .is_some_and(|at| now_ms - at < self.update_interval_ms)
        {
            return TokenUse::TooManyUpdates;
        }
        *current = CurrentToken {
            token: token.to_string(),
            iat,
            updated_at_ms: Some(now_ms),
        };
        TokenUse::Accepted
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ES256 verification key: from a public-key PEM, or derived from the `.p8` private key.
fn apns_verifier(pem: &str) -> anyhow::Result<DecodingKey> {
    if pem.contains("BEGIN PUBLIC KEY") {
        return DecodingKey::from_ec_pem(pem.as_bytes()).context("not an EC public key");
    }
    let pair = rcgen::KeyPair::from_pem(pem).context("not a PKCS#8 EC key")?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256),
        "not a P-256 key"
    );
    Ok(DecodingKey::from_ec_der(pair.public_key_raw()))
}

fn rsa_verifier(private_pem: &str) -> anyhow::Result<DecodingKey> {
    let pair = rcgen::KeyPair::from_pem(private_pem)?;
    anyhow::ensure!(
        pair.is_compatible(&rcgen::PKCS_RSA_SHA256),
        "not an RSA key"
    );
    // ring's raw RSA public key is the PKCS#1 DER that jsonwebtoken expects.
    Ok(DecodingKey::from_rsa_der(pair.public_key_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn identities() -> Identities {
        let ids = Identities::new(20 * 60);
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/certs/AuthKey_SIMKEY0001.p8"
        ))
        .unwrap();
        ids.add_apns_key("SIMKEY0001", "SIMTEAM001", &pem).unwrap();
        ids
    }

    #[test]
    fn first_token_and_one_update_are_free_but_a_second_within_twenty_minutes_is_refused() {
        let ids = identities();
        let k = "SIMKEY0001";
        assert_eq!(ids.use_apns_token(k, "t0", 100, 0), TokenUse::Accepted);
        assert_eq!(ids.use_apns_token(k, "t1", 100, MIN), TokenUse::Accepted);
        assert_eq!(
            ids.use_apns_token(k, "t2", 200, 2 * MIN),
            TokenUse::TooManyUpdates
        );
        // The refused token did not become current; the current one still works.
        assert_eq!(
            ids.use_apns_token(k, "t1", 100, 3 * MIN),
            TokenUse::Accepted
        );
        assert_eq!(
            ids.use_apns_token(k, "t2", 200, 21 * MIN),
            TokenUse::Accepted
        );
    }

    #[test]
    fn older_tokens_are_accepted_without_counting_as_updates() {
        let ids = identities();
        let k = "SIMKEY0001";
        ids.use_apns_token(k, "new", 3000, 0);
        ids.use_apns_token(k, "newer", 6000, MIN);
        for i in 0..10 {
            assert_eq!(
                ids.use_apns_token(k, "new", 3000, (2 + i) * MIN),
                TokenUse::Accepted
            );
        }
    }

    #[test]
    fn revoked_and_unknown_keys_are_not_usable() {
        let ids = identities();
        assert!(ids.apns_key("SIMKEY0001", "t").is_some());
        assert!(ids.apns_key("NOSUCHKEY0", "t").is_none());
        assert!(ids.revoke_apns_key("SIMKEY0001"));
        assert!(!ids.revoke_apns_key("NOSUCHKEY0"));
        assert!(ids.apns_key("SIMKEY0001", "t").is_none());
        assert!(ids.apns_keys()[0].revoked);
    }
}
