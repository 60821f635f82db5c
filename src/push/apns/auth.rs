//! The APNs provider token: an ES256 JWT that every instance holding the same key computes
//! byte for byte, and replaces at the same moment.
//!
//! Apple counts a key's token updates and answers 429 `TooManyProviderTokenUpdates` when they
//! come more often than once in 20 minutes, whichever server they come from. So the token is a
//! pure function of the key and a *window* of time:
//!
//! - `iat` is the start of the current window, `floor(now / refresh) * refresh`, where
//!   `refresh` is `apns.jwt_refresh_secs` (20 to 55 minutes). Two instances with the same key
//!   and refresh agree on `iat` without talking to each other.
//! - The signature is deterministic ECDSA (RFC 6979), and the header and claims are serialized
//!   in a fixed order, so the same key and `iat` give the same bytes.
//! - The window never moves backwards, so one signer's successive tokens are at least
//!   `refresh` apart, and across instances the only tokens that exist are one per window.
//!
//! A 403 `ExpiredProviderToken` proves that APNs's clock has passed `iat + 1 hour` of the
//! rejected token, so our clock lags. Signing again with the same clock would give the same
//! token, and signing with `iat = now` would give each instance its own token (one update per
//! instance). Instead the replacement is the token of the newest window start that APNs has
//! provably reached: `floor((iat + 1 hour) / refresh) * refresh`, capped at one hour ahead of our
//! clock. Every instance that sees the rejection computes the same replacement, it is at least
//! `refresh` newer than the rejected token, and it is the token these instances would have
//! moved to at a later boundary anyway: an early update, never an extra one.

use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use serde::Serialize;

use super::wire::MAX_PROVIDER_TOKEN_AGE_SECS;
use crate::clock::Clock;

