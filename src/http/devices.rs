//! Device registry: `PUT/GET/DELETE /v1/devices/{token}`, `GET /v1/users/{user_id}/devices`,
//! and the rule for which registrations must prove their user id.

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AppKeyErrors, JsonBodyErrors, ServerKeyErrors};
use super::{encode_cursor, ApiJson, ApiQuery, AppState, Caller, CursorKind, Page, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::device::normalize_token;
use crate::model::device::{DeviceRegistration, DeviceState, RegistrationRequest};
use crate::model::{ApnsEnvironment, Platform};
use crate::redact::Redacted;
use crate::store::{rfc3339, Device, KeyKind};
use crate::user_auth::{ClientUserIds, Verifier};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, get_device, unregister))
        .routes(routes!(restore_device))
        .routes(routes!(list_devices))
        .routes(routes!(list_user_devices))
}

/// Body of `PUT /v1/devices/{token}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterDevice {
    /// Decides the token's expected shape: APNs tokens are hex, FCM tokens are not.
    #[schema(value_type = Platform, example = "apns")]
    platform: String,
    /// The owning user, for user audiences.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    user_id: Option<String>,
    /// BCP-47 language tag, stored in canonical case (`fr-fr` becomes `fr-FR`).
    #[schema(
        example = "fr-FR",
        max_length = 64,
        pattern = "^(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{5,8})(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*(?:-[A-WYZa-wyz0-9](?:-[A-Za-z0-9]{2,8})+)*(?:-[Xx](?:-[A-Za-z0-9]{1,8})+)?$|^[Xx](?:-[A-Za-z0-9]{1,8})+$"
    )]
    locale: Option<String>,
    /// IANA time zone name.
    #[schema(example = "Europe/Paris", pattern = "^[A-Za-z0-9/_+-]{1,64}$")]
    timezone: Option<String>,
    /// App version.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    app_version: Option<String>,
    /// APNs only (default `production`); an FCM device must not send it.
    #[schema(value_type = Option<ApnsEnvironment>)]
    environment: Option<String>,
    /// APNs only: the bundle id to send with (`apns-topic`).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    topic: Option<String>,
    /// Free-form JSON object, visible to templates as `device.attributes` and `user.*`; at
    /// most `devices.max_attributes_bytes` (default 8192) when serialized.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    attributes: Option<Value>,
    /// Tags for device audiences, each 1-64 characters without control characters; at most
    /// `devices.max_tags` (default 64).
    #[serde(default)]
    #[schema(inline)]
    tags: Option<Vec<Tag>>,
    /// Proof from the app's backend that the device is `user_id`'s: lowercase hex
    /// HMAC-SHA256(user-auth secret, user_id), or a JWT (HS256 with that secret, or ES256/RS256
    /// with a registered public key) whose `sub` is the user id and whose `exp` is at most an
    /// hour away. Needed when a client key of a `verified` app sets or changes `user_id`;
    /// checked whenever it is sent. Never stored.
    user_auth: Option<String>,
}

impl From<RegisterDevice> for RegistrationRequest {
    fn from(body: RegisterDevice) -> Self {
        Self {
            platform: body.platform,
            user_id: body.user_id,
            locale: body.locale,
            timezone: body.timezone,
            app_version: body.app_version,
            environment: body.environment,
            topic: body.topic,
            attributes: body.attributes,
            tags: body
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.0)
                .collect(),
        }
    }
}

/// A device tag.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,64}$")]
struct Tag(String);

/// The API view of a device.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Device)]
struct DeviceView {
    token: String,
    platform: Platform,
    user_id: Option<String>,
    /// Canonical BCP-47 tag.
    locale: Option<String>,
    timezone: Option<String>,
    app_version: Option<String>,
    /// APNs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    environment: Option<ApnsEnvironment>,
    /// APNs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    topic: Option<String>,
    #[schema(value_type = Object)]
    attributes: Value,
    tags: Vec<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
    /// `active` (sent to), `suspect` (the provider refused the token without saying it is
    /// gone) or `pruned` (the provider said it is gone; deleted after
    /// `retention.pruned_devices_days`). Restore either with `POST .../restore`.
    state: DeviceState,
    /// The provider's reason, for a suspect or pruned device.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    state_reason: Option<String>,
    /// When it became suspect or pruned (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    state_at: Option<String>,
}

