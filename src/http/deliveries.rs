//! The delivery log and dead-letter replay: `GET /v1/deliveries`, `GET /v1/deliveries/{id}`,
//! `GET /v1/events/{id}/deliveries`, and `POST /v1/deliveries/.../retry` (server key).

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{
    encode_cursor, time_cursor, ApiJson, ApiQuery, AppState, CursorKind, Page, ServerCaller,
};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::policy::Hold;
use crate::model::{AttemptOutcome, JobStatus, Platform};
use crate::store::{rfc3339, DeliveryRow};
use crate::worker::replay;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(event_deliveries))
        .routes(routes!(list_deliveries))
        .routes(routes!(replay_many))
        .routes(routes!(show_delivery))
        .routes(routes!(replay_one))
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
) -> Result<Json<DeliveryList>> {
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
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| encode_cursor(CursorKind::EventDeliveries, &r.id))
        })
        .flatten();
    Ok(Json(DeliveryList {
        deliveries: DeliveryView::page(rows)?,
        next_cursor,
    }))
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

/// A delivery: one notification to one device.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Delivery)]
struct DeliveryView {
    id: String,
    event_id: String,
    /// The rule that produced it; null for direct sends.
    rule: Option<String>,
    platform: Platform,
    token: String,
    status: JobStatus,
    attempts: i64,
    /// RFC 3339; only while queued.
    next_attempt_at: Option<String>,
    /// While queued for a later due time: why (`scheduled`: `send_at`, `delay` or
    /// `deliver_at_local`; `quiet_hours`: held until the user's quiet hours end).
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<Hold>,
    last_reason: Option<String>,
    provider_id: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

impl DeliveryView {
    fn new(row: &DeliveryRow) -> Result<Self> {
        let status = row.status;
        Ok(Self {
            id: row.id.clone(),
            event_id: row.event_id.clone(),
            rule: row.rule.clone(),
            platform: row.platform,
            token: row.token.clone(),
            status,
            attempts: row.attempts,
            next_attempt_at: (status == JobStatus::Queued).then(|| rfc3339(row.next_attempt_at)),
            hold: row.hold.filter(|_| status == JobStatus::Queued),
            last_reason: row.last_reason.clone(),
            provider_id: row.provider_id.clone(),
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        })
    }

    fn page(rows: &[DeliveryRow]) -> Result<Vec<Self>> {
        rows.iter().map(Self::new).collect()
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// One delivery with its attempt log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryDetail {
    #[serde(flatten)]
    delivery: DeliveryView,
    attempt_log: Vec<AttemptView>,
    /// What is sent to the provider: the rendered notification and the provider's JSON
    /// body; absent for a job whose template never rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    payload: Option<crate::service::preview::SentPayload>,
}

/// One attempt to hand a delivery to its provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
struct AttemptView {
    attempt: i64,
    /// The provider-neutral outcome.
    outcome: AttemptOutcome,
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
) -> Result<Json<DeliveryList>> {
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
    Ok(Json(DeliveryList {
        deliveries: DeliveryView::page(rows)?,
        next_cursor: next,
    }))
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
) -> Result<Json<DeliveryDetail>> {
    let (row, attempts) = state
        .store
        .get_delivery(caller.app_id(), &id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let payload = match state.store.delivery_payload(caller.app_id(), &id).await? {
        Some(job) => crate::service::preview::sent_payload(
            &state.store,
            &state.providers,
            caller.app_id(),
            row.platform,
            &row.token,
            &job,
        )?,
        None => None,
    };
    Ok(Json(DeliveryDetail {
        payload,
        delivery: DeliveryView::new(&row)?,
        attempt_log: attempts
            .into_iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                outcome: a.outcome,
                reason: a.reason,
                provider_id: a.provider_id,
                latency_ms: a.latency_ms,
                at: rfc3339(a.at),
            })
            .collect(),
    }))
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
) -> Result<(StatusCode, Json<Requeued>)> {
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
) -> Result<(StatusCode, Json<Requeued>)> {
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
    Ok((StatusCode::ACCEPTED, Json(Requeued::new(&report))))
}

/// Dead letters a bulk replay lists by name among those that still do not render.
const LISTED_NOT_RENDERED: usize = 100;

/// How many dead letters went back to the queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Requeued {
    /// Number of deliveries re-queued.
    requeued: u64,
    /// Dead letters whose template still does not render (they stay dead), at most 100.
    not_rendered: Vec<NotRendered>,
    /// How many dead letters still do not render in all.
    not_rendered_total: u64,
}

/// A dead letter a replay could not render.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NotRendered {
    /// The delivery id.
    id: String,
    /// Why it still does not render.
    reason: String,
}

impl Requeued {
    fn new(report: &replay::Report) -> Self {
        Self {
            requeued: report.requeued,
            not_rendered: report
                .not_rendered
                .iter()
                .take(LISTED_NOT_RENDERED)
                .map(|(id, reason)| NotRendered {
                    id: id.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            not_rendered_total: report.not_rendered.len() as u64,
        }
    }
}

/// Replays one dead letter of `app_id`: 202 once re-queued, 409 with the reason when it is
/// not a dead letter or its template still does not render. The API and the dashboard share it.
pub(crate) async fn replay_one_of(
    state: &AppState,
    app_id: &str,
    id: &str,
) -> Result<(StatusCode, Json<Requeued>)> {
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
    Ok((StatusCode::ACCEPTED, Json(Requeued::new(&report))))
}
