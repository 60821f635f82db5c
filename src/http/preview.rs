//! `POST /v1/templates/{name}/preview`: what a device would be sent for an event, built by
//! the delivery code itself (the worker's rendering, the APNs and FCM request builders and
//! the app's senders' topic and project), so a preview cannot drift from a real send.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::ApiPath as Path;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::device::normalize_token;
use crate::model::rules::TemplateRef;
use crate::model::template::{event_value, LocaleChoice};
use crate::model::{Notification, Platform};
use crate::push::apns::{request::ApnsRequest, wire as apns_wire};
use crate::push::fcm::{request as fcm_request, wire as fcm_wire};
use crate::service::device_import::DeviceLine;
use crate::store::{Device, SpecKind};
use crate::worker::dispatch::{event_context_of, load_template, render_payload};
use crate::worker::JobPayload;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(preview))
}

/// Body of a preview: a device (exactly one of `token` and `device`) and an event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    /// A registered device of the app.
    token: Option<String>,
    /// A device given inline (not stored), as a line of `POST /v1/devices/import`.
    device: Option<DeviceLine>,
    /// The event payload, as templates see it under `event`.
    #[serde(default)]
    #[schema(value_type = Object)]
    event: Map<String, Value>,
    /// The event type (`event.type` when the payload has none; default `preview`).
    event_type: Option<String>,
}

/// One provider request, exactly as it would be sent (but for `authorization`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProviderRequest {
    /// Always `POST`.
    method: &'static str,
    /// Request path on the provider's host.
    path: String,
    /// Every header but `authorization` (a provider token, minted per send). `apns-id` is
    /// new for every request.
    #[schema(value_type = Object)]
    headers: Map<String, Value>,
    /// The JSON body.
    #[schema(value_type = Object)]
    body: Value,
    /// What the provider counts against its limit: the whole body for APNs, the
    /// `notification` and `data` objects for FCM.
    bytes: usize,
    /// The provider's limit for it.
    limit: usize,
}

/// The answer of a preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Preview {
    /// The device's platform: which of `apns` and `fcm` is filled in.
    platform: Platform,
    /// The variant the device's locale chose, and why.
    locale: LocaleChoice,
    /// The rendered notification.
    #[schema(value_type = Object)]
    notification: Notification,
    /// The APNs request, for an APNs device.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    apns: Option<ProviderRequest>,
    /// The FCM request, for an FCM device.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    fcm: Option<ProviderRequest>,
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
    let app_id = caller.app_id();
    let device = device_of(&state, app_id, body.token, body.device).await?;
    if state
        .store
        .get_spec(SpecKind::Template, app_id, &name)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("template"));
    }
    let template = load_template(&state.store, app_id, &TemplateRef::Named(name)).await?;
    let locale = match &template {
        Ok(t) => t.locale_choice(device.locale.as_deref()),
        Err(reason) => return Err(ApiError::field("template", reason.clone())),
    };
    let event_type = body.event_type.unwrap_or_else(|| "preview".to_string());
    let event = event_value(&event_context_of(
        "evt_preview",
        &event_type,
        &Value::Object(body.event),
    ));
    let (topic, notification) = match render_payload(&template, &event, &device) {
        Ok(JobPayload::V1 {
            topic,
            notification,
            ..
        }) => (topic, notification),
        Ok(JobPayload::Unrendered) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "rendering a preview gave an unrendered payload"
            )))
        }
        Err(reason) => return Err(ApiError::field("event", reason)),
    };
    let now_secs = state.store.now() / 1000;
    let (apns, fcm) = match device.platform {
        Platform::Apns => {
            let fallback = state
                .providers
                .apns_default_topic(app_id)
                .map_err(refused)?;
            let topic = topic.or(fallback).ok_or_else(|| {
                ApiError::field(
                    "device.topic",
                    "the device has no topic and APNs has no default_topic",
                )
            })?;
            (
                Some(apns(&device.token, &notification, &topic, now_secs)?),
                None,
            )
        }
        Platform::Fcm => {
            let path = state.providers.fcm_send_path(app_id).map_err(refused)?;
            (
                None,
                Some(fcm(&device.token, &notification, path, now_secs)?),
            )
        }
    };
    Ok(Json(Preview {
        platform: device.platform,
        locale,
        notification,
        apns,
        fcm,
    }))
}

