//! FCM HTTP v1 sender: fcm_v1 message types, our own service-account OAuth2 flow, and
//! `google.rpc.Status` error mapping.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fcm_v1::android::{AndroidConfig, AndroidMessagePriority, AndroidNotification};
use fcm_v1::apns::ApnsConfig as FcmApnsConfig;
use fcm_v1::message::{Message, Notification as FcmNotification};
use fcm_v1::webpush::WebpushConfig;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pool::{H2Pool, PoolConfig, PoolStats, ProviderResponse, TransportError};
use super::{retry_after, short, Clock, FcmConfig, Outcome};
use crate::model::{Notification, Priority};

/// Google's FCM host.
pub const PRODUCTION_ENDPOINT: &str = "https://fcm.googleapis.com";
/// The OAuth2 scope for sending.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The `@type` of FCM's error detail.
pub const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
/// The `@type` of the field-violation detail Google adds to INVALID_ARGUMENT.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// Limit on the message payload (`notification` plus `data`).
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Access tokens are replaced this long before Google says they expire.
const TOKEN_EXPIRY_MARGIN_SECS: i64 = 60;
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The fields of a service-account key file that the OAuth2 flow needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// Firebase project.
    pub project_id: String,
    /// JWT `kid`.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// RSA key, PKCS#8 PEM.
    pub private_key: String,
    /// JWT issuer.
    pub client_email: String,
    /// OAuth2 token endpoint (JWT audience).
    pub token_uri: String,
}

impl ServiceAccount {
    /// Reads a key file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a service-account key file", path.display()))
    }
}

/// Sends to FCM with a cached OAuth2 access token.
pub struct FcmSender {
    messages: H2Pool,
    send_path: String,
    auth: OAuth,
    clock: Clock,
}

impl FcmSender {
    /// Loads the service account and prepares the pools (connections open on first use).
    pub fn new(config: &FcmConfig, clock: Clock) -> anyhow::Result<Self> {
        let account = ServiceAccount::load(&config.service_account_path)
            .context("fcm.service_account_path")?;
        let project = config.project_id.as_ref().unwrap_or(&account.project_id);
        anyhow::ensure!(
            !project.is_empty()
                && project
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.'),
            "fcm.project_id: {project:?} is not a valid project id"
        );
        let token_uri = config
            .token_uri
            .clone()
            .unwrap_or_else(|| account.token_uri.clone());
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let messages = H2Pool::new(&PoolConfig {
            endpoint: config.endpoint.clone(),
            size: config.pool_size,
            request_timeout: timeout,
            extra_root_certs: config.extra_root_certs.clone(),
            keep_idle_connections: true,
        })
        .context("fcm.endpoint")?;
        let auth = OAuth::new(&account, token_uri, timeout, config, clock.clone())?;
        Ok(Self {
            messages,
            send_path: format!("/v1/projects/{project}/messages:send"),
            auth,
            clock,
        })
    }

    /// Counters for the messages pool.
    pub fn stats(&self) -> PoolStats {
        self.messages.stats()
    }

