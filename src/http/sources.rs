//! Webhook sources: `/v1/sources` (server key). Secrets are shown in full only when created.

use axum::body::Bytes;
use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{parse_json, ApiJson, AppState, ServerCaller};
use crate::error::{on_unique_violation, ApiError, ErrorBody, Result};
use crate::model::source::{new_source, parse_cidrs, validate_event_type_path, MAX_SECRETS};
use crate::signature::Scheme;
use crate::store::{new_id, rfc3339, SourceSecret, WebhookSource};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(add_secret))
        .routes(routes!(remove_secret))
}

/// Body of `POST /v1/sources`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSource {
    /// 1-64 characters of `[a-z0-9_-]`; part of the webhook URL.
    #[schema(example = "billing", pattern = "^[a-z0-9_-]{1,64}$")]
    name: String,
    scheme: Scheme,
    /// Initial secrets (at most 5); one is generated when absent. Standard Webhooks secrets
    /// are `whsec_` + base64 of 16-64 bytes, others 16-256 printable ASCII characters.
    #[serde(default)]
    #[schema(max_items = 5)]
    secrets: Vec<Secret>,
    /// Dotted JSON path of the event type in the body (default `type`).
    #[schema(
        example = "data.event",
        max_length = 128,
        pattern = "^[A-Za-z0-9_-]+(?:\\.[A-Za-z0-9_-]+)*$"
    )]
    event_type_path: Option<String>,
    /// Only these client addresses may call the webhook (CIDRs or single addresses).
    #[serde(default)]
    #[schema(example = json!(["203.0.113.0/24"]))]
    allowed_cidrs: Vec<Cidr>,
}

/// Body of `PATCH /v1/sources/{name}`; absent fields are left unchanged.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSource {
    /// Dotted JSON path of the event type in the body.
    #[schema(max_length = 128, pattern = "^[A-Za-z0-9_-]+(?:\\.[A-Za-z0-9_-]+)*$")]
    event_type_path: Option<String>,
    /// Replaces the allowlist; an empty list allows every address.
    allowed_cidrs: Option<Vec<Cidr>>,
}

/// Body of `POST /v1/sources/{name}/secrets`; an empty body generates the secret.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddSecret {
    /// The new secret, in the scheme's format; generated when absent.
    secret: Option<Secret>,
}

/// A webhook source's client allowlist entry: a CIDR or a single address, IPv4 or IPv6.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(
    example = "203.0.113.0/24",
    pattern = "^(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}(?:/(?:3[0-2]|[12]?[0-9]))?$|^(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?|[0-9A-Fa-f]{1,4}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,5})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){1}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,4})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){2}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,3})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){3}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,2})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){4}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,1})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){5}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,0})?|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){6}::|(?:[0-9A-Fa-f]{1,4}:){6}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|::(?:[0-9A-Fa-f]{1,4}:){0,5}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f]{1,4}::(?:[0-9A-Fa-f]{1,4}:){0,4}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){1}::(?:[0-9A-Fa-f]{1,4}:){0,3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){2}::(?:[0-9A-Fa-f]{1,4}:){0,2}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){3}::(?:[0-9A-Fa-f]{1,4}:){0,1}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){4}::(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?$"
)]
struct Cidr(String);

impl Cidr {
    fn texts(cidrs: Vec<Cidr>) -> Vec<String> {
        cidrs.into_iter().map(|c| c.0).collect()
    }
}

/// A webhook secret of a `github`, `stripe`, `generic` or `generic_v2` source: 16-256 printable ASCII
/// characters. A `standard_webhooks` secret is `whsec_` followed by base64 of 16-64 bytes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[ -~]{16,256}$")]
struct Secret(String);

