//! The HTTP API: extractors and the router every resource module contributes to.

mod admin;
mod app;
mod credentials;
mod deliveries;
mod device_import;
mod devices;
mod endpoints;
mod events;
mod health;
mod idempotency;
mod notifications;
mod policy;
mod preview;

pub mod openapi;
mod sources;
mod specs;
mod stats;
mod user_auth;
mod webhooks;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{ApiKey, KeyKind};

/// Every route with its documentation, built from the same annotated handlers.
fn documented_routes(config: &Config) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(openapi::openapi_json))
        .merge(health::router())
        .merge(devices::router())
        .merge(device_import::router())
        .merge(sources::router())
        .merge(webhooks::router(config))
        .merge(events::router())
        .merge(specs::router())
        .merge(preview::router())
        .merge(notifications::router())
        .merge(deliveries::router())
        .merge(app::router())
        .merge(endpoints::router())
        .merge(policy::router())
        .merge(credentials::router())
        .merge(user_auth::router())
        .merge(stats::router())
        .merge(admin::router())
}

/// The full API router, including `GET /openapi.json`.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = documented_routes(&state.config).split_for_parts();
    routes
        .layer(Extension(openapi::Document::new(&doc)))
        .fallback(|| async { ApiError::NotFound("route") })
        // axum adds the `Allow` header to this answer itself.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_head,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Records every request's duration by matched route (never the raw path: it holds tokens).
async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Answers 414 and 431 with our JSON error for request heads over the `[http]` limits. hyper
/// only cuts off heads several times larger (see `server`), so these limits are what clients
/// meet.
async fn limit_head(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limits = &state.config.http;
    let uri = request.uri();
    let uri_bytes = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_bytes > limits.max_uri_bytes {
        return ApiError::UriTooLong {
            limit: limits.max_uri_bytes,
        }
        .into_response();
    }
    // As HTTP/1 sends them: name, ": ", value, CRLF.
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return ApiError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        }
        .into_response();
    }
    next.run(request).await
}

/// A caller authenticated with any of its app's keys (server or client).
#[derive(Clone, Debug)]
pub struct Caller(pub ApiKey);

impl Caller {
    /// The app the caller acts for; every query is scoped to it.
    pub fn app_id(&self) -> &str {
        &self.0.app_id
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts)?;
        let key = state
            .store
            .authenticate(key)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid or revoked API key".into()))?;
        let limits = &state.config.rate_limits;
        let per_sec = match key.kind {
            KeyKind::Server => limits.server_key_per_sec,
            KeyKind::Client => limits.client_key_per_sec,
        };
        state
            .limiter
            .check(&format!("key:{}", key.id), per_sec, limits.burst_secs)
            .map_err(|wait| ApiError::TooManyRequests {
                retry_after_secs: crate::ratelimit::retry_after_secs(wait),
            })?;
        Ok(Caller(key))
    }
}

/// A caller holding a server key (full access to its app).
#[derive(Clone, Debug)]
pub struct ServerCaller(pub Caller);

impl ServerCaller {
    /// The app the caller acts for.
    pub fn app_id(&self) -> &str {
        self.0.app_id()
    }
}

impl FromRequestParts<AppState> for ServerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.0.kind != KeyKind::Server {
            return Err(ApiError::Forbidden(
                "this endpoint needs a server key; client keys may only register devices".into(),
            ));
        }
        Ok(ServerCaller(caller))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <key>".into()))?;
    // The scheme name is case-insensitive (RFC 9110, section 11.1).
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be 'Bearer <key>'".into()))
}

/// Whether `presented` is the configured operator key (constant-time comparison of hashes).
fn is_operator_key(config: &Config, presented: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    config.operator_key.as_deref().is_some_and(|key| {
        Sha256::digest(key.as_bytes())
            .ct_eq(&Sha256::digest(presented.as_bytes()))
            .into()
    })
}

/// The operator: holder of `operator_key`, separate from every app key.
#[derive(Clone, Copy, Debug)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.config.operator_key.is_none() {
            return Err(ApiError::Forbidden(
                "operator endpoints are disabled; set operator_key to enable them".into(),
            ));
        }
        if is_operator_key(&state.config, bearer(parts)?) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized("invalid operator key".into()))
        }
    }
}

/// Someone allowed to read stats: the operator (any or all apps) or an app's server key.
#[derive(Clone, Debug)]
pub enum Viewer {
    /// Operator key.
    Operator,
    /// A server key of this app.
    App(String),
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if is_operator_key(&state.config, bearer(parts)?) {
            return Ok(Viewer::Operator);
        }
        let caller = ServerCaller::from_request_parts(parts, state).await?;
        Ok(Viewer::App(caller.app_id().to_string()))
    }
}

/// A JSON body whose errors become API errors naming the offending field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/json".into(),
            ));
        }
        let (parts, body) = req.into_parts();
        let bytes = read_body(body, &parts.headers, DEFAULT_BODY_LIMIT).await?;
        reject_nul_strings(&bytes)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Refuses a JSON body in which any string (key or value) holds a NUL character, naming
