//! Operator surface: the dashboard page and the operator-only endpoints it uses.

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deliveries::Requeued;
use super::openapi::OperatorErrors;
use super::{AppState, Operator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::store::rfc3339;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dashboard))
        .routes(routes!(list_apps))
        .routes(routes!(replay))
}

/// Every app, for the operator.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AppList {
    apps: Vec<AppSummary>,
}

/// One app in the operator's list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AppSummary {
    id: String,
    name: String,
    /// RFC 3339.
    created_at: String,
}

/// The page carries no data; it asks for the operator key and reads everything from the API.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "admin",
    summary = "The operator dashboard page",
    description = "Needs no key to load: the page asks for the operator key and reads \
                   everything through the API.",
    responses((status = 200, description = "the HTML page", body = String, content_type = "text/html")),
)]
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        Html(include_str!("assets/dashboard.html")),
    )
}

#[utoipa::path(
    get,
    path = "/v1/admin/apps",
    operation_id = "admin_list_apps",
    tag = "admin",
    summary = "List every app",
    security(("operator_key" = [])),
    responses((status = 200, description = "every app", body = AppList), OperatorErrors),
)]
async fn list_apps(State(state): State<AppState>, _op: Operator) -> Result<Json<AppList>> {
    let apps = state.store.list_apps().await?;
    Ok(Json(AppList {
        apps: apps
            .into_iter()
            .map(|a| AppSummary {
                created_at: rfc3339(a.created_at),
                id: a.id,
                name: a.name,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/admin/deliveries/{id}/retry",
    operation_id = "admin_retry_delivery",
    tag = "admin",
    summary = "Re-queue one dead letter of any app",
    params(("id" = String, Path, description = "the delivery id")),
    security(("operator_key" = [])),
    responses(
        (status = 202, description = "re-queued", body = Requeued),
        OperatorErrors,
        (status = 404, description = "no such delivery", body = ErrorBody),
        (status = 409, description = "the delivery is not a dead letter, or its template still does not render (the reason says which)", body = ErrorBody),
    ),
)]
async fn replay(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Requeued>)> {
    let app_id = state
        .store
        .delivery_app(&id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    super::deliveries::replay_one_of(&state, &app_id, &id).await
}