/// Why a provider token could not be produced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SigningError {
    /// The header or claims did not serialize.
    #[error("encoding the provider token: {0}")]
    Json(#[from] serde_json::Error),
    /// The ECDSA signer refused.
    #[error("ES256 signing: {0}")]
    Ecdsa(#[from] p256::ecdsa::Error),
}

/// Signs one provider token with `key`, to prove an uploaded key can sign.
pub(crate) fn check_signs(
    key: &SigningKey,
    key_id: &str,
    team_id: &str,
) -> Result<(), SigningError> {
    JwtSigner::new(
        key.clone(),
        key_id.into(),
        team_id.into(),
        1,
        Clock::system(),
    )
    .sign(0)
    .map(drop)
}

/// Reads a `.p8` key (PKCS#8 PEM, EC P-256).
pub(crate) fn signing_key_from_pem(pem: &str) -> Result<SigningKey, p256::pkcs8::Error> {
    SigningKey::from_pkcs8_pem(pem)
}

/// Apple's documented header, exactly `{alg, kid}`, in that order.
#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

struct CachedJwt {
    token: String,
    window: i64,
}

/// Produces the provider token of the current window, signing it once per window.
pub(super) struct JwtSigner {
    key: SigningKey,
    key_id: String,
    team_id: String,
    refresh_secs: i64,
    clock: Clock,
    cached: Mutex<Option<CachedJwt>>,
}

impl JwtSigner {
    /// A signer for `key` with windows of `refresh_secs` (at least one second).
    pub(super) fn new(
        key: SigningKey,
        key_id: String,
        team_id: String,
        refresh_secs: i64,
        clock: Clock,
    ) -> Self {
        Self {
            key,
            key_id,
            team_id,
            refresh_secs: refresh_secs.max(1),
            clock,
            cached: Mutex::new(None),
        }
    }

    /// The current window's token (or a newer one that [`Self::refresh`] moved to).
    pub(super) fn token(&self) -> Result<String, SigningError> {
        let window = self.clock.unix_secs().div_euclid(self.refresh_secs);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.window >= window {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.sign(window)?;
        *cached = Some(CachedJwt {
            token: fresh.clone(),
            window,
        });
        Ok(fresh)
    }

    /// The token to resend with after APNs refused `stale` as expired: the newest window that
    /// APNs's answer proves it has reached. Returns `stale` itself when nothing newer is
    /// justified (the caller then does not resend); concurrent callers share one replacement.
    pub(super) fn refresh(&self, stale: &str) -> Result<String, SigningError> {
        let now = self.clock.unix_secs();
        let current = now.div_euclid(self.refresh_secs);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let stale_window = match cached.as_ref() {
            Some(c) if c.token != stale => return Ok(c.token.clone()),
            Some(c) => c.window,
            None => current,
        };
        let proven = (stale_window * self.refresh_secs + MAX_PROVIDER_TOKEN_AGE_SECS)
            .div_euclid(self.refresh_secs);
        let cap = (now + MAX_PROVIDER_TOKEN_AGE_SECS).div_euclid(self.refresh_secs);
        let window = proven.min(cap).max(current);
        if window <= stale_window {
            return Ok(stale.to_string());
        }
        let fresh = self.sign(window)?;
        *cached = Some(CachedJwt {
            token: fresh.clone(),
            window,
        });
        Ok(fresh)
    }

    fn sign(&self, window: i64) -> Result<String, SigningError> {
        let header = serde_json::to_vec(&JwtHeader {
            alg: "ES256",
            kid: &self.key_id,
        })?;
        let claims = serde_json::to_vec(&Claims {
            iss: &self.team_id,
            iat: window * self.refresh_secs,
        })?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        // RFC 6979: the nonce comes from the key and the message, so the bytes are repeatable.
        let signature: Signature = self.key.try_sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: i64 = 50 * 60;

    fn key() -> SigningKey {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/certs/AuthKey_SIMKEY0001.p8"
        ))
        .unwrap();
        signing_key_from_pem(&pem).unwrap()
    }

    fn signer(clock: &Clock) -> JwtSigner {
        JwtSigner::new(
            key(),
            "SIMKEY0001".into(),
            "SIMTEAM001".into(),
            REFRESH,
            clock.clone(),
        )
    }

    fn iat(token: &str) -> i64 {
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["iat"].as_i64().unwrap()
    }

    /// A clock at `secs` past a window boundary.
    fn clock_into_window(secs: i64) -> Clock {
        let clock = Clock::system();
        let now = clock.unix_secs();
        clock.shift(-now.rem_euclid(REFRESH) + secs);
        clock
    }

    #[test]
    fn two_signers_on_the_same_key_and_clock_produce_the_same_token() {
        let clock = clock_into_window(600);
        let a = signer(&clock).token().unwrap();
        let b = signer(&clock).token().unwrap();
        assert_eq!(a, b);
        assert_eq!(iat(&a) % REFRESH, 0);
        // And it verifies as ES256 under the key's public half.
        let public = key().verifying_key().to_encoded_point(false);
        let decoding = jsonwebtoken::DecodingKey::from_ec_der(public.as_bytes());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&a, &decoding, &validation).unwrap();
        let header = jsonwebtoken::decode_header(&a).unwrap();
        assert_eq!(header.kid.as_deref(), Some("SIMKEY0001"));
        assert_eq!(header.typ, None);
    }

    #[test]
    fn token_changes_exactly_at_the_window_boundary() {
        let clock = clock_into_window(REFRESH - 1);
        let s = signer(&clock);
        let before = s.token().unwrap();
        clock.shift(1);
        let after = s.token().unwrap();
        assert_ne!(before, after);
        assert_eq!(iat(&after) - iat(&before), REFRESH);
        // A signer started after the boundary agrees.
        assert_eq!(signer(&clock).token().unwrap(), after);
    }

    #[test]
    fn tokens_never_change_more_than_once_per_twenty_minutes() {
        let clock = clock_into_window(0);
        let s = signer(&clock);
        let mut changes = Vec::new();
        let mut last = s.token().unwrap();
        // About three hours in 7-second steps, with the clock stepping back now and then.
        for step in 0..3000 {
            clock.shift(if step % 97 == 0 { -300 } else { 7 });
            let token = s.token().unwrap();
            if token != last {
                changes.push(iat(&token));
                assert!(iat(&token) > iat(&last), "the window never moves back");
                last = token;
            }
        }
        assert!(changes.len() >= 2);
        assert!(changes.windows(2).all(|w| w[1] - w[0] >= 20 * 60));
    }

    #[test]
    fn expired_answer_moves_every_instance_to_the_same_newer_window() {
        let clock = clock_into_window(120);
        let (a, b) = (signer(&clock), signer(&clock));
        let stale = a.token().unwrap();
        assert_eq!(b.token().unwrap(), stale);

        let fresh = a.refresh(&stale).unwrap();
        assert_eq!(b.refresh(&stale).unwrap(), fresh);
        assert_eq!(iat(&fresh) - iat(&stale), REFRESH);
        // A second caller holding the stale token gets the replacement, not a third token.
        assert_eq!(a.refresh(&stale).unwrap(), fresh);
        // It stays in use until the clock passes its window.
        assert_eq!(a.token().unwrap(), fresh);
        clock.shift(REFRESH);
        assert_eq!(a.token().unwrap(), fresh);
    }

    #[test]
    fn expired_answers_never_run_more_than_an_hour_ahead_of_the_clock() {
        let clock = clock_into_window(0);
        let s = signer(&clock);
        let mut token = s.token().unwrap();
        for _ in 0..5 {
            let next = s.refresh(&token).unwrap();
            if next == token {
                break;
            }
            assert!(iat(&next) - iat(&token) >= 20 * 60);
            token = next;
        }
        assert!(iat(&token) <= clock.unix_secs() + MAX_PROVIDER_TOKEN_AGE_SECS);
        assert_eq!(
            s.refresh(&token).unwrap(),
            token,
            "nothing newer is justified"
        );
    }
}
