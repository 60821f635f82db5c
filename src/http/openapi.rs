//! The OpenAPI document. Every route is registered through `utoipa_axum::routes!` from a
//! `#[utoipa::path]`-annotated handler, so the document and the router come from the same
//! code; this module adds what is shared: info, security schemes, error responses, and the
//! `GET /openapi.json` endpoint that serves the result.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema};

use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{ApnsEnvironment, Platform};

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
    components(schemas(ErrorBody, ErrorDetail, Platform, ApnsEnvironment)),
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
        (name = "endpoints", description = "Event endpoints: signed outbound webhooks, their messages, attempts and replay (server key)"),
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

// Documentation of the validators' rules, checked against them by tests/it/openapi.rs.
/// An APNs token (an even number, 64-200, of hex digits) or an FCM registration token
/// (100-4096 of `[A-Za-z0-9_:-]`); `PUT` checks it against the body's `platform`.
pub const TOKEN_PATTERN: &str = "^(?:(?:[0-9A-Fa-f]{2}){32,100}|[A-Za-z0-9_:-]{100,4096})$";
/// A source, template or rule name (`sources::validate_name`).
pub const NAME_PATTERN: &str = "^[a-z0-9_-]{1,64}$";
/// Text without control characters (`char::is_control`), such as a user id.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";
/// A cursor: unpadded URL-safe base64, as every `next_cursor` is.
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// What many operations share, set in one place: the constraints of the path parameters
/// `token`, every `name` of a source, template or rule, `source` and `user_id`, the 400 of
/// text holding NUL, and the 414 and 431 of request heads over the `[http]` limits. Applied
/// by [`Document::new`], once the routers have added their operations.
struct PathConstraints;

impl Modify for PathConstraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let text = |pattern: &str, min: usize, max: usize| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .min_length(Some(min))
                .max_length(Some(max))
                .build()
        };
        let error = |description: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                // `ApiJson`, `ApiPath` and `ApiQuery` refuse NUL in any text with a 400.
                let takes_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let responses = &mut op.responses.responses;
                if takes_input && !responses.contains_key("400") {
                    responses.insert(
                        "400".to_string(),
                        error(
                            "a parameter or body string holds a NUL character; \
                             `error.field` names it",
                        )
                        .into(),
                    );
                }
                // `limit_head` answers these before routing, so any operation may meet them.
                responses.insert(
                    "414".to_string(),
                    error("the request URI exceeds `http.max_uri_bytes`").into(),
                );
                responses.insert(
                    "431".to_string(),
                    error("the request headers exceed `http.max_header_bytes`").into(),
                );
                for param in op.parameters.iter_mut().flatten() {
                    if param.parameter_in != ParameterIn::Path {
                        continue;
                    }
                    let schema = match param.name.as_str() {
                        "token" => text(TOKEN_PATTERN, 64, 4096),
                        "name" | "source" => text(NAME_PATTERN, 1, 64),
                        "user_id" => text(TEXT_PATTERN, 1, 256),
                        _ => continue,
                    };
                    param.schema = Some(schema.into());
                }
            }
        }
    }
}

/// One error answer in the document: a description and an [`ErrorBody`], with the
/// `Retry-After` header for 429s.
pub(super) fn error_response(
    status: u16,
    description: &str,
) -> (String, RefOr<utoipa::openapi::Response>) {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if status == 429 {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(u64::schema())
                .description(Some("seconds until a retry may succeed"))
                .build(),
        );
    }
    (status.to_string(), response.build().into())
}

/// Errors of endpoints that accept any app key.
pub struct AppKeyErrors;

impl IntoResponses for AppKeyErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            error_response(401, "missing, malformed, invalid or revoked API key"),
            error_response(
                429,
                "the key's rate limit (`rate_limits.server_key_per_sec` or \
                 `client_key_per_sec`) is exceeded",
            ),
        ])
    }
}

/// Errors of endpoints that need a server key.
pub struct ServerKeyErrors;

impl IntoResponses for ServerKeyErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            error_response(401, "missing, malformed, invalid or revoked API key"),
            error_response(403, "a client key; this endpoint needs a server key"),
            error_response(
                429,
                "the key's rate limit (`rate_limits.server_key_per_sec`) is exceeded",
            ),
        ])
    }
}

/// Errors of operator-only endpoints.
pub struct OperatorErrors;

impl IntoResponses for OperatorErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            error_response(401, "missing, malformed or wrong operator key"),
            error_response(403, "operator endpoints are disabled (no operator_key)"),
        ])
    }
}

/// Errors of a JSON request body (`ApiJson`).
pub struct JsonBodyErrors;

impl IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            error_response(
                400,
                "the body is not valid JSON, or a string in it holds a NUL character",
            ),
            error_response(413, "the body exceeds 2 MiB"),
            error_response(415, "Content-Type is not application/json"),
            error_response(
                422,
                "a field is missing, unknown or invalid; `error.field` names it",
            ),
        ])
    }
}

/// The document, serialized once at start-up and shared by every request for it.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    /// Serializes `doc`; it is built from static annotations, so this cannot fail at run time
    /// once the tests pass.
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        // The routes join the document after `ApiDoc`'s own modifiers ran.
        let mut doc = doc.clone();
        PathConstraints.modify(&mut doc);
        super::idempotency::document(&mut doc);
        Self(Bytes::from(
            serde_json::to_vec(&doc).expect("the OpenAPI document serializes to JSON"),
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
