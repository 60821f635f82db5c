//! FCM HTTP v1 sender: owns its settings, OAuth2 flow, request building, response mapping and
//! wire vocabulary; the rest of the crate sees only [`Outcome`].

mod auth;
pub mod request;
pub mod response;
pub mod settings;
pub mod wire;

use std::time::Duration;

use anyhow::Context;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::HeaderMap;

use self::auth::OAuth;
pub use self::auth::ServiceAccount;
pub use self::request::{message, payload_size, request_body};
pub use self::response::map_response;
pub use self::settings::FcmConfig;
use super::credentials::is_project_id;
use super::outcome::Outcome;
use super::pool::{ConnectionCap, H2Pool, PoolConfig, PoolStats};
use crate::clock::Clock;
use crate::model::Notification;
use crate::redact::Redacted;

/// Sends to FCM with a cached OAuth2 access token.
pub struct FcmSender {
    messages: H2Pool,
    send_path: String,
    auth: OAuth,
    clock: Clock,
}

impl FcmSender {
    /// Prepares a sender for `account` with the global `settings` (host, roots, timeouts,
    /// token endpoint override); connections open on first use, under the global cap.
    pub fn new(
        settings: &FcmConfig,
        account: &ServiceAccount,
        clock: Clock,
        connections: &ConnectionCap,
    ) -> anyhow::Result<Self> {
        let project = &account.project_id;
        anyhow::ensure!(
            is_project_id(project),
            "fcm.project_id: {project:?} is not a valid project id"
        );
        let token_uri = settings
            .token_uri
            .clone()
            .unwrap_or_else(|| account.token_uri.clone());
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let messages = H2Pool::new(&PoolConfig {
            endpoint: settings.endpoint.clone(),
            size: settings.pool_size,
            request_timeout: timeout,
            extra_root_certs: settings.extra_root_certs.clone(),
            keep_idle_connections: true,
            cap: Some(connections.clone()),
        })
        .context("fcm.endpoint")?;
        let auth = OAuth::new(account, token_uri, timeout, settings, clock.clone())?;
        Ok(Self {
            messages,
            send_path: wire::send_path(project),
            auth,
            clock,
        })
    }

    /// The config file's service account, read from `fcm.service_account_path`, with
    /// `fcm.project_id` in place of the file's project when set.
    pub fn config_account(settings: &FcmConfig) -> anyhow::Result<ServiceAccount> {
        let mut account = ServiceAccount::load(&settings.service_account_path)
            .context("fcm.service_account_path")?;
        if let Some(project) = &settings.project_id {
            account.project_id = project.clone();
        }
        Ok(account)
    }

    /// The path messages are posted to (`/v1/projects/{project}/messages:send`).
    pub fn send_path(&self) -> &str {
        &self.send_path
    }

    /// Closes connections unused for `idle`; returns how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        self.messages.close_idle(idle)
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
                return Outcome::failed("OAuthTokenInvalid");
            };
            headers.insert(AUTHORIZATION, bearer);
            let response = match self
                .messages
                .post(&self.send_path, &headers, body.clone())
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(endpoint = self.messages.authority(), token = %Redacted(token),
                        error = %e, "FCM request failed");
                    return Outcome::transport_retry(&e);
                }
            };
            if response::refresh_may_help(&response) && !refreshed {
                // Revoked or expired early: fetch a new access token once.
                refreshed = true;
                self.auth.invalidate(&access).await;
                continue;
            }
            let outcome = map_response(&response);
            if !matches!(outcome, Outcome::Delivered { .. }) {
                tracing::debug!(token = %Redacted(token), status = response.status.as_u16(),
                    outcome = ?outcome, "FCM did not deliver");
            }
            return outcome;
        }
    }
}
