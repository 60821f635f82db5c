//! The calling app itself: `GET /v1/app` and its pruned-token callback
//! (`PUT/DELETE /v1/app/callback`), signed in the Standard Webhooks format.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::sources::generate_secret;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, Result};
use crate::store::Scheme;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/app", get(show))
        .route("/v1/app/callback", put(set_callback).delete(clear_callback))
}

async fn show(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<Value>> {
    let app = state
        .store
        .get_app(caller.app_id())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    let callback = state.store.callback_target(caller.app_id()).await?;
    Ok(Json(json!({
        "id": app.id,
        "name": app.name,
        "callback_url": callback.map(|(url, _)| url),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackRequest {
    url: String,
}

async fn set_callback(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<CallbackRequest>,
) -> Result<Json<Value>> {
    let uri: http::Uri = body
        .url
        .parse()
        .map_err(|_| ApiError::field("url", "not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none()
        || body.url.len() > 2048
    {
        return Err(ApiError::field("url", "must be an absolute http(s) URL"));
    }
    let secret = generate_secret(Scheme::StandardWebhooks);
    state
        .store
        .set_callback(caller.app_id(), Some(&body.url), Some(&secret))
        .await?;
    Ok(Json(json!({"url": body.url, "secret": secret})))
}

async fn clear_callback(State(state): State<AppState>, caller: ServerCaller) -> Result<StatusCode> {
    state
        .store
        .set_callback(caller.app_id(), None, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
