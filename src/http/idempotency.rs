//! `Idempotency-Key` on the API's POSTs: a client that retries a request it got no answer to
//! (a timeout, a dropped connection) sends the same key, and gets the first request's answer
//! instead of a second send. Keys are per app and live [`KEY_LIFETIME_MS`]; the store keeps
//! them (`store::idempotency`).
//!
//! Every POST made with an app key honours the header, except two that are idempotent by
//! themselves: webhooks (deduplicated by the source's event id, and signed rather than
//! keyed) and the device import (an upsert of each line, streamed rather than buffered).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{read_body, AppState, DEFAULT_BODY_LIMIT};
use crate::error::ApiError;
use crate::store::{KeyClaim, StoredAnswer};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on an answer replayed from an earlier request with the same key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered: a retry within it gets the first answer.
pub const KEY_LIFETIME_MS: i64 = 24 * 3_600_000;
/// An unanswered key older than this belongs to a request whose handler died (a crash, a
/// restart); a retry then takes it over rather than being refused for a day.
pub const ABANDONED_AFTER_MS: i64 = 60_000;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// POST routes that do not take the header (see the module comment).
const EXEMPT: &[&str] = &["/v1/webhooks/{app_id}/{source}", "/v1/devices/import"];

/// Whether `method` on the matched `route` honours `Idempotency-Key`.
pub fn applies(method: &Method, route: &str) -> bool {
    method == Method::POST && route.starts_with("/v1/") && !EXEMPT.contains(&route)
}

/// Middleware: answers a repeated key from the store, and stores the first answer.
pub async fn guard(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(raw_key) = request.headers().get(HEADER).cloned() else {
        return next.run(request).await;
    };
    if !route.is_some_and(|r| applies(request.method(), &r)) {
        return next.run(request).await;
    }
    match handle(&state, raw_key, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn handle(
    state: &AppState,
    raw_key: HeaderValue,
    request: Request,
    next: axum::middleware::Next,
) -> Result<Response, Response> {
    let key = valid_key(&raw_key).map_err(IntoResponse::into_response)?;
    // Without a valid app key the handler refuses the request itself, with its own words.
    let (parts, body) = request.into_parts();
    let Some(app_id) = app_of(state, &parts).await? else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let bytes = read_body(body, &parts.headers, DEFAULT_BODY_LIMIT)
        .await
        .map_err(IntoResponse::into_response)?;
    let hash = request_hash(&parts, &bytes);
    let claim = state
        .store
        .claim_idempotency_key(&app_id, &key, &hash, KEY_LIFETIME_MS, ABANDONED_AFTER_MS)
        .await
        .map_err(|e| ApiError::Internal(e).into_response())?;
    match claim {
        KeyClaim::Claimed => {}
        KeyClaim::Answered(answer) => return Ok(replay(answer)),
        KeyClaim::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still being handled; retry shortly".into(),
            )
            .into_response())
        }
        KeyClaim::Unreadable => {
            return Err(ApiError::Conflict(
                "the first answer to this Idempotency-Key is sealed under a master key no \
                 longer configured; use a new key"
                    .into(),
            )
            .into_response())
        }
        KeyClaim::Mismatch => {
            return Err(ApiError::field(
                "Idempotency-Key",
                "this key was already used with a different request (method, path or body) \
                 within 24 h; use a new key for a new request",
            )
            .into_response())
        }
    }
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    Ok(remember(state, &app_id, &key, response).await)
}

/// The key as text: 1 to [`MAX_KEY_LEN`] visible ASCII characters (a UUID is the usual).
fn valid_key(raw: &HeaderValue) -> Result<String, ApiError> {
    raw.to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })
}

