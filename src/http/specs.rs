//! Named templates (`/v1/templates`) and rules (`/v1/rules`), server key only.

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{JsonBodyErrors, ServerKeyErrors};
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, ErrorBody, Result};
use crate::model::rules::RuleSpec;
use crate::model::template::TemplateSpec;
use crate::service::specs::{self, Spec};
use crate::store::{rfc3339, NamedSpec, SpecKind};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(get_template, put_template, delete_template))
        .routes(routes!(list_rules))
        .routes(routes!(get_rule, put_rule, delete_rule))
}

/// A stored template.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NamedTemplate {
    name: String,
    spec: TemplateSpec,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// A stored rule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NamedRule {
    name: String,
    spec: RuleSpec,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// Every template of the app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TemplateList {
    templates: Vec<NamedTemplate>,
}

/// Every rule of the app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RuleList {
    rules: Vec<NamedRule>,
}

/// The API view of a stored spec of one kind.
trait SpecView: Sized {
    /// Which specs this views.
    const KIND: SpecKind;
    /// Singular name, for 404s.
    const WHAT: &'static str;
    /// The view of a stored spec; stored text that no longer parses is an internal error
    /// naming the spec, never an empty answer.
    fn from_stored(stored: &NamedSpec) -> Result<Self>;
}

fn parse_stored<T: serde::de::DeserializeOwned>(what: &str, stored: &NamedSpec) -> Result<T> {
    serde_json::from_str(&stored.spec).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "stored {what} {} does not parse: {e}",
            stored.name
        ))
    })
}

impl SpecView for NamedTemplate {
    const KIND: SpecKind = SpecKind::Template;
    const WHAT: &'static str = "template";
    fn from_stored(stored: &NamedSpec) -> Result<Self> {
        Ok(Self {
            name: stored.name.clone(),
            spec: parse_stored(Self::WHAT, stored)?,
            created_at: rfc3339(stored.created_at),
            updated_at: rfc3339(stored.updated_at),
        })
    }
}

impl SpecView for NamedRule {
    const KIND: SpecKind = SpecKind::Rule;
    const WHAT: &'static str = "rule";
    fn from_stored(stored: &NamedSpec) -> Result<Self> {
        Ok(Self {
            name: stored.name.clone(),
            spec: parse_stored(Self::WHAT, stored)?,
            created_at: rfc3339(stored.created_at),
            updated_at: rfc3339(stored.updated_at),
        })
    }
}

const TEMPLATE_NAME: &str = "the template's name: 1-64 characters of [a-z0-9_-]";
const RULE_NAME: &str = "the rule's name: 1-64 characters of [a-z0-9_-]";

async fn put_spec<V: SpecView>(
    state: &AppState,
    app_id: &str,
    name: &str,
    spec: Spec,
) -> Result<(StatusCode, Json<V>)> {
    let (stored, created) = specs::put_spec(&state.store, app_id, name, &spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(V::from_stored(&stored)?)))
}

#[utoipa::path(
    put,
    path = "/v1/templates/{name}",
    tag = "templates",
    summary = "Create or replace a named template",
    params(("name" = String, Path, description = TEMPLATE_NAME)),
    request_body = TemplateSpec,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "created", body = NamedTemplate),
        (status = 200, description = "replaced", body = NamedTemplate),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn put_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<TemplateSpec>,
) -> Result<(StatusCode, Json<NamedTemplate>)> {
    put_spec(
        &state,
        caller.app_id(),
        &name,
        Spec::Template(Box::new(spec)),
    )
    .await
}

#[utoipa::path(
    put,
    path = "/v1/rules/{name}",
    tag = "rules",
    summary = "Create or replace a rule",
    params(("name" = String, Path, description = RULE_NAME)),
    request_body = RuleSpec,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "created", body = NamedRule),
        (status = 200, description = "replaced", body = NamedRule),
        ServerKeyErrors,
        JsonBodyErrors,
    ),
)]
async fn put_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<(StatusCode, Json<NamedRule>)> {
    put_spec(&state, caller.app_id(), &name, Spec::Rule(Box::new(spec))).await
}

async fn list<V: SpecView>(state: &AppState, app_id: &str) -> Result<Vec<V>> {
    let specs = state.store.list_specs(V::KIND, app_id).await?;
    specs.iter().map(V::from_stored).collect()
}

async fn get_one<V: SpecView>(state: &AppState, app_id: &str, name: &str) -> Result<Json<V>> {
    let spec = state
        .store
        .get_spec(V::KIND, app_id, name)
        .await?
        .ok_or(ApiError::NotFound(V::WHAT))?;
    Ok(Json(V::from_stored(&spec)?))
}

async fn delete_one(
    state: &AppState,
    kind: SpecKind,
    app_id: &str,
    name: &str,
) -> Result<StatusCode> {
    if !state.store.delete_spec(kind, app_id, name).await? {
        return Err(ApiError::NotFound(match kind {
            SpecKind::Template => "template",
            SpecKind::Rule => "rule",
        }));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    summary = "List the app's templates",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "every template", body = TemplateList),
        ServerKeyErrors,
    ),
)]
async fn list_templates(
    State(state): State<AppState>,
    caller: ServerCaller,
) -> Result<Json<TemplateList>> {
    Ok(Json(TemplateList {
        templates: list(&state, caller.app_id()).await?,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/rules",
    tag = "rules",
    summary = "List the app's rules",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "every rule", body = RuleList),
        ServerKeyErrors,
    ),
)]
async fn list_rules(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<RuleList>> {
    Ok(Json(RuleList {
        rules: list(&state, caller.app_id()).await?,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    tag = "templates",
    summary = "Read one template",
    params(("name" = String, Path, description = TEMPLATE_NAME)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the template", body = NamedTemplate),
        ServerKeyErrors,
        (status = 404, description = "no such template", body = ErrorBody),
    ),
)]
async fn get_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<Json<NamedTemplate>> {
    get_one(&state, caller.app_id(), &name).await
}

#[utoipa::path(
    get,
    path = "/v1/rules/{name}",
    tag = "rules",
    summary = "Read one rule",
    params(("name" = String, Path, description = RULE_NAME)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "the rule", body = NamedRule),
        ServerKeyErrors,
        (status = 404, description = "no such rule", body = ErrorBody),
    ),
)]
async fn get_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<Json<NamedRule>> {
    get_one(&state, caller.app_id(), &name).await
}

#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    tag = "templates",
    summary = "Delete a template",
    params(("name" = String, Path, description = TEMPLATE_NAME)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "deleted"),
        ServerKeyErrors,
        (status = 404, description = "no such template", body = ErrorBody),
    ),
)]
async fn delete_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    delete_one(&state, SpecKind::Template, caller.app_id(), &name).await
}

#[utoipa::path(
    delete,
    path = "/v1/rules/{name}",
    tag = "rules",
    summary = "Delete a rule",
    params(("name" = String, Path, description = RULE_NAME)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "deleted"),
        ServerKeyErrors,
        (status = 404, description = "no such rule", body = ErrorBody),
    ),
)]
async fn delete_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    delete_one(&state, SpecKind::Rule, caller.app_id(), &name).await
}
