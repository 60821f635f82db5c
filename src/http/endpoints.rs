//! Event endpoints (server key): `/v1/endpoints` and their messages, attempts, replay, test
//! sends and secret rotation; and the catalog of event types, `/v1/event-types`. The secret
//! is shown in full only when created or rotated.

use std::str::FromStr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::ApiPath as Path;
use super::{parse_json, ApiJson, ApiQuery, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::event_type::{EndpointOutcome, EventType, MessageStatus};
use crate::service::endpoints::{self as service, EndpointRequest};
use crate::store::{rfc3339, AttemptLogRow, Endpoint, EndpointChange, MessageRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(messages))
        .routes(routes!(attempts))
        .routes(routes!(recover))
        .routes(routes!(resend))
        .routes(routes!(send_test))
        .routes(routes!(rotate_secret))
        .routes(routes!(event_types))
}

/// Body of `POST /v1/endpoints`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    /// Absolute https URL, at most 2048 characters, not at a loopback, private or link-local
    /// address.
    #[schema(
        example = "https://backend.example.com/hooks/pushbridge",
        format = "uri",
        max_length = 2048
    )]
    url: String,
    /// The event types it receives (at least one).
    #[schema(min_items = 1)]
    events: Vec<EventType>,
    /// Free text, at most 512 characters.
    #[schema(max_length = 512)]
    description: Option<String>,
}

/// Body of `PATCH /v1/endpoints/{id}`; absent fields are left unchanged.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateEndpoint {
    #[schema(format = "uri", max_length = 2048)]
    url: Option<String>,
    #[schema(min_items = 1)]
    events: Option<Vec<EventType>>,
    /// An empty string removes the description.
    #[schema(max_length = 512)]
    description: Option<String>,
    /// Enabling an endpoint the bridge disabled starts its failure clock afresh.
    enabled: Option<bool>,
}

/// An event endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EventEndpoint)]
struct EndpointView {
    id: String,
    url: String,
    description: Option<String>,
    events: Vec<EventType>,
    enabled: bool,
    /// Why the bridge disabled it, when it did.
    disabled_reason: Option<String>,
    /// RFC 3339: since when every attempt has failed; null while it succeeds.
    failing_since: Option<String>,
    /// Managed through `PUT /v1/app/callback`.
    legacy_callback: bool,
    /// RFC 3339: when the previous secret stops signing, during a rotation.
    previous_secret_expires_at: Option<String>,
    /// `whsec_...`: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    secret: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

impl EndpointView {
    fn new(e: Endpoint, secret: Option<String>) -> Self {
        Self {
            id: e.id,
            url: e.url,
            description: e.description,
            events: e.events,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since.map(rfc3339),
            legacy_callback: e.legacy_callback,
            previous_secret_expires_at: e.previous_secret_expires_at.map(rfc3339),
            secret,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// Every endpoint of the app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EndpointList {
    endpoints: Vec<EndpointView>,
}

const ID: &str = "the endpoint's id";

#[utoipa::path(
    post,
    path = "/v1/endpoints",
    operation_id = "create_endpoint",
    tag = "endpoints",
    summary = "Create an event endpoint; its whsec_ secret is shown only here",
    request_body = CreateEndpoint,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "created, with its secret", body = EndpointView),
        ServerKeyErrors,
        (status = 409, description = "the app has the most endpoints it may have", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn create(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>)> {
    let request = EndpointRequest {
        url: body.url,
        events: body.events,
        description: body.description.filter(|d| !d.is_empty()),
    };
    let (endpoint, secret) = service::create(
        &state.store,
        &state.config.endpoints,
        caller.app_id(),
        &request,
    )
    .await?;
    tracing::info!(app = caller.app_id(), endpoint = %endpoint.id, "event endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(EndpointView::new(endpoint, Some(secret))),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/endpoints",
    operation_id = "list_endpoints",
    tag = "endpoints",
    summary = "List the app's event endpoints",
    security(("api_key" = [])),
    responses((status = 200, description = "every endpoint", body = EndpointList), ServerKeyErrors),
)]
async fn list(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<EndpointList>> {
    let endpoints = state.store.endpoints(caller.app_id()).await?;
    Ok(Json(EndpointList {
        endpoints: endpoints
            .into_iter()
            .map(|e| EndpointView::new(e, None))
            .collect(),
    }))
}

async fn load(state: &AppState, app_id: &str, id: &str) -> Result<Endpoint> {
    state
        .store
        .endpoint(app_id, id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))
}

#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}",
    operation_id = "get_endpoint",
    tag = "endpoints",
    summary = "Read one event endpoint",
    params(("id" = String, Path, description = ID)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the endpoint", body = EndpointView),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>> {
    Ok(Json(EndpointView::new(
        load(&state, caller.app_id(), &id).await?,
        None,
    )))
}

#[utoipa::path(
    patch,
    path = "/v1/endpoints/{id}",
    operation_id = "update_endpoint",
    tag = "endpoints",
    summary = "Change an endpoint's URL, event types, description or enabled state",
    params(("id" = String, Path, description = ID)),
    request_body = UpdateEndpoint,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the updated endpoint", body = EndpointView),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn update(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointView>> {
    let change = EndpointChange {
        url: body.url.as_deref(),
        description: body
            .description
            .as_deref()
            .map(|d| Some(d).filter(|d| !d.is_empty())),
        events: body.events.as_deref(),
        enabled: body.enabled,
    };
    let endpoint = service::update(
        &state.store,
        &state.config.endpoints,
        caller.app_id(),
        &id,
        change,
    )
    .await?;
    Ok(Json(EndpointView::new(endpoint, None)))
}

#[utoipa::path(
    delete,
    path = "/v1/endpoints/{id}",
    operation_id = "delete_endpoint",
    tag = "endpoints",
    summary = "Delete an event endpoint with its messages",
    params(("id" = String, Path, description = ID)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "deleted"),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
    ),
)]
async fn remove(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !state.store.delete_endpoint(caller.app_id(), &id).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the message and attempt lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Messages of this status only.
    status: Option<MessageStatus>,
    /// Attempts of this message only.
    message_id: Option<String>,
    /// Rows, newest first: 1-500, default 50.
    limit: Option<u32>,
}