/// A webhook source.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Source)]
struct SourceView {
    id: String,
    name: String,
    scheme: Scheme,
    /// Where the sender posts: `/v1/webhooks/{app_id}/{name}`.
    webhook_path: String,
    event_type_path: Option<String>,
    allowed_cidrs: Vec<String>,
    secrets: Vec<SecretView>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

impl SourceView {
    /// The API view of a source; `reveal` includes full secrets (only on creation).
    fn new(source: &WebhookSource, reveal: bool) -> Self {
        Self {
            id: source.id.clone(),
            name: source.name.clone(),
            scheme: source.scheme,
            webhook_path: format!("/v1/webhooks/{}/{}", source.app_id, source.name),
            event_type_path: source.event_type_path.clone(),
            allowed_cidrs: source
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            secrets: source
                .secrets
                .iter()
                .map(|s| SecretView::new(s, reveal))
                .collect(),
            created_at: rfc3339(source.created_at),
            updated_at: rfc3339(source.updated_at),
        }
    }
}

/// A source secret: in full only in the answer that created it, otherwise a hint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SourceSecret)]
struct SecretView {
    id: String,
    /// RFC 3339.
    created_at: String,
    /// The full secret; only when the source or secret was just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    secret: Option<String>,
    /// The secret's first 8 characters, followed by an ellipsis.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    hint: Option<String>,
}

impl SecretView {
    fn new(secret: &SourceSecret, reveal: bool) -> Self {
        let (full, hint) = if reveal {
            (Some(secret.secret.clone()), None)
        } else {
            let hint = format!("{}…", secret.secret.chars().take(8).collect::<String>());
            (None, Some(hint))
        };
        Self {
            id: secret.id.clone(),
            created_at: rfc3339(secret.created_at),
            secret: full,
            hint,
        }
    }
}

/// The answer to adding a secret: the secret in full, shown only here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AddedSecret {
    id: String,
    secret: String,
    /// RFC 3339.
    created_at: String,
}

/// Every source of the app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SourceList {
    sources: Vec<SourceView>,
}

const NAME: &str = "the source's name";

#[utoipa::path(
    post,
    path = "/v1/sources",
    operation_id = "create_source",
    tag = "sources",
    summary = "Create a webhook source; its secrets are shown in full only here",
    request_body = CreateSource,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "created, with full secrets", body = SourceView),
        ServerKeyErrors,
        (status = 409, description = "a source with this name already exists", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn create(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiJson(body): ApiJson<CreateSource>,
) -> Result<(StatusCode, Json<SourceView>)> {
    let new = new_source(
        body.name,
        body.scheme,
        body.secrets.into_iter().map(|s| s.0).collect(),
        body.event_type_path,
        &Cidr::texts(body.allowed_cidrs),
    )?;
    let source = state
        .store
        .create_source(caller.app_id(), &new)
        .await
        .map_err(|e| on_unique_violation(e, "a source with this name already exists"))?;
    tracing::info!(app = caller.app_id(), source = %source.name, scheme = source.scheme.as_str(), "webhook source created");
    Ok((StatusCode::CREATED, Json(SourceView::new(&source, true))))
}

#[utoipa::path(
    get,
    path = "/v1/sources",
    operation_id = "list_sources",
    tag = "sources",
    summary = "List the app's webhook sources",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "every source, secrets as hints", body = SourceList),
        ServerKeyErrors,
    ),
)]
async fn list(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<SourceList>> {
    let sources = state.store.list_sources(caller.app_id()).await?;
    Ok(Json(SourceList {
        sources: sources.iter().map(|s| SourceView::new(s, false)).collect(),
    }))
}

async fn load(state: &AppState, app_id: &str, name: &str) -> Result<WebhookSource> {
    state
        .store
        .get_source(app_id, name)
        .await?
        .ok_or(ApiError::NotFound("source"))
}

#[utoipa::path(
    get,
    path = "/v1/sources/{name}",
    operation_id = "get_source",
    tag = "sources",
    summary = "Read one webhook source",
    params(("name" = String, Path, description = NAME)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the source, secrets as hints", body = SourceView),
        ServerKeyErrors,
        (status = 404, description = "no such source", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<Json<SourceView>> {
    let source = load(&state, caller.app_id(), &name).await?;
    Ok(Json(SourceView::new(&source, false)))
}

#[utoipa::path(
    patch,
    path = "/v1/sources/{name}",
    operation_id = "update_source",
    tag = "sources",
    summary = "Change a source's event type path or allowlist",
    params(("name" = String, Path, description = NAME)),
    request_body = UpdateSource,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the updated source", body = SourceView),
        ServerKeyErrors,
        (status = 404, description = "no such source", body = ErrorBody),
        JsonBodyErrors,
    ),
)]
async fn update(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateSource>,
) -> Result<Json<SourceView>> {
    let mut source = load(&state, caller.app_id(), &name).await?;
    if let Some(path) = body.event_type_path {
        source.event_type_path = validate_event_type_path(Some(path))?;
    }
    if let Some(cidrs) = body.allowed_cidrs {
        source.allowed_cidrs = parse_cidrs(&Cidr::texts(cidrs))?;
    }
    state.store.update_source(&source).await?;
    let source = load(&state, caller.app_id(), &name).await?;
    Ok(Json(SourceView::new(&source, false)))
}