/// The registered device, or the inline one validated as a registration.
async fn device_of(
    state: &AppState,
    app_id: &str,
    token: Option<String>,
    inline: Option<DeviceLine>,
) -> Result<Device> {
    match (token, inline) {
        (Some(token), None) => state
            .store
            .get_device(app_id, &normalize_token(&token))
            .await?
            .ok_or(ApiError::NotFound("device")),
        (None, Some(line)) => {
            let (token, reg) = line
                .validate(&state.config.devices)
                .map_err(|e| ApiError::field(format!("device.{}", e.field), e.message))?;
            let now = state.store.now();
            Ok(Device {
                app_id: app_id.to_string(),
                token,
                platform: reg.platform,
                user_id: reg.user_id,
                locale: reg.locale,
                timezone: reg.timezone,
                app_version: reg.app_version,
                environment: reg.environment,
                topic: reg.topic,
                attributes: reg.attributes,
                tags: reg.tags,
                created_at: now,
                updated_at: now,
                state: Default::default(),
                state_reason: None,
                state_at: None,
            })
        }
        _ => Err(ApiError::field(
            "token",
            "give exactly one of token (a registered device) and device (an inline one)",
        )),
    }
}

/// A send the provider would refuse before any request (no credential, a bad header, a
/// payload over the limit), as a 422 naming the provider's reason.
fn refused(outcome: crate::push::Outcome) -> ApiError {
    ApiError::field(
        "template",
        format!(
            "this would not be sent: {}",
            outcome.reason().unwrap_or("refused")
        ),
    )
}

fn apns(token: &str, n: &Notification, topic: &str, now_secs: i64) -> Result<ProviderRequest> {
    let request = ApnsRequest::build(n, topic, now_secs).map_err(refused)?;
    let headers = request
        .headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), Value::String(v))
        })
        .collect::<Map<_, _>>();
    let push_type = headers
        .get(apns_wire::header::PUSH_TYPE)
        .and_then(Value::as_str)
        .unwrap_or(apns_wire::push_type::ALERT);
    let limit = apns_wire::payload_limit(push_type);
    Ok(ProviderRequest {
        method: "POST",
        path: apns_wire::device_path(token),
        body: serde_json::from_slice(&request.payload).map_err(anyhow::Error::from)?,
        bytes: request.payload.len(),
        limit,
        headers,
    })
}

fn fcm(token: &str, n: &Notification, path: String, now_secs: i64) -> Result<ProviderRequest> {
    let message = fcm_request::message(n, now_secs).map_err(refused)?;
    let bytes = fcm_request::payload_size(&message);
    let body = fcm_request::request_body(token, n, now_secs).map_err(refused)?;
    let mut headers = Map::new();
    headers.insert("content-type".into(), Value::from("application/json"));
    Ok(ProviderRequest {
        method: "POST",
        path,
        body: serde_json::from_slice(&body).map_err(anyhow::Error::from)?,
        bytes,
        limit: fcm_wire::MAX_PAYLOAD_BYTES,
        headers,
    })
}

/// What a delivery carries to its provider, for `GET /v1/deliveries/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SentPayload {
    /// The rendered notification.
    #[schema(value_type = Object)]
    notification: Notification,
    /// The JSON body the provider gets for it, built as the sender builds it; absent when
    /// the app has no credential for the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    body: Option<Value>,
}

/// The payload of a stored job (`None` when it never rendered), with its provider body.
pub(super) fn sent_payload(
    state: &AppState,
    app_id: &str,
    platform: Platform,
    token: &str,
    job: &str,
) -> Result<Option<SentPayload>> {
    let payload: JobPayload = serde_json::from_str(job)
        .map_err(|e| anyhow::anyhow!("a stored job payload does not parse: {e}"))?;
    let Some((_, topic, notification)) = payload.into_rendered() else {
        return Ok(None);
    };
    let now_secs = state.store.now() / 1000;
    let body = match platform {
        Platform::Apns => state
            .providers
            .apns_default_topic(app_id)
            .ok()
            .and_then(|fallback| topic.or(fallback))
            .and_then(|topic| apns(token, &notification, &topic, now_secs).ok()),
        Platform::Fcm => state
            .providers
            .fcm_send_path(app_id)
            .ok()
            .and_then(|path| fcm(token, &notification, path, now_secs).ok()),
    }
    .map(|request| request.body);
    Ok(Some(SentPayload { notification, body }))
}
