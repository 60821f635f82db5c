//! Direct sends: a notification to users, tokens or devices without a webhook or a rule. It
//! is stored as an event carrying its own rule, so it takes exactly the path a webhook's event
//! takes: durable accept, fan-out, queue, retry.

use serde_json::{Map, Value};

use super::specs::require_template;
use crate::error::{ApiError, Result};
use crate::model::policy::SendPolicy;
use crate::model::rules::{Audience, RuleSpec, TemplateRef};
use crate::store::{EventInsert, EventWriter, IncomingEvent, Store};

/// Event type recorded for a direct send that names none.
pub const DEFAULT_EVENT_TYPE: &str = "notification.direct";

/// What a direct send asks for.
#[derive(Debug)]
pub struct DirectSend {
    /// Who receives it.
    pub audience: Audience,
    /// What it says.
    pub template: TemplateRef,
    /// The template's `event`.
    pub data: Map<String, Value>,
    /// The event type recorded ([`DEFAULT_EVENT_TYPE`] when none).
    pub event_type: Option<String>,
    /// When and how it goes out.
    pub delivery: SendPolicy,
}

/// Validates and stores a direct send as an event carrying its own rule, committed with the
/// other events arriving meanwhile (`events`). Returns the event id. Errors name the API's
/// fields (`to`, `template`).
pub async fn enqueue_direct(
    store: &Store,
    events: &EventWriter,
    app_id: &str,
    send: DirectSend,
) -> Result<String> {
    let DirectSend {
        audience,
        template,
        data,
        event_type,
        delivery,
    } = send;
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
    let inserted = events
        .insert(IncomingEvent {
            app_id: app_id.to_string(),
            source_id: None,
            external_id: None,
            event_type,
            payload,
            direct_rule: Some(rule_text),
            traceparent,
        })
        .await?;
    let (EventInsert::Accepted(id) | EventInsert::Duplicate(id)) = inserted;
    Ok(id)
}
