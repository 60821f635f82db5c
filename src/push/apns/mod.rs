//! APNs sender: owns its settings, provider token, request building, response mapping and
//! wire vocabulary; the rest of the crate sees only [`Outcome`].

mod auth;
pub mod request;
pub mod response;
pub mod settings;
pub mod wire;

use std::time::Duration;

use self::auth::{signing_key_from_pem, JwtSigner, SigningError};
pub use self::request::{ApnsRequest, DeliveryOptions};
pub use self::response::map_response;
pub use self::settings::ApnsConfig;
use self::wire::reason;
use super::clock::Clock;
use super::outcome::Outcome;
use super::pool::{H2Pool, PoolConfig, PoolStats};
use super::target::Target;
use crate::model::{ApnsEnvironment, Notification};
use crate::redact::Redacted;
use anyhow::Context;
use http::header::{HeaderValue, AUTHORIZATION};

/// Sends to APNs with token-based authentication.
pub struct ApnsSender {
    production: H2Pool,
    sandbox: H2Pool,
    signer: JwtSigner,
    default_topic: Option<String>,
    clock: Clock,
}

impl ApnsSender {
    /// Loads the `.p8` key and prepares both hosts' pools (connections open on first use).
    pub fn new(config: &ApnsConfig, clock: Clock) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(&config.key_path)
            .with_context(|| format!("apns.key_path: reading {}", config.key_path.display()))?;
        let key = signing_key_from_pem(&pem).with_context(|| {
            format!(
                "apns.key_path: {} is not a PKCS#8 EC P-256 key (.p8)",
                config.key_path.display()
            )
        })?;
        let pool = |endpoint: &str| {
            H2Pool::new(&PoolConfig {
                endpoint: endpoint.to_string(),
                size: config.pool_size,
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                extra_root_certs: config.extra_root_certs.clone(),
                keep_idle_connections: true,
            })
        };
        let signer = JwtSigner::new(
            key,
            config.key_id.clone(),
            config.team_id.clone(),
            config.jwt_refresh_secs as i64,
            clock.clone(),
        );
        // Fail at startup, not on the first send, if the key cannot sign.
        signer
            .token()
            .context("apns.key_path: signing a provider token")?;
        Ok(Self {
            production: pool(&config.endpoint).context("apns.endpoint")?,
            sandbox: pool(&config.sandbox_endpoint).context("apns.sandbox_endpoint")?,
            signer,
            default_topic: config.default_topic.clone(),
            clock,
        })
    }

    /// Counters for the production and sandbox pools.
    pub fn stats(&self) -> (PoolStats, PoolStats) {
        (self.production.stats(), self.sandbox.stats())
    }

    /// Sends `n` to the device in `target`.
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        let Some(topic) = target.topic.as_deref().or(self.default_topic.as_deref()) else {
            return Outcome::failed(reason::MISSING_TOPIC);
        };
        if !is_hex_token(&target.token) {
            // Never a valid APNs token, and it cannot go into the request path.
            return Outcome::InvalidToken {
                reason: reason::BAD_DEVICE_TOKEN.into(),
                timestamp: None,
            };
        }
        let request = match ApnsRequest::build(n, topic, self.clock.unix_secs()) {
            Ok(request) => request,
            Err(outcome) => return outcome,
        };
        let pool = match target.environment {
            ApnsEnvironment::Production => &self.production,
            ApnsEnvironment::Sandbox => &self.sandbox,
        };
        let path = wire::device_path(&target.token);
        let mut jwt = match self.signer.token() {
            Ok(jwt) => jwt,
            Err(e) => return signing_failed(&e),
        };
        let mut headers = request.headers;
        let mut refreshed = false;
        loop {
            let Ok(bearer) = HeaderValue::from_str(&format!("bearer {jwt}")) else {
                return Outcome::failed("ProviderTokenSigningFailed");
            };
            headers.insert(AUTHORIZATION, bearer);
            let response = match pool.post(&path, &headers, request.payload.clone()).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(endpoint = pool.authority(), token = %Redacted(&target.token),
                        error = %e, "APNs request failed");
                    return Outcome::transport_retry(&e);
                }
            };
            let outcome = map_response(&response, &request.apns_id);
            if response::is_expired_provider_token(&response) && !refreshed {
                refreshed = true;
                match self.signer.refresh(&jwt) {
                    // Resending the same token would only be refused again.
                    Ok(fresh) if fresh != jwt => {
                        jwt = fresh;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return signing_failed(&e),
                }
            }
            if !matches!(outcome, Outcome::Delivered { .. }) {
                tracing::debug!(token = %Redacted(&target.token), status = response.status.as_u16(),
                    outcome = ?outcome, "APNs did not deliver");
            }
            return outcome;
        }
    }
}

fn signing_failed(e: &SigningError) -> Outcome {
    tracing::error!(error = %e, "signing the APNs provider token failed");
    Outcome::failed("ProviderTokenSigningFailed")
}

fn is_hex_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 400 && token.bytes().all(|b| b.is_ascii_hexdigit())
}
