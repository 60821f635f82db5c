//! The endpoint outbox: messages to apps' event endpoints, written in the transaction of the
//! change they report (one row per subscribed endpoint), claimed under a lease and delivered
//! by the worker; the log of every attempt; and the read, replay and disable operations on
//! them.

use std::collections::{BTreeSet, HashMap};

use sqlx::AnyConnection;

use super::statement::Statement;
use super::{new_id, values_rows, Backend, Store};
use crate::model::event_type::{EndpointOutcome, EventType, MessageStatus};
use crate::model::JobStatus;

/// A message claimed for delivery.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedMessage {
    /// Message id (also the Standard Webhooks `webhook-id`).
    pub id: String,
    /// Its endpoint.
    pub endpoint_id: String,
    /// App.
    pub app_id: String,
    /// JSON body.
    pub body: String,
    /// Attempts so far.
    pub attempts: i64,
}

/// A message as the API lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    /// Message id.
    pub id: String,
    /// Its type.
    pub event_type: EventType,
    /// Where it is.
    pub status: MessageStatus,
    /// Attempts so far.
    pub attempts: i64,
    /// JSON body.
    pub body: String,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Next attempt, unix ms (pending only).
    pub next_attempt_at: i64,
}

/// One attempt as the log holds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptLogRow {
    /// Attempt id.
    pub id: String,
    /// Its message.
    pub message_id: String,
    /// Unix ms.
    pub at: i64,
    /// Succeeded or failed.
    pub outcome: EndpointOutcome,
    /// HTTP status, when there was an answer.
    pub response_code: Option<i64>,
    /// The first bytes of the answer.
    pub response_body: Option<String>,
    /// Why there was no (good) answer.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// One attempt to record.
#[derive(Clone, Debug)]
pub struct AttemptRecord<'a> {
    /// Succeeded or failed.
    pub outcome: EndpointOutcome,
    /// HTTP status, when there was an answer.
    pub response_code: Option<u16>,
    /// The first bytes of the answer.
    pub response_body: Option<&'a str>,
    /// Why it failed.
    pub error: Option<&'a str>,
    /// How long it took, ms.
    pub duration_ms: i64,
}

/// What becomes of the message after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageNext {
    /// Delivered.
    Delivered,
    /// Try again at this time, unix ms.
    RetryAt(i64),
    /// Failed for good.
    Failed,
}

