//! FCM authentication: the service-account key file and the OAuth2 JWT-bearer flow that turns
//! it into a cached access token.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::settings::FcmConfig;
use super::wire::{JWT_GRANT, MAX_ASSERTION_LIFETIME_SECS, SCOPE};
use crate::clock::Clock;
use crate::push::outcome::{retry_after, Outcome, RetryClass};
use crate::push::pool::{H2Pool, PoolConfig};

/// Access tokens are replaced this long before Google says they expire.
const TOKEN_EXPIRY_MARGIN_SECS: i64 = 60;

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
pub(super) struct OAuth {
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
    /// Prepares the flow for `account`; the token endpoint is contacted on first use.
    pub(super) fn new(
        account: &ServiceAccount,
        token_uri: String,
        timeout: Duration,
        config: &FcmConfig,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .context("the service account's private_key is not an RSA PEM key")?;
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
            // Token fetches are rare and short; they never wait behind message connections.
            cap: None,
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

    /// The cached access token, fetching a new one when it is close to expiry.
    pub(super) async fn access_token(&self) -> Result<String, Outcome> {
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
    pub(super) async fn invalidate(&self, stale: &str) {
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
            exp: now + MAX_ASSERTION_LIFETIME_SECS,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            tracing::error!(error = %e, "signing the FCM token assertion failed");
            Outcome::credential("OAuthAssertionSigningFailed")
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
                Outcome::transport_retry(&e)
            })?;
        if !response.status.is_success() {
            return Err(refused(&response));
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|_| {
            tracing::warn!("FCM token endpoint sent an unreadable response");
            Outcome::retry("OAuthTokenUnavailable", None, RetryClass::Transient)
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

/// The outcome for a token endpoint that refused the assertion: retry when Google is
/// struggling, fail when it rejected the service account.
fn refused(response: &crate::push::pool::ProviderResponse) -> Outcome {
    let error = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    tracing::warn!(status = response.status.as_u16(), error = %error,
        "FCM token endpoint refused the service account");
    if response.status.is_server_error() || response.status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::retry(
            "OAuthTokenUnavailable",
            retry_after(&response.headers),
            RetryClass::Transient,
        )
    } else {
        // invalid_grant, invalid_client, ...: the service account itself is refused.
        Outcome::credential("OAuthTokenRejected")
    }
}
