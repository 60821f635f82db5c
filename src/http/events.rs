//! Received events, for auditing: `GET /v1/events`, `GET /v1/events/{id}` (server key).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{encode_cursor, ApiQuery, AppState, Page, ServerCaller};
use crate::error::{ApiError, Result};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{id}", get(show))
}

#[derive(Debug, Deserialize)]
struct ListEvents {
    #[serde(rename = "type")]
    event_type: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(q): ApiQuery<ListEvents>,
) -> Result<Json<Value>> {
    let page = Page {
        cursor: q.cursor,
        limit: q.limit,
    };
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let before = cursor
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id)))
                .ok_or_else(|| ApiError::field("cursor", "not a cursor from this API"))
        })
        .transpose()?;
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
                .map(|e| encode_cursor(&format!("{}:{}", e.received_at, e.id)))
        })
        .flatten();
    Ok(Json(json!({
        "events": events.iter().map(|e| e.view(false)).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

async fn show(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let event = state
        .store
        .get_event(caller.app_id(), &id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let mut view = json!(event.view(true));
    let counts = state.store.event_counts(&event.id).await?;
    let mut deliveries = json!({"total": counts.iter().map(|(_, n)| n).sum::<i64>()});
    for status in ["queued", "in_flight", "delivered", "dead", "invalid"] {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        deliveries[status] = json!(n);
    }
    view["deliveries"] = deliveries;
    Ok(Json(view))
}
