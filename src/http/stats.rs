//! `GET /v1/stats`: delivery figures over 5 minutes, 1 hour and 24 hours (every final state,
//! sent or withheld by a delivery policy), the queue (with what waits for a scheduled time or
//! for quiet hours to end), a throughput series, recent dead letters and recently pruned
//! tokens (redacted).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ServerKeyErrors;
use super::{ApiQuery, AppState, Viewer};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::Platform;
use crate::redact::redact;
use crate::service;
use crate::store::{rfc3339, EndpointHealth, QueueStats, WindowStats};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats))
}

/// Delivery statistics of one app or of all apps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StatsReport {
    /// The app the figures are for; null for all apps (operator only).
    app_id: Option<String>,
    /// RFC 3339.
    generated_at: String,
    /// Figures by window: `5m`, `1h` and `24h`.
    windows: std::collections::BTreeMap<String, WindowStats>,
    queue: QueueStats,
    /// Attempts per minute over the last 24 hours, oldest first (minutes without attempts
    /// are left out).
    throughput_per_minute: Vec<ThroughputPoint>,
    /// The latest dead letters.
    recent_dead_letters: Vec<DeadLetter>,
    /// The latest pruned tokens, redacted.
    recent_pruned_tokens: Vec<PrunedToken>,
    /// Apps whose sends to a provider are paused because it refuses their credential.
    paused_providers: Vec<PausedProvider>,
    /// Every event endpoint and how its messages fare.
    endpoints: Vec<EndpointHealthView>,
}

/// How an event endpoint is doing.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum EndpointState {
    /// Its last attempt succeeded (or it has had none yet).
    Healthy,
    /// Its latest attempts failed; it is disabled after failing continuously long enough.
    Failing,
    /// No messages are sent to it.
    Disabled,
}

/// An event endpoint's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EndpointHealthView {
    app_id: String,
    id: String,
    url: String,
    state: EndpointState,
    /// RFC 3339: start of the current run of failed attempts.
    failing_since: Option<String>,
    /// Why it was disabled.
    disabled_reason: Option<String>,
    /// Messages waiting for an attempt.
    pending: i64,
    /// Messages whose every attempt failed (`recover` sends them again).
    failed: i64,
}

impl From<EndpointHealth> for EndpointHealthView {
    fn from(e: EndpointHealth) -> Self {
        let state = match (e.enabled != 0, e.failing_since) {
            (false, _) => EndpointState::Disabled,
            (true, Some(_)) => EndpointState::Failing,
            (true, None) => EndpointState::Healthy,
        };
        Self {
            app_id: e.app_id,
            id: e.id,
            url: e.url,
            state,
            failing_since: e.failing_since.map(rfc3339),
            disabled_reason: e.disabled_reason,
            pending: e.pending,
            failed: e.failed,
        }
    }
}

/// An open breaker: a provider refuses an app's credential, and its sends there wait.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PausedProvider {
    app_id: String,
    provider: Platform,
    /// The provider's refusal, e.g. `InvalidProviderToken`.
    reason: String,
    /// RFC 3339.
    since: String,
    /// RFC 3339: when one held job is sent as a probe.
    next_probe_at: String,
}

/// Attempts in one minute.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ThroughputPoint {
    /// RFC 3339 start of the minute.
    at: String,
    delivered: i64,
    failed: i64,
}

/// A recent dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeadLetter {
    app_id: String,
    /// The delivery id.
    id: String,
    event_id: String,
    platform: Platform,
    /// Redacted device token.
    token: String,
    reason: Option<String>,
    attempts: i64,
    /// RFC 3339.
    at: String,
}

/// A recently pruned token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PrunedToken {
    app_id: String,
    platform: Platform,
    /// Redacted device token.
    token: String,
    /// The provider's reason.
    reason: String,
    /// False when the device had registered again since the provider's timestamp.
    deleted: bool,
    /// RFC 3339.
    at: String,
}

