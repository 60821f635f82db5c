//! Template previews: what a device would be sent for an event, built by the delivery code
//! itself (the worker's rendering, the APNs and FCM request builders and the app's senders'
//! topic and project), so a preview cannot drift from a real send. Also what a stored job
//! carries to its provider. `POST /v1/templates/{name}/preview` and `pushbridge templates
//! preview` both answer with [`preview`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, Result};
use crate::model::device::{normalize_token, DeviceLimits};
use crate::model::rules::TemplateRef;
use crate::model::template::{event_value, LocaleChoice};
use crate::model::{Notification, Platform};
use crate::push::apns::{request::ApnsRequest, wire as apns_wire};
use crate::push::fcm::{request as fcm_request, wire as fcm_wire};
use crate::push::Providers;
use crate::service::device_import::DeviceLine;
use crate::store::{Device, SpecKind, Store};
use crate::worker::dispatch::{event_context_of, load_template, render_payload};
use crate::worker::JobPayload;

/// Body of a preview: a device (exactly one of `token` and `device`) and an event.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// A registered device of the app.
    pub token: Option<String>,
    /// A device given inline (not stored), as a line of `POST /v1/devices/import`.
    pub device: Option<DeviceLine>,
    /// The event payload, as templates see it under `event`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub event: Map<String, Value>,
    /// The event type (`event.type` when the payload has none; default `preview`).
    pub event_type: Option<String>,
}

/// One provider request, exactly as it would be sent (but for `authorization`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderRequest {
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
pub struct Preview {
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

/// Renders template `name` of `app_id` for the request's device and event as delivery would,
/// and builds the provider request from it with the app's senders. Nothing is stored or sent.
pub async fn preview(
    store: &Store,
    providers: &Providers,
    limits: &DeviceLimits,
    app_id: &str,
    name: &str,
    request: PreviewRequest,
) -> Result<Preview> {
    let device = device_of(store, limits, app_id, request.token, request.device).await?;
    if store
        .get_spec(SpecKind::Template, app_id, name)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("template"));
    }
    let template = load_template(store, app_id, &TemplateRef::Named(name.to_string())).await?;
    let locale = match &template {
        Ok(t) => t.locale_choice(device.locale.as_deref()),
        Err(reason) => return Err(ApiError::field("template", reason.clone())),
    };
    let event_type = request.event_type.unwrap_or_else(|| "preview".to_string());
    let event = event_value(&event_context_of(
        "evt_preview",
        &event_type,
        &Value::Object(request.event),
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
    let (apns, fcm) = provider_request(
        providers,
        app_id,
        &device,
        topic,
        &notification,
        store.now() / 1000,
    )?;
    Ok(Preview {
        platform: device.platform,
        locale,
        notification,
        apns,
        fcm,
    })
}

/// The request the device's provider would get, with the app's sender's topic or project.
fn provider_request(
    providers: &Providers,
    app_id: &str,
    device: &Device,
    topic: Option<String>,
    notification: &Notification,
    now_secs: i64,
) -> Result<(Option<ProviderRequest>, Option<ProviderRequest>)> {
    match device.platform {
        Platform::Apns => {
            let fallback = providers.apns_default_topic(app_id).map_err(refused)?;
            let topic = topic.or(fallback).ok_or_else(|| {
                ApiError::field(
                    "device.topic",
                    "the device has no topic and APNs has no default_topic",
                )
            })?;
            let request = apns(&device.token, notification, &topic, now_secs)?;
            Ok((Some(request), None))
        }
        Platform::Fcm => {
            let path = providers.fcm_send_path(app_id).map_err(refused)?;
            let request = fcm(&device.token, notification, path, now_secs)?;
            Ok((None, Some(request)))
        }
    }
}

/// The registered device, or the inline one validated as a registration.
async fn device_of(
    store: &Store,
    limits: &DeviceLimits,
    app_id: &str,
    token: Option<String>,
    inline: Option<DeviceLine>,
) -> Result<Device> {
    match (token, inline) {
        (Some(token), None) => store
            .get_device(app_id, &normalize_token(&token))
            .await?
            .ok_or(ApiError::NotFound("device")),
        (None, Some(line)) => {
            let (token, reg) = line
                .validate(limits)
                .map_err(|e| ApiError::field(format!("device.{}", e.field), e.message))?;
            let now = store.now();
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
pub struct SentPayload {
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
pub fn sent_payload(
    store: &Store,
    providers: &Providers,
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
    let now_secs = store.now() / 1000;
    let body = match platform {
        Platform::Apns => providers
            .apns_default_topic(app_id)
            .ok()
            .and_then(|fallback| topic.or(fallback))
            .and_then(|topic| apns(token, &notification, &topic, now_secs).ok()),
        Platform::Fcm => providers
            .fcm_send_path(app_id)
            .ok()
            .and_then(|path| fcm(token, &notification, path, now_secs).ok()),
    }
    .map(|request| request.body);
    Ok(Some(SentPayload { notification, body }))
}
