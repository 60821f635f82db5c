//! The calling app's provider credentials (`/v1/app/credentials`): its own APNs key and FCM
//! service account, shown without their private parts, with the state of its breaker per
//! provider. The operator may manage any app's with `?app_id=`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{ApiJson, ApiQuery, AppState, Viewer};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::{ApnsEnvironment, Platform};
use crate::push::{ApnsCredential, AppCredential, CredentialKey, CredentialSource};
use crate::service::credentials::{self, Local, Upload};
use crate::store::{rfc3339, Breaker};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(set_apns, remove_apns))
        .routes(routes!(set_fcm, remove_fcm))
}

/// Query of the credential endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AppQuery {
    /// Operator key only (and required with it): the app to manage. A server key manages its
    /// own app and may only name that one.
    app_id: Option<String>,
}

/// The app the caller manages: its own, or the one the operator named.
async fn target_app(state: &AppState, viewer: Viewer, asked: Option<String>) -> Result<String> {
    match (viewer, asked) {
        (Viewer::App(own), Some(asked)) if own != asked => Err(ApiError::NotFound("app")),
        (Viewer::App(own), _) => Ok(own),
        (Viewer::Operator, Some(asked)) => {
            if state.store.get_app(&asked).await?.is_none() {
                return Err(ApiError::NotFound("app"));
            }
            Ok(asked)
        }
        (Viewer::Operator, None) => Err(ApiError::field(
            "app_id",
            "required with the operator key: the app whose credentials to manage",
        )),
    }
}

/// Whether the app's sends to a provider are flowing or paused.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BreakerState {
    /// `ok`, or `failing` while the provider refuses the credential and sends are paused.
    #[schema(example = "ok")]
    status: BreakerStatus,
    /// The provider's refusal, when failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Since when, when failing (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// When the next probe goes, when failing (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_probe_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum BreakerStatus {
    Ok,
    Failing,
}

impl BreakerState {
    fn of(breakers: &[Breaker], provider: Platform) -> Self {
        match breakers.iter().find(|b| b.provider == provider) {
            None => Self {
                status: BreakerStatus::Ok,
                reason: None,
                since: None,
                next_probe_at: None,
            },
            Some(b) => Self {
                status: BreakerStatus::Failing,
                reason: Some(b.reason.clone()),
                since: Some(rfc3339(b.since)),
                next_probe_at: Some(rfc3339(b.probe_at)),
            },
        }
    }
}

/// The APNs key an app sends with (never its private part).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ApnsView {
    /// `app`: its own key; `default`: the config file's.
    source: CredentialSource,
    #[schema(example = "ABC123DEFG")]
    key_id: String,
    #[schema(example = "DEF123GHIJ")]
    team_id: String,
    default_topic: Option<String>,
    /// The only environment the key is used for; both when null.
    environment: Option<ApnsEnvironment>,
    /// SHA-256 of the public key: `sha256:<hex>`.
    fingerprint: Option<String>,
    /// When it was stored (RFC 3339); null for the config file's key.
    updated_at: Option<String>,
    state: BreakerState,
}

/// The FCM service account an app sends with (never its key).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct FcmView {
    /// `app`: its own account; `default`: the config file's.
    source: CredentialSource,
    #[schema(example = "my-project")]
    project_id: String,
    client_email: String,
    private_key_id: Option<String>,
    /// SHA-256 of the public key: `sha256:<hex>`.
    fingerprint: Option<String>,
    /// When it was stored (RFC 3339); null for the config file's account.
    updated_at: Option<String>,
    state: BreakerState,
}

/// The credentials an app's sends use, per provider; null when it has none and the config
/// file has none either.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CredentialsView {
    app_id: String,
    apns: Option<ApnsView>,
    fcm: Option<FcmView>,
}

