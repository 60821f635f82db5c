//! The one error type of the HTTP API. Every variant becomes a JSON body
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`; internal errors are logged
//! and never shown to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Crate-wide result alias for handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The detail of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid_field`, `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `request_timeout`, `conflict`,
    /// `payload_too_large`, `uri_too_long`, `unsupported_media_type`, `headers_too_large`,
    /// `rate_limited` or `internal`.
    #[schema(value_type = String, example = "invalid_field")]
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field (dotted path), present with `invalid_field`, and with
    /// `bad_request` when one field is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "locale")]
    pub field: Option<String>,
}

/// An error returned by the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    InvalidField {
        /// Dotted name of the field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request as a whole is malformed (bad JSON, bad header, ...).
    #[error("{0}")]
    BadRequest(String),
    /// A field holds a NUL character, which no stored text may hold (PostgreSQL cannot store
    /// it; SQLite could): refused up front, so both backends answer alike.
    #[error("{field}: must not contain NUL characters")]
    NulInText {
        /// Dotted name of the field, path parameter or query parameter.
        field: String,
    },
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials are valid but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist (or belongs to another app).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The route exists but not with this method (the `Allow` header lists those it has).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The request body did not arrive within `http.body_read_timeout_secs`.
    #[error("request body not received within {secs} s")]
    RequestTimeout {
        /// The timeout in seconds.
        secs: u64,
    },
    /// A uniqueness rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// The body exceeds the configured limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request URI exceeds `http.max_uri_bytes`.
    #[error("request URI exceeds {limit} bytes")]
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request headers exceed `http.max_header_bytes` in total.
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The content type is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many requests; retry after the given seconds.
    #[error("rate limit exceeded")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// Anything unexpected: logged, answered with a generic 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Shorthand for a field validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Refuses `value` when it holds a NUL character, naming `field`.
    pub fn check_nul(field: &str, value: &str) -> Result<(), Self> {
        if value.contains('\0') {
            Err(Self::NulInText {
                field: field.to_string(),
            })
        } else {
            Ok(())
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) | Self::NulInText { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidField { .. } => "invalid_field",
            Self::BadRequest(_) | Self::NulInText { .. } => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

/// PostgreSQL's SQLSTATE for text it cannot store: a NUL character in a `text` value.
const PG_CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// Whether a store error was caused by client input the database cannot hold (a NUL
/// character: PostgreSQL refuses it in text, SQLite accepts it). That is a bad request from
/// the client, not an internal error.
fn is_unstorable_input(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => {
                db.code().as_deref() == Some(PG_CHARACTER_NOT_IN_REPERTOIRE)
            }
            _ => false,
        })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = match self {
            Self::Internal(e) if is_unstorable_input(&e) => {
                Self::BadRequest("text must not contain NUL characters".into())
            }
            other => other,
        };
        let status = this.status();
        let message = match &this {
            Self::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                "internal error".to_string()
            }
            Self::InvalidField { message, .. } => message.clone(),
            Self::NulInText { .. } => "must not contain NUL characters".to_string(),
            other => other.to_string(),
        };
        let field = match &this {
            Self::InvalidField { field, .. } | Self::NulInText { field } => Some(field.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: this.code(),
                message,
                field,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            this,
            Self::PayloadTooLarge { .. } | Self::RequestTimeout { .. }
        ) {
            // The body was not read to its end, so the connection cannot carry another
            // request; saying so keeps HTTP/1.1 clients from reusing it (hyper closes it).
            // HTTP/2 drops the header and resets only the stream.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::TooManyRequests { retry_after_secs } = this {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// Maps a unique-constraint violation to a 409 with `message`; other errors pass through.
pub fn on_unique_violation(e: sqlx::Error, message: impl Into<String>) -> ApiError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::Conflict(message.into()),
        _ => e.into(),
    }
}

impl From<crate::model::InvalidField> for ApiError {
    fn from(e: crate::model::InvalidField) -> Self {
        Self::field(e.field, e.message)
    }
}
