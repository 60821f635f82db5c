//! The calling app's user-auth settings (server key): `GET/POST /v1/app/user-auth` shows the
//! secret its backend signs user ids with, rotates it and sets `client_user_ids`;
//! `POST /v1/app/user-auth/keys` and `DELETE /v1/app/user-auth/keys/{id}` manage the public
//! keys of ES256/RS256 proofs. The proofs themselves are checked in `crate::user_auth`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::ApiPath as Path;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::store::UserAuth;
use crate::user_auth::{check_public_key, ClientUserIds, KeyAlgorithm, PublicKey, MAX_PUBLIC_KEYS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show, update))
        .routes(routes!(add_key))
        .routes(routes!(remove_key))
}

/// An app's user-auth settings.
#[derive(Serialize, utoipa::ToSchema)]
struct UserAuthView {
    /// `pbua_...`: the HMAC-SHA256 and HS256 key (the whole string). Keep it on the backend.
    secret: String,
    /// Whether a client key must send `user_auth` to set or change a device's `user_id`.
    client_user_ids: ClientUserIds,
    /// Keys that ES256/RS256 proofs may be signed for, oldest first.
    public_keys: Vec<PublicKey>,
}

impl From<UserAuth> for UserAuthView {
    fn from(u: UserAuth) -> Self {
        Self {
            secret: u.secret,
            client_user_ids: u.client_user_ids,
            public_keys: u.public_keys,
        }
    }
}

/// Body of `POST /v1/app/user-auth`: at least one change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserAuthUpdate {
    /// Replace the secret; proofs made with the old one stop working at once.
    #[serde(default)]
    rotate_secret: bool,
    /// `verified` or `unverified`.
    client_user_ids: Option<ClientUserIds>,
}

/// Body of `POST /v1/app/user-auth/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPublicKey {
    /// The only algorithm tokens checked against this key may use.
    algorithm: KeyAlgorithm,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`): P-256 for ES256, RSA
    /// (2048-8192 bits) for RS256.
    public_key: String,
}

async fn settings(state: &AppState, app_id: &str) -> Result<UserAuthView> {
    Ok(state
        .store
        .user_auth(app_id)
        .await?
        .ok_or(ApiError::NotFound("app"))?
        .into())
}

#[utoipa::path(
    get,
    path = "/v1/app/user-auth",
    operation_id = "get_user_auth",
    tag = "app",
    summary = "The secret and keys that prove device user ids, and whether client keys must",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the settings, with the secret", body = UserAuthView),
        ServerKeyErrors,
        (status = 404, description = "the app no longer exists", body = ErrorBody),
    ),
)]
async fn show(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<UserAuthView>> {
    Ok(Json(settings(&state, caller.app_id()).await?))
}

#[utoipa::path(
    post,
    path = "/v1/app/user-auth",
    operation_id = "update_user_auth",
    tag = "app",
    summary = "Rotate the user-auth secret and/or set `client_user_ids`",
    request_body = UserAuthUpdate,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the settings after the change", body = UserAuthView),
        ServerKeyErrors,
        JsonBodyErrors,
        (status = 404, description = "the app no longer exists", body = ErrorBody),
    ),
)]
async fn update(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<UserAuthUpdate>,
) -> Result<Json<UserAuthView>> {
    let app = caller.app_id();
    if !body.rotate_secret && body.client_user_ids.is_none() {
        return Err(ApiError::field(
            "body",
            "nothing to change: send rotate_secret or client_user_ids",
        ));
    }
    if let Some(policy) = body.client_user_ids {
        if !state.store.set_client_user_ids(app, policy).await? {
            return Err(ApiError::NotFound("app"));
        }
        tracing::info!(
            app,
            client_user_ids = policy.as_str(),
            "user-auth policy set"
        );
    }
    if body.rotate_secret {
        state
            .store
            .rotate_user_auth_secret(app)
            .await?
            .ok_or(ApiError::NotFound("app"))?;
        tracing::info!(app, "user-auth secret rotated");
    }
    Ok(Json(settings(&state, app).await?))
}

#[utoipa::path(
    post,
    path = "/v1/app/user-auth/keys",
    operation_id = "add_user_auth_key",
    tag = "app",
    summary = "Register a public key for ES256/RS256 user proofs",
    request_body = NewPublicKey,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "registered", body = PublicKey),
        ServerKeyErrors,
        JsonBodyErrors,
        (status = 409, description = "the app already has the most keys allowed (10)", body = ErrorBody),
    ),
)]
async fn add_key(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<NewPublicKey>,
) -> Result<(StatusCode, Json<PublicKey>)> {
    let pem = check_public_key(body.algorithm, &body.public_key)
        .map_err(|e| ApiError::field("public_key", e.to_string()))?;
    let key = state
        .store
        .add_user_auth_key(caller.app_id(), body.algorithm, &pem)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "an app has at most {MAX_PUBLIC_KEYS} user-auth keys; remove one first"
            ))
        })?;
    tracing::info!(app = caller.app_id(), key = %key.id, "user-auth key added");
    Ok((StatusCode::CREATED, Json(key)))
}

#[utoipa::path(
    delete,
    path = "/v1/app/user-auth/keys/{id}",
    operation_id = "remove_user_auth_key",
    tag = "app",
    summary = "Remove a public key; proofs signed for it stop working at once",
    params(("id" = String, Path, description = "the key's `uak_...` id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "removed"),
        ServerKeyErrors,
        (status = 404, description = "no such key in this app", body = ErrorBody),
    ),
)]
async fn remove_key(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !state
        .store
        .remove_user_auth_key(caller.app_id(), &id)
        .await?
    {
        return Err(ApiError::NotFound("user-auth key"));
    }
    tracing::info!(app = caller.app_id(), key = %id, "user-auth key removed");
    Ok(StatusCode::NO_CONTENT)
}