/// The app of the request's app key, or `None` when it has none that is valid.
async fn app_of(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Option<String>, Response> {
    let Ok(presented) = super::bearer(parts) else {
        return Ok(None);
    };
    let key = state
        .store
        .authenticate(presented)
        .await
        .map_err(|e| ApiError::Internal(e).into_response())?;
    Ok(key.map(|k| k.app_id))
}

/// SHA-256 over method, path with query, content type and body: what makes two requests
/// "the same request".
fn request_hash(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b"\n");
    h.update(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    h.update(b"\n");
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    h.update(content_type.map_or(&b""[..], HeaderValue::as_bytes));
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// Whether an answer is final for its request: a success, or a refusal the same request
/// would meet again. Failures a retry may get past (5xx, 401, 403, 408, 409, 429) are not
/// remembered.
fn is_final(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && ![
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::REQUEST_TIMEOUT,
                StatusCode::CONFLICT,
                StatusCode::TOO_MANY_REQUESTS,
            ]
            .contains(&status))
}

/// Stores a final answer for `key` (or releases the key) and hands the answer on.
async fn remember(state: &AppState, app_id: &str, key: &str, response: Response) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            release(state, app_id, key).await;
            return ApiError::Internal(anyhow::anyhow!("reading an answer: {e}")).into_response();
        }
    };
    let text = std::str::from_utf8(&bytes).ok();
    match text.filter(|_| is_final(parts.status)) {
        Some(text) => {
            let answer = StoredAnswer {
                status: parts.status.as_u16(),
                content_type: parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: text.to_string(),
            };
            if let Err(e) = state
                .store
                .answer_idempotency_key(app_id, key, &answer)
                .await
            {
                // The request was handled; its answer stands even if a retry cannot see it.
                // The claim stays unanswered, so a retry meets a 409 until it is abandoned.
                tracing::error!(error = %format!("{e:#}"), "storing an idempotent answer failed");
            }
        }
        None => release(state, app_id, key).await,
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

async fn release(state: &AppState, app_id: &str, key: &str) {
    if let Err(e) = state.store.release_idempotency_key(app_id, key).await {
        tracing::error!(error = %format!("{e:#}"), "releasing an idempotency key failed");
    }
}

/// The stored answer, marked as replayed.
fn replay(answer: StoredAnswer) -> Response {
    let Ok(status) = StatusCode::from_u16(answer.status) else {
        return ApiError::Internal(anyhow::anyhow!(
            "stored idempotent status {} is not an HTTP status",
            answer.status
        ))
        .into_response();
    };
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = answer
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Documents the header, and the answers it brings, on every operation that honours it.
pub(super) fn document(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    for (path, item) in openapi.paths.paths.iter_mut() {
        let Some(op) = item.post.as_mut() else {
            continue;
        };
        if !applies(&Method::POST, path) {
            continue;
        }
        let param = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some(
                "Makes a retry safe: the same key within 24 h gets the first request's \
                 answer (marked `Idempotent-Replayed: true`) and nothing is done again; the \
                 same key with a different request is a 422.",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_KEY_LEN))
                    .pattern(Some("^[!-~]+$")),
            ))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(param);
        let (status, response) = super::openapi::error_response(
            409,
            "a request with the same Idempotency-Key is still being handled",
        );
        op.responses.responses.entry(status).or_insert(response);
        let (status, response) = super::openapi::error_response(
            422,
            "the Idempotency-Key was used with a different request, or a field is invalid",
        );
        op.responses.responses.entry(status).or_insert(response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        let ok = |k: &str| valid_key(&HeaderValue::from_str(k).expect("header")).is_ok();
        assert!(ok("0b6f5a1e-9c1d-4f7e-8a55-2f1c3e4d5a6b"));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok(&"k".repeat(MAX_KEY_LEN + 1)));
        assert!(ok(&"k".repeat(MAX_KEY_LEN)));
    }

    #[test]
    fn failures_worth_retrying_are_not_remembered() {
        assert!(is_final(StatusCode::ACCEPTED));
        assert!(is_final(StatusCode::UNPROCESSABLE_ENTITY));
        assert!(!is_final(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_final(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!is_final(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn webhooks_and_imports_do_not_take_the_header() {
        assert!(applies(&Method::POST, "/v1/notifications"));
        assert!(!applies(&Method::PUT, "/v1/notifications"));
        assert!(!applies(&Method::POST, "/v1/webhooks/{app_id}/{source}"));
        assert!(!applies(&Method::POST, "/v1/devices/import"));
    }
}
