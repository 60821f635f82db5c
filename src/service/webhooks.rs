//! Accepting a signed webhook: the source's client allowlist, the signature over the raw
//! bytes, the JSON shape, the event type and id, then a durable insert deduplicated per source.
//! Reading the body, rate limits and finding the client address behind proxies are the HTTP
//! layer's; what makes a request an event is decided here.

use std::net::IpAddr;

use http::HeaderMap;
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::signature::{self, Scheme, SignatureError};
use crate::store::{EventInsert, EventWriter, IncomingEvent, WebhookSource};

/// Default JSON path of the event type when the scheme carries none in a header.
pub const DEFAULT_TYPE_PATH: &str = "type";
const MAX_EVENT_TYPE_LEN: usize = 256;
const MAX_EVENT_ID_LEN: usize = 256;

/// One webhook request as received, after its body was read in full.
#[derive(Debug)]
pub struct Received<'a> {
    /// Request headers (signatures, ids, timestamps).
    pub headers: &'a HeaderMap,
    /// The raw body, exactly as signed.
    pub body: &'a [u8],
    /// The client address, when known.
    pub client: Option<IpAddr>,
    /// Now, unix seconds.
    pub now_secs: i64,
    /// Accepted distance of a signed timestamp from now, seconds.
    pub tolerance_secs: u64,
}

/// What a stored webhook became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// New event, or the original of a duplicate.
    pub inserted: EventInsert,
    /// Its event type.
    pub event_type: String,
}

/// Verifies `request` as a webhook of `source` and stores it as an event (committed before
/// this returns).
pub async fn accept(
    events: &EventWriter,
    source: &WebhookSource,
    request: Received<'_>,
) -> Result<Accepted> {
    if !source.allowed_cidrs.is_empty()
        && !request
            .client
            .is_some_and(|ip| source.allowed_cidrs.iter().any(|n| n.contains(&ip)))
    {
        return Err(ApiError::Forbidden(
            "client address is not in this source's allowlist".into(),
        ));
    }
    let secrets: Vec<&str> = source.secrets.iter().map(|s| s.secret.as_str()).collect();
    let verified = signature::verify(
        source.scheme,
        request.headers,
        request.body,
        &secrets,
        request.now_secs,
        request.tolerance_secs,
    )
    .map_err(signature_error)?;

    let payload: Value = serde_json::from_slice(request.body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !payload.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    let event_type = event_type(source, verified.event_type, &payload)?;
    let external_id = external_id(source.scheme, verified.event_id, &payload)?;
    let payload_text = std::str::from_utf8(request.body)
        .map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;

    // Committed (together with concurrent webhooks, in one transaction) before we answer.
    let inserted = events
        .insert(IncomingEvent {
            app_id: source.app_id.clone(),
            source_id: Some(source.id.clone()),
            external_id,
            event_type: event_type.clone(),
            payload: payload_text.to_string(),
            direct_rule: None,
            traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
        })
        .await?;
    Ok(Accepted {
        inserted,
        event_type,
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

/// The sender's event id for deduplication: from the scheme's header, or Stripe's `id`.
fn external_id(
    scheme: Scheme,
    from_header: Option<String>,
    payload: &Value,
) -> Result<Option<String>> {
    let id = from_header
        .or_else(|| {
            (scheme == Scheme::Stripe)
                .then(|| {
                    payload
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .flatten()
        })
        .filter(|id| !id.is_empty());
    if let Some(id) = &id {
        ApiError::check_nul("id", id)?;
        if id.len() > MAX_EVENT_ID_LEN {
            return Err(ApiError::BadRequest(format!(
                "event id longer than {MAX_EVENT_ID_LEN} bytes"
            )));
        }
    }
    Ok(id)
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
