//! Operator surface: the dashboard page and the operator-only endpoints it uses.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{AppState, Operator};
use crate::error::{ApiError, Result};
use crate::store::rfc3339;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/v1/admin/apps", get(list_apps))
        .route("/v1/admin/deliveries/{id}/retry", post(replay))
}

/// The page carries no data; it asks for the operator key and reads everything from the API.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(include_str!("assets/dashboard.html")),
    )
}

async fn list_apps(State(state): State<AppState>, _op: Operator) -> Result<Json<Value>> {
    let apps = state.store.list_apps().await?;
    Ok(Json(json!({
        "apps": apps.iter().map(|a| json!({
            "id": a.id, "name": a.name, "created_at": rfc3339(a.created_at)
        })).collect::<Vec<_>>()
    })))
}

async fn replay(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>)> {
    let app_id = state
        .store
        .delivery_app(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let n = state
        .store
        .replay_dead(&app_id, Some(std::slice::from_ref(&id)), None, None)
        .await?;
    if n == 0 {
        return Err(ApiError::Conflict(
            "only dead letters can be retried".into(),
        ));
    }
    state.wake.jobs.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"requeued": n}))))
}