impl Store {
    /// The event types the enabled endpoints of each of `app_ids` subscribed to.
    pub async fn subscriptions(
        &self,
        app_ids: &[&str],
    ) -> anyhow::Result<HashMap<String, BTreeSet<EventType>>> {
        let mut out: HashMap<String, BTreeSet<EventType>> = HashMap::new();
        for chunk in app_ids.chunks(self.rows_per_statement()) {
            let sql = format!(
                "SELECT app_id, events FROM event_endpoints WHERE enabled = 1 AND app_id IN ({})",
                values_rows(chunk.len(), "?", 1)
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (app, events) in q.fetch_all(&self.pool).await? {
                let events: Vec<EventType> = serde_json::from_str(&events).map_err(|e| {
                    anyhow::anyhow!("app {app}: stored event types unreadable: {e}")
                })?;
                out.entry(app).or_default().extend(events);
            }
        }
        Ok(out)
    }

    /// Queues `body` of `event_type` to every subscribed endpoint of `app_id`.
    pub async fn enqueue_message(
        &self,
        app_id: &str,
        event_type: EventType,
        body: &str,
    ) -> anyhow::Result<usize> {
        let now = self.now();
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let n = enqueue(&mut tx, app_id, event_type, body, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Queues `body` to endpoint `endpoint_id` only, whatever it subscribed to (test sends).
    /// Returns the message id.
    pub async fn enqueue_to_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        event_type: EventType,
        body: &str,
    ) -> anyhow::Result<String> {
        let now = self.now();
        let mut turn = self.write_turn().await?;
        let id = insert_message(turn.db(), endpoint_id, app_id, event_type, body, now).await?;
        Ok(id)
    }

    /// Due messages, except those of the endpoints in `skip`, leased by pushing their next
    /// attempt into the future.
    pub async fn claim_messages(
        &self,
        lease_ms: i64,
        limit: i64,
        skip: &[String],
    ) -> anyhow::Result<Vec<ClaimedMessage>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let lock = self.skip_locked();
        let skipping = if skip.is_empty() {
            String::new()
        } else {
            format!(
                "AND endpoint_id NOT IN ({})",
                values_rows(skip.len(), "?", 5)
            )
        };
        let sql = format!(
            "UPDATE endpoint_messages SET next_attempt_at = $1 WHERE id IN ( \
               SELECT id FROM endpoint_messages WHERE status = $2 AND next_attempt_at <= $3 \
               {skipping} ORDER BY next_attempt_at LIMIT $4 {lock}) \
             RETURNING id, endpoint_id, app_id, body, attempts"
        );
        let mut q = sqlx::query_as::<_, ClaimedMessage>(&sql)
            .bind(now + lease_ms)
            .bind(MessageStatus::Pending)
            .bind(now)
            .bind(limit);
        for id in skip {
            q = q.bind(id);
        }
        Ok(q.fetch_all(turn.db()).await?)
    }

    /// Gives a claimed message back unattempted, due at `at`.
    pub async fn release_message(&self, id: &str, at: i64) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "UPDATE endpoint_messages SET next_attempt_at = $1 WHERE id = $2 AND status = $3",
        )
        .bind(at)
        .bind(id)
        .bind(MessageStatus::Pending)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Records an attempt, the message's next step and the endpoint's failure run, in one
    /// transaction. Returns when the endpoint's current run of failures began (`None` after
    /// a success).
    pub async fn record_endpoint_attempt(
        &self,
        message: &ClaimedMessage,
        attempt: &AttemptRecord<'_>,
        next: MessageNext,
    ) -> anyhow::Result<Option<i64>> {
        let now = self.now();
        let (status, next_at, finished) = match next {
            MessageNext::Delivered => (MessageStatus::Delivered, now, Some(now)),
            MessageNext::RetryAt(at) => (MessageStatus::Pending, at, None),
            MessageNext::Failed => (MessageStatus::Failed, now, Some(now)),
        };
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        sqlx::query(
            "INSERT INTO endpoint_attempts (id, message_id, endpoint_id, at, outcome, \
             response_code, response_body, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(new_id("att"))
        .bind(&message.id)
        .bind(&message.endpoint_id)
        .bind(now)
        .bind(attempt.outcome)
        .bind(attempt.response_code.map(i64::from))
        .bind(attempt.response_body)
        .bind(attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE endpoint_messages SET status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, last_error = $3, finished_at = $4 WHERE id = $5",
        )
        .bind(status)
        .bind(next_at)
        .bind(attempt.error)
        .bind(finished)
        .bind(&message.id)
        .execute(&mut *tx)
        .await?;
        let succeeded = attempt.outcome == EndpointOutcome::Succeeded;
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "UPDATE event_endpoints SET failing_since = CASE WHEN $1 = 1 THEN NULL \
             ELSE COALESCE(failing_since, $2) END WHERE id = $3 RETURNING failing_since",
        )
        .bind(i64::from(succeeded))
        .bind(now)
        .bind(&message.endpoint_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.and_then(|(since,)| since))
    }

