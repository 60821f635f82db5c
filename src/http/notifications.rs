//! Direct sends (`POST /v1/notifications`) and the delivery log and replay endpoints.
//! A direct send is stored as an event carrying its own rule, so it takes exactly the path a
//! webhook takes: durable accept, fan-out, queue, retry.

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{EventAccepted, JsonBodyErrors, Requeued, ServerKeyErrors};
use super::{
    encode_cursor, time_cursor, ApiJson, ApiQuery, AppState, CursorKind, Page, ServerCaller,
};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::rules::{Audience, DeviceFilter, TemplateRef};
use crate::model::JobStatus;
use crate::service::sends::enqueue_direct;
use crate::worker::replay;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(event_deliveries))
        .routes(routes!(list_deliveries))
        .routes(routes!(replay_many))
        .routes(routes!(show_delivery))
        .routes(routes!(replay_one))
}

/// Who a direct send goes to; exactly one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Recipients {
    /// One user's devices.
    User(String),
    /// These users' devices.
    Users(Vec<String>),
    /// These registered tokens.
    Tokens(Vec<String>),
    /// Devices matching the filter (an empty filter is every device).
    Devices(DeviceFilter),
}

/// Body of `POST /v1/notifications`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: Recipients,
    template: TemplateRef,
    /// Becomes the event payload that templates see as `event`.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// Event type recorded for the send (default `notification.direct`).
    #[schema(min_length = 1, max_length = 256)]
    event_type: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/notifications",
    operation_id = "send_notification",
    tag = "notifications",
    summary = "Send a notification directly, without a webhook or rule",
    description = "Stored as an event carrying its own rule, then fanned out, queued and \
                   retried like a webhook's event.",
    request_body = SendRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "accepted for delivery", body = EventAccepted),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn send(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<SendRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let audience = match body.to {
        Recipients::User(u) => Audience::Users(vec![u]),
        Recipients::Users(u) => Audience::Users(u),
        Recipients::Tokens(t) => Audience::Tokens(t),
        Recipients::Devices(f) => Audience::Devices(f),
    };
    let id = enqueue_direct(
        &state.store,
        caller.app_id(),
        audience,
        body.template,
        body.data,
        body.event_type,
    )
    .await?;
    state.wake.events.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": id}))))
}

