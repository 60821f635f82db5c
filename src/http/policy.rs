//! Delivery policy over HTTP (server key): the app's policy (`/v1/app/policy`: default zone,
//! quiet hours, frequency caps) and each user's preferences
//! (`/v1/users/{user_id}/preferences`: their own quiet hours).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::ApiPath as Path;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::policy::{AppPolicy, UserPreferences};
use crate::service::policy::{check_user_id, put_app_policy, put_user_preferences};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_policy, set_policy))
        .routes(routes!(
            show_preferences,
            set_preferences,
            delete_preferences
        ))
}

#[utoipa::path(
    get,
    path = "/v1/app/policy",
    operation_id = "get_app_policy",
    tag = "policy",
    summary = "The app's delivery policy: default zone, quiet hours, frequency caps",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the policy (`{}` when none is set)", body = AppPolicy),
        ServerKeyErrors,
        (status = 404, description = "the app no longer exists", body = ErrorBody),
    ),
)]
async fn show_policy(
    State(state): State<AppState>,
    caller: ServerCaller,
) -> Result<Json<AppPolicy>> {
    let stored = state
        .store
        .app_policy(caller.app_id())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    Ok(Json(stored.policy))
}

#[utoipa::path(
    put,
    path = "/v1/app/policy",
    operation_id = "set_app_policy",
    tag = "policy",
    summary = "Replace the app's delivery policy",
    description = "Applies to notifications fanned out from now on (quiet hours, default zone) \
                   and to sends from now on (frequency caps); other instances pick it up \
                   within 2 s.",
    request_body = AppPolicy,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "stored", body = AppPolicy),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn set_policy(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(policy): ApiJson<AppPolicy>,
) -> Result<Json<AppPolicy>> {
    put_app_policy(&state.store, &state.policies, caller.app_id(), &policy).await?;
    Ok(Json(policy))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/preferences",
    operation_id = "get_user_preferences",
    tag = "policy",
    summary = "A user's delivery preferences",
    params(("user_id" = String, Path, description = "the user id devices register with")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the preferences (`{}` when none are stored)", body = UserPreferences),
        ServerKeyErrors,
        (status = 422, description = "invalid user id", body = ErrorBody),
    ),
)]
async fn show_preferences(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(user_id): Path<String>,
) -> Result<Json<UserPreferences>> {
    check_user_id(&user_id)?;
    let prefs = state
        .store
        .user_preferences(caller.app_id(), &user_id)
        .await?
        .unwrap_or_default();
    Ok(Json(prefs))
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/preferences",
    operation_id = "set_user_preferences",
    tag = "policy",
    summary = "Replace a user's delivery preferences (their own quiet hours)",
    params(("user_id" = String, Path, description = "the user id devices register with")),
    request_body = UserPreferences,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "stored", body = UserPreferences),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn set_preferences(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(user_id): Path<String>,
    ApiJson(prefs): ApiJson<UserPreferences>,
) -> Result<Json<UserPreferences>> {
    put_user_preferences(
        &state.store,
        &state.policies,
        caller.app_id(),
        &user_id,
        &prefs,
    )
    .await?;
    Ok(Json(prefs))
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/preferences",
    operation_id = "delete_user_preferences",
    tag = "policy",
    summary = "Forget a user's delivery preferences (the app's policy applies again)",
    params(("user_id" = String, Path, description = "the user id devices register with")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "deleted"),
        ServerKeyErrors,
        (status = 404, description = "the user has no stored preferences", body = ErrorBody),
    ),
)]
async fn delete_preferences(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(user_id): Path<String>,
) -> Result<StatusCode> {
    check_user_id(&user_id)?;
    if !state
        .store
        .delete_user_preferences(caller.app_id(), &user_id)
        .await?
    {
        return Err(ApiError::NotFound("user preferences"));
    }
    state.policies.forget(caller.app_id());
    Ok(StatusCode::NO_CONTENT)
}
