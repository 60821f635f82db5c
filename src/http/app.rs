//! The calling app itself: `GET /v1/app` and its pruned-token callback
//! (`PUT/DELETE /v1/app/callback`), kept for compatibility: the callback is the app's event
//! endpoint subscribed to `device.pruned` (see `/v1/endpoints`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::signature::Scheme;
use crate::user_auth::ClientUserIds;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(set_callback, clear_callback))
}

/// The calling app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AppView {
    id: String,
    name: String,
    /// Where `device.pruned` callbacks go; null when unset.
    callback_url: Option<String>,
    /// Whether client keys must prove the user ids they register (`/v1/app/user-auth`).
    client_user_ids: ClientUserIds,
}

/// The callback just set, with the secret that signs its requests (shown only here).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CallbackSet {
    url: String,
    /// `whsec_...`: verify callbacks as Standard Webhooks with it.
    secret: String,
}

#[utoipa::path(
    get,
    path = "/v1/app",
    operation_id = "get_app",
    tag = "app",
    summary = "The calling app and its callback URL",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the app", body = AppView),
        ServerKeyErrors,
        (status = 404, description = "the app no longer exists", body = ErrorBody),
    ),
)]
async fn show(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<AppView>> {
    let app = state
        .store
        .get_app(caller.app_id())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let callback_url = state.store.callback_url(caller.app_id()).await?;
    let user_auth = state
        .store
        .user_auth(caller.app_id())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    Ok(Json(AppView {
        id: app.id,
        name: app.name,
        callback_url,
        client_user_ids: user_auth.client_user_ids,
    }))
}

/// Body of `PUT /v1/app/callback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CallbackRequest {
    /// Absolute https URL, at most 2048 characters, not at a loopback, private or
    /// link-local address.
    #[schema(
        example = "https://app.example.com/hooks/pushbridge",
        format = "uri",
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]"
    )]
    url: String,
}

#[utoipa::path(
    put,
    path = "/v1/app/callback",
    operation_id = "set_callback",
    tag = "app",
    summary = "Set the URL that receives signed `device.pruned` callbacks",
    description = "Callbacks are signed Standard Webhooks style with the returned `whsec_` \
                   secret; setting the URL again issues a new secret.",
    request_body = CallbackRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "set; the secret is shown only here", body = CallbackSet),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn set_callback(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<CallbackRequest>,
) -> Result<Json<CallbackSet>> {
    crate::service::endpoints::check_url(&state.config.endpoints, "url", &body.url).await?;
    let secret = Scheme::StandardWebhooks.generate_secret();
    state
        .store
        .set_callback(caller.app_id(), Some((&body.url, &secret)))
        .await?;
    Ok(Json(CallbackSet {
        url: body.url,
        secret,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/app/callback",
    operation_id = "clear_callback",
    tag = "app",
    summary = "Stop sending callbacks",
    security(("api_key" = [])),
    responses((status = 204, description = "cleared"), ServerKeyErrors),
)]
async fn clear_callback(State(state): State<AppState>, caller: ServerCaller) -> Result<StatusCode> {
    state.store.set_callback(caller.app_id(), None).await?;
    Ok(StatusCode::NO_CONTENT)
}
