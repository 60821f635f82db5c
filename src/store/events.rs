//! Received events: committed before the webhook is answered, deduplicated per source.

use super::{new_id, Store};
use crate::model::EventStatus;

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
    pub status: EventStatus,
    /// Received, unix ms.
    pub received_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
    /// Audience and template of a direct send (JSON rule), instead of the app's rules.
    pub direct_rule: Option<String>,
    /// Where a fan-out cut short stopped (see [`super::FanOutCursor`]); none before it starts.
    #[sqlx(default)]
    pub fanout_cursor: Option<String>,
    /// Jobs its fan-out has committed so far (the next job's sequence number).
    #[sqlx(default)]
    pub fanout_jobs: i64,
    /// W3C `traceparent` of the span that accepted it, while traces are exported.
    #[sqlx(default)]
    pub traceparent: Option<String>,
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
    /// W3C `traceparent` of the accepting span, while traces are exported.
    pub traceparent: Option<&'a str>,
}

/// Result of storing an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventInsert {
    /// New event with this id.
    Accepted(String),
    /// The source already sent this id; here is the original event id.
    Duplicate(String),
}

pub(super) const EVENT_COLUMNS: &str =
    "id, app_id, source_id, external_id, event_type, payload, status, \
     received_at, updated_at, direct_rule";

impl Store {
    /// Stores an event unless the same source already sent the same external id.
    pub async fn insert_event(&self, new: &NewEvent<'_>) -> anyhow::Result<EventInsert> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let id = new_id("evt");
        let inserted: Option<(String,)> = sqlx::query_as(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id"
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
        .bind(new.traceparent)
        .fetch_optional(turn.db())
        .await?;
        if let Some((id,)) = inserted {
            return Ok(EventInsert::Accepted(id));
        }
        let (original,): (String,) =
            sqlx::query_as("SELECT id FROM events WHERE source_id = $1 AND external_id = $2")
                .bind(new.source_id)
                .bind(new.external_id)
                .fetch_one(turn.db())
                .await?;
        Ok(EventInsert::Duplicate(original))
    }

    /// One event of an app.
    pub async fn get_event(&self, app_id: &str, id: &str) -> anyhow::Result<Option<Event>> {
        Ok(sqlx::query_as::<_, Event>(&format!(
            "SELECT {EVENT_COLUMNS}, traceparent FROM events WHERE app_id = $1 AND id = $2"
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

/// An event to store, owned so it can wait in the group-commit queue.
#[derive(Clone, Debug)]
pub struct IncomingEvent {
    /// Owning app.
    pub app_id: String,
    /// Source, if any.
    pub source_id: Option<String>,
    /// Sender's event id, if any.
    pub external_id: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Raw JSON body text.
    pub payload: String,
    /// Rule of a direct send.
    pub direct_rule: Option<String>,
    /// W3C `traceparent` of the accepting span, while traces are exported.
    pub traceparent: Option<String>,
}

type Reply = tokio::sync::oneshot::Sender<Result<EventInsert, String>>;

/// Group commit for incoming events: requests that arrive while a write is in progress share
/// the next transaction, so the database sees one commit per batch instead of one per
/// webhook. Each caller still gets its answer only after its event is committed.
#[derive(Clone, Debug)]
pub struct EventWriter {
    queue: tokio::sync::mpsc::Sender<(IncomingEvent, Reply)>,
}

/// Events written per transaction at most.
const WRITE_BATCH: usize = 256;

impl EventWriter {
    /// Starts the writer task; it ends when every `EventWriter` clone is dropped.
    pub fn spawn(store: Store) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(IncomingEvent, Reply)>(4 * WRITE_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                let (events, replies): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut batch).into_iter().unzip();
                match store.insert_events(&events).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        let message = format!("{e:#}");
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Stores one event (deduplicated per source) and returns once it is committed.
    pub async fn insert(&self, event: IncomingEvent) -> anyhow::Result<EventInsert> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send((event, reply))
            .await
            .map_err(|_| anyhow::anyhow!("event writer stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("event writer stopped"))?
            .map_err(anyhow::Error::msg)
    }
}

impl Store {
    /// Stores several events in one transaction with one multi-row insert; duplicates (same
    /// source and external id, also within the batch) resolve to the original event.
    pub async fn insert_events(
        &self,
        events: &[IncomingEvent],
    ) -> anyhow::Result<Vec<EventInsert>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let ids: Vec<String> = events.iter().map(|_| new_id("evt")).collect();
        let mut tx = turn.begin().await?;
        let mut inserted: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (chunk, chunk_ids) in events
            .chunks(self.rows_per_statement())
            .zip(ids.chunks(self.rows_per_statement()))
        {
            let mut sql = super::statement::Statement::new(
                self.backend(),
                &format!("INSERT INTO events ({EVENT_COLUMNS}, traceparent) VALUES "),
            );
            sql.rows(chunk.iter().zip(chunk_ids), |row, (e, id)| {
                row.bind(id.as_str())
                    .bind(e.app_id.as_str())
                    .bind(e.source_id.as_deref())
                    .bind(e.external_id.as_deref())
                    .bind(e.event_type.as_str())
                    .bind(e.payload.as_str())
                    .raw("'received'")
                    .bind(now)
                    .bind(now)
                    .bind(e.direct_rule.as_deref())
                    .bind(e.traceparent.as_deref());
            });
            sql.push(" ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id");
            let (text, args) = sql.finish()?;
            let q = sqlx::query_as_with::<_, (String,), _>(&text, args);
            inserted.extend(q.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id));
        }
        let mut out = Vec::with_capacity(events.len());
        for (e, id) in events.iter().zip(ids) {
            if inserted.contains(&id) {
                out.push(EventInsert::Accepted(id));
            } else {
                let (original,): (String,) = sqlx::query_as(
                    "SELECT id FROM events WHERE source_id = $1 AND external_id = $2",
                )
                .bind(&e.source_id)
                .bind(&e.external_id)
                .fetch_one(&mut *tx)
                .await?;
                out.push(EventInsert::Duplicate(original));
            }
        }
        tx.commit().await?;
        Ok(out)
    }
}