/// where. JSON can only spell NUL as the escape `\u0000`, so bodies without that text skip
/// the walk.
fn reject_nul_strings(bytes: &[u8]) -> Result<(), ApiError> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !bytes.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return Ok(());
    }
    // Unparsable bodies are refused by the parser with its own message.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    fn walk(value: &serde_json::Value, path: &str) -> Result<(), ApiError> {
        let here = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            serde_json::Value::String(s) => {
                ApiError::check_nul(if path.is_empty() { "body" } else { path }, s)
            }
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{path}[{i}]"))),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                let field = here(&k.replace('\0', "\\0"));
                ApiError::check_nul(&field, k)?;
                walk(v, &field)
            }),
            _ => Ok(()),
        }
    }
    walk(&value, "")
}

/// Body limit of ordinary JSON endpoints (axum's default).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes: 413 before reading anything when the
/// declared `Content-Length` is over it, or as soon as the bytes read are; 408 when the body
/// misses the listener's body deadline. Every handler that reads a body reads it here.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if caused_by::<http_body_util::LengthLimitError>(&*e) {
                Err(ApiError::PayloadTooLarge { limit })
            } else if let Some(timeout) = find_cause::<crate::server::BodyTimeout>(&*e) {
                Err(ApiError::RequestTimeout {
                    secs: timeout.0.as_secs(),
                })
            } else {
                Err(ApiError::BadRequest(format!("cannot read body: {e}")))
            }
        }
    }
}

/// The first error of type `T` in `e`'s chain of sources.
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(e), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<T>(e).is_some()
}

/// Parses JSON, reporting syntax errors as 400 and shape errors as 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from a JSON array of its fields in order; every body of this API
    // is an object, so an array is refused rather than read positionally.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => {
            de.end()
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
            Ok(v)
        }
        Err(e) => {
            let inner = e.inner();
            if inner.is_data() {
                let path = e.path().to_string();
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Err(ApiError::field(field, inner.to_string()))
            } else {
                Err(ApiError::BadRequest(format!("invalid JSON: {inner}")))
            }
        }
    }
}

/// `?cursor=&limit=` pagination shared by list endpoints.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Opaque cursor from a previous page's `next_cursor` of the same list.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// The list a cursor belongs to. Its tag leads the encoded cursor, so a cursor handed to
/// another list is refused as foreign instead of being read as a position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorKind {
    /// `GET /v1/users/{user_id}/devices`: after a token.
    UserDevices,
    /// `GET /v1/devices?state=`: after a token.
    Devices,
    /// `GET /v1/events`: before a (received_at, id).
    Events,
    /// `GET /v1/deliveries`: before an (updated_at, id).
    Deliveries,
    /// `GET /v1/events/{id}/deliveries`: after a delivery id.
    EventDeliveries,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            Self::UserDevices => "ud",
            Self::Devices => "dv",
            Self::Events => "ev",
            Self::Deliveries => "dl",
            Self::EventDeliveries => "ed",
        }
    }
}

fn foreign_cursor() -> ApiError {
    ApiError::field("cursor", "not a cursor from this list")
}

impl Page {
    /// The validated page size.
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::field("limit", "must be between 1 and 500")),
        }
    }

    /// A `(time, id)` cursor of a newest-first list, as written by [`time_cursor`].
    pub fn time_cursor(&self, kind: CursorKind) -> Result<Option<(i64, String)>, ApiError> {
        self.cursor(kind)?
            .map(|c| {
                c.split_once(':')
                    .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id.to_string())))
                    .ok_or_else(foreign_cursor)
            })
            .transpose()
    }

    /// The position a cursor of list `kind` carries, as written by [`encode_cursor`].
    pub fn cursor(&self, kind: CursorKind) -> Result<Option<String>, ApiError> {
        use base64::Engine;
        self.cursor
            .as_deref()
            .map(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|text| {
                        let (tag, position) = text.split_once('|')?;
                        (tag == kind.tag()).then(|| position.to_string())
                    })
                    .ok_or_else(foreign_cursor)
            })
            .transpose()
    }
}

/// The cursor after a row of a newest-first list ordered by (time, id).
pub fn time_cursor(kind: CursorKind, ts: i64, id: &str) -> String {
    encode_cursor(kind, &format!("{ts}:{id}"))
}

/// Encodes the position after the last row of a page of list `kind`, for `next_cursor`.
pub fn encode_cursor(kind: CursorKind, position: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{position}", kind.tag()))
}

/// Path-parameter extractor whose errors (e.g. a parameter that is not UTF-8) are API errors.
/// Handler modules import it as `Path`.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(raw) = axum::extract::RawPathParams::from_request_parts(parts, state).await {
            for (name, value) in &raw {
                ApiError::check_nul(name, value)?;
            }
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))
    }
}

/// Query-string extractor whose errors are API errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            ApiError::check_nul(&name, &value)?;
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| ApiError::field(e.path().to_string(), e.inner().to_string()))
    }
}
