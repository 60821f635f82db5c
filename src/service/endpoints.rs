//! Event endpoints as a caller manages them (HTTP API and CLI alike): their settings, the
//! checks a URL, a subscription list and a description must pass before they are saved (the
//! address guard included), and the operations that create, change, rotate and test them.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Result};
use crate::model::event_type::EventType;
use crate::outbound::{AddressGuard, Refused};
use crate::signature::Scheme;
use crate::store::{message_body, Endpoint, EndpointChange, NewEndpoint, Store};

/// The longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;
/// The longest description.
pub const MAX_DESCRIPTION_LEN: usize = 512;
/// The longest rotation grace period: a week.
pub const MAX_GRACE_SECS: u64 = 7 * 86_400;
/// Endpoints per app.
pub const MAX_ENDPOINTS_PER_APP: usize = 50;

/// Settings of outbound webhooks to event endpoints (`[endpoints]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConfig {
    /// Accept `http://` endpoint URLs (development and tests only).
    pub allow_insecure: bool,
    /// Loopback, private or link-local ranges endpoints may nevertheless point into.
    pub allowed_private_cidrs: Vec<IpNet>,
    /// PEM files with extra trusted roots for endpoints' TLS certificates.
    pub extra_root_certs: Vec<PathBuf>,
    /// Time allowed for one attempt, from resolving to the answer.
    pub timeout_secs: u64,
    /// Attempts in flight to one endpoint at once, per instance.
    pub concurrency_per_endpoint: u32,
    /// Attempts in flight to all endpoints at once, per instance.
    pub concurrency: u32,
    /// An endpoint failing continuously for this long is disabled.
    pub disable_after_failing_secs: u64,
    /// Items per message of a batched type (`delivery.succeeded`) at most.
    pub batch_max_items: u32,
    /// How long the first item of a batch waits for the batch to fill.
    pub batch_max_wait_secs: u64,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            allowed_private_cidrs: Vec::new(),
            extra_root_certs: Vec::new(),
            timeout_secs: 15,
            concurrency_per_endpoint: 4,
            concurrency: 256,
            disable_after_failing_secs: 5 * 86_400,
            batch_max_items: 1000,
            batch_max_wait_secs: 10,
        }
    }
}

impl EndpointsConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (field, value) in [
            ("endpoints.timeout_secs", self.timeout_secs),
            (
                "endpoints.concurrency_per_endpoint",
                u64::from(self.concurrency_per_endpoint),
            ),
            ("endpoints.concurrency", u64::from(self.concurrency)),
            (
                "endpoints.disable_after_failing_secs",
                self.disable_after_failing_secs,
            ),
        ] {
            if value == 0 {
                return Err(format!("{field}: must be at least 1"));
            }
        }
        if self.batch_max_items > 10_000 {
            return Err("endpoints.batch_max_items: must be at most 10000".into());
        }
        if self.timeout_secs > 300 {
            return Err("endpoints.timeout_secs: must be at most 300".into());
        }
        Ok(())
    }

    /// The address guard these settings describe.
    pub fn guard(&self) -> AddressGuard {
        AddressGuard {
            allow_insecure: self.allow_insecure,
            allowed_private_cidrs: self.allowed_private_cidrs.clone(),
        }
    }

    /// How gathered items become messages.
    pub fn batch_limits(&self) -> crate::store::BatchLimits {
        crate::store::BatchLimits {
            max_items: self.batch_max_items as usize,
            max_wait_ms: (self.batch_max_wait_secs * 1000) as i64,
        }
    }

    /// Time allowed for one attempt.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Checks an endpoint URL: absolute, https (unless insecure URLs are allowed), and not at a