async fn view(state: &AppState, app_id: &str) -> Result<CredentialsView> {
    let own = state.store.app_credentials(app_id).await?;
    let breakers: Vec<Breaker> = state
        .store
        .breakers()
        .await?
        .into_iter()
        .filter(|b| b.app_id == app_id)
        .collect();
    let mut apns = state.providers.default_apns().map(|d| ApnsView {
        source: CredentialSource::Default,
        key_id: d.key_id.clone(),
        team_id: d.team_id.clone(),
        default_topic: d.default_topic.clone(),
        environment: None,
        fingerprint: d.fingerprint.as_ref().map(|f| f.0.clone()),
        updated_at: None,
        state: BreakerState::of(&breakers, Platform::Apns),
    });
    let mut fcm = state.providers.default_fcm().map(|d| FcmView {
        source: CredentialSource::Default,
        project_id: d.project_id.clone(),
        client_email: d.client_email.clone(),
        private_key_id: d.private_key_id.clone(),
        fingerprint: d.fingerprint.as_ref().map(|f| f.0.clone()),
        updated_at: None,
        state: BreakerState::of(&breakers, Platform::Fcm),
    });
    for c in own {
        let updated_at = Some(rfc3339(c.updated_at));
        let fingerprint = Some(c.fingerprint.0.clone());
        match c.key {
            CredentialKey::Apns(k) => {
                apns = Some(ApnsView {
                    source: CredentialSource::App,
                    key_id: k.key_id,
                    team_id: k.team_id,
                    default_topic: k.default_topic,
                    environment: k.environment,
                    fingerprint,
                    updated_at,
                    state: BreakerState::of(&breakers, Platform::Apns),
                });
            }
            CredentialKey::Fcm(k) => {
                fcm = Some(FcmView {
                    source: CredentialSource::App,
                    project_id: k.account.project_id,
                    client_email: k.account.client_email,
                    private_key_id: k.account.private_key_id,
                    fingerprint,
                    updated_at,
                    state: BreakerState::of(&breakers, Platform::Fcm),
                });
            }
        }
    }
    Ok(CredentialsView {
        app_id: app_id.to_string(),
        apns,
        fcm,
    })
}

#[utoipa::path(
    get,
    path = "/v1/app/credentials",
    operation_id = "get_credentials",
    tag = "app",
    summary = "The provider credentials the app sends with, and whether they work",
    params(AppQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the credentials, without private keys", body = CredentialsView),
        ServerKeyErrors,
        (status = 404, description = "no such app", body = ErrorBody),
        (status = 422, description = "the operator key without `app_id`", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> Result<Json<CredentialsView>> {
    let app_id = target_app(&state, viewer, q.app_id).await?;
    Ok(Json(view(&state, &app_id).await?))
}

/// Body of `PUT /v1/app/credentials/apns`: a token-signing key from the Apple developer
/// account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ApnsUpload {
    /// The key's 10-character id.
    #[schema(example = "ABC123DEFG")]
    key_id: String,
    /// The 10-character team id.
    #[schema(example = "DEF123GHIJ")]
    team_id: String,
    /// The `.p8` file's text: an EC P-256 private key in PKCS#8 PEM.
    #[schema(example = "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n")]
    private_key: String,
    /// Topic (bundle id) for devices registered without one.
    default_topic: Option<String>,
    /// Limit the key to one APNs environment (Apple lets keys be restricted so).
    environment: Option<ApnsEnvironment>,
}

/// Body of `PUT /v1/app/credentials/fcm`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FcmUpload {
    /// The service account's JSON key file, as an object.
    #[schema(value_type = Object)]
    service_account: serde_json::Value,
}

/// Stores the upload, applies it here at once, and returns the app's credentials.
async fn store_upload(
    state: &AppState,
    app_id: &str,
    provider: Platform,
    upload: Upload,
) -> Result<CredentialsView> {
    let stored: AppCredential = credentials::put(&state.store, app_id, upload).await?;
    credentials::apply_locally(&local(state), app_id, provider, Some(&stored));
    view(state, app_id).await
}

/// The view of a credential just stored; its absence would be a store that lost it.
fn just_stored<T>(view: Option<T>) -> Result<Json<T>> {
    view.map(Json).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "a credential just stored is missing from the app's credentials"
        ))
    })
}