impl ListQuery {
    fn limit(&self) -> Result<u32> {
        match self.limit.unwrap_or(50) {
            n @ 1..=500 => Ok(n),
            _ => Err(ApiError::field("limit", "must be 1-500")),
        }
    }
}

/// A message to an endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EndpointMessage)]
struct MessageView {
    /// Also its `webhook-id`.
    id: String,
    event_type: EventType,
    status: MessageStatus,
    attempts: i64,
    /// The JSON body as sent.
    payload: serde_json::Value,
    last_error: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, while pending.
    next_attempt_at: Option<String>,
}

impl From<MessageRow> for MessageView {
    fn from(m: MessageRow) -> Self {
        Self {
            payload: serde_json::from_str(&m.body).unwrap_or(serde_json::Value::String(m.body)),
            next_attempt_at: (m.status == MessageStatus::Pending)
                .then(|| rfc3339(m.next_attempt_at)),
            id: m.id,
            event_type: m.event_type,
            status: m.status,
            attempts: m.attempts,
            last_error: m.last_error,
            created_at: rfc3339(m.created_at),
        }
    }
}

/// Messages, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct MessageList {
    messages: Vec<MessageView>,
}

#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}/messages",
    operation_id = "list_endpoint_messages",
    tag = "endpoints",
    summary = "The endpoint's messages, newest first",
    params(("id" = String, Path, description = ID), ListQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "messages", body = MessageList),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 422, description = "a bad query parameter", body = ErrorBody),
    ),
)]
async fn messages(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<MessageList>> {
    load(&state, caller.app_id(), &id).await?;
    let rows = state
        .store
        .endpoint_messages(&id, query.status, query.limit()?)
        .await?;
    Ok(Json(MessageList {
        messages: rows.into_iter().map(MessageView::from).collect(),
    }))
}

/// One attempt to deliver a message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EndpointAttempt)]
struct AttemptView {
    id: String,
    message_id: String,
    /// RFC 3339.
    at: String,
    outcome: EndpointOutcome,
    /// The HTTP status, when the endpoint answered.
    response_code: Option<i64>,
    /// The first 256 bytes of the answer.
    response_body: Option<String>,
    /// Why the attempt failed.
    error: Option<String>,
    duration_ms: i64,
}

impl From<AttemptLogRow> for AttemptView {
    fn from(a: AttemptLogRow) -> Self {
        Self {
            id: a.id,
            message_id: a.message_id,
            at: rfc3339(a.at),
            outcome: a.outcome,
            response_code: a.response_code,
            response_body: a.response_body,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

/// Attempts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AttemptList {
    attempts: Vec<AttemptView>,
}

#[utoipa::path(
    get,
    path = "/v1/endpoints/{id}/attempts",
    operation_id = "list_endpoint_attempts",
    tag = "endpoints",
    summary = "The endpoint's delivery attempts, newest first",
    params(("id" = String, Path, description = ID), ListQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "attempts", body = AttemptList),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        (status = 422, description = "a bad query parameter", body = ErrorBody),
    ),
)]
async fn attempts(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<AttemptList>> {
    load(&state, caller.app_id(), &id).await?;
    let rows = state
        .store
        .endpoint_attempts(&id, query.message_id.as_deref(), query.limit()?)
        .await?;
    Ok(Json(AttemptList {
        attempts: rows.into_iter().map(AttemptView::from).collect(),
    }))
}

/// Body of `POST /v1/endpoints/{id}/recover`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    /// RFC 3339: failed messages created at or after this time are sent again.
    #[schema(example = "2026-01-01T00:00:00Z", format = "date-time")]
    since: String,
}

