//! `GET /v1/stats`: delivery figures over 5 minutes, 1 hour and 24 hours, the queue, a
//! throughput series, recent dead letters and recently pruned tokens (redacted).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiQuery, AppState, Viewer};
use crate::error::{ApiError, Result};
use crate::redact::redact;
use crate::store::{now_ms, rfc3339, JobStatus};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stats", get(stats))
}

/// The windows every stats answer carries.
pub const WINDOWS: [(&str, i64); 3] = [("5m", 300), ("1h", 3600), ("24h", 86_400)];

#[derive(Debug, Deserialize)]
struct StatsQuery {
    /// Operator only: one app instead of all.
    app_id: Option<String>,
}

async fn stats(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<Value>> {
    let app_id = match (&viewer, q.app_id) {
        (Viewer::App(own), Some(asked)) if *own != asked => {
            return Err(ApiError::NotFound("app"));
        }
        (Viewer::App(own), _) => Some(own.clone()),
        (Viewer::Operator, asked) => asked,
    };
    let app = app_id.as_deref();
    let now = now_ms();
    let mut windows = serde_json::Map::new();
    for (name, secs) in WINDOWS {
        windows.insert(
            name.into(),
            json!(state.store.window_stats(app, now, secs).await?),
        );
    }
    let queue = state.store.queue_stats(app, now).await?;
    let series = state
        .store
        .throughput_series(app, now - 3_600_000, 60)
        .await?;
    let (dead, pruned) = match app {
        Some(a) => (
            state
                .store
                .list_deliveries(a, Some(JobStatus::Dead), None, 20)
                .await?,
            state.store.recent_pruned(a, 20).await?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Json(json!({
        "app_id": app_id,
        "generated_at": rfc3339(now),
        "windows": windows,
        "queue": queue,
        "throughput_per_minute": series.iter().map(|p| json!({
            "at": rfc3339(p.at), "delivered": p.delivered, "failed": p.failed
        })).collect::<Vec<_>>(),
        "recent_dead_letters": dead.iter().map(|d| json!({
            "id": d.id, "event_id": d.event_id, "platform": d.platform,
            "token": redact(&d.token), "reason": d.last_reason, "attempts": d.attempts,
            "at": rfc3339(d.updated_at),
        })).collect::<Vec<_>>(),
        "recent_pruned_tokens": pruned.iter().map(|p| json!({
            "platform": p.platform, "token": redact(&p.token), "reason": p.reason,
            "deleted": p.pruned == 1, "at": rfc3339(p.at),
        })).collect::<Vec<_>>(),
    })))
}