impl DeviceView {
    /// The JSON shape the API returns.
    fn new(device: &Device) -> Self {
        Self {
            token: device.token.clone(),
            platform: device.platform,
            user_id: device.user_id.clone(),
            locale: device.locale.clone(),
            timezone: device.timezone.clone(),
            app_version: device.app_version.clone(),
            environment: device.environment,
            topic: device.topic.clone(),
            attributes: device.attributes.clone(),
            tags: device.tags.clone(),
            created_at: rfc3339(device.created_at),
            updated_at: rfc3339(device.updated_at),
            state: device.state,
            state_reason: device.state_reason.clone(),
            state_at: device.state_at.map(rfc3339),
        }
    }
}

/// A page of devices.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeviceList {
    devices: Vec<DeviceView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

impl DeviceList {
    /// A page of `limit` from `devices`, read one past the limit to know whether more follow.
    fn page(devices: &[Device], limit: u32, kind: CursorKind) -> Self {
        let shown = &devices[..devices.len().min(limit as usize)];
        let next_cursor = (devices.len() > shown.len())
            .then(|| shown.last().map(|d| encode_cursor(kind, &d.token)))
            .flatten();
        Self {
            devices: shown.iter().map(DeviceView::new).collect(),
            next_cursor,
        }
    }
}

const TOKEN: &str = "the provider's device token (APNs: hex; FCM: registration token)";

#[utoipa::path(
    put,
    path = "/v1/devices/{token}",
    operation_id = "register_device",
    tag = "devices",
    summary = "Register a device, or update its registration",
    params(("token" = String, Path, description = TOKEN)),
    request_body = RegisterDevice,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "registered", body = DeviceView),
        (status = 200, description = "an existing registration was updated", body = DeviceView),
        AppKeyErrors,
        (status = 403, description = "`user_auth` is missing (a client key of a verified app \
            setting or changing `user_id`) or does not prove `user_id`", body = ErrorBody),
        (status = 409, description = "the device moved to another user meanwhile; retry", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    ApiJson(mut body): ApiJson<RegisterDevice>,
) -> Result<(StatusCode, Json<DeviceView>)> {
    let proof = body.user_auth.take();
    let (token, reg) = DeviceRegistration::validate(&token, body.into(), &state.config.devices)?;
    let write = authorize_user_id(&state, &caller, &token, &reg, proof.as_deref()).await?;
    let store = &state.store;
    let (device, created) = match write {
        Write::Upsert => store.upsert_device(caller.app_id(), &token, &reg).await?,
        Write::KeepingUser => store
            .update_device_keeping_user(caller.app_id(), &token, &reg)
            .await?
            .map(|device| (device, false))
            .ok_or_else(|| {
                ApiError::Conflict("the device moved to another user meanwhile; retry".into())
            })?,
    };
    tracing::info!(app = caller.app_id(), token = %Redacted(&token), created, "device registered");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(DeviceView::new(&device))))
}

/// How an authorized registration may be written.
enum Write {
    /// Insert or replace, whatever user the device had.
    Upsert,
    /// Update only while the device is still registered to the same user: no proof was given
    /// because the user id does not change, so it must not change under us either.
    KeepingUser,
}

