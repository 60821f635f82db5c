//! Named templates (`/v1/templates`) and rules (`/v1/rules`), server key only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::sources::validate_name;
use super::{ApiJson, AppState, ServerCaller};
use crate::error::{ApiError, Result};
use crate::rules::{RuleSpec, TemplateRef};
use crate::store::{rfc3339, NamedSpec, SpecKind};
use crate::template::TemplateSpec;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/templates", get(list_templates))
        .route(
            "/v1/templates/{name}",
            get(get_template).put(put_template).delete(delete_template),
        )
        .route("/v1/rules", get(list_rules))
        .route(
            "/v1/rules/{name}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
}

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
    kind: SpecKind,
    app_id: &str,
    name: &str,
    spec: &impl serde::Serialize,
) -> Result<(StatusCode, Json<Value>)> {
    let text = serde_json::to_string(spec).map_err(anyhow::Error::from)?;
    let (stored, created) = state.store.put_spec(kind, app_id, name, &text).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&stored))))
}

async fn put_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<TemplateSpec>,
) -> Result<(StatusCode, Json<Value>)> {
    validate_name(&name)?;
    spec.compile()
        .map_err(|e| ApiError::field(e.field, e.message))?;
    put_spec(&state, SpecKind::Template, caller.app_id(), &name, &spec).await
}

async fn put_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<(StatusCode, Json<Value>)> {
    validate_name(&name)?;
    spec.validate()
        .map_err(|e| ApiError::field(e.field, e.message))?;
    if let TemplateRef::Named(template) = &spec.template {
        if state
            .store
            .get_spec(SpecKind::Template, caller.app_id(), template)
            .await?
            .is_none()
        {
            return Err(ApiError::field(
                "template",
                format!("no template named {template}"),
            ));
        }
    }
    put_spec(&state, SpecKind::Rule, caller.app_id(), &name, &spec).await
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

async fn list_templates(
    State(state): State<AppState>,
    caller: ServerCaller,
) -> Result<Json<Value>> {
    list(&state, SpecKind::Template, caller.app_id(), "templates").await
}

async fn list_rules(State(state): State<AppState>, caller: ServerCaller) -> Result<Json<Value>> {
    list(&state, SpecKind::Rule, caller.app_id(), "rules").await
}

async fn get_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    get_one(&state, SpecKind::Template, caller.app_id(), &name).await
}

async fn get_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    get_one(&state, SpecKind::Rule, caller.app_id(), &name).await
}

async fn delete_template(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    delete_one(&state, SpecKind::Template, caller.app_id(), &name).await
}

async fn delete_rule(
    State(state): State<AppState>,
    caller: ServerCaller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    delete_one(&state, SpecKind::Rule, caller.app_id(), &name).await
}
