//! Received events, for auditing: `GET /v1/events`, `GET /v1/events/{id}` (server key).

use std::collections::HashMap;

use axum::extract::State;

use super::ApiPath as Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ServerKeyErrors;
use super::{time_cursor, ApiQuery, AppState, CursorKind, Page, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::EventStatus;
use crate::model::JobStatus;
use crate::store::{rfc3339, Event};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(cancel))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListEvents {
    /// Only events of exactly this type.
    #[serde(rename = "type")]
    #[param(min_length = 1, max_length = 256)]
    event_type: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor` of this list.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// A page of events, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct EventList {
    /// Without payloads, each with its delivery counts.
    events: Vec<EventDetail>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// An event with the count of its deliveries by status (and its payload when read alone).
#[derive(serde::Serialize, utoipa::ToSchema)]
struct EventDetail {
    #[serde(flatten)]
    event: EventView,
    deliveries: DeliveryCounts,
}

/// How many deliveries an event has, in total and by status.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
struct DeliveryCounts {
    total: i64,
    queued: i64,
    in_flight: i64,
    delivered: i64,
    dead: i64,
    invalid: i64,
    capped: i64,
    superseded: i64,
    expired: i64,
    cancelled: i64,
}

impl DeliveryCounts {
    /// Adds `n` jobs in `status`; a status this view does not know still counts in `total`.
    fn add(&mut self, status: JobStatus, n: i64) {
        self.total += n;
        *match status {
            JobStatus::Queued => &mut self.queued,
            JobStatus::InFlight => &mut self.in_flight,
            JobStatus::Delivered => &mut self.delivered,
            JobStatus::Dead => &mut self.dead,
            JobStatus::Invalid => &mut self.invalid,
            JobStatus::Capped => &mut self.capped,
            JobStatus::Superseded => &mut self.superseded,
            JobStatus::Expired => &mut self.expired,
            JobStatus::Cancelled => &mut self.cancelled,
        } += n;
    }
}

/// The API view of an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
struct EventView {
    id: String,
    /// The webhook source; null for direct sends.
    source_id: Option<String>,
    /// The sender's own event id, used for deduplication.
    external_id: Option<String>,
    event_type: String,
    status: EventStatus,
    /// RFC 3339.
    received_at: String,
    /// RFC 3339.
    updated_at: String,
    /// The JSON payload; only when reading a single event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    payload: Option<Value>,
}

impl EventView {
    /// API view; the payload only when asked for (single-event reads). A stored payload that
    /// no longer parses (it was checked on the way in) is an error naming the event.
    fn new(event: &Event, with_payload: bool) -> anyhow::Result<Self> {
        let payload = if with_payload {
            Some(serde_json::from_str(&event.payload).map_err(|e| {
                anyhow::anyhow!("stored payload of event {} does not parse: {e}", event.id)
            })?)
        } else {
            None
        };
        Ok(Self {
            id: event.id.clone(),
            source_id: event.source_id.clone(),
            external_id: event.external_id.clone(),
            event_type: event.event_type.clone(),
            status: event.status,
            received_at: rfc3339(event.received_at),
            updated_at: rfc3339(event.updated_at),
            payload,
        })
    }
}

#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "list_events",
    tag = "events",
    summary = "List received events, newest first",
    params(ListEvents),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "a page of events (without payloads), with delivery counts", body = EventList),
        ServerKeyErrors,
        (status = 422, description = "invalid `type`, `limit` or `cursor`", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(q): ApiQuery<ListEvents>,
) -> Result<Json<EventList>> {
    let page = Page {
        cursor: q.cursor,
        limit: q.limit,
    };
    let limit = page.limit()?;
    if q.event_type
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.chars().count() > 256)
    {
        return Err(ApiError::field("type", "must be 1-256 characters"));
    }
    let cursor = page.time_cursor(CursorKind::Events)?;
    let before = cursor.as_ref().map(|(ts, id)| (*ts, id.as_str()));
    let events = state
        .store
        .list_events(caller.app_id(), q.event_type.as_deref(), before, limit + 1)
        .await?;
    let has_more = events.len() > limit as usize;
    let events = &events[..events.len().min(limit as usize)];
    let next_cursor = has_more
        .then(|| {
            events
                .last()
                .map(|e| time_cursor(CursorKind::Events, e.received_at, &e.id))
        })
        .flatten();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let mut counts: HashMap<String, DeliveryCounts> = HashMap::new();
    for (event_id, status, n) in state.store.events_counts(&ids).await? {
        counts.entry(event_id).or_default().add(status, n);
    }
    let events = events
        .iter()
        .map(|e| {
            Ok(EventDetail {
                deliveries: counts.remove(&e.id).unwrap_or_default(),
                event: EventView::new(e, false)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(EventList {
        events,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    operation_id = "get_event",
    tag = "events",
    summary = "Read one event with its payload and delivery counts",
    params(("id" = String, Path, description = "the event id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the event", body = EventDetail),
        ServerKeyErrors,
        (status = 404, description = "no such event", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>> {
    Ok(Json(
        event_detail(&state, caller.app_id(), &id, true).await?,
    ))
}

/// An event of `app_id` with its delivery counts (and its payload when `with_payload`).
async fn event_detail(
    state: &AppState,
    app_id: &str,
    id: &str,
    with_payload: bool,
) -> Result<EventDetail> {
    let event = state
        .store
        .get_event(app_id, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let mut deliveries = DeliveryCounts::default();
    for (status, n) in state.store.event_counts(&event.id).await? {
        deliveries.add(status, n);
    }
    Ok(EventDetail {
        event: EventView::new(&event, with_payload)?,
        deliveries,
    })
}

/// What `POST /v1/events/{id}/cancel` did.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Cancelled {
    /// Jobs this request ended `cancelled`.
    cancelled_now: u64,
    /// The event after the cancel, with its deliveries by status (jobs in flight at the
    /// time finish; one that would be retried ends `cancelled`).
    #[serde(flatten)]
    event: EventDetail,
}

#[utoipa::path(
    post,
    path = "/v1/events/{id}/cancel",
    operation_id = "cancel_event",
    tag = "events",
    summary = "Cancel every delivery of an event that has not been sent yet",
    description = "Stops the event's fan-out and ends each job still queued or scheduled as \
                   `cancelled`. Jobs being sent at that moment finish; none is sent later. \
                   Cancelling twice is harmless.",
    params(("id" = String, Path, description = "the event id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the counts after the cancel", body = Cancelled),
        ServerKeyErrors,
        (status = 404, description = "no such event", body = ErrorBody),
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>> {
    let cancelled_now = state
        .store
        .cancel_event(caller.app_id(), &id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    state.metrics.withheld(JobStatus::Cancelled, cancelled_now);
    Ok(Json(Cancelled {
        cancelled_now,
        event: event_detail(&state, caller.app_id(), &id, false).await?,
    }))
}
