//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::OperatorErrors;
use super::{AppState, Operator};
use crate::metrics::ExpositionFormat;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The answer of the health endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HealthStatus {
    /// `ok`, `ready` or `unavailable`.
    status: &'static str,
    /// `unreachable` when the database cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    database: Option<&'static str>,
}

impl HealthStatus {
    fn up(status: &'static str) -> Json<Self> {
        Json(Self {
            status,
            database: None,
        })
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = HealthStatus)),
)]
async fn healthz() -> impl IntoResponse {
    HealthStatus::up("ok")
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: the database is reachable",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = HealthStatus),
        (status = 503, description = "the database is unreachable", body = HealthStatus),
    ),
)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, HealthStatus::up("ready")),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(HealthStatus {
                    status: "unavailable",
                    database: Some("unreachable"),
                }),
            )
        }
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics in the OpenMetrics or the classic text format",
    description = "OpenMetrics 1.0 by default; the classic Prometheus text format (0.0.4) when \
                   the `Accept` header prefers `text/plain`.",
    security(("operator_key" = [])),
    responses(
        (
            status = 200,
            description = "counters, histograms and gauges",
            content(
                (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                (String = "text/plain; version=0.0.4; charset=utf-8"),
            )
        ),
        OperatorErrors,
    ),
)]
async fn metrics(
    State(state): State<AppState>,
    _operator: Operator,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    match state.store.queue_stats(None, state.store.now()).await {
        Ok(q) => state.metrics.set_queue(&q),
        Err(e) => tracing::warn!(error = %e, "sampling queue depth failed"),
    }
    state.metrics.set_pools(&state.providers.stats());
    match state.store.breakers().await {
        Ok(open) => state.metrics.set_breakers(&open),
        Err(e) => tracing::warn!(error = %e, "sampling provider breakers failed"),
    }
    let format =
        ExpositionFormat::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.encode(format),
    )
}