    /// Disables an endpoint that failed for too long: its pending messages fail, and
    /// `notice(app_id, url)` (an `endpoint.disabled` body) goes to the app's other subscribed endpoints.
    /// False when it was disabled already.
    pub async fn disable_failing_endpoint(
        &self,
        endpoint_id: &str,
        reason: &str,
        notice: impl FnOnce(&str, &str) -> anyhow::Result<String>,
    ) -> anyhow::Result<bool> {
        let now = self.now();
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let row: Option<(String, String)> = sqlx::query_as(
            "UPDATE event_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 \
             WHERE id = $3 AND enabled = 1 RETURNING app_id, url",
        )
        .bind(reason)
        .bind(now)
        .bind(endpoint_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((app_id, url)) = row else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE endpoint_messages SET status = $1, last_error = $2, finished_at = $3 \
             WHERE endpoint_id = $4 AND status = $5",
        )
        .bind(MessageStatus::Failed)
        .bind("endpoint disabled")
        .bind(now)
        .bind(endpoint_id)
        .bind(MessageStatus::Pending)
        .execute(&mut *tx)
        .await?;
        let body = notice(&app_id, &url)?;
        enqueue(&mut tx, &app_id, EventType::EndpointDisabled, &body, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Messages of an endpoint, newest first, optionally of one status.
    pub async fn endpoint_messages(
        &self,
        endpoint_id: &str,
        status: Option<MessageStatus>,
        limit: u32,
    ) -> anyhow::Result<Vec<MessageRow>> {
        Ok(sqlx::query_as::<_, MessageRow>(
            "SELECT id, event_type, status, attempts, body, last_error, created_at, \
             next_attempt_at FROM endpoint_messages WHERE endpoint_id = $1 \
             AND ($2 IS NULL OR status = $2) ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(endpoint_id)
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Attempts to an endpoint, newest first, optionally of one message.
    pub async fn endpoint_attempts(
        &self,
        endpoint_id: &str,
        message_id: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<AttemptLogRow>> {
        Ok(sqlx::query_as::<_, AttemptLogRow>(
            "SELECT id, message_id, at, outcome, response_code, response_body, error, \
             duration_ms FROM endpoint_attempts WHERE endpoint_id = $1 \
             AND ($2 IS NULL OR message_id = $2) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(endpoint_id)
        .bind(message_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queues again every failed message of the endpoint created at or after `since`, with
    /// a fresh retry schedule. Returns how many.
    pub async fn recover_messages(&self, endpoint_id: &str, since: i64) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(
            "UPDATE endpoint_messages SET status = $1, attempts = 0, next_attempt_at = $2, \
             finished_at = NULL WHERE endpoint_id = $3 AND status = $4 AND created_at >= $5",
        )
        .bind(MessageStatus::Pending)
        .bind(self.now())
        .bind(endpoint_id)
        .bind(MessageStatus::Failed)
        .bind(since)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }

    /// Queues one message of the endpoint again, whatever became of it; false when there is
    /// no such message.
    pub async fn resend_message(
        &self,
        endpoint_id: &str,
        message_id: &str,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(
            "UPDATE endpoint_messages SET status = $1, attempts = 0, next_attempt_at = $2, \
             finished_at = NULL WHERE endpoint_id = $3 AND id = $4",
        )
        .bind(MessageStatus::Pending)
        .bind(self.now())
        .bind(endpoint_id)
        .bind(message_id)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// A message body in the Standard Webhooks shape: type, timestamp and data.
pub fn message_body(event_type: EventType, at_ms: i64, data: serde_json::Value) -> String {
    serde_json::json!({"type": event_type, "timestamp": super::rfc3339(at_ms), "data": data})
        .to_string()
}

/// Whether the stored event-type list `events` holds `event_type`. An unreadable list
/// subscribes to nothing; it is reported when the endpoint is read.
fn subscribes(events: &str, event_type: EventType) -> bool {
    serde_json::from_str::<Vec<EventType>>(events).is_ok_and(|list| list.contains(&event_type))
}

/// Queues `body` of `event_type` to every enabled endpoint of `app_id` subscribed to it,
/// inside the caller's transaction. For a batched type `body` is a JSON array of items,
/// gathered until a batch is due ([`Store::flush_gathered`]). Returns how many rows were
/// written.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    app_id: &str,
    event_type: EventType,
    body: &str,
    now: i64,
) -> anyhow::Result<usize> {
    if event_type.is_batched() {
        let count = serde_json::from_str::<Vec<serde_json::Value>>(body)
            .map_err(|e| {
                anyhow::anyhow!(
                    "items of a {} batch are not a JSON array: {e}",
                    event_type.as_str()
                )
            })?
            .len();
        sqlx::query(
            "INSERT INTO endpoint_gathering (id, app_id, event_type, items, item_count, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id("gat"))
        .bind(app_id)
        .bind(event_type)
        .bind(body)
        .bind(count as i64)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        return Ok(1);
    }
    send_to_subscribers(conn, app_id, event_type, body, now).await
}

/// Writes a message of `body` for every enabled endpoint of `app_id` subscribed to
/// `event_type`.
async fn send_to_subscribers(
    conn: &mut AnyConnection,
    app_id: &str,
    event_type: EventType,
    body: &str,
    now: i64,
) -> anyhow::Result<usize> {
    let endpoints: Vec<(String, String)> =
        sqlx::query_as("SELECT id, events FROM event_endpoints WHERE app_id = $1 AND enabled = 1")
            .bind(app_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut written = 0;
    for (endpoint_id, events) in endpoints {
        if subscribes(&events, event_type) {
            insert_message(&mut *conn, &endpoint_id, app_id, event_type, body, now).await?;
            written += 1;
        }
    }
    Ok(written)
}

/// Writes `event.completed` for events that have just completed, once per completion, when
/// their app has an endpoint subscribed: the counts by final status. The events are marked
/// told in one statement, and each app's endpoints are read once.
pub(super) async fn tell_completed(
    conn: &mut AnyConnection,
    backend: Backend,
    event_ids: &[String],
    now: i64,
) -> anyhow::Result<()> {
    let mut told: Vec<(String, String)> = Vec::new();
    for chunk in event_ids.chunks(super::lifecycle::EVENTS_PER_STATEMENT) {
        let mut sql = Statement::new(
            backend,
            "UPDATE events SET completion_told = 1 WHERE status = 'completed' \
             AND completion_told = 0 AND id IN (",
        );
        sql.list(chunk.iter().map(String::as_str))
            .push(") RETURNING id, app_id");
        let (text, args) = sql.finish()?;
        told.extend(
            sqlx::query_as_with::<_, (String, String), _>(&text, args)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    // In id order: the messages are written in a stable order, whatever order the rows came in.
    told.sort_unstable();
    let mut subscribed: HashMap<String, bool> = HashMap::new();
    for (event_id, app_id) in told {
        let any = match subscribed.get(&app_id) {
            Some(any) => *any,
            None => {
                let endpoints: Vec<(String,)> = sqlx::query_as(
                    "SELECT events FROM event_endpoints WHERE app_id = $1 AND enabled = 1",
                )
                .bind(&app_id)
                .fetch_all(&mut *conn)
                .await?;
                let any = endpoints
                    .iter()
                    .any(|(events,)| subscribes(events, EventType::EventCompleted));
                subscribed.insert(app_id.clone(), any);
                any
            }
        };
        if !any {
            continue;
        }
        let counts: Vec<(JobStatus, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM delivery_jobs WHERE event_id = $1 GROUP BY status",
        )
        .bind(&event_id)
        .fetch_all(&mut *conn)
        .await?;
        let deliveries: serde_json::Map<String, serde_json::Value> = counts
            .into_iter()
            .map(|(status, n)| (status.as_str().to_string(), n.into()))
            .collect();
        let data = serde_json::json!({"app_id": app_id, "event_id": event_id,
            "completed_at": super::rfc3339(now), "deliveries": deliveries});
        let body = message_body(EventType::EventCompleted, now, data);
        send_to_subscribers(conn, &app_id, EventType::EventCompleted, &body, now).await?;
    }
    Ok(())
}

/// How gathered items become messages.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Items per message at most.
    pub max_items: usize,
    /// How long the oldest item may wait for a batch to fill, ms.
    pub max_wait_ms: i64,
}

impl Store {
    /// Turns gathered items into messages: every full batch, and the rest once its oldest
    /// item has waited `max_wait_ms`. Returns the messages written.
    pub async fn flush_gathered(&self, limits: BatchLimits) -> anyhow::Result<usize> {
        let now = self.now();
        let groups: Vec<(String, EventType, i64, i64)> = sqlx::query_as(
            "SELECT app_id, event_type, CAST(SUM(item_count) AS BIGINT), MIN(created_at) \
             FROM endpoint_gathering \
             GROUP BY app_id, event_type",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut written = 0;
        for (app_id, event_type, count, oldest) in groups {
            if (count as usize) < limits.max_items && now - oldest < limits.max_wait_ms {
                continue;
            }
            let mut turn = self.write_turn().await?;
            let mut tx = turn.begin().await?;
            written += flush_group(&mut tx, &app_id, event_type, limits, now).await?;
            tx.commit().await?;
        }
        Ok(written)
    }
}

/// Takes every gathered row of one app and type (so two instances cannot both send them)
/// and writes its messages; items of a batch not yet due go back, with their oldest time.
async fn flush_group(
    conn: &mut AnyConnection,
    app_id: &str,
    event_type: EventType,
    limits: BatchLimits,
    now: i64,
) -> anyhow::Result<usize> {
    let mut rows: Vec<(String, i64)> = sqlx::query_as(
        "DELETE FROM endpoint_gathering WHERE app_id = $1 AND event_type = $2 \
         RETURNING items, created_at",
    )
    .bind(app_id)
    .bind(event_type)
    .fetch_all(&mut *conn)
    .await?;
    rows.sort_by_key(|(_, at)| *at);
    let mut items: Vec<(serde_json::Value, i64)> = Vec::new();
    for (text, at) in rows {
        let list: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        items.extend(list.into_iter().map(|item| (item, at)));
    }
    let mut written = 0;
    for chunk in items.chunks(limits.max_items.max(1)) {
        let oldest = chunk[0].1;
        if chunk.len() < limits.max_items && now - oldest < limits.max_wait_ms {
            let rest: Vec<&serde_json::Value> = chunk.iter().map(|(item, _)| item).collect();
            sqlx::query(
                "INSERT INTO endpoint_gathering (id, app_id, event_type, items, item_count, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id("gat"))
            .bind(app_id)
            .bind(event_type)
            .bind(serde_json::to_string(&rest)?)
            .bind(rest.len() as i64)
            .bind(oldest)
            .execute(&mut *conn)
            .await?;
            continue;
        }
        let batch: Vec<&serde_json::Value> = chunk.iter().map(|(item, _)| item).collect();
        let body = message_body(
            event_type,
            now,
            serde_json::json!({"app_id": app_id, "deliveries": batch}),
        );
        written += send_to_subscribers(&mut *conn, app_id, event_type, &body, now).await?;
    }
    Ok(written)
}

async fn insert_message<'c, E>(
    conn: E,
    endpoint_id: &str,
    app_id: &str,
    event_type: EventType,
    body: &str,
    now: i64,
) -> anyhow::Result<String>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let id = new_id("msg");
    sqlx::query(
        "INSERT INTO endpoint_messages (id, endpoint_id, app_id, event_type, body, status, \
         attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7)",
    )
    .bind(&id)
    .bind(endpoint_id)
    .bind(app_id)
    .bind(event_type)
    .bind(body)
    .bind(MessageStatus::Pending)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}
