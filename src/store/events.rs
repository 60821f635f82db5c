//! Received events: committed before the webhook is answered, deduplicated per source.

use super::{new_id, Handing, Store};
use crate::model::EventStatus;
use crate::worker::handoff::Handoff;

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

/// Where an [`EventWriter`] tells this instance's fan-out about the events it stored.
pub(crate) struct FanOutFeed {
    /// Wakes the fan-out for events left in the queue.
    pub(crate) wake: std::sync::Arc<tokio::sync::Notify>,
    /// Takes events written leased to this instance's fan-out, with their lease's owner
    /// and length (none: no fan-out runs beside the writer, every event is queued).
    pub(crate) handoff: Option<(Handoff<Event>, String, i64)>,
}

/// Group commit for incoming events: requests that arrive while a write is in progress share
/// the next transaction, so the database sees one commit per batch instead of one per
/// webhook. Each caller still gets its answer only after its event is committed.
///
/// Fed to a fan-out, the writer leases the events it stores to that fan-out as it writes them,
/// as many as the fan-out has room for, and hands them over: they are fanned out without
/// being claimed back from the queue. A handed event is as durable as a claimed one: its
/// lease expires if this instance dies, and the fan-out gives back at shutdown what it did
/// not take. The others wait in the queue, and the fan-out is woken for them.
#[derive(Clone, Debug)]
pub struct EventWriter {
    queue: tokio::sync::mpsc::Sender<(IncomingEvent, Reply)>,
}

/// Events written per transaction at most.
const WRITE_BATCH: usize = 256;

impl EventWriter {
    /// Starts a writer that leaves every event in the queue for whichever fan-out claims it;
    /// it ends when every `EventWriter` clone is dropped.
    pub fn spawn(store: Store) -> Self {
        Self::spawn_feeding(store, None)
    }