fn local(state: &AppState) -> Local<'_> {
    Local {
        providers: &state.providers,
        breakers: &state.breakers,
        wake: &state.wake,
        observer: state.credential_observer.as_ref(),
    }
}

#[utoipa::path(
    put,
    path = "/v1/app/credentials/apns",
    operation_id = "set_apns_credential",
    tag = "app",
    summary = "Send to APNs with the app's own token-signing key",
    description = "The key is checked (it must parse and sign a provider token), stored \
                   encrypted, and used from the next send on, on every instance. Storing a \
                   key resumes sends that a refused credential paused.",
    params(AppQuery),
    request_body = ApnsUpload,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "stored; the app's APNs credential", body = ApnsView),
        ServerKeyErrors,
        JsonBodyErrors,
        (status = 404, description = "no such app", body = ErrorBody),
    ),
)]
async fn set_apns(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<AppQuery>,
    ApiJson(body): ApiJson<ApnsUpload>,
) -> Result<Json<ApnsView>> {
    let app_id = target_app(&state, viewer, q.app_id).await?;
    let upload = Upload::Apns(ApnsCredential {
        key_id: body.key_id,
        team_id: body.team_id,
        private_key: body.private_key,
        default_topic: body.default_topic,
        environment: body.environment,
    });
    just_stored(
        store_upload(&state, &app_id, Platform::Apns, upload)
            .await?
            .apns,
    )
}

#[utoipa::path(
    put,
    path = "/v1/app/credentials/fcm",
    operation_id = "set_fcm_credential",
    tag = "app",
    summary = "Send to FCM with the app's own service account",
    description = "The key file is checked (type, required fields, an RSA key that signs), \
                   stored with its key encrypted, and used from the next send on, on every \
                   instance. The project sent to is the key file's `project_id`.",
    params(AppQuery),
    request_body = FcmUpload,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "stored; the app's FCM credential", body = FcmView),
        ServerKeyErrors,
        JsonBodyErrors,
        (status = 404, description = "no such app", body = ErrorBody),
    ),
)]
async fn set_fcm(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<AppQuery>,
    ApiJson(body): ApiJson<FcmUpload>,
) -> Result<Json<FcmView>> {
    let app_id = target_app(&state, viewer, q.app_id).await?;
    let upload = Upload::Fcm(body.service_account);
    just_stored(
        store_upload(&state, &app_id, Platform::Fcm, upload)
            .await?
            .fcm,
    )
}

#[utoipa::path(
    delete,
    path = "/v1/app/credentials/apns",
    operation_id = "delete_apns_credential",
    tag = "app",
    summary = "Remove the app's own APNs key",
    description = "The app's sends to APNs use the config file's key again (or are refused \
                   when there is none).",
    params(AppQuery),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "removed"),
        ServerKeyErrors,
        (status = 404, description = "no such app, or it has no APNs key of its own", body = ErrorBody),
    ),
)]
async fn remove_apns(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> Result<StatusCode> {
    remove(&state, viewer, q, Platform::Apns).await
}

#[utoipa::path(
    delete,
    path = "/v1/app/credentials/fcm",
    operation_id = "delete_fcm_credential",
    tag = "app",
    summary = "Remove the app's own FCM service account",
    description = "The app's sends to FCM use the config file's account again (or are \
                   refused when there is none).",
    params(AppQuery),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "removed"),
        ServerKeyErrors,
        (status = 404, description = "no such app, or it has no FCM account of its own", body = ErrorBody),
    ),
)]
async fn remove_fcm(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiQuery(q): ApiQuery<AppQuery>,
) -> Result<StatusCode> {
    remove(&state, viewer, q, Platform::Fcm).await
}

async fn remove(
    state: &AppState,
    viewer: Viewer,
    q: AppQuery,
    provider: Platform,
) -> Result<StatusCode> {
    let app_id = target_app(state, viewer, q.app_id).await?;
    credentials::delete(&state.store, &app_id, provider).await?;
    credentials::apply_locally(&local(state), &app_id, provider, None);
    Ok(StatusCode::NO_CONTENT)
}
