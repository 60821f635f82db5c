//! APNs sender: a2-built payloads, ES256 provider tokens, and response-to-[`Outcome`] mapping.

use std::sync::Mutex;
use std::time::Duration;

use a2::request::notification::{DefaultNotificationBuilder, NotificationBuilder};
use a2::ErrorReason;
use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pool::{H2Pool, PoolConfig, PoolStats, ProviderResponse};
use super::{retry_after, short, ApnsConfig, Clock, Outcome, Target};
use crate::model::{ApnsEnvironment, Notification, Priority};

/// Apple's production host.
pub const PRODUCTION_ENDPOINT: &str = "https://api.push.apple.com";
/// Apple's development host.
pub const SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";
/// Payload limit for every push type but VoIP.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Payload limit for VoIP pushes.
pub const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;
/// Limit on `apns-collapse-id`.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

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
        let pem = std::fs::read(&config.key_path)
            .with_context(|| format!("apns.key_path: reading {}", config.key_path.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).with_context(|| {
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
        let signer = JwtSigner {
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            refresh_after_secs: config.jwt_refresh_secs as i64,
            clock: clock.clone(),
            cached: Mutex::new(None),
        };
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
            return failed("MissingTopic");
        };
        if !is_hex_token(&target.token) {
            // Never a valid APNs token, and it cannot go into the request path.
            return Outcome::InvalidToken {
                reason: "BadDeviceToken".into(),
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
        let path = format!("/3/device/{}", target.token);
        let mut jwt = match self.signer.token() {
            Ok(jwt) => jwt,
            Err(e) => {
                tracing::error!(error = %e, "signing the APNs provider token failed");
                return failed("ProviderTokenSigningFailed");
            }
        };
        let mut headers = request.headers;
        let mut refreshed = false;
        loop {
            let Ok(bearer) = HeaderValue::from_str(&format!("bearer {jwt}")) else {
                return failed("ProviderTokenSigningFailed");
            };
            headers.insert(AUTHORIZATION, bearer);
            let response = match pool.post(&path, &headers, request.payload.clone()).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(endpoint = pool.authority(), token = %short(&target.token),
                        error = %e, "APNs request failed");
                    return Outcome::Retry {
                        after: None,
                        reason: e.reason().into(),
                    };
                }
            };
            let outcome = map_response(&response, &request.apns_id);
            if is_expired_provider_token(&response) && !refreshed {
                refreshed = true;
                match self.signer.refresh(&jwt) {
                    Ok(fresh) => {
                        jwt = fresh;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "signing the APNs provider token failed");
                        return failed("ProviderTokenSigningFailed");
                    }
                }
            }
            if !matches!(outcome, Outcome::Delivered { .. }) {
                tracing::debug!(token = %short(&target.token), status = response.status.as_u16(),
                    outcome = ?outcome, "APNs did not deliver");
            }
            return outcome;
        }
    }
}

fn failed(reason: &str) -> Outcome {
    Outcome::Failed {
        reason: reason.into(),
    }
}

fn is_hex_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 400 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A rendered APNs request, minus the `authorization` header.
#[derive(Debug)]
pub struct ApnsRequest {
    /// The JSON payload.
    pub payload: Bytes,
    /// `apns-*` headers.
    pub headers: HeaderMap,
    /// The `apns-id` we assigned.
    pub apns_id: String,
}

impl ApnsRequest {
    /// Builds payload and headers, or the [`Outcome::Failed`] that makes sending pointless.
    pub fn build(n: &Notification, topic: &str, now_secs: i64) -> Result<Self, Outcome> {
        let push_type = n.push_type.clone().unwrap_or_else(|| {
            if n.is_background() {
                "background"
            } else {
                "alert"
            }
            .to_string()
        });
        let payload = payload_json(n).map_err(|e| {
            tracing::error!(error = %e, "serializing an APNs payload failed");
            failed("PayloadSerializationFailed")
        })?;
        let limit = if push_type == "voip" {
            MAX_VOIP_PAYLOAD_BYTES
        } else {
            MAX_PAYLOAD_BYTES
        };
        if payload.len() > limit {
            return Err(failed("PayloadTooLarge"));
        }
        let priority = match n.priority {
            Some(Priority::High) => "10",
            Some(Priority::Normal) => "5",
            // Apple rejects priority 10 for background pushes.
            None if push_type == "background" => "5",
            None => "10",
        };
        let apns_id = uuid::Uuid::new_v4().to_string();
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| -> Result<(), Outcome> {
            let value = HeaderValue::from_str(value).map_err(|_| failed(bad_header(name)))?;
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        set("apns-topic", topic)?;
        set("apns-push-type", &push_type)?;
        set("apns-priority", priority)?;
        set("apns-id", &apns_id)?;
        if let Some(ttl) = n.ttl_seconds {
            let expiration = if ttl == 0 {
                0
            } else {
                now_secs.saturating_add(ttl.min(i64::MAX as u64) as i64)
            };
            set("apns-expiration", &expiration.to_string())?;
        }
        if let Some(collapse) = &n.collapse_key {
            if collapse.len() > MAX_COLLAPSE_ID_BYTES {
                return Err(failed("BadCollapseId"));
            }
            set("apns-collapse-id", collapse)?;
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Self {
            payload: Bytes::from(payload),
            headers,
            apns_id,
        })
    }
}

fn bad_header(name: &str) -> &'static str {
    match name {
        "apns-topic" => "BadTopic",
        "apns-collapse-id" => "BadCollapseId",
        "apns-push-type" => "InvalidPushType",
        _ => "BadHeader",
    }
}