    /// Starts a writer that tells `feed` about the events it stores (see [`EventWriter`]).
    pub(crate) fn spawn_feeding(store: Store, feed: Option<FanOutFeed>) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(IncomingEvent, Reply)>(4 * WRITE_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                let (events, replies): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut batch).into_iter().unzip();
                let handoff = feed.as_ref().and_then(|f| f.handoff.as_ref());
                let room = handoff.map(|(to, _, _)| to.room(events.len()));
                let (owner, handing) = match (handoff, &room) {
                    (Some((_, owner, lease_ms)), Some(room)) => (
                        owner.as_str(),
                        Handing {
                            max: room.len(),
                            lease_ms: *lease_ms,
                        },
                    ),
                    _ => ("", Handing::default()),
                };
                match store.insert_events(&events, owner, handing).await {
                    Ok(inserted) => {
                        let queued = inserted
                            .results
                            .iter()
                            .filter(|r| matches!(r, EventInsert::Accepted(_)))
                            .count()
                            > inserted.handed.len();
                        if let Some(room) = room {
                            room.hand(inserted.handed);
                        }
                        if let (true, Some(feed)) = (queued, &feed) {
                            feed.wake.notify_one();
                        }
                        for (reply, result) in replies.into_iter().zip(inserted.results) {
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

/// What a write of incoming events did.
#[derive(Debug, Default)]
pub struct EventsInserted {
    /// Per incoming event, in order: stored, or the original of a duplicate.
    pub results: Vec<EventInsert>,
    /// The stored events written leased to the writer (see [`Handing`]), in order.
    pub handed: Vec<Event>,
}

impl Store {
    /// Stores several events in one transaction with one multi-row insert; duplicates (same
    /// source and external id, also within the batch) resolve to the original event. The first
    /// `handing.max` events are written leased to `owner`; those of them stored (not
    /// duplicates) come back to be handed to its fan-out.
    pub async fn insert_events(
        &self,
        events: &[IncomingEvent],
        owner: &str,
        handing: Handing,
    ) -> anyhow::Result<EventsInserted> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let ids: Vec<String> = events.iter().map(|_| new_id("evt")).collect();
        let leased = |i: usize| i < handing.max;
        let lease_until = now + handing.lease_ms;
        let mut tx = turn.begin().await?;
        let mut inserted: std::collections::HashSet<String> = std::collections::HashSet::new();
        let rows = self.rows_per_statement();
        for (n, (chunk, chunk_ids)) in events.chunks(rows).zip(ids.chunks(rows)).enumerate() {
            let mut sql = super::statement::Statement::new(
                self.backend(),
                &format!(
                    "INSERT INTO events ({EVENT_COLUMNS}, traceparent, lease_owner, lease_until) \
                     VALUES "
                ),
            );
            let first = n * rows;
            sql.rows(
                chunk.iter().zip(chunk_ids).enumerate(),
                |row, (i, (e, id))| {
                    let leased = leased(first + i);
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
                        .bind(e.traceparent.as_deref())
                        .bind(leased.then_some(owner))
                        .bind(leased.then_some(lease_until));
                },
            );
            sql.push(" ON CONFLICT (source_id, external_id) DO NOTHING RETURNING id");
            let (text, args) = sql.finish()?;
            let q = sqlx::query_as_with::<_, (String,), _>(&text, args);
            inserted.extend(q.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id));
        }
        let mut out = EventsInserted {
            results: Vec::with_capacity(events.len()),
            handed: Vec::with_capacity(handing.max),
        };
        for (i, (e, id)) in events.iter().zip(ids).enumerate() {
            if inserted.contains(&id) {
                if leased(i) {
                    out.handed.push(Event {
                        id: id.clone(),
                        app_id: e.app_id.clone(),
                        source_id: e.source_id.clone(),
                        external_id: e.external_id.clone(),
                        event_type: e.event_type.clone(),
                        payload: e.payload.clone(),
                        status: EventStatus::Received,
                        received_at: now,
                        updated_at: now,
                        direct_rule: e.direct_rule.clone(),
                        fanout_cursor: None,
                        fanout_jobs: 0,
                        traceparent: e.traceparent.clone(),
                    });
                }
                out.results.push(EventInsert::Accepted(id));
            } else {
                let (original,): (String,) = sqlx::query_as(
                    "SELECT id FROM events WHERE source_id = $1 AND external_id = $2",
                )
                .bind(&e.source_id)
                .bind(&e.external_id)
                .fetch_one(&mut *tx)
                .await?;
                out.results.push(EventInsert::Duplicate(original));
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Gives back events written leased to `owner` that its fan-out never took (shutdown):
    /// they wait in the queue for the next claim.
    pub async fn release_handed_events(&self, owner: &str, ids: &[String]) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        for chunk in ids.chunks(self.rows_per_statement()) {
            let sql = format!(
                "UPDATE events SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $1 AND status = 'received' AND id IN ({})",
                super::values_rows(chunk.len(), "?", 2)
            );
            let mut q = sqlx::query(&sql).bind(owner);
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(turn.db()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::source::NewSource;

    fn incoming(app: &str, source: &str, external: &str) -> IncomingEvent {
        IncomingEvent {
            app_id: app.into(),
            source_id: Some(source.into()),
            external_id: Some(external.into()),
            event_type: "payment.succeeded".into(),
            payload: format!(r#"{{"id":"{external}"}}"#),
            direct_rule: None,
            traceparent: None,
        }
    }

    /// The first `max` events are written leased and come back to be handed over, except a
    /// duplicate among them; the rest wait in the queue for a claim, and so do handed events
    /// given back.
    #[tokio::test]
    async fn handed_events_are_written_leased_and_the_rest_queued() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let keyring = crate::secrets::keyring_for(&Default::default(), &url).expect("keyring");
        let store = Store::connect(&url, 2, keyring).await.expect("connect");
        store.migrate().await.expect("migrate");
        let app = store.create_app("a").await.expect("app").app.id;
        let source = store
            .create_source(
                &app,
                &NewSource {
                    name: "pay".into(),
                    scheme: crate::signature::Scheme::Stripe,
                    secrets: vec!["whsec_test".into()],
                    event_type_path: None,
                    allowed_cidrs: vec![],
                },
            )
            .await
            .expect("source")
            .id;
        let original = store
            .insert_events(&[incoming(&app, &source, "e0")], "", Handing::default())
            .await
            .expect("first write");
        assert!(original.handed.is_empty(), "nothing handed without room");
        let batch = [
            incoming(&app, &source, "e0"),
            incoming(&app, &source, "e1"),
            incoming(&app, &source, "e2"),
            incoming(&app, &source, "e3"),
        ];
        let handing = Handing {
            max: 3,
            lease_ms: 60_000,
        };
        let written = store
            .insert_events(&batch, "me", handing)
            .await
            .expect("write");
        let EventInsert::Accepted(first) = &original.results[0] else {
            panic!("the first write stores its event");
        };
        assert_eq!(written.results[0], EventInsert::Duplicate(first.clone()));
        let ids: Vec<String> = written
            .results
            .iter()
            .map(|r| match r {
                EventInsert::Accepted(id) | EventInsert::Duplicate(id) => id.clone(),
            })
            .collect();
        let handed: Vec<&str> = written.handed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(handed, [ids[1].as_str(), ids[2].as_str()]);
        // A handed event is the stored one, as a claim would return it.
        let stored = store
            .get_event(&app, &ids[1])
            .await
            .expect("read")
            .expect("event");
        let e = &written.handed[0];
        assert_eq!(
            (
                &e.payload,
                e.external_id.as_deref(),
                e.received_at,
                e.status
            ),
            (
                &stored.payload,
                Some("e1"),
                stored.received_at,
                EventStatus::Received
            )
        );
        let claim = || async {
            let mut ids: Vec<String> = store
                .claim_events("other", 60_000, 10)
                .await
                .expect("claim")
                .into_iter()
                .map(|e| e.id)
                .collect();
            ids.sort();
            ids
        };
        let mut queued = vec![ids[0].clone(), ids[3].clone()];
        queued.sort();
        assert_eq!(
            claim().await,
            queued,
            "the original and the one beyond the room"
        );
        store
            .release_handed_events("me", &[ids[2].clone()])
            .await
            .expect("release");
        assert_eq!(claim().await, [ids[2].clone()], "given back, claimed again");
    }
}
