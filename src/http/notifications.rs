//! Direct sends (`POST /v1/notifications`). A direct send is stored as an event carrying its own rule, so it takes exactly the path a
//! webhook takes: durable accept, fan-out, queue, retry.

use axum::extract::State;

use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, Result};
use crate::model::policy::SendPolicy;
use crate::model::rules::{Audience, DeviceFilter, TemplateRef};
use crate::service::sends::{enqueue_direct, DirectSend};
use crate::telemetry::SPANS;
use tracing::{field, Instrument};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send))
}

/// Who a direct send goes to; exactly one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Recipients {
    /// One user's devices.
    User(String),
    /// These users' devices.
    Users(Vec<String>),
    /// These registered tokens.
    Tokens(Vec<String>),
    /// Devices matching the filter (an empty filter is every device).
    Devices(DeviceFilter),
}

/// Body of `POST /v1/notifications`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct SendRequest {
    to: Recipients,
    template: TemplateRef,
    /// Becomes the event payload that templates see as `event`.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// Event type recorded for the send (default `notification.direct`).
    #[schema(min_length = 1, max_length = 256)]
    event_type: Option<String>,
    /// When and for how long it may go out: `send_at`, `deliver_at_local`, `within`,
    /// `urgency`, `expires_at`, `ttl`, `category`.
    #[serde(flatten)]
    delivery: SendPolicy,
    /// Fields a send does not have (refused; flattened fields cannot be refused by serde).
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: Map<String, Value>,
}

#[utoipa::path(
    post,
    path = "/v1/notifications",
    operation_id = "send_notification",
    tag = "notifications",
    summary = "Send a notification directly, without a webhook or rule",
    description = "Stored as an event carrying its own rule, then fanned out, queued and \
                   retried like a webhook's event.",
    request_body = SendRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "accepted for delivery", body = EventAccepted),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn send(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<SendRequest>,
) -> Result<(StatusCode, Json<EventAccepted>)> {
    let audience = match body.to {
        Recipients::User(u) => Audience::Users(vec![u]),
        Recipients::Users(u) => Audience::Users(u),
        Recipients::Tokens(t) => Audience::Tokens(t),
        Recipients::Devices(f) => Audience::Devices(f),
    };
    if let Some(field) = body.unknown.keys().next() {
        return Err(ApiError::field(field.as_str(), "unknown field"));
    }
    // A direct send's trace starts here, as a webhook's starts at its accept.
    let span = tracing::info_span!(target: SPANS, "notification.accept", otel.kind = "server",
        app_id = caller.app_id(), event_id = field::Empty);
    let id = enqueue_direct(
        &state.store,
        &state.events,
        caller.app_id(),
        DirectSend {
            audience,
            template: body.template,
            data: body.data,
            event_type: body.event_type,
            delivery: body.delivery,
        },
    )
    .instrument(span.clone())
    .await?;
    span.record("event_id", id.as_str());
    state.wake.events.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(EventAccepted {
            event_id: id,
            duplicate: None,
        }),
    ))
}

/// An event was stored, or recognised as a duplicate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventAccepted {
    /// Id of the stored event (`GET /v1/events/{id}`).
    pub event_id: String,
    /// Present and true when the sender already delivered this event id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub duplicate: Option<bool>,
}
