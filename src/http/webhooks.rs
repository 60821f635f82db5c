//! Signed webhook ingest: `POST /v1/webhooks/{app_id}/{source}`.
//!
//! Order of checks: source lookup, body size, rate limit, then the use case
//! (`service::webhooks::accept`): IP allowlist, signature over the raw bytes, JSON shape,
//! event type, and a durable insert (deduplicated per source) before answering.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};

use super::ApiPath as Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ipnet::IpNet;
use tracing::{field, Instrument};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::notifications::EventAccepted;
use super::AppState;
use crate::config::Config;
use crate::error::{ApiError, ErrorBody, Result};
use crate::ratelimit::retry_after_secs;
use crate::service::webhooks::{self, Received};
use crate::store::{EventInsert, WebhookSource};
use crate::telemetry::SPANS;

pub fn router(_config: &Config) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

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
                   `stripe`: `Stripe-Signature`; `generic` and `generic_v2`: `X-Webhook-Signature`). Timestamps \
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
            description = "`generic`: `sha256=<hex HMAC-SHA256 of the body>`; `generic_v2`: of `{id}.{timestamp}.{body}`"),
        ("X-Webhook-Timestamp" = Option<String>, Header, pattern = "^[0-9]{1,18}$",
            description = "`generic`, optional, `generic_v2`, required: unix seconds"),
        ("X-Webhook-Id" = Option<String>, Header, pattern = "^[!-~]{1,256}$",
            description = "`generic`, optional, `generic_v2`, required: the event id (deduplication)"),
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
) -> Result<(StatusCode, Json<EventAccepted>)> {
    // The trace of an event starts here; the stored event carries this span's context on to
    // its fan-out and sends. The path's names are the caller's: only stored ones are kept.
    let span = tracing::info_span!(target: SPANS, "webhook.accept", otel.kind = "server",
        app_id = field::Empty, source = field::Empty, event_id = field::Empty,
        event_type = field::Empty, outcome = field::Empty,
        http.response.status_code = field::Empty);
    let (label, result) = async {
        match state.store.get_source_cached(&app_id, &source_name).await {
            Ok(Some(source)) => {
                let span = tracing::Span::current();
                span.record("app_id", app_id.as_str());
                span.record("source", source.name.as_str());
                (
                    Some(format!("{app_id}/{}", source.name)),
                    accept(&state, &source, request).await,
                )
            }
            Ok(None) => (None, Err(ApiError::NotFound("webhook source"))),
            Err(e) => (None, Err(e.into())),
        }
    }
    .instrument(span.clone())
    .await;
    let label = label.as_deref();
    let outcome = match &result {
        Ok((StatusCode::ACCEPTED, _)) => {
            state.metrics.webhook(label, "accepted", "");
            "accepted"
        }
        Ok(_) => {
            state.metrics.webhook(label, "duplicate", "");
            "duplicate"
        }
        Err(e) => {
            let reason = rejection_reason(e);
            tracing::info!(app = ?app_id, source = ?source_name, reason, "webhook rejected");
            state.metrics.webhook(label, "rejected", reason);
            reason
        }
    };
    let status = match &result {
        Ok((status, _)) => *status,
        Err(e) => e.status(),
    };
    span.record("outcome", outcome);
    span.record("http.response.status_code", status.as_u16());
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
) -> Result<(StatusCode, Json<EventAccepted>)> {
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
    let accepted = webhooks::accept(
        &state.events,
        source,
        Received {
            headers: &parts.headers,
            body: &body,
            client,
            now_secs: state.store.now() / 1000,
            tolerance_secs: state.config.webhooks.timestamp_tolerance_secs,
        },
    )
    .await?;
    let app_id = source.app_id.as_str();
    Ok(match accepted.inserted {
        EventInsert::Accepted(id) => {
            state.wake.events.notify_one();
            record_event(&id, &accepted.event_type);
            tracing::info!(app = app_id, source = %source.name, event = %id, event_type = %accepted.event_type, "webhook accepted");
            (
                StatusCode::ACCEPTED,
                Json(EventAccepted {
                    event_id: id,
                    duplicate: None,
                }),
            )
        }
        EventInsert::Duplicate(id) => {
            record_event(&id, &accepted.event_type);
            tracing::info!(app = app_id, source = %source.name, event = %id, "duplicate webhook ignored");
            (
                StatusCode::OK,
                Json(EventAccepted {
                    event_id: id,
                    duplicate: Some(true),
                }),
            )
        }
    })
}

/// Names the stored event on the accepting span.
fn record_event(id: &str, event_type: &str) {
    let span = tracing::Span::current();
    span.record("event_id", id);
    span.record("event_type", event_type);
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