#[utoipa::path(
    get,
    path = "/v1/events/{id}/deliveries",
    operation_id = "list_event_deliveries",
    tag = "deliveries",
    summary = "List the deliveries of one event",
    params(("id" = String, Path, description = "the event id"), Page),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "a page of deliveries", body = DeliveryList),
        ServerKeyErrors,
        (status = 404, description = "no such event", body = ErrorBody),
        (status = 422, description = "invalid `limit` or `cursor`", body = ErrorBody),
    ),
)]
async fn event_deliveries(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(event_id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>> {
    if state
        .store
        .get_event(caller.app_id(), &event_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("event"));
    }
    let limit = page.limit()?;
    let after = page
        .cursor(CursorKind::EventDeliveries)?
        .unwrap_or_default();
    let rows = state
        .store
        .event_deliveries(caller.app_id(), &event_id, &after, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    Ok(Json(json!({
        "deliveries": rows.iter().map(|r| r.view()).collect::<Vec<_>>(),
        "next_cursor": more.then(|| rows.last().map(|r| encode_cursor(CursorKind::EventDeliveries, &r.id))).flatten(),
    })))
}

/// Query of `GET /v1/deliveries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveryQuery {
    /// Only deliveries in this status.
    #[param(inline, value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor` of this list.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

// Mirrors `DeliveryRow::view`; tests/openapi.rs compares it with real answers.
/// A delivery: one notification to one device.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Delivery)]
#[allow(dead_code)]
struct DeliveryView {
    id: String,
    event_id: String,
    /// The rule that produced it; null for direct sends.
    rule: Option<String>,
    /// `apns` or `fcm`.
    platform: String,
    token: String,
    status: JobStatus,
    attempts: i64,
    /// RFC 3339; only while queued.
    next_attempt_at: Option<String>,
    last_reason: Option<String>,
    provider_id: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// A page of deliveries.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// One delivery with its attempt log.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct DeliveryDetail {
    #[serde(flatten)]
    delivery: DeliveryView,
    attempt_log: Vec<AttemptView>,
}

/// One attempt to hand a delivery to its provider.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
#[allow(dead_code)]
struct AttemptView {
    attempt: i64,
    /// The provider-neutral outcome, e.g. `delivered` or `invalid_token`.
    outcome: String,
    reason: Option<String>,
    provider_id: Option<String>,
    latency_ms: i64,
    /// RFC 3339.
    at: String,
}

const DELIVERY_ID: &str = "the delivery id";

#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    summary = "The delivery log, most recently updated first",
    params(DeliveryQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "a page of deliveries", body = DeliveryList),
        ServerKeyErrors,
        (status = 422, description = "invalid `status`, `limit` or `cursor`", body = ErrorBody),
    ),
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<Value>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<JobStatus>().map_err(|_| {
                ApiError::field(
                    "status",
                    "one of queued, in_flight, delivered, dead, invalid",
                )
            })
        })
        .transpose()?;
    let page = Page {
        cursor: q.cursor,
        limit: q.limit,
    };
    let limit = page.limit()?;
    let cursor = page.time_cursor(CursorKind::Deliveries)?;
    let before = cursor.as_ref().map(|(ts, id)| (*ts, id.as_str()));
    let rows = state
        .store
        .list_deliveries(caller.app_id(), status, before, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| {
            rows.last()
                .map(|r| time_cursor(CursorKind::Deliveries, r.updated_at, &r.id))
        })
        .flatten();
    Ok(Json(json!({
        "deliveries": rows.iter().map(|r| r.view()).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    operation_id = "get_delivery",
    tag = "deliveries",
    summary = "Read one delivery with its attempt log",
    params(("id" = String, Path, description = DELIVERY_ID)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the delivery", body = DeliveryDetail),
        ServerKeyErrors,
        (status = 404, description = "no such delivery", body = ErrorBody),
    ),
)]
async fn show_delivery(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let (row, attempts) = state
        .store
        .get_delivery(caller.app_id(), &id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let mut view = row.view();
    view["attempt_log"] = json!(attempts
        .iter()
        .map(|a| json!({
            "attempt": a.attempt,
            "outcome": a.outcome,
            "reason": a.reason,
            "provider_id": a.provider_id,
            "latency_ms": a.latency_ms,
            "at": crate::store::rfc3339(a.at),
        }))
        .collect::<Vec<_>>());
    Ok(Json(view))
}

#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    operation_id = "retry_delivery",
    tag = "deliveries",
    summary = "Re-queue one dead letter",
    params(("id" = String, Path, description = DELIVERY_ID)),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "re-queued", body = Requeued),
        ServerKeyErrors,
        (status = 404, description = "no such delivery", body = ErrorBody),
        (status = 409, description = "the delivery is not a dead letter, or its template still does not render (the reason says which)", body = ErrorBody),
    ),
)]
async fn replay_one(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>)> {
    let (row, _) = state
        .store
        .get_delivery(caller.app_id(), &id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    if row.status != JobStatus::Dead {
        return Err(ApiError::Conflict(format!(
            "only dead letters can be retried; this delivery is {}",
            row.status.as_str()
        )));
    }
    replay_one_of(&state, caller.app_id(), &id).await
}

/// Body of the bulk replay; an empty object re-queues every dead letter of the app.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayFilter {
    /// Only dead letters of this event.
    event_id: Option<String>,
    /// Only dead letters that died at or after this RFC 3339 time.
    #[schema(format = DateTime, example = "2026-01-31T12:00:00Z")]
    since: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/deliveries/retry",
    operation_id = "retry_deliveries",
    tag = "deliveries",
    summary = "Re-queue dead letters in bulk",
    request_body = ReplayFilter,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "the matching dead letters were re-queued", body = Requeued),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn replay_many(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(filter): ApiJson<ReplayFilter>,
) -> Result<(StatusCode, Json<Value>)> {
    let since = filter
        .since
        .as_deref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| ApiError::field("since", "must be an RFC 3339 time"))
        })
        .transpose()?;
    let selection = replay::Selection {
        ids: None,
        event_id: filter.event_id.as_deref(),
        since_ms: since,
    };
    let report = replay::replay_dead(&state.store, caller.app_id(), selection).await?;
    if report.requeued > 0 {
        state.wake.jobs.notify_one();
    }
    Ok((StatusCode::ACCEPTED, Json(requeued_view(&report))))
}

/// Dead letters a bulk replay lists by name among those that still do not render.
const LISTED_NOT_RENDERED: usize = 100;

fn requeued_view(report: &replay::Report) -> Value {
    json!({
        "requeued": report.requeued,
        "not_rendered": report.not_rendered.iter().take(LISTED_NOT_RENDERED)
            .map(|(id, reason)| json!({"id": id, "reason": reason}))
            .collect::<Vec<_>>(),
        "not_rendered_total": report.not_rendered.len(),
    })
}

/// Replays one dead letter of `app_id`: 202 once re-queued, 409 with the reason when it is
/// not a dead letter or its template still does not render. The API and the dashboard share it.
pub(crate) async fn replay_one_of(
    state: &AppState,
    app_id: &str,
    id: &str,
) -> Result<(StatusCode, Json<Value>)> {
    let ids = [id.to_string()];
    let selection = replay::Selection {
        ids: Some(&ids),
        ..Default::default()
    };
    let report = replay::replay_dead(&state.store, app_id, selection).await?;
    if let Some((_, reason)) = report.not_rendered.first() {
        return Err(ApiError::Conflict(format!(
            "the delivery still does not render, so it stays a dead letter: {reason}"
        )));
    }
    if report.requeued == 0 {
        return Err(ApiError::Conflict(
            "only dead letters can be retried".into(),
        ));
    }
    state.wake.jobs.notify_one();
    Ok((StatusCode::ACCEPTED, Json(requeued_view(&report))))
}