/// How many messages were queued again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Requeued {
    requeued: u64,
}

#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/recover",
    operation_id = "recover_endpoint",
    tag = "endpoints",
    summary = "Send again every failed message since a time",
    params(("id" = String, Path, description = ID)),
    request_body = RecoverRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "queued again, with a fresh retry schedule", body = Requeued),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn recover(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RecoverRequest>,
) -> Result<(StatusCode, Json<Requeued>)> {
    load(&state, caller.app_id(), &id).await?;
    let since = jiff::Timestamp::from_str(&body.since)
        .map_err(|_| ApiError::field("since", "must be an RFC 3339 time"))?
        .as_millisecond();
    let requeued = state.store.recover_messages(&id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/messages/{message_id}/resend",
    operation_id = "resend_endpoint_message",
    tag = "endpoints",
    summary = "Send one message again",
    params(("id" = String, Path, description = ID), ("message_id" = String, Path, description = "the message's id")),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "queued again", body = Requeued),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint or message", body = ErrorBody),
    ),
)]
async fn resend(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Requeued>)> {
    load(&state, caller.app_id(), &id).await?;
    if !state.store.resend_message(&id, &message_id).await? {
        return Err(ApiError::NotFound("message"));
    }
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued: 1 })))
}

/// Body of `POST /v1/endpoints/{id}/test`; empty sends an example `device.pruned`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// The type whose example is sent.
    event_type: Option<EventType>,
}

/// The test message queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TestQueued {
    message_id: String,
}

#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/test",
    operation_id = "test_endpoint",
    tag = "endpoints",
    summary = "Send an example event to the endpoint",
    params(("id" = String, Path, description = ID)),
    request_body(content = TestRequest, description = "optional"),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "queued; follow it in the endpoint's messages", body = TestQueued),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn send_test(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TestQueued>)> {
    // An empty body and `null` both ask for the default example.
    let body: TestRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TestRequest::default()
    } else {
        parse_json::<Option<TestRequest>>(&body)?.unwrap_or_default()
    };
    let event_type = body.event_type.unwrap_or(EventType::DevicePruned);
    let message_id = service::send_test(&state.store, caller.app_id(), &id, event_type).await?;
    Ok((StatusCode::ACCEPTED, Json(TestQueued { message_id })))
}

/// Body of `POST /v1/endpoints/{id}/secret/rotate`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old secret goes on signing too, seconds (at most a week; default 0).
    #[schema(maximum = 604800)]
    #[serde(default)]
    grace_secs: u64,
}

/// The new secret, shown only here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Rotated {
    secret: String,
    /// RFC 3339: when the old secret stops signing.
    previous_secret_expires_at: String,
}

#[utoipa::path(
    post,
    path = "/v1/endpoints/{id}/secret/rotate",
    operation_id = "rotate_endpoint_secret",
    tag = "endpoints",
    summary = "Replace the signing secret; both sign during the grace period",
    params(("id" = String, Path, description = ID)),
    request_body = RotateRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "rotated; the new secret is shown only here", body = Rotated),
        ServerKeyErrors,
        (status = 404, description = "no such endpoint", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn rotate_secret(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateRequest>,
) -> Result<Json<Rotated>> {
    let secret =
        service::rotate_secret(&state.store, caller.app_id(), &id, body.grace_secs).await?;
    let endpoint = load(&state, caller.app_id(), &id).await?;
    Ok(Json(Rotated {
        secret,
        previous_secret_expires_at: rfc3339(
            endpoint.previous_secret_expires_at.unwrap_or_default(),
        ),
    }))
}

/// One event type of the catalog.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventTypeView {
    name: EventType,
    description: &'static str,
    /// JSON schema of the message's `data`.
    #[schema(value_type = Object)]
    schema: serde_json::Value,
    /// A whole example message: `type`, `timestamp` and `data`.
    #[schema(value_type = Object)]
    example: serde_json::Value,
}

/// Every event type an endpoint can subscribe to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventTypeCatalog {
    event_types: Vec<EventTypeView>,
}

#[utoipa::path(
    get,
    path = "/v1/event-types",
    operation_id = "list_event_types",
    tag = "endpoints",
    summary = "The event types endpoints can subscribe to, with schema and example",
    security(("api_key" = [])),
    responses((status = 200, description = "the catalog", body = EventTypeCatalog), ServerKeyErrors),
)]
async fn event_types(_caller: ServerCaller) -> Json<EventTypeCatalog> {
    Json(EventTypeCatalog {
        event_types: EventType::ALL
            .into_iter()
            .map(|t| EventTypeView {
                name: t,
                description: t.description(),
                schema: t.data_schema(),
                example: serde_json::json!({
                    "type": t,
                    "timestamp": "2026-01-01T12:00:00.000Z",
                    "data": t.example_data(),
                }),
            })
            .collect(),
    })
}
