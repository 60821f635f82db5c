//! The OpenAPI document. Every route is registered through `utoipa_axum::routes!` from a
//! `#[utoipa::path]`-annotated handler, so the document and the router come from the same
//! code; this module adds what is shared: info, security schemes, error responses, and the
//! `GET /openapi.json` endpoint that serves the result.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::error::{ErrorBody, ErrorDetail};

/// Security scheme of app keys (server or client) in `Authorization: Bearer`.
pub const API_KEY: &str = "api_key";
/// Security scheme of the operator key in `Authorization: Bearer`.
pub const OPERATOR_KEY: &str = "operator_key";

/// The document's fixed parts; paths and most schemas come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pushbridge",
        description = "Push-notification bridge: signed webhooks in, personalized APNs/FCM \
                       notifications out.\n\nErrors are JSON `{\"error\": {\"code\", \"message\", \
                       \"field\"?}}` (schema `ErrorBody`)."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document"),
        (name = "devices", description = "Device registry (client or server key)"),
        (name = "sources", description = "Webhook sources (server key)"),
        (name = "webhooks", description = "Signed webhook ingest (authenticated by signature)"),
        (name = "events", description = "Received events (server key)"),
        (name = "templates", description = "Named notification templates (server key)"),
        (name = "rules", description = "Rules mapping events to audiences and templates (server key)"),
        (name = "notifications", description = "Direct sends (server key)"),
        (name = "deliveries", description = "Delivery log and replay (server key)"),
        (name = "app", description = "The calling app, its pruned-token callback and its user-auth settings (server key)"),
        (name = "stats", description = "Delivery statistics (server or operator key)"),
        (name = "admin", description = "Operator dashboard and endpoints (operator key)"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An app key: a server key (full access to its app) or a client key \
                         (may only register, read and unregister devices).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            OPERATOR_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The configured `operator_key`, separate from every app key. Operator \
                         endpoints answer 403 when none is configured.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Errors of endpoints that accept any app key.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AppKeyErrors {
    /// Missing, malformed, invalid or revoked key.
    #[response(
        status = 401,
        description = "missing, malformed, invalid or revoked API key"
    )]
    Unauthorized(ErrorBody),
}

/// Errors of endpoints that need a server key.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ServerKeyErrors {
    /// Missing, malformed, invalid or revoked key.
    #[response(
        status = 401,
        description = "missing, malformed, invalid or revoked API key"
    )]
    Unauthorized(ErrorBody),
    /// A client key on a server-key endpoint.
    #[response(
        status = 403,
        description = "a client key; this endpoint needs a server key"
    )]
    Forbidden(ErrorBody),
}

/// Errors of operator-only endpoints.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum OperatorErrors {
    /// Missing or wrong operator key.
    #[response(status = 401, description = "missing, malformed or wrong operator key")]
    Unauthorized(ErrorBody),
    /// No operator key is configured.
    #[response(
        status = 403,
        description = "operator endpoints are disabled (no operator_key)"
    )]
    Forbidden(ErrorBody),
}

/// Errors of a JSON request body (`ApiJson`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum JsonBodyErrors {
    /// Not JSON at all.
    #[response(status = 400, description = "the body is not valid JSON")]
    BadRequest(ErrorBody),
    /// Over the body limit.
    #[response(status = 413, description = "the body exceeds 2 MiB")]
    PayloadTooLarge(ErrorBody),
    /// Wrong content type.
    #[response(status = 415, description = "Content-Type is not application/json")]
    UnsupportedMediaType(ErrorBody),
    /// A field is missing, unknown or invalid.
    #[response(
        status = 422,
        description = "a field is missing, unknown or invalid; `error.field` names it"
    )]
    InvalidField(ErrorBody),
}

/// An event was stored, or recognised as a duplicate.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventAccepted {
    /// Id of the stored event (`GET /v1/events/{id}`).
    pub event_id: String,
    /// Present and true when the sender already delivered this event id.
    #[schema(nullable = false)]
    pub duplicate: Option<bool>,
}

/// How many dead letters went back to the queue.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Requeued {
    /// Number of deliveries re-queued.
    pub requeued: u64,
}

/// The document, serialized once at start-up and shared by every request for it.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    /// Serializes `doc`; it is built from static annotations, so this cannot fail at run time
    /// once the tests pass.
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        Self(Bytes::from(
            serde_json::to_vec(doc).expect("the OpenAPI document serializes to JSON"),
        ))
    }
}

/// Serves the OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    summary = "The OpenAPI 3 document of this API",
    responses((status = 200, description = "the OpenAPI document", body = Object)),
)]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}
