//! APNs sender: owns its settings, provider token, request building, response mapping and
//! wire vocabulary; the rest of the crate sees only [`Outcome`].

pub(crate) mod auth;
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
use super::credentials::ApnsCredential;
use super::outcome::Outcome;
use super::pool::{ConnectionCap, H2Pool, PoolConfig, PoolStats};
use super::target::Target;
use crate::clock::Clock;
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
    environment: Option<ApnsEnvironment>,
    clock: Clock,
}

impl ApnsSender {
    /// Prepares a sender for `key` with the global `settings` (hosts, roots, timeouts); the
    /// pools open their connections on first use, under the global `connections` cap.
    pub fn new(
        settings: &ApnsConfig,
        key: &ApnsCredential,
        clock: Clock,
        connections: &ConnectionCap,
    ) -> anyhow::Result<Self> {
        let signing_key = signing_key_from_pem(&key.private_key)
            .context("the APNs key is not a PKCS#8 EC P-256 key (.p8)")?;
        let pool = |endpoint: &str| {
            H2Pool::new(&PoolConfig {
                endpoint: endpoint.to_string(),
                size: settings.pool_size,
                request_timeout: Duration::from_millis(settings.request_timeout_ms),
                extra_root_certs: settings.extra_root_certs.clone(),
                keep_idle_connections: true,
                cap: Some(connections.clone()),
            })
        };
        let signer = JwtSigner::new(
            signing_key,
            key.key_id.clone(),
            key.team_id.clone(),
            settings.jwt_refresh_secs as i64,
            clock.clone(),
        );
        // Fail now, not on the first send, if the key cannot sign.
        signer.token().context("signing an APNs provider token")?;
        Ok(Self {
            production: pool(&settings.endpoint).context("apns.endpoint")?,
            sandbox: pool(&settings.sandbox_endpoint).context("apns.sandbox_endpoint")?,
            signer,
            default_topic: key.default_topic.clone(),
            environment: key.environment,
            clock,
        })
    }

    /// The config file's key, read from `apns.key_path`.
    pub fn config_key(settings: &ApnsConfig) -> anyhow::Result<ApnsCredential> {
        let pem = std::fs::read_to_string(&settings.key_path)
            .with_context(|| format!("apns.key_path: reading {}", settings.key_path.display()))?;
        let key = ApnsCredential {
            key_id: settings.key_id.clone(),
            team_id: settings.team_id.clone(),
            private_key: pem,
            default_topic: settings.default_topic.clone(),
            environment: None,
        };
        signing_key_from_pem(&key.private_key).with_context(|| {
            format!(
                "apns.key_path: {} is not a PKCS#8 EC P-256 key (.p8)",
                settings.key_path.display()
            )
        })?;
        Ok(key)
    }

    /// The topic sends fall back to when a device has none.
    pub fn default_topic(&self) -> Option<&str> {
        self.default_topic.as_deref()
    }

    /// Closes connections unused for `idle`; returns how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        self.production.close_idle(idle) + self.sandbox.close_idle(idle)
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
            // Never a valid APNs token, and it cannot go into the request path; the device
            // is kept (suspect), as for Apple's own BadDeviceToken.
            return Outcome::TokenRejected {
                reason: reason::BAD_DEVICE_TOKEN.into(),
            };
        }
        let request = match ApnsRequest::build(n, topic, self.clock.unix_secs()) {
            Ok(request) => request,
            Err(outcome) => return outcome,
        };
        if self
            .environment
            .is_some_and(|only| only != target.environment)
        {
            // The key is limited to the other environment: no send with it can succeed, but
            // the device is fine and the other devices are not affected.
            return Outcome::failed(reason::KEY_NOT_FOR_ENVIRONMENT);
        }
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
                return Outcome::credential("ProviderTokenSigningFailed");
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
            let mut outcome = map_response(&response, &request.apns_id);
            if target.topic.is_none()
                && matches!(&outcome, Outcome::Failed { reason: r } if r == reason::BAD_TOPIC)
            {
                // The credential's default topic is bad: every device without its own
                // topic would fail alike, so it is the credential's problem.
                outcome = Outcome::credential(reason::BAD_TOPIC);
            }
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
    Outcome::credential("ProviderTokenSigningFailed")
}

fn is_hex_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 400 && token.bytes().all(|b| b.is_ascii_hexdigit())
}
