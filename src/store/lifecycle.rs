//! An event's way through the pipeline after it is stored: leased for fan-out, given back
//! when fan-out fails, `dispatched` once its jobs are written, `completed` when none is left
//! to send, and reopened when a replay puts its dead letters back in the queue.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use super::events::EVENT_COLUMNS;
use super::rollups::Rollup;
use super::statement::Statement;
use super::{values_rows, Backend, Event, Store};
use crate::model::{EventStatus, JobStatus};

impl Store {
    /// Leases up to `limit` received events for fan-out.
    pub async fn claim_events(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<Event>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let lock = self.skip_locked();
        Ok(sqlx::query_as::<_, Event>(&format!(
            "UPDATE events SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
               SELECT id FROM events WHERE status = 'received' \
               AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY received_at LIMIT $4 {lock}) \
             RETURNING {EVENT_COLUMNS}, fanout_cursor, fanout_jobs, traceparent"
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(turn.db())
        .await?)
    }

    /// Ends an event's fan-out: the event is `dispatched`, or `completed` at once when none of
    /// its jobs is left to send (every job was dead on arrival, or already delivered while
    /// later slices were written). False when this instance no longer holds the lease.
    pub async fn finish_fan_out(&self, event_id: &str, owner: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let moved = sqlx::query(
            "UPDATE events SET status = 'dispatched', updated_at = $1, lease_owner = NULL, \
             lease_until = NULL, fanout_cursor = NULL WHERE id = $2 AND status = 'received' \
             AND lease_owner = $3",
        )
        .bind(now)
        .bind(event_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        complete_events_if_done(&mut tx, self.backend(), &[(event_id, 0)], now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Completes leased events that no rule matched, in one statement.
    pub async fn complete_unmatched(&self, owner: &str, ids: &[String]) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        for chunk in ids.chunks(self.rows_per_statement()) {
            let placeholders = values_rows(chunk.len(), "?", 3);
            let sql = format!(
                "UPDATE events SET status = 'completed', updated_at = $1, lease_owner = NULL, \
                 lease_until = NULL WHERE lease_owner = $2 AND status = 'received' AND id IN ({})",
                placeholders
            );
            let mut q = sqlx::query(&sql).bind(now).bind(owner);
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(turn.db()).await?;
        }
        Ok(())
    }

    /// Cancels an event of `app_id`: its fan-out stops (a writer still holding its lease
    /// finds it gone and writes nothing more), and every job not sent yet ends `cancelled`;
    /// jobs being sent right now finish, and one of them that would be retried ends
    /// `cancelled` instead. Returns how many jobs it cancelled, or `None` when the app has no
    /// such event.
    pub async fn cancel_event(&self, app_id: &str, event_id: &str) -> anyhow::Result<Option<u64>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let found = sqlx::query(
            "UPDATE events SET cancelled_at = COALESCE(cancelled_at, $1), updated_at = $1, \
             status = CASE WHEN status = 'received' THEN 'dispatched' ELSE status END, \
             lease_owner = NULL, lease_until = NULL, fanout_cursor = NULL \
             WHERE id = $2 AND app_id = $3",
        )
        .bind(now)
        .bind(event_id)
        .bind(app_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if found == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let cancelled = sqlx::query(
            "UPDATE delivery_jobs SET status = 'cancelled', updated_at = $1, \
             last_reason = 'its event was cancelled' WHERE event_id = $2 AND status = 'queued'",
        )
        .bind(now)
        .bind(event_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        complete_events_if_done(
            &mut tx,
            self.backend(),
            &[(event_id, cancelled as i64)],
            now,
        )
        .await?;
        let mut rollup = Rollup::default();
        rollup.finished(app_id, now, JobStatus::Cancelled, cancelled as i64);
        rollup.write(self, &mut tx).await?;
        tx.commit().await?;
        Ok(Some(cancelled))
    }

    /// Gives an event back (fan-out failed) so it is tried again after `delay_ms`.
    pub async fn release_event(
        &self,
        event_id: &str,
        owner: &str,
        delay_ms: i64,
    ) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        sqlx::query("UPDATE events SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
            .bind(self.now() + delay_ms)
            .bind(event_id)
            .bind(owner)
            .execute(turn.db())
            .await?;
        Ok(())
    }
}

/// Subtracts from each event's count of jobs to send its jobs that reached a final status
/// (`finished`: event id and how many; zero to check only), completes the dispatched ones
/// whose count reaches zero, and tells those completions to the app's endpoints. One
/// statement per few hundred events rather than one per event.
pub(super) async fn complete_events_if_done(
    conn: &mut AnyConnection,
    backend: Backend,
    finished: &[(&str, i64)],
    now: i64,
) -> anyhow::Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = finished.iter().map(|(id, _)| *id).collect();
    lock_events(conn, backend, &ids).await?;
    let mut completed: Vec<String> = Vec::new();
    for chunk in finished.chunks(EVENTS_PER_STATEMENT) {
        let mut sql = Statement::new(
            backend,
            "UPDATE events SET open_jobs = open_jobs - v.column2, \
               status = CASE WHEN status = 'dispatched' AND open_jobs - v.column2 <= 0 \
                 THEN 'completed' ELSE status END, \
               updated_at = CASE WHEN status = 'dispatched' AND open_jobs - v.column2 <= 0 \
                 THEN ",
        );
        sql.bind(now)
            .push(" ELSE updated_at END FROM (VALUES ")
            .rows(chunk, |row, (id, n)| {
                row.bind_as(*id, "TEXT").bind_as(*n, "BIGINT");
            })
            .push(") AS v WHERE events.id = v.column1 RETURNING id, status");
        let (text, args) = sql.finish()?;
        for (id, status) in sqlx::query_as_with::<_, (String, String), _>(&text, args)
            .fetch_all(&mut *conn)
            .await?
        {
            if status == EventStatus::Completed.as_str() {
                completed.push(id);
            }
        }
    }
    super::outbox::tell_completed(conn, backend, &completed, now).await
}

/// On PostgreSQL, locks the events' rows in id order before a statement updates several of
/// them, so two transactions that update the same events cannot deadlock (a multi-row
/// update takes its row locks in the order of its plan). SQLite writers take turns anyway.
pub(super) async fn lock_events(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&str],
) -> anyhow::Result<()> {
    if backend != Backend::Postgres || ids.len() < 2 {
        return Ok(());
    }
    for chunk in ids.chunks(EVENTS_PER_STATEMENT) {
        let mut sql = Statement::new(backend, "SELECT id FROM events WHERE id IN (");
        sql.list(chunk.iter().copied())
            .push(") ORDER BY id FOR UPDATE");
        let (text, args) = sql.finish()?;
        sqlx::query_with(&text, args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Events per multi-row statement on events.
pub(super) const EVENTS_PER_STATEMENT: usize = 500;

/// Adds jobs put back in the queue to their events' count of jobs to send, reopening a
/// completed event. Returns how many jobs were added in all.
pub(super) async fn reopen_events(
    conn: &mut AnyConnection,
    reopened: &BTreeMap<String, i64>,
    now: i64,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for (event_id, jobs) in reopened {
        sqlx::query(
            "UPDATE events SET open_jobs = open_jobs + $3, updated_at = $1, completion_told = 0, \
             status = CASE WHEN status = 'completed' THEN 'dispatched' ELSE status END \
             WHERE id = $2",
        )
        .bind(now)
        .bind(event_id)
        .bind(*jobs)
        .execute(&mut *conn)
        .await?;
        total += *jobs as u64;
    }
    Ok(total)
}
