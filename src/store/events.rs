//! Received events: committed before the webhook is answered, deduplicated per source.

use serde::Serialize;
use serde_json::Value;

use super::{new_id, now_ms, rfc3339, Store};

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Stored, not yet fanned out.
    Received,
    /// Delivery jobs created.
    Dispatched,
    /// Every job reached a final state.
    Completed,
}

impl EventStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Dispatched => "dispatched",
            Self::Completed => "completed",
        }
    }
}

/// A stored event.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Event {
    /// `evt_...` identifier.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// The source it came through (none for direct sends or deleted sources).
    pub source_id: Option<String>,
    /// The sender's id for deduplication.
    pub external_id: Option<String>,
    /// Event type, e.g. `payment.succeeded`.
    pub event_type: String,
    /// JSON body text.
    pub payload: String,
    /// Lifecycle status.
    pub status: String,
    /// Received, unix ms.
    pub received_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
    /// Audience and template of a direct send (JSON rule), instead of the app's rules.
    pub direct_rule: Option<String>,
}

/// The API view of an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    id: String,
    /// The webhook source; null for direct sends.
    source_id: Option<String>,
    /// The sender's own event id, used for deduplication.
    external_id: Option<String>,
    event_type: String,
    /// `received`, `dispatched` or `completed`.
    status: String,
    /// RFC 3339.
    received_at: String,
    /// RFC 3339.
    updated_at: String,
    /// The JSON payload; only when reading a single event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    payload: Option<Value>,
}

impl Event {
    /// API view; the payload only when asked for (single-event reads).
    pub fn view(&self, with_payload: bool) -> EventView {
        EventView {
            id: self.id.clone(),
            source_id: self.source_id.clone(),
            external_id: self.external_id.clone(),
            event_type: self.event_type.clone(),
            status: self.status.clone(),
            received_at: rfc3339(self.received_at),
            updated_at: rfc3339(self.updated_at),
            payload: with_payload
                .then(|| serde_json::from_str(&self.payload).unwrap_or(Value::Null)),
        }
    }
}

/// Input for storing an event.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    /// Owning app.
    pub app_id: &'a str,
    /// Source, if any.
    pub source_id: Option<&'a str>,
    /// Sender's event id, if any.
    pub external_id: Option<&'a str>,
    /// Event type.
    pub event_type: &'a str,
    /// Raw JSON body text.
    pub payload: &'a str,
    /// Rule of a direct send.
    pub direct_rule: Option<&'a str>,
}

/// Result of storing an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventInsert {
    /// New event with this id.
    Accepted(String),
    /// The source already sent this id; here is the original event id.
    Duplicate(String),
}

const EVENT_COLUMNS: &str = "id, app_id, source_id, external_id, event_type, payload, status, \
     received_at, updated_at, direct_rule";

impl Store {
    /// Stores an event unless the same source already sent the same external id.
    pub async fn insert_event(&self, new: &NewEvent<'_>) -> anyhow::Result<EventInsert> {
        let now = now_ms();
        let id = new_id("evt");
        let inserted: Option<(String,)> = sqlx::query_as(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
             ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id"
        ))
        .bind(&id)
        .bind(new.app_id)
        .bind(new.source_id)
        .bind(new.external_id)
        .bind(new.event_type)
        .bind(new.payload)
        .bind(EventStatus::Received.as_str())
        .bind(now)
        .bind(new.direct_rule)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((id,)) = inserted {
            return Ok(EventInsert::Accepted(id));
        }
        let (original,): (String,) =
            sqlx::query_as("SELECT id FROM events WHERE source_id = $1 AND external_id = $2")
                .bind(new.source_id)
                .bind(new.external_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(EventInsert::Duplicate(original))
    }

    /// One event of an app.
    pub async fn get_event(&self, app_id: &str, id: &str) -> anyhow::Result<Option<Event>> {
        Ok(sqlx::query_as::<_, Event>(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Newest events first; `before` is the (received_at, id) of the last row already seen.
    pub async fn list_events(
        &self,
        app_id: &str,
        event_type: Option<&str>,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> anyhow::Result<Vec<Event>> {
        let (before_ts, before_id) = before.unwrap_or((i64::MAX, ""));
        Ok(sqlx::query_as::<_, Event>(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE app_id = $1 \
             AND ($2 = '' OR event_type = $2) \
             AND (received_at < $3 OR (received_at = $3 AND ($4 = '' OR id < $4))) \
             ORDER BY received_at DESC, id DESC LIMIT $5"
        ))
        .bind(app_id)
        .bind(event_type.unwrap_or(""))
        .bind(before_ts)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }
}