#[utoipa::path(
    delete,
    path = "/v1/sources/{name}",
    operation_id = "delete_source",
    tag = "sources",
    summary = "Delete a webhook source",
    params(("name" = String, Path, description = NAME)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "deleted"),
        ServerKeyErrors,
        (status = 404, description = "no such source", body = ErrorBody),
    ),
)]
async fn remove(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    if !state.store.delete_source(caller.app_id(), &name).await? {
        return Err(ApiError::NotFound("source"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/sources/{name}/secrets",
    operation_id = "add_source_secret",
    tag = "sources",
    summary = "Add a secret (rotation); any active secret verifies",
    params(("name" = String, Path, description = NAME)),
    request_body(
        content = Option<AddSecret>,
        description = "optional: an empty body generates a secret",
    ),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "added; the secret is shown in full only here", body = AddedSecret),
        ServerKeyErrors,
        (status = 400, description = "the body is not valid JSON", body = ErrorBody),
        (status = 404, description = "no such source", body = ErrorBody),
        (status = 409, description = "the source already holds 5 secrets", body = ErrorBody),
        (status = 422, description = "invalid secret for the scheme; `error.field` names it", body = ErrorBody),
    ),
)]
async fn add_secret(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<AddedSecret>)> {
    // An empty body and `null` both ask for a generated secret.
    let body: AddSecret = if body.iter().all(u8::is_ascii_whitespace) {
        AddSecret::default()
    } else {
        parse_json::<Option<AddSecret>>(&body)?.unwrap_or_default()
    };
    let mut source = load(&state, caller.app_id(), &name).await?;
    if source.secrets.len() >= MAX_SECRETS {
        return Err(ApiError::Conflict(format!(
            "a source holds at most {MAX_SECRETS} secrets; remove an old one first"
        )));
    }
    let secret = match body.secret.map(|s| s.0) {
        Some(s) => {
            source
                .scheme
                .check_secret(&s)
                .map_err(|m| ApiError::field("secret", m))?;
            s
        }
        None => source.scheme.generate_secret(),
    };
    let added = SourceSecret {
        id: new_id("sec"),
        secret,
        created_at: state.store.now(),
    };
    source.secrets.push(added.clone());
    state.store.update_source(&source).await?;
    tracing::info!(app = caller.app_id(), source = %source.name, secret_id = %added.id, "source secret added");
    Ok((
        StatusCode::CREATED,
        Json(AddedSecret {
            created_at: rfc3339(added.created_at),
            id: added.id,
            secret: added.secret,
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/sources/{name}/secrets/{secret_id}",
    operation_id = "delete_source_secret",
    tag = "sources",
    summary = "Retire a secret",
    params(
        ("name" = String, Path, description = NAME),
        ("secret_id" = String, Path, description = "the secret's id (`sec_...`)"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "removed"),
        ServerKeyErrors,
        (status = 404, description = "no such source or secret", body = ErrorBody),
        (status = 409, description = "it is the source's last secret", body = ErrorBody),
    ),
)]
async fn remove_secret(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path((name, secret_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    let mut source = load(&state, caller.app_id(), &name).await?;
    let before = source.secrets.len();
    source.secrets.retain(|s| s.id != secret_id);
    if source.secrets.len() == before {
        return Err(ApiError::NotFound("secret"));
    }
    if source.secrets.is_empty() {
        return Err(ApiError::Conflict(
            "cannot remove the last secret; add a new one first".into(),
        ));
    }
    state.store.update_source(&source).await?;
    tracing::info!(app = caller.app_id(), source = %source.name, secret_id = %secret_id, "source secret removed");
    Ok(StatusCode::NO_CONTENT)
}
