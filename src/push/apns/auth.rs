//! The APNs provider token: an ES256 JWT, signed once and shared until it is due for renewal.

use std::sync::Mutex;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::push::clock::Clock;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

struct CachedJwt {
    token: String,
    issued_at: i64,
}

/// Signs and caches the ES256 provider token. Apple throttles token churn, so one token is
/// shared by every request until it reaches `refresh_after_secs`.
pub(super) struct JwtSigner {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    refresh_after_secs: i64,
    clock: Clock,
    cached: Mutex<Option<CachedJwt>>,
}

impl JwtSigner {
    /// A signer for `key` (the `.p8` key) with an empty cache.
    pub(super) fn new(
        key: EncodingKey,
        key_id: String,
        team_id: String,
        refresh_after_secs: i64,
        clock: Clock,
    ) -> Self {
        Self {
            key,
            key_id,
            team_id,
            refresh_after_secs,
            clock,
            cached: Mutex::new(None),
        }
    }

    /// The current token, signing a new one when the cached one is due.
    pub(super) fn token(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = self.clock.unix_secs();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref() {
            if now - c.issued_at < self.refresh_after_secs && now >= c.issued_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.sign(now)?;
        *cached = Some(CachedJwt {
            token: fresh.clone(),
            issued_at: now,
        });
        Ok(fresh)
    }

    /// Replaces `stale` after APNs rejected it; concurrent callers share one replacement.
    pub(super) fn refresh(&self, stale: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = self.clock.unix_secs();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.token != stale {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.sign(now)?;
        *cached = Some(CachedJwt {
            token: fresh.clone(),
            issued_at: now,
        });
        Ok(fresh)
    }

    fn sign(&self, now: i64) -> Result<String, jsonwebtoken::errors::Error> {
        // Apple's documented header is exactly {alg, kid}.
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(
            &header,
            &Claims {
                iss: &self.team_id,
                iat: now,
            },
            &self.key,
        )
    }
}
