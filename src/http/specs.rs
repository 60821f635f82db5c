//! Named templates (`/v1/templates`) and rules (`/v1/rules`), server key only.

use axum::extract::State;

use super::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
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
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct NamedTemplate {
    name: String,
    spec: TemplateSpec,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// A stored rule.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct NamedRule {
    name: String,
    spec: RuleSpec,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// Every template of the app.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TemplateList {
    templates: Vec<NamedTemplate>,
}

/// Every rule of the app.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct RuleList {
    rules: Vec<NamedRule>,
}

const TEMPLATE_NAME: &str = "the template's name: 1-64 characters of [a-z0-9_-]";
const RULE_NAME: &str = "the rule's name: 1-64 characters of [a-z0-9_-]";

fn view(spec: &NamedSpec) -> Value {
    json!({
        "name": spec.name,
        "spec": serde_json::from_str::<Value>(&spec.spec).unwrap_or(Value::Null),
        "created_at": rfc3339(spec.created_at),
        "updated_at": rfc3339(spec.updated_at),
    })
}

async fn put_spec(
    state: &AppState,
    app_id: &str,
    name: &str,
    spec: Spec,
) -> Result<(StatusCode, Json<Value>)> {
    let (stored, created) = specs::put_spec(&state.store, app_id, name, &spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&stored))))
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
) -> Result<(StatusCode, Json<Value>)> {
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
) -> Result<(StatusCode, Json<Value>)> {
    put_spec(&state, caller.app_id(), &name, Spec::Rule(spec)).await
}

async fn list(state: &AppState, kind: SpecKind, app_id: &str, key: &str) -> Result<Json<Value>> {
    let specs = state.store.list_specs(kind, app_id).await?;
    Ok(Json(
        json!({ key: specs.iter().map(view).collect::<Vec<_>>() }),
    ))
}

async fn get_one(
    state: &AppState,
    kind: SpecKind,
    app_id: &str,
    name: &str,
) -> Result<Json<Value>> {
    let what = match kind {
        SpecKind::Template => "template",
        SpecKind::Rule => "rule",
    };
    let spec = state
        .store
        .get_spec(kind, app_id, name)
        .await?
        .ok_or(ApiError::NotFound(what))?;
    Ok(Json(view(&spec)))
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
) -> Result<Json<Value>> {
    list(&state, SpecKind::Template, caller.app_id(), "templates").await
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
async fn list_rules(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<Value>> {
    list(&state, SpecKind::Rule, caller.app_id(), "rules").await
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
) -> Result<Json<Value>> {
    get_one(&state, SpecKind::Template, caller.app_id(), &name).await
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
) -> Result<Json<Value>> {
    get_one(&state, SpecKind::Rule, caller.app_id(), &name).await
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