/// forbidden address. A name that does not resolve now is accepted: the same check runs at
/// every connection, and DNS may be set up after the endpoint.
pub async fn check_url(config: &EndpointsConfig, field: &str, url: &str) -> Result<()> {
    ApiError::check_nul(field, url)?;
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::field(
            field,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let guard = config.guard();
    let target = guard
        .target(url)
        .map_err(|e| ApiError::field(field, e.to_string()))?;
    if let Ok(ip) = target.host.parse() {
        return guard
            .check(ip)
            .map_err(|e: Refused| ApiError::field(field, e.to_string()));
    }
    match tokio::time::timeout(Duration::from_secs(5), guard.resolve(&target)).await {
        Ok(Ok(Err(refused))) => Err(ApiError::field(field, refused.to_string())),
        _ => Ok(()),
    }
}

/// Checks a subscription list: at least one type, no repeats.
pub fn check_events(events: &[EventType]) -> Result<()> {
    if events.is_empty() {
        return Err(ApiError::field(
            "events",
            "must name at least one event type",
        ));
    }
    let mut seen = events.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != events.len() {
        return Err(ApiError::field("events", "names an event type twice"));
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> Result<()> {
    if let Some(d) = description {
        ApiError::check_nul("description", d)?;
        if d.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::field(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
    }
    Ok(())
}

/// A new endpoint's settings, as a caller gives them.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    /// Where messages go.
    pub url: String,
    /// Subscribed types.
    pub events: Vec<EventType>,
    /// Free text.
    pub description: Option<String>,
}

/// Creates an endpoint; returns it with its secret, which is shown only now.
pub async fn create(
    store: &Store,
    config: &EndpointsConfig,
    app_id: &str,
    request: &EndpointRequest,
) -> Result<(Endpoint, String)> {
    check_url(config, "url", &request.url).await?;
    check_events(&request.events)?;
    check_description(request.description.as_deref())?;
    if store.endpoints(app_id).await?.len() >= MAX_ENDPOINTS_PER_APP {
        return Err(ApiError::Conflict(format!(
            "an app has at most {MAX_ENDPOINTS_PER_APP} endpoints"
        )));
    }
    let secret = Scheme::StandardWebhooks.generate_secret();
    let endpoint = store
        .create_endpoint(
            app_id,
            NewEndpoint {
                url: &request.url,
                description: request.description.as_deref(),
                events: &request.events,
                secret: &secret,
            },
        )
        .await?;
    Ok((endpoint, secret))
}

/// Applies a change after checking it; `NotFound` when the endpoint does not exist.
pub async fn update(
    store: &Store,
    config: &EndpointsConfig,
    app_id: &str,
    id: &str,
    change: EndpointChange<'_>,
) -> Result<Endpoint> {
    if let Some(url) = change.url {
        check_url(config, "url", url).await?;
    }
    if let Some(events) = change.events {
        check_events(events)?;
    }
    check_description(change.description.flatten())?;
    if !store.update_endpoint(app_id, id, change).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    store
        .endpoint(app_id, id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))
}

/// Replaces the endpoint's secret; the old one goes on signing for `grace_secs`. Returns the
/// new secret, shown only now.
pub async fn rotate_secret(
    store: &Store,
    app_id: &str,
    id: &str,
    grace_secs: u64,
) -> Result<String> {
    if grace_secs > MAX_GRACE_SECS {
        return Err(ApiError::field(
            "grace_secs",
            format!("must be at most {MAX_GRACE_SECS} (a week)"),
        ));
    }
    let secret = Scheme::StandardWebhooks.generate_secret();
    let until = store.now() + (grace_secs * 1000) as i64;
    if !store
        .rotate_endpoint_secret(app_id, id, &secret, until)
        .await?
    {
        return Err(ApiError::NotFound("endpoint"));
    }
    Ok(secret)
}

/// Queues an example message of `event_type` to the endpoint; returns its id.
pub async fn send_test(
    store: &Store,
    app_id: &str,
    id: &str,
    event_type: EventType,
) -> Result<String> {
    if store.endpoint(app_id, id).await?.is_none() {
        return Err(ApiError::NotFound("endpoint"));
    }
    let body = message_body(event_type, store.now(), event_type.example_data());
    Ok(store
        .enqueue_to_endpoint(app_id, id, event_type, &body)
        .await?)
}
