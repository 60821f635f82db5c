//! Putting named templates and rules: validated as the API and the CLI both require, then
//! stored in canonical JSON.

use crate::error::{ApiError, Result};
use crate::model::rules::{RuleSpec, TemplateRef};
use crate::model::template::TemplateSpec;
use crate::model::validate_name;
use crate::store::{NamedSpec, SpecKind, Store};

/// A template or a rule, as submitted.
#[derive(Debug)]
pub enum Spec {
    /// A named template.
    Template(Box<TemplateSpec>),
    /// A rule.
    Rule(Box<RuleSpec>),
}

impl Spec {
    /// Which kind of spec this is.
    pub fn kind(&self) -> SpecKind {
        match self {
            Self::Template(_) => SpecKind::Template,
            Self::Rule(_) => SpecKind::Rule,
        }
    }

    /// Parses a spec of `kind` from JSON text (the CLI reads files).
    pub fn parse(kind: SpecKind, text: &str) -> Result<Self> {
        let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("invalid JSON: {e}"));
        Ok(match kind {
            SpecKind::Template => {
                Self::Template(Box::new(serde_json::from_str(text).map_err(invalid)?))
            }
            SpecKind::Rule => Self::Rule(serde_json::from_str(text).map_err(invalid)?),
        })
    }
}

/// Validates `spec` (its templates compile and render a sample; a rule's named template
/// exists) and stores it as `name`. Returns the stored spec and whether it was new.
pub async fn put_spec(
    store: &Store,
    app_id: &str,
    name: &str,
    spec: &Spec,
) -> Result<(NamedSpec, bool)> {
    validate_name(name)?;
    let text = match spec {
        Spec::Template(t) => {
            t.validate()
                .map_err(|e| ApiError::field(e.field, e.message))?;
            serde_json::to_string(t)
        }
        Spec::Rule(r) => {
            r.validate()
                .map_err(|e| ApiError::field(e.field, e.message))?;
            require_template(store, app_id, &r.template).await?;
            serde_json::to_string(r)
        }
    }
    .map_err(anyhow::Error::from)?;
    Ok(store.put_spec(spec.kind(), app_id, name, &text).await?)
}

/// A reference to a named template must name one of the app's templates; an inline template
/// needs nothing stored. The error names the `template` field.
pub async fn require_template(store: &Store, app_id: &str, template: &TemplateRef) -> Result<()> {
    let TemplateRef::Named(name) = template else {
        return Ok(());
    };
    match store.get_spec(SpecKind::Template, app_id, name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::field(
            "template",
            format!("no template named {name}"),
        )),
    }
}
