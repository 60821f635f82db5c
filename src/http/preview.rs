//! `POST /v1/templates/{name}/preview`: the HTTP front of `service::preview`, which shows
//! what a device would be sent for an event.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::ApiPath as Path;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ErrorBody, Result};
use crate::service::preview::{Preview, PreviewRequest};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(preview))
}

#[utoipa::path(
    post,
    path = "/v1/templates/{name}/preview",
    operation_id = "preview_template",
    tag = "templates",
    summary = "Show the exact provider request a device would get for an event",
    description = "Renders the template for the device (a registered `token`, or an inline \
                   `device`) and the `event` as delivery would, and builds the APNs or FCM \
                   request from it with the delivery code: headers, JSON body and its size \
                   against the provider's limit. Nothing is stored or sent.",
    params(("name" = String, Path, description = "the template's name")),
    request_body = PreviewRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the request that would be sent", body = Preview),
        (status = 404, description = "no such template or registered device", body = ErrorBody),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn preview(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PreviewRequest>,
) -> Result<Json<Preview>> {
    let shown = crate::service::preview::preview(
        &state.store,
        &state.providers,
        &state.config.devices,
        caller.app_id(),
        &name,
        body,
    )
    .await?;
    Ok(Json(shown))
}
