//! Direct sends: a notification to users, tokens or devices without a webhook or a rule. It
//! is stored as an event carrying its own rule, so it takes exactly the path a webhook's event
//! takes: durable accept, fan-out, queue, retry.

use serde_json::{Map, Value};

use super::specs::require_template;
use crate::error::{ApiError, Result};
use crate::model::policy::SendPolicy;
use crate::model::rules::{Audience, RuleSpec, TemplateRef};
use crate::store::{EventInsert, NewEvent, Store};

/// Event type recorded for a direct send that names none.
pub const DEFAULT_EVENT_TYPE: &str = "notification.direct";

/// Validates and stores a direct send as an event carrying its own rule. Returns the event
/// id. Errors name the API's fields (`to`, `template`).
pub async fn enqueue_direct(
    store: &Store,
    app_id: &str,
    audience: Audience,
    template: TemplateRef,
    data: Map<String, Value>,
    event_type: Option<String>,
    delivery: SendPolicy,
) -> Result<String> {
    let event_type = event_type.unwrap_or_else(|| DEFAULT_EVENT_TYPE.into());
    let rule = RuleSpec {
        event: event_type.clone(),
        condition: None,
        audience,
        template,
        enabled: true,
        delivery,
        unknown: Map::new(),
    };
    rule.validate().map_err(|e| {
        let field = e.field.replace("audience.", "to.");
        ApiError::field(field, e.message)
    })?;
    require_template(store, app_id, &rule.template).await?;
    let rule_text = serde_json::to_string(&rule).map_err(anyhow::Error::from)?;
    let payload = Value::Object(data).to_string();
    let traceparent = crate::telemetry::traceparent(&tracing::Span::current());
    let inserted = store
        .insert_event(&NewEvent {
            app_id,
            source_id: None,
            external_id: None,
            event_type: &event_type,
            payload: &payload,
            direct_rule: Some(&rule_text),
            traceparent: traceparent.as_deref(),
        })
        .await?;
    let (EventInsert::Accepted(id) | EventInsert::Duplicate(id)) = inserted;
    Ok(id)
}