    /// Sends `n` to the registration token `token`.
    pub async fn send(&self, token: &str, n: &Notification) -> Outcome {
        let body = match request_body(token, n, self.clock.unix_secs()) {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let mut refreshed = false;
        loop {
            let access = match self.auth.access_token().await {
                Ok(access) => access,
                Err(outcome) => return outcome,
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {access}")) else {
                return failed("OAuthTokenInvalid");
            };
            headers.insert(AUTHORIZATION, bearer);
            let response = match self
                .messages
                .post(&self.send_path, &headers, body.clone())
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(endpoint = self.messages.authority(), token = %short(token),
                        error = %e, "FCM request failed");
                    return transport_retry(&e);
                }
            };
            if response.status == StatusCode::UNAUTHORIZED && !refreshed {
                // Revoked or expired early: fetch a new access token once.
                refreshed = true;
                self.auth.invalidate(&access).await;
                continue;
            }
            let outcome = map_response(&response);
            if !matches!(outcome, Outcome::Delivered { .. }) {
                tracing::debug!(token = %short(token), status = response.status.as_u16(),
                    outcome = ?outcome, "FCM did not deliver");
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

fn transport_retry(e: &TransportError) -> Outcome {
    Outcome::Retry {
        after: None,
        reason: e.reason().into(),
    }
}

#[derive(Serialize)]
struct SendRequest<'a> {
    message: &'a Message,
}

/// The `{"message": ...}` body, or the [`Outcome::Failed`] that makes sending pointless.
pub fn request_body(token: &str, n: &Notification, now_secs: i64) -> Result<Bytes, Outcome> {
    let mut message = message(n, now_secs);
    if payload_size(&message) > MAX_PAYLOAD_BYTES {
        return Err(failed("PayloadTooLarge"));
    }
    message.token = Some(token.to_string());
    serde_json::to_vec(&SendRequest { message: &message })
        .map(Bytes::from)
        .map_err(|_| failed("PayloadSerializationFailed"))
}

/// What FCM counts against its 4096-byte limit: the `notification` and `data` objects.
pub fn payload_size(message: &Message) -> usize {
    let size = |v: Result<Vec<u8>, serde_json::Error>| v.map(|b| b.len()).unwrap_or(usize::MAX);
    let notification = message
        .notification
        .as_ref()
        .map_or(0, |n| size(serde_json::to_vec(n)));
    let data = message
        .data
        .as_ref()
        .map_or(0, |d| size(serde_json::to_vec(d)));
    notification.saturating_add(data)
}

/// The FCM message for `n`, without a target.
pub fn message(n: &Notification, now_secs: i64) -> Message {
    let notification =
        (n.title.is_some() || n.body.is_some() || n.image.is_some()).then(|| FcmNotification {
            title: n.title.clone(),
            body: n.body.clone(),
            image: n.image.clone(),
        });
    // FCM data values must be strings.
    let data = (!n.data.is_empty()).then(|| {
        n.data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<HashMap<_, _>>()
    });
    Message {
        data,
        android: android_config(n),
        apns: apns_config(n, now_secs),
        webpush: webpush_config(n),
        notification,
        ..Message::default()
    }
}

fn android_config(n: &Notification) -> Option<AndroidConfig> {
    let notification =
        (n.has_alert() && (n.channel_id.is_some() || n.sound.is_some())).then(|| {
            AndroidNotification {
                channel_id: n.channel_id.clone(),
                sound: n.sound.clone(),
                ..AndroidNotification::default()
            }
        });
    let config = AndroidConfig {
        collapse_key: n.collapse_key.clone(),
        priority: n.priority.map(|p| match p {
            Priority::High => AndroidMessagePriority::High,
            Priority::Normal => AndroidMessagePriority::Normal,
        }),
        ttl: n.ttl_seconds.map(|s| format!("{s}s")),
        notification,
        ..AndroidConfig::default()
    };
    let empty = config.collapse_key.is_none()
        && config.priority.is_none()
        && config.ttl.is_none()
        && config.notification.is_none();
    (!empty).then_some(config)
}

fn apns_config(n: &Notification, now_secs: i64) -> Option<FcmApnsConfig> {
    let mut aps = serde_json::Map::new();
    if n.subtitle.is_some() {
        // FCM has no subtitle field; an explicit alert dictionary carries it.
        let mut alert = serde_json::Map::new();
        for (key, value) in [
            ("title", &n.title),
            ("subtitle", &n.subtitle),
            ("body", &n.body),
        ] {
            if let Some(v) = value {
                alert.insert(key.into(), Value::String(v.clone()));
            }
        }
        aps.insert("alert".into(), Value::Object(alert));
    }
    if let Some(badge) = n.badge {
        aps.insert("badge".into(), json!(badge));
    }
    if let Some(sound) = &n.sound {
        aps.insert("sound".into(), json!(sound));
    }
    if let Some(category) = &n.category {
        aps.insert("category".into(), json!(category));
    }
    if let Some(thread) = &n.thread_id {
        aps.insert("thread-id".into(), json!(thread));
    }
    if n.mutable_content {
        aps.insert("mutable-content".into(), json!(1));
    }
    if n.content_available {
        aps.insert("content-available".into(), json!(1));
    }
    // FCM forwards these to APNs as they are; a background push needs type and priority 5.
    let background = n.is_background();
    let mut headers = HashMap::new();
    let priority = match n.priority {
        Some(Priority::High) => Some("10"),
        Some(Priority::Normal) => Some("5"),
        None if background => Some("5"),
        None => None,
    };
    if let Some(p) = priority {
        headers.insert("apns-priority".to_string(), json!(p));
    }
    let push_type = n
        .push_type
        .as_deref()
        .or(background.then_some("background"));
    if let Some(push_type) = push_type {
        headers.insert("apns-push-type".to_string(), json!(push_type));
    }
    if let Some(collapse) = &n.collapse_key {
        headers.insert("apns-collapse-id".to_string(), json!(collapse));
    }
    if let Some(ttl) = n.ttl_seconds {
        let expiration = if ttl == 0 {
            0
        } else {
            now_secs.saturating_add(ttl.min(i64::MAX as u64) as i64)
        };
        headers.insert("apns-expiration".to_string(), json!(expiration.to_string()));
    }
    if aps.is_empty() && headers.is_empty() {
        return None;
    }
    let payload =
        (!aps.is_empty()).then(|| HashMap::from([("aps".to_string(), Value::Object(aps))]));
    Some(FcmApnsConfig {
        headers: (!headers.is_empty()).then_some(headers),
        payload,
        fcm_options: None,
    })
}

fn webpush_config(n: &Notification) -> Option<WebpushConfig> {
    let mut headers = HashMap::new();
    if let Some(ttl) = n.ttl_seconds {
        headers.insert("TTL".to_string(), json!(ttl.to_string()));
    }
    if let Some(p) = n.priority {
        let urgency = match p {
            Priority::High => "high",
            Priority::Normal => "normal",
        };
        headers.insert("Urgency".to_string(), json!(urgency));
    }
    (!headers.is_empty()).then(|| WebpushConfig {
        headers: Some(headers),
        ..WebpushConfig::default()
    })
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: RpcStatus,
}

#[derive(Deserialize)]
struct RpcStatus {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

impl RpcStatus {
    fn fcm_error_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d["@type"] == FCM_ERROR_TYPE)
            .and_then(|d| d["errorCode"].as_str())
    }

    /// Whether an INVALID_ARGUMENT is about the registration token (not the payload).
    fn blames_token(&self) -> bool {
        let field_is_token = self
            .details
            .iter()
            .filter(|d| d["@type"] == BAD_REQUEST_TYPE)
            .filter_map(|d| d["fieldViolations"].as_array())
            .flatten()
            .any(|v| v["field"] == "message.token");
        let message_says_token = self
            .message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"));
        field_is_token || message_says_token
    }
}

/// Maps an FCM response to an [`Outcome`] (Google's table in DESIGN.md).
pub fn map_response(response: &ProviderResponse) -> Outcome {
    let status = response.status;
    if status.is_success() {
        let name = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Outcome::Delivered { provider_id: name };
    }
    let rpc = serde_json::from_slice::<ErrorEnvelope>(&response.body)
        .ok()
        .map(|e| e.error);
    let code = rpc
        .as_ref()
        .and_then(|r| r.fcm_error_code().or(r.status.as_deref()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let retry = |reason: String| Outcome::Retry {
        after: retry_after(&response.headers),
        reason,
    };
    match code.as_str() {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => Outcome::InvalidToken {
            reason: code,
            timestamp: None,
        },
        "INVALID_ARGUMENT" if rpc.as_ref().is_some_and(RpcStatus::blames_token) => {
            Outcome::InvalidToken {
                reason: code,
                timestamp: None,
            }
        }
        "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" => retry(code),
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => retry(code),
        _ => Outcome::Failed { reason: code },
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

struct AccessToken {
    token: String,
    expires_at: i64,
}

/// The service-account JWT-bearer flow, with one cached access token.
struct OAuth {
    pool: H2Pool,
    token_path: String,
    token_uri: String,
    client_email: String,
    key: EncodingKey,
    key_id: Option<String>,
    clock: Clock,
    // An async lock so that concurrent sends wait for one token fetch instead of each fetching.
    cached: tokio::sync::Mutex<Option<AccessToken>>,
}

impl OAuth {
    fn new(
        account: &ServiceAccount,
        token_uri: String,
        timeout: Duration,
        config: &FcmConfig,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .context("fcm.service_account_path: private_key is not an RSA PEM key")?;
        let uri: Uri = token_uri
            .parse()
            .with_context(|| format!("fcm token_uri {token_uri:?} is not a URL"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("fcm token_uri {token_uri:?} has no host"))?;
        let token_path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let pool = H2Pool::new(&PoolConfig {
            endpoint: format!("{}://{}", uri.scheme_str().unwrap_or("https"), authority),
            size: 1,
            request_timeout: timeout,
            extra_root_certs: config.extra_root_certs.clone(),
            keep_idle_connections: false,
        })
        .context("fcm token_uri")?;
        Ok(Self {
            pool,
            token_path,
            token_uri,
            client_email: account.client_email.clone(),
            key,
            key_id: account.private_key_id.clone(),
            clock,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.cached.lock().await;
        let now = self.clock.unix_secs();
        if let Some(t) = cached.as_ref() {
            if now < t.expires_at - TOKEN_EXPIRY_MARGIN_SECS {
                return Ok(t.token.clone());
            }
        }
        let fresh = self.fetch(now).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Drops `stale` after FCM rejected it (unless another send already replaced it).
    async fn invalidate(&self, stale: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.token == stale) {
            *cached = None;
        }
    }

    async fn fetch(&self, now: i64) -> Result<AccessToken, Outcome> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            tracing::error!(error = %e, "signing the FCM token assertion failed");
            failed("OAuthAssertionSigningFailed")
        })?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let response = self
            .pool
            .post(&self.token_path, &headers, Bytes::from(form))
            .await
            .map_err(|e| {
                tracing::warn!(endpoint = self.pool.authority(), error = %e,
                    "FCM access-token request failed");
                transport_retry(&e)
            })?;
        if !response.status.is_success() {
            let error = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_default();
            tracing::warn!(status = response.status.as_u16(), error = %error,
                "FCM token endpoint refused the service account");
            return Err(
                if response.status.is_server_error()
                    || response.status == StatusCode::TOO_MANY_REQUESTS
                {
                    Outcome::Retry {
                        after: retry_after(&response.headers),
                        reason: "OAuthTokenUnavailable".into(),
                    }
                } else {
                    failed("OAuthTokenRejected")
                },
            );
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|_| {
            tracing::warn!("FCM token endpoint sent an unreadable response");
            Outcome::Retry {
                after: None,
                reason: "OAuthTokenUnavailable".into(),
            }
        })?;
        tracing::debug!(
            expires_in = parsed.expires_in,
            "fetched an FCM access token"
        );
        Ok(AccessToken {
            token: parsed.access_token,
            expires_at: now + parsed.expires_in,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: Value) -> ProviderResponse {
        ProviderResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn invalid_argument_prunes_only_when_about_the_token() {
        let about_token = response(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "The registration token is not a valid FCM registration token",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"}]}}),
        );
        assert!(matches!(
            map_response(&about_token),
            Outcome::InvalidToken { .. }
        ));
        let about_payload = response(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "Invalid value at 'message.android.ttl'",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"}]}}),
        );
        assert_eq!(map_response(&about_payload), failed("INVALID_ARGUMENT"));
    }

    #[test]
    fn data_values_are_strings_and_size_is_checked() {
        let n = Notification {
            title: Some("t".into()),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Notification::default()
        };
        let body: Value = serde_json::from_slice(&request_body("tok", &n, 0).unwrap()).unwrap();
        assert_eq!(body["message"]["data"]["k"], "v");
        assert_eq!(body["message"]["token"], "tok");
        let big = Notification {
            body: Some("x".repeat(4100)),
            ..Notification::default()
        };
        assert_eq!(
            request_body("tok", &big, 0).unwrap_err(),
            failed("PayloadTooLarge")
        );
    }
}