/// Query of `GET /v1/stats`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// Operator: one app instead of all. A server key may only name its own app.
    app_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "get_stats",
    tag = "stats",
    summary = "Delivery figures over 5 minutes, 1 hour and 24 hours, with the queue",
    description = "With a server key: that app's figures, its recent dead letters and pruned \
                   tokens (redacted). With the operator key: every app's figures, or one app's \
                   with `app_id`.",
    params(StatsQuery),
    security(("api_key" = []), ("operator_key" = [])),
    responses(
        (status = 200, description = "the figures", body = StatsReport),
        ServerKeyErrors,
        (status = 404, description = "no such app, or a server key asked for another app", body = ErrorBody),
    ),
)]
async fn stats(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<StatsReport>> {
    let app_id = match (&viewer, q.app_id) {
        (Viewer::App(own), Some(asked)) if *own != asked => {
            return Err(ApiError::NotFound("app"));
        }
        (Viewer::App(own), _) => Some(own.clone()),
        (Viewer::Operator, Some(asked)) => {
            // Zeros for an app that does not exist would read as an idle app.
            if state.store.get_app(&asked).await?.is_none() {
                return Err(ApiError::NotFound("app"));
            }
            Some(asked)
        }
        (Viewer::Operator, None) => None,
    };
    let app = app_id.as_deref();
    let now = state.store.now();
    let windows = service::stats::windows(&state.store, app, now)
        .await?
        .into_iter()
        .map(|(name, figures)| (name.to_string(), figures))
        .collect();
    let queue = state.store.queue_stats(app, now).await?;
    let series = state
        .store
        .throughput_series(app, now - 86_400_000, 60)
        .await?;
    let dead = state.store.recent_dead_letters(app, 20).await?;
    let pruned = latest_per_token(state.store.recent_pruned(app, 40).await?, 20);
    let paused = state
        .store
        .breakers()
        .await?
        .into_iter()
        .filter(|b| app.is_none_or(|a| a == b.app_id))
        .map(|b| PausedProvider {
            since: rfc3339(b.since),
            next_probe_at: rfc3339(b.probe_at),
            app_id: b.app_id,
            provider: b.provider,
            reason: b.reason,
        })
        .collect();
    let endpoints = state
        .store
        .endpoint_health(app)
        .await?
        .into_iter()
        .map(EndpointHealthView::from)
        .collect();
    Ok(Json(StatsReport {
        endpoints,
        paused_providers: paused,
        app_id,
        generated_at: rfc3339(now),
        windows,
        queue,
        throughput_per_minute: series
            .iter()
            .map(|p| ThroughputPoint {
                at: rfc3339(p.at),
                delivered: p.delivered,
                failed: p.failed,
            })
            .collect(),
        recent_dead_letters: dead
            .into_iter()
            .map(|d| DeadLetter {
                token: redact(&d.token),
                at: rfc3339(d.updated_at),
                id: d.id,
                app_id: d.app_id,
                event_id: d.event_id,
                platform: d.platform,
                reason: d.last_reason,
                attempts: d.attempts,
            })
            .collect(),
        recent_pruned_tokens: pruned
            .into_iter()
            .map(|p| PrunedToken {
                token: redact(&p.token),
                deleted: p.pruned == 1,
                at: rfc3339(p.at),
                app_id: p.app_id,
                platform: p.platform,
                reason: p.reason,
            })
            .collect(),
    }))
}

/// The newest entry of each token (a token refused on two attempts is logged twice), at most
/// `limit`; `rows` come newest first.
fn latest_per_token(
    rows: Vec<crate::store::PrunedRow>,
    limit: usize,
) -> Vec<crate::store::PrunedRow> {
    let mut seen = std::collections::HashSet::new();
    rows.into_iter()
        .filter(|r| seen.insert((r.app_id.clone(), r.platform, r.token.clone())))
        .take(limit)
        .collect()
}
