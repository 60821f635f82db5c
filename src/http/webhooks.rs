//! Signed webhook ingest: `POST /v1/webhooks/{app_id}/{source}`.
//!
//! Order of checks: source lookup, body size, IP allowlist, signature over the raw bytes,
//! JSON shape, event type, then a durable insert (deduplicated per source) before answering.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};

use super::ApiPath as Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ipnet::IpNet;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::EventAccepted;
use super::AppState;
use crate::config::Config;
use crate::error::{ApiError, ErrorBody, Result};
use crate::ratelimit::retry_after_secs;
use crate::signature::{self, SignatureError};
use crate::store::{EventInsert, IncomingEvent, Scheme, WebhookSource};

pub fn router(_config: &Config) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// Default JSON path of the event type when the scheme carries none in a header.
const DEFAULT_TYPE_PATH: &str = "type";
const MAX_EVENT_TYPE_LEN: usize = 256;
const MAX_EVENT_ID_LEN: usize = 256;

#[utoipa::path(
    post,
    path = "/v1/webhooks/{app_id}/{source}",
    operation_id = "receive_webhook",
    tag = "webhooks",
    summary = "Receive a signed webhook and store it as an event",
    description = "Takes no API key: the request is authenticated by the signature of its \
                   source's scheme over the raw body bytes (`standard_webhooks`: `webhook-id`, \
                   `webhook-timestamp`, `webhook-signature`, or Svix's `svix-*` names; \
                   `github`: `X-Hub-Signature-256`; \
                   `stripe`: `Stripe-Signature`; `generic`: `X-Webhook-Signature`). Timestamps \
                   must be within the configured tolerance. The event is committed before the \
                   answer; an event id the source already sent is answered 200 as a duplicate.",
    params(
        ("app_id" = String, Path, description = "the app the source belongs to"),
        ("source" = String, Path, description = "the source's name"),
        ("webhook-id" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`standard_webhooks`: the event id (deduplication)"),
        ("webhook-timestamp" = Option<String>, Header, pattern = "^[0-9]{1,18}$",
            description = "`standard_webhooks`: unix seconds"),
        ("webhook-signature" = Option<String>, Header,
            pattern = "^v1,[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?: v1,[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)*$",
            description = "`standard_webhooks`: space-separated `v1,<base64 HMAC-SHA256>`"),
        ("svix-id" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`standard_webhooks`, Svix's name for `webhook-id`"),
        ("svix-timestamp" = Option<String>, Header, pattern = "^[0-9]{1,18}$",
            description = "`standard_webhooks`, Svix's name for `webhook-timestamp`"),
        ("svix-signature" = Option<String>, Header,
            pattern = "^v1,[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?: v1,[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)*$",
            description = "`standard_webhooks`, Svix's name for `webhook-signature`"),
        ("X-Hub-Signature-256" = Option<String>, Header, pattern = "^sha256=[0-9A-Fa-f]{64}$",
            description = "`github`: `sha256=<hex HMAC-SHA256 of the body>`"),
        ("X-GitHub-Delivery" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`github`: the event id (deduplication)"),
        ("X-GitHub-Event" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`github`: the event type"),
        ("Stripe-Signature" = Option<String>, Header,
            pattern = "^t=[0-9]{1,18}(?:,v[01]=[0-9A-Fa-f]{64})+$",
            description = "`stripe`: `t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=...]`"),
        ("X-Webhook-Signature" = Option<String>, Header, pattern = "^sha256=[0-9A-Fa-f]{64}$",
            description = "`generic`: `sha256=<hex HMAC-SHA256 of the body>`"),
        ("X-Webhook-Timestamp" = Option<String>, Header, pattern = "^[0-9]{1,18}$",
            description = "`generic`, optional: unix seconds"),
        ("X-Webhook-Id" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`generic`, optional: the event id (deduplication)"),
    ),
    request_body(
        content = Object,
        description = "the sender's JSON object; its event type is read from the scheme's \
                       header or from the source's `event_type_path` (default `type`)",
    ),
    responses(
        (status = 202, description = "the event was stored", body = EventAccepted),
        (status = 200, description = "a duplicate of an event already stored", body = EventAccepted),
        (status = 400, description = "malformed signature headers, a body that is not a JSON object, or no event type", body = ErrorBody),
        (status = 401, description = "missing or bad signature, or a timestamp outside the tolerance", body = ErrorBody),
        (status = 403, description = "the client address is not in the source's allowlist", body = ErrorBody),
        (status = 404, description = "no such webhook source", body = ErrorBody),
        (status = 413, description = "the body exceeds `webhooks.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "the source's rate limit (`rate_limits.source_per_sec`) is exceeded; see `Retry-After`", body = ErrorBody),
    ),
)]
async fn ingest(
    State(state): State<AppState>,
    Path((app_id, source_name)): Path<(String, String)>,
    request: Request,
) -> Result<(StatusCode, Json<Value>)> {
    // Only a stored source becomes a label: the path is the caller's to choose.
    let (label, result) = match state.store.get_source_cached(&app_id, &source_name).await {
        Ok(Some(source)) => (
            Some(format!("{app_id}/{}", source.name)),
            accept(&state, &source, request).await,
        ),
        Ok(None) => (None, Err(ApiError::NotFound("webhook source"))),
        Err(e) => (None, Err(e.into())),
    };
    let label = label.as_deref();
    match &result {
        Ok((StatusCode::ACCEPTED, _)) => state.metrics.webhook(label, "accepted", ""),
        Ok(_) => state.metrics.webhook(label, "duplicate", ""),
        Err(e) => {
            let reason = rejection_reason(e);
            tracing::info!(app = ?app_id, source = ?source_name, reason, "webhook rejected");
            state.metrics.webhook(label, "rejected", reason);
        }
    }
    result
}

fn rejection_reason(e: &ApiError) -> &'static str {
    match e {
        ApiError::PayloadTooLarge { .. } => "body_too_large",
        ApiError::RequestTimeout { .. } => "body_timeout",
        ApiError::NotFound(_) => "unknown_source",
        ApiError::Forbidden(_) => "ip_not_allowed",
        ApiError::Unauthorized(_) => "bad_signature",
        ApiError::UnsupportedMediaType(_) => "not_json",
        ApiError::BadRequest(_) | ApiError::InvalidField { .. } | ApiError::NulInText { .. } => {
            "malformed"
        }
        ApiError::TooManyRequests { .. } => "rate_limited",
        _ => "internal",
    }
}

async fn accept(
    state: &AppState,
    source: &WebhookSource,
    request: Request,
) -> Result<(StatusCode, Json<Value>)> {
    let app_id = source.app_id.as_str();
    let (parts, body) = request.into_parts();
    let limit = state.config.webhooks.max_body_bytes;
    let body = super::read_body(body, &parts.headers, limit).await?;

    let limits = &state.config.rate_limits;
    state
        .limiter
        .check(
            &format!("source:{}", source.id),
            limits.source_per_sec,
            limits.burst_secs,
        )
        .map_err(|wait| ApiError::TooManyRequests {
            retry_after_secs: retry_after_secs(wait),
        })?;

    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = client_ip(peer, &parts.headers, &state.config.webhooks.trusted_proxies);
    if !source.allowed_cidrs.is_empty()
        && !client.is_some_and(|ip| source.allowed_cidrs.iter().any(|n| n.contains(&ip)))
    {
        return Err(ApiError::Forbidden(
            "client address is not in this source's allowlist".into(),
        ));
    }

    let secrets: Vec<&str> = source.secrets.iter().map(|s| s.secret.as_str()).collect();
    let verified = signature::verify(
        source.scheme,
        &parts.headers,
        &body,
        &secrets,
        crate::store::now_ms() / 1000,
        state.config.webhooks.timestamp_tolerance_secs,
    )
    .map_err(signature_error)?;

    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !payload.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    let event_type = event_type(source, verified.event_type, &payload)?;
    let external_id = verified
        .event_id
        .or_else(|| {
            (source.scheme == Scheme::Stripe)
                .then(|| {
                    payload
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .flatten()
        })
        .filter(|id| !id.is_empty());
    if let Some(id) = &external_id {
        ApiError::check_nul("id", id)?;
    }
    if external_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_EVENT_ID_LEN)
    {
        return Err(ApiError::BadRequest(format!(
            "event id longer than {MAX_EVENT_ID_LEN} bytes"
        )));
    }
    let payload_text =
        std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;

    // Committed (together with concurrent webhooks, in one transaction) before we answer.
    let inserted = state
        .events
        .insert(IncomingEvent {
            app_id: app_id.to_string(),
            source_id: Some(source.id.clone()),
            external_id,
            event_type: event_type.clone(),
            payload: payload_text.to_string(),
            direct_rule: None,
        })
        .await?;
    Ok(match inserted {
        EventInsert::Accepted(id) => {
            state.wake.events.notify_one();
            tracing::info!(app = app_id, source = %source.name, event = %id, event_type = %event_type, "webhook accepted");
            (StatusCode::ACCEPTED, Json(json!({"event_id": id})))
        }
        EventInsert::Duplicate(id) => {
            tracing::info!(app = app_id, source = %source.name, event = %id, "duplicate webhook ignored");
            (
                StatusCode::OK,
                Json(json!({"event_id": id, "duplicate": true})),
            )
        }
    })
}

fn signature_error(e: SignatureError) -> ApiError {
    // The message names the problem but never the expected signature.
    if e.is_malformed() {
        ApiError::BadRequest(e.to_string())
    } else {
        ApiError::Unauthorized(format!("webhook verification failed: {e}"))
    }
}

/// The client address: the socket peer, unless that peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // An unparsable hop means we cannot trust the chain at all.
                Err(_) => return None,
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

fn event_type(
    source: &WebhookSource,
    from_header: Option<String>,
    payload: &Value,
) -> Result<String> {
    let event_type = match from_header {
        Some(t) => t,
        None => {
            let path = source
                .event_type_path
                .as_deref()
                .unwrap_or(DEFAULT_TYPE_PATH);
            let found = path
                .split('.')
                .try_fold(payload, |v, key| v.get(key))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("no string event type at JSON path `{path}`"))
                })?;
            ApiError::check_nul(path, found)?;
            found.to_string()
        }
    };
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN {
        return Err(ApiError::BadRequest(format!(
            "event type must be 1-{MAX_EVENT_TYPE_LEN} bytes"
        )));
    }
    Ok(event_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.7"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let stranger: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted),
            Some("203.0.113.9".parse().expect("ip"))
        );
        assert_eq!(client_ip(Some(stranger), &h, &trusted), Some(stranger));
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(Some(proxy), &h, &trusted), None);
    }
}
