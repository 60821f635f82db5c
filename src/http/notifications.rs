//! Direct sends (`POST /v1/notifications`) and the delivery log and replay endpoints.
//! A direct send is stored as an event carrying its own rule, so it takes exactly the path a
//! webhook takes: durable accept, fan-out, queue, retry.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{encode_cursor, ApiJson, ApiQuery, AppState, Page, ServerCaller};
use crate::error::{ApiError, Result};
use crate::rules::{Audience, DeviceFilter, RuleSpec, TemplateRef};
use crate::store::{EventInsert, JobStatus, NewEvent, SpecKind, Store};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", post(send))
        .route("/v1/events/{id}/deliveries", get(event_deliveries))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/retry", post(replay_many))
        .route("/v1/deliveries/{id}", get(show_delivery))
        .route("/v1/deliveries/{id}/retry", post(replay_one))
}

/// Who a direct send goes to; exactly one field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Recipients {
    User(String),
    Users(Vec<String>),
    Tokens(Vec<String>),
    Devices(DeviceFilter),
}

/// Body of `POST /v1/notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: Recipients,
    template: TemplateRef,
    /// Becomes the event payload that templates see as `event`.
    #[serde(default)]
    data: Map<String, Value>,
    /// Event type recorded for the send (default `notification.direct`).
    event_type: Option<String>,
}

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

/// Validates and stores a direct send as an event carrying its own rule; shared by the API
/// and the CLI. Returns the event id.
pub async fn enqueue_direct(
    store: &Store,
    app_id: &str,
    audience: Audience,
    template: TemplateRef,
    data: Map<String, Value>,
    event_type: Option<String>,
) -> Result<String> {
    let event_type = event_type.unwrap_or_else(|| "notification.direct".into());
    let rule = RuleSpec {
        event: event_type.clone(),
        condition: None,
        audience,
        template,
        enabled: true,
    };
    rule.validate().map_err(|e| {
        let field = e.field.replace("audience.", "to.");
        ApiError::field(field, e.message)
    })?;
    if let TemplateRef::Named(name) = &rule.template {
        if store
            .get_spec(SpecKind::Template, app_id, name)
            .await?
            .is_none()
        {
            return Err(ApiError::field(
                "template",
                format!("no template named {name}"),
            ));
        }
    }
    let rule_text = serde_json::to_string(&rule).map_err(anyhow::Error::from)?;
    let payload = Value::Object(data).to_string();
    let inserted = store
        .insert_event(&NewEvent {
            app_id,
            source_id: None,
            external_id: None,
            event_type: &event_type,
            payload: &payload,
            direct_rule: Some(&rule_text),
        })
        .await?;
    let (EventInsert::Accepted(id) | EventInsert::Duplicate(id)) = inserted;
    Ok(id)
}

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
    let after = page.cursor()?.unwrap_or_default();
    let rows = state
        .store
        .event_deliveries(caller.app_id(), &event_id, &after, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    Ok(Json(json!({
        "deliveries": rows.iter().map(|r| r.view()).collect::<Vec<_>>(),
        "next_cursor": more.then(|| rows.last().map(|r| encode_cursor(&r.id))).flatten(),
    })))
}

#[derive(Debug, Deserialize)]
struct DeliveryQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list_deliveries(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<Value>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
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
    let cursor = page.cursor()?;
    let before = cursor
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id)))
                .ok_or_else(|| ApiError::field("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    let rows = state
        .store
        .list_deliveries(caller.app_id(), status, before, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| {
            rows.last()
                .map(|r| encode_cursor(&format!("{}:{}", r.updated_at, r.id)))
        })
        .flatten();
    Ok(Json(json!({
        "deliveries": rows.iter().map(|r| r.view()).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

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
    if row.status != JobStatus::Dead.as_str() {
        return Err(ApiError::Conflict(format!(
            "only dead letters can be retried; this delivery is {}",
            row.status
        )));
    }
    let n = state
        .store
        .replay_dead(caller.app_id(), Some(std::slice::from_ref(&id)), None, None)
        .await?;
    state.wake.jobs.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"requeued": n}))))
}

/// Body of the bulk replay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFilter {
    event_id: Option<String>,
    /// Only dead letters that died at or after this RFC 3339 time.
    since: Option<String>,
}

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
    let n = state
        .store
        .replay_dead(caller.app_id(), None, filter.event_id.as_deref(), since)
        .await?;
    state.wake.jobs.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"requeued": n}))))
}