/// Decides whether the registration may set its `user_id`. A client key ships inside every
/// copy of the app, so on a `verified` app it may only set or change a user id with a proof
/// from the app's backend; keeping the device's current user id needs none (apps re-register
/// on every launch), nor does registering without one (which gives no one a user's
/// notifications, and a client key may delete the device anyway). A proof that is sent is
/// always checked, whoever sends it, so an app can roll proofs out before it opts in.
async fn authorize_user_id(
    state: &AppState,
    caller: &Caller,
    token: &str,
    reg: &DeviceRegistration,
    proof: Option<&str>,
) -> Result<Write> {
    let Some(user_id) = reg.user_id.as_deref() else {
        return match proof {
            Some(_) => Err(ApiError::field(
                "user_auth",
                "vouches for a user id; send user_id with it",
            )),
            None => Ok(Write::Upsert),
        };
    };
    if proof.is_none() && caller.0.kind == KeyKind::Server {
        return Ok(Write::Upsert);
    }
    let settings = state
        .store
        .user_auth(caller.app_id())
        .await?
        .ok_or(ApiError::NotFound("app"))?;
    if let Some(proof) = proof {
        let verifier = Verifier {
            app_id: caller.app_id(),
            secret: &settings.secret,
            public_keys: &settings.public_keys,
        };
        let now_secs = u64::try_from(state.store.now() / 1000).unwrap_or_default();
        verifier.verify(proof, user_id, now_secs).map_err(|e| {
            tracing::info!(app = caller.app_id(), token = %Redacted(token), reason = %e, "user proof refused");
            ApiError::Forbidden(e.to_string())
        })?;
        return Ok(Write::Upsert);
    }
    if settings.client_user_ids == ClientUserIds::Unverified {
        return Ok(Write::Upsert);
    }
    let current = state.store.get_device(caller.app_id(), token).await?;
    if current.is_some_and(|d| d.user_id.as_deref() == Some(user_id)) {
        return Ok(Write::KeepingUser);
    }
    tracing::info!(app = caller.app_id(), token = %Redacted(token), "registration without a needed user proof refused");
    Err(ApiError::Forbidden(
        "user_auth is required: a client key of this app sets or changes user_id only with \
         a proof from the app's backend (see GET /v1/app/user-auth)"
            .into(),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/devices/{token}",
    tag = "devices",
    summary = "Read one device",
    params(("token" = String, Path, description = TOKEN)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the device", body = DeviceView),
        AppKeyErrors,
        (status = 404, description = "no such device in this app", body = ErrorBody),
    ),
)]
async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<DeviceView>> {
    let device = state
        .store
        .get_device(caller.app_id(), &normalize_token(&token))
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    Ok(Json(DeviceView::new(&device)))
}

#[utoipa::path(
    delete,
    path = "/v1/devices/{token}",
    operation_id = "unregister_device",
    tag = "devices",
    summary = "Unregister a device",
    params(("token" = String, Path, description = TOKEN)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "unregistered"),
        AppKeyErrors,
        (status = 404, description = "no such device in this app", body = ErrorBody),
    ),
)]
async fn unregister(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<StatusCode> {
    let token = normalize_token(&token);
    if !state.store.delete_device(caller.app_id(), &token).await? {
        return Err(ApiError::NotFound("device"));
    }
    tracing::info!(app = caller.app_id(), token = %Redacted(&token), "device unregistered");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/devices",
    tag = "devices",
    summary = "List a user's devices, paginated",
    params(("user_id" = String, Path, description = "the user id devices registered with"), Page),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "a page of devices", body = DeviceList),
        ServerKeyErrors,
        (status = 422, description = "invalid `limit` or `cursor`", body = ErrorBody),
    ),
)]
async fn list_user_devices(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(user_id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<DeviceList>> {
    let limit = page.limit()?;
    let after = page.cursor(CursorKind::UserDevices)?;
    let devices = state
        .store
        .list_user_devices(caller.app_id(), &user_id, after.as_deref(), limit + 1)
        .await?;
    Ok(Json(DeviceList::page(
        &devices,
        limit,
        CursorKind::UserDevices,
    )))
}

/// Query of `GET /v1/devices`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DevicesQuery {
    /// Which devices: `active`, `suspect` or `pruned`.
    state: DeviceState,
    /// Opaque cursor from a previous page's `next_cursor` of the same list.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    summary = "List the app's devices in one state, paginated",
    description = "`state=pruned` lists the devices a provider said are gone (kept for \
                   `retention.pruned_devices_days`), `state=suspect` those whose token a \
                   provider refused without saying it is gone.",
    params(DevicesQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "a page of devices", body = DeviceList),
        ServerKeyErrors,
        (status = 422, description = "invalid `state`, `limit` or `cursor`", body = ErrorBody),
    ),
)]
async fn list_devices(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(q): ApiQuery<DevicesQuery>,
) -> Result<Json<DeviceList>> {
    let page = Page {
        cursor: q.cursor,
        limit: q.limit,
    };
    let limit = page.limit()?;
    let after = page.cursor(CursorKind::Devices)?;
    let devices = state
        .store
        .devices_in_state(caller.app_id(), q.state, after.as_deref(), limit + 1)
        .await?;
    Ok(Json(DeviceList::page(&devices, limit, CursorKind::Devices)))
}

#[utoipa::path(
    post,
    path = "/v1/devices/{token}/restore",
    operation_id = "restore_device",
    tag = "devices",
    summary = "Send to a suspect or pruned device again",
    params(("token" = String, Path, description = TOKEN)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the device, active again", body = DeviceView),
        ServerKeyErrors,
        (status = 404, description = "no such device in this app (a pruned device is deleted after `retention.pruned_devices_days`)", body = ErrorBody),
    ),
)]
async fn restore_device(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(token): Path<String>,
) -> Result<Json<DeviceView>> {
    let token = normalize_token(&token);
    let device = state
        .store
        .restore_device(caller.app_id(), &token)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    tracing::info!(app = caller.app_id(), token = %Redacted(&token), "device restored");
    Ok(Json(DeviceView::new(&device)))
}