/// The `aps` dictionary from a2's builder, plus `thread-id` (not in a2) and custom data.
fn payload_json(n: &Notification) -> Result<Vec<u8>, serde_json::Error> {
    let mut builder = DefaultNotificationBuilder::new();
    if let Some(title) = &n.title {
        builder = builder.set_title(title);
    }
    if let Some(subtitle) = &n.subtitle {
        builder = builder.set_subtitle(subtitle);
    }
    if let Some(body) = &n.body {
        builder = builder.set_body(body);
    }
    if let Some(badge) = n.badge {
        builder = builder.set_badge(badge);
    }
    if let Some(sound) = &n.sound {
        builder = builder.set_sound(sound);
    }
    if let Some(category) = &n.category {
        builder = builder.set_category(category);
    }
    if n.mutable_content {
        builder = builder.set_mutable_content();
    }
    if n.content_available {
        builder = builder.set_content_available();
    }
    let mut payload = builder.build("", Default::default());
    for (key, value) in &n.data {
        // `aps` belongs to Apple; a custom key of that name would clobber it.
        if key != "aps" {
            payload.data.insert(key, Value::String(value.clone()));
        }
    }
    let mut json = serde_json::to_value(&payload)?;
    if let (Some(thread), Some(aps)) = (&n.thread_id, json.get_mut("aps")) {
        if let Some(aps) = aps.as_object_mut() {
            aps.insert("thread-id".into(), Value::String(thread.clone()));
        }
    }
    serde_json::to_vec(&json)
}

fn is_expired_provider_token(response: &ProviderResponse) -> bool {
    response.status == StatusCode::FORBIDDEN
        && serde_json::from_slice::<ErrorBody>(&response.body)
            .is_ok_and(|b| b.reason == "ExpiredProviderToken")
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: String,
    timestamp: Option<i64>,
}

/// Maps an APNs response to an [`Outcome`] (Apple's table in DESIGN.md).
pub fn map_response(response: &ProviderResponse, apns_id: &str) -> Outcome {
    let status = response.status;
    if status == StatusCode::OK {
        let provider_id = response
            .headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(apns_id)
            .to_string();
        return Outcome::Delivered { provider_id };
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
    let timestamp = body.as_ref().and_then(|b| b.timestamp);
    let reason = body
        .map(|b| b.reason)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let known: Option<ErrorReason> = serde_json::from_value(Value::String(reason.clone())).ok();
    let retry = |reason: String| Outcome::Retry {
        after: retry_after(&response.headers),
        reason,
    };
    match known {
        Some(ErrorReason::Unregistered) => Outcome::InvalidToken { reason, timestamp },
        Some(ErrorReason::BadDeviceToken | ErrorReason::DeviceTokenNotForTopic) => {
            Outcome::InvalidToken {
                reason,
                timestamp: None,
            }
        }
        Some(
            ErrorReason::TooManyRequests
            | ErrorReason::InternalServerError
            | ErrorReason::ServiceUnavailable
            | ErrorReason::Shutdown
            | ErrorReason::IdleTimeout
            | ErrorReason::ExpiredProviderToken
            | ErrorReason::TooManyProviderTokenUpdates,
        ) => retry(reason),
        // Newer than a2's vocabulary; Apple documents it next to Unregistered.
        None if reason == "ExpiredToken" => Outcome::InvalidToken { reason, timestamp },
        _ if status == StatusCode::GONE => Outcome::InvalidToken { reason, timestamp },
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => retry(reason),
        _ => Outcome::Failed { reason },
    }
}

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
struct JwtSigner {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    refresh_after_secs: i64,
    clock: Clock,
    cached: Mutex<Option<CachedJwt>>,
}

impl JwtSigner {
    fn token(&self) -> Result<String, jsonwebtoken::errors::Error> {
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
    fn refresh(&self, stale: &str) -> Result<String, jsonwebtoken::errors::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_thread_id_and_custom_data() {
        let n = Notification {
            title: Some("Hi".into()),
            body: Some("There".into()),
            thread_id: Some("t1".into()),
            data: [("order".to_string(), "42".to_string())].into(),
            ..Notification::default()
        };
        let json: Value = serde_json::from_slice(&payload_json(&n).unwrap()).unwrap();
        assert_eq!(json["aps"]["thread-id"], "t1");
        assert_eq!(json["aps"]["alert"]["title"], "Hi");
        assert_eq!(json["order"], "42");
    }

    #[test]
    fn oversized_payload_fails_before_sending() {
        let n = Notification {
            body: Some("x".repeat(5000)),
            ..Notification::default()
        };
        let err = ApnsRequest::build(&n, "com.example", 0).unwrap_err();
        assert_eq!(err, failed("PayloadTooLarge"));
        let voip = Notification {
            body: Some("x".repeat(4500)),
            push_type: Some("voip".into()),
            ..Notification::default()
        };
        assert!(ApnsRequest::build(&voip, "com.example.voip", 0).is_ok());
    }

    #[test]
    fn background_push_defaults_to_priority_5() {
        let n = Notification {
            content_available: true,
            ..Notification::default()
        };
        let req = ApnsRequest::build(&n, "com.example", 0).unwrap();
        assert_eq!(req.headers["apns-push-type"], "background");
        assert_eq!(req.headers["apns-priority"], "5");
    }
}
