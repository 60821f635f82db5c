//! The durable delivery queue: fan-out inserts, lease-based claiming, attempt recording,
//! token pruning, event completion, dead-letter replay and the callback outbox.

use std::collections::HashSet;

use serde::Serialize;

use super::{new_id, now_ms, rfc3339, Event, Store};
use crate::model::JobStatus;

/// A job produced by fan-out.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Rule name that produced it.
    pub rule: Option<String>,
    /// `apns` or `fcm`.
    pub platform: String,
    /// Device token.
    pub token: String,
    /// Serialized job payload (versioned).
    pub job: String,
    /// `Queued`, or `Dead` when rendering failed.
    pub status: JobStatus,
    /// Why it is dead, if it is.
    pub last_reason: Option<String>,
}

/// A job claimed by a worker.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedJob {
    /// Job id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Source event.
    pub event_id: String,
    /// `apns` or `fcm`.
    pub platform: String,
    /// Device token.
    pub token: String,
    /// Serialized payload.
    pub job: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// When the job was created (for max age and pruning cutoffs).
    pub created_at: i64,
    /// When its event was received (for event-to-delivery latency).
    pub event_at: i64,
}

/// A device to prune after an `InvalidToken` outcome.
#[derive(Clone, Debug)]
pub struct Prune {
    /// Only delete the device when it was last registered at or before this time.
    pub cutoff_ms: i64,
    /// Provider reason.
    pub reason: String,
    /// Provider's timestamp (APNs 410), if any.
    pub provider_ts: Option<i64>,
}

/// The result of one attempt, recorded in a batch.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The claimed job.
    pub job: ClaimedJob,
    /// New status.
    pub status: JobStatus,
    /// Outcome label for the attempt log (`delivered`, `retry`, `invalid_token`, `failed`).
    pub outcome: &'static str,
    /// Provider reason.
    pub reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Round-trip time.
    pub latency_ms: i64,
    /// When to try again (queued only).
    pub next_attempt_at: i64,
    /// Prune the device.
    pub prune: Option<Prune>,
}

/// A delivery job as shown by the API.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Job id.
    pub id: String,
    /// Source event.
    pub event_id: String,
    /// Rule that produced it.
    pub rule: Option<String>,
    /// Platform.
    pub platform: String,
    /// Device token.
    pub token: String,
    /// Status.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Next attempt time, unix ms.
    pub next_attempt_at: i64,
    /// Last failure reason.
    pub last_reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
}

/// One recorded attempt.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    /// Attempt number (1-based).
    pub attempt: i64,
    /// Outcome label.
    pub outcome: String,
    /// Provider reason.
    pub reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Round trip in ms.
    pub latency_ms: i64,
    /// When, unix ms.
    pub at: i64,
}

/// A dead letter as a replay needs it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadLetter {
    /// Job id.
    pub id: String,
    /// Source event.
    pub event_id: String,
    /// Rule that produced it (`direct` for a direct send).
    pub rule: Option<String>,
    /// Device token.
    pub token: String,
    /// Serialized payload.
    pub job: String,
}

/// A pruned token, for the API and dashboard.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PrunedRow {
    /// Platform.
    pub platform: String,
    /// Full token (only ever shown redacted).
    pub token: String,
    /// Provider reason.
    pub reason: String,
    /// Provider timestamp.
    pub provider_ts: Option<i64>,
    /// 1 when the device was deleted, 0 when it had re-registered since.
    pub pruned: i64,
    /// When, unix ms.
    pub at: i64,
}

/// A callback waiting to be delivered to an app's backend.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CallbackRow {
    /// Message id (also the Standard Webhooks `webhook-id`).
    pub id: String,
    /// App.
    pub app_id: String,
    /// JSON body.
    pub body: String,
    /// Attempts so far.
    pub attempts: i64,
}

/// How far an event's fan-out got: rules are written in name order, and within a rule the
/// devices in token order. Every rule named before `rule` is done; so is `rule` itself when
/// `after` is `None`, else its devices up to and including token `after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FanOutCursor {
    /// The rule being written (`direct` for a direct send).
    pub rule: String,
    /// The last token written, while the rule is unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One committed step of a fan-out: jobs and the cursor after them.
pub struct FanOutSlice<'a> {
    /// Jobs to write, numbered from the event's `fanout_jobs` on.
    pub jobs: &'a [NewJob],
    /// Progress once they are written.
    pub cursor: &'a FanOutCursor,
}

const DELIVERY_COLUMNS: &str = "id, event_id, rule, platform, token, status, attempts, \
     next_attempt_at, last_reason, provider_id, created_at, updated_at";

impl DeliveryRow {
    /// The API view.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "event_id": self.event_id,
            "rule": self.rule,
            "platform": self.platform,
            "token": self.token,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": (self.status == "queued").then(|| rfc3339(self.next_attempt_at)),
            "last_reason": self.last_reason,
            "provider_id": self.provider_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

impl Store {
    /// Leases up to `limit` received events for fan-out.
    pub async fn claim_events(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<Event>> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let lock = self.skip_locked();
        Ok(sqlx::query_as::<_, Event>(&format!(
            "UPDATE events SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
               SELECT id FROM events WHERE status = 'received' \
               AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY received_at LIMIT $4 {lock}) \
             RETURNING id, app_id, source_id, external_id, event_type, payload, status, \
               received_at, updated_at, direct_rule, fanout_cursor, fanout_jobs"
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(turn.db())
        .await?)
    }

    /// Writes one slice of an event's fan-out in its own transaction: the jobs, the cursor, and
    /// a renewed event lease. Workers can send these jobs at once. `Ok(None)`, with nothing
    /// written, when this instance no longer holds the event's lease; otherwise the number of
    /// jobs the event has after this slice.
    ///
    /// A job's id is its event's id and its sequence number, so an event's jobs are appended
    /// side by side to the primary-key B-tree instead of landing at random places in it. The
    /// numbers cannot collide: they continue from the event's committed `fanout_jobs`, and a
    /// slice commits only while its writer holds the lease.
    pub async fn write_fan_out_slice(
        &self,
        event: &Event,
        owner: &str,
        lease_ms: i64,
        first_seq: i64,
        slice: FanOutSlice<'_>,
    ) -> anyhow::Result<Option<i64>> {
        let cursor = serde_json::to_string(slice.cursor)?;
        let jobs_after = first_seq + slice.jobs.len() as i64;
        let open = slice
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Queued)
            .count() as i64;
        let turn = self.write_turn().await;
        let now = now_ms();
        let mut tx = turn.db().begin().await?;
        // The lease check comes first, so a writer that lost the event writes nothing.
        let held = sqlx::query(
            "UPDATE events SET fanout_cursor = $1, fanout_jobs = $2, lease_until = $3, \
             updated_at = $4, open_jobs = open_jobs + $8 WHERE id = $5 AND status = 'received' \
             AND lease_owner = $6 AND fanout_jobs = $7",
        )
        .bind(&cursor)
        .bind(jobs_after)
        .bind(now + lease_ms)
        .bind(now)
        .bind(&event.id)
        .bind(owner)
        .bind(first_seq)
        .bind(open)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let event_part = event.id.strip_prefix("evt_").unwrap_or(&event.id);
        let mut seq = first_seq;
        for chunk in slice.jobs.chunks(self.rows_per_statement()) {
            let mut sql = String::from(
                "INSERT INTO delivery_jobs (id, app_id, event_id, rule, platform, token, status, job, \
                 attempts, next_attempt_at, last_reason, event_at, created_at, updated_at) VALUES ",
            );
            sql.push_str(&super::values_rows(
                chunk.len(),
                "(?, ?, ?, ?, ?, ?, ?, ?, 0, $1, ?, $2, $1, $1)",
                3,
            ));
            let mut q = sqlx::query(&sql).bind(now).bind(event.received_at);
            for j in chunk {
                seq += 1;
                q = q
                    .bind(format!("job_{event_part}_{seq:08}"))
                    .bind(&event.app_id)
                    .bind(&event.id)
                    .bind(&j.rule)
                    .bind(&j.platform)
                    .bind(&j.token)
                    .bind(j.status.as_str())
                    .bind(&j.job)
                    .bind(&j.last_reason);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(jobs_after))
    }

    /// Ends an event's fan-out: the event is `dispatched`, or `completed` at once when none of
    /// its jobs is left to send (every job was dead on arrival, or already delivered while
    /// later slices were written). False when this instance no longer holds the lease.
    pub async fn finish_fan_out(&self, event_id: &str, owner: &str) -> anyhow::Result<bool> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let mut tx = turn.db().begin().await?;
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
        complete_event_if_done(&mut tx, event_id, 0, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Completes leased events that no rule matched, in one statement.
    pub async fn complete_unmatched(&self, owner: &str, ids: &[String]) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        let now = now_ms();
        for chunk in ids.chunks(self.rows_per_statement()) {
            let placeholders = super::values_rows(chunk.len(), "?", 3);
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

    /// Gives an event back (fan-out failed) so it is tried again after `delay_ms`.
    pub async fn release_event(
        &self,
        event_id: &str,
        owner: &str,
        delay_ms: i64,
    ) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        sqlx::query("UPDATE events SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
            .bind(now_ms() + delay_ms)
            .bind(event_id)
            .bind(owner)
            .execute(turn.db())
            .await?;
        Ok(())
    }

    /// Puts jobs whose lease expired (their worker died) back in the queue.
    pub async fn requeue_expired(&self) -> anyhow::Result<u64> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let r = sqlx::query(&format!(
            "UPDATE delivery_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, \
             updated_at = $1 WHERE id IN (SELECT id FROM delivery_jobs \
             WHERE status = 'in_flight' AND lease_until < $1 {})",
            self.skip_locked()
        ))
        .bind(now)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }

    /// Extends the leases this worker holds, so a slow batch is not taken for a dead one.
    pub async fn renew_leases(&self, owner: &str, lease_ms: i64) -> anyhow::Result<u64> {
        let turn = self.write_turn().await;
        // Rows locked right now are being recorded by this worker; skipping them (PostgreSQL)
        // avoids a lock-order deadlock with that transaction.
        let r = sqlx::query(&format!(
            "UPDATE delivery_jobs SET lease_until = $1 WHERE id IN (SELECT id FROM delivery_jobs \
             WHERE lease_owner = $2 AND status = 'in_flight' {})",
            self.skip_locked()
        ))
        .bind(now_ms() + lease_ms)
        .bind(owner)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }

    /// Claims up to `limit` due jobs under a lease. `updated_at` stays the time of the last
    /// recorded outcome, so a claim moves the job in none of the indexes keyed by it.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<ClaimedJob>> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let lock = self.skip_locked();
        Ok(sqlx::query_as::<_, ClaimedJob>(&format!(
            "UPDATE delivery_jobs SET status = 'in_flight', lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT id FROM delivery_jobs WHERE status = 'queued' \
               AND next_attempt_at <= $3 ORDER BY next_attempt_at LIMIT $4 {lock}) \
             RETURNING id, app_id, event_id, platform, token, job, attempts, created_at, event_at"
        ))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(turn.db())
        .await?)
    }

    /// Returns claimed jobs to the queue untouched (graceful shutdown).
    pub async fn release_jobs(&self, owner: &str, ids: &[String]) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        let mut tx = turn.db().begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE delivery_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in_flight'",
            )
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a batch of attempts in one transaction: job state and attempt log in a few
    /// multi-row statements, then pruning (with the re-registration guard), pruned-token
    /// callbacks and event completion. Returns how many devices were pruned.
    pub async fn record_results(&self, owner: &str, results: &[JobResult]) -> anyhow::Result<u64> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let mut tx = turn.db().begin().await?;
        // Jobs whose lease this worker still holds; a job re-claimed by another instance after
        // our lease expired is theirs now, and their result wins.
        let mut owned: HashSet<String> = HashSet::with_capacity(results.len());
        for chunk in results.chunks(self.rows_per_statement()) {
            let mut sql = String::with_capacity(600 + chunk.len() * 80);
            sql.push_str("WITH v(id, status, attempts, next_at, reason, pid) AS (VALUES ");
            sql.push_str(&super::values_rows(
                chunk.len(),
                "(?, ?, CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?)",
                3,
            ));
            sql.push_str(
                ") UPDATE delivery_jobs SET status = v.status, attempts = v.attempts, \
                 next_attempt_at = v.next_at, last_reason = v.reason, \
                 provider_id = COALESCE(v.pid, delivery_jobs.provider_id), lease_owner = NULL, \
                 lease_until = NULL, updated_at = $1 \
                 FROM v WHERE delivery_jobs.id = v.id AND delivery_jobs.lease_owner = $2 \
                 AND delivery_jobs.status = 'in_flight' RETURNING delivery_jobs.id",
            );
            let mut q = sqlx::query_as::<_, (String,)>(&sql).bind(now).bind(owner);
            for r in chunk {
                q = q
                    .bind(&r.job.id)
                    .bind(r.status.as_str())
                    .bind(r.job.attempts + 1)
                    .bind(r.next_attempt_at)
                    .bind(&r.reason)
                    .bind(&r.provider_id);
            }
            owned.extend(q.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id));
        }
        let mine: Vec<&JobResult> = results
            .iter()
            .filter(|r| owned.contains(&r.job.id))
            .collect();
        for chunk in mine.chunks(self.rows_per_statement()) {
            let mut sql = String::with_capacity(200 + chunk.len() * 80);
            sql.push_str(
                "INSERT INTO delivery_attempts (job_id, app_id, platform, attempt, outcome, \
                 reason, provider_id, latency_ms, at) VALUES ",
            );
            sql.push_str(&super::values_rows(
                chunk.len(),
                "(?, ?, ?, ?, ?, ?, ?, ?, $1)",
                2,
            ));
            let mut q = sqlx::query(&sql).bind(now);
            for r in chunk {
                q = q
                    .bind(&r.job.id)
                    .bind(&r.job.app_id)
                    .bind(&r.job.platform)
                    .bind(r.job.attempts + 1)
                    .bind(r.outcome)
                    .bind(&r.reason)
                    .bind(&r.provider_id)
                    .bind(r.latency_ms);
            }
            q.execute(&mut *tx).await?;
        }
        let mut pruned_count = 0;
        let mut callbacks: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            Default::default();
        for r in &mine {
            let Some(p) = &r.prune else { continue };
            let deleted = sqlx::query(
                "DELETE FROM devices WHERE app_id = $1 AND token = $2 AND updated_at <= $3",
            )
            .bind(&r.job.app_id)
            .bind(&r.job.token)
            .bind(p.cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "INSERT INTO pruned_tokens (id, app_id, platform, token, reason, provider_ts, \
                 pruned, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(new_id("prn"))
            .bind(&r.job.app_id)
            .bind(&r.job.platform)
            .bind(&r.job.token)
            .bind(&p.reason)
            .bind(p.provider_ts)
            .bind(deleted as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if deleted > 0 {
                pruned_count += deleted;
                callbacks
                    .entry(r.job.app_id.clone())
                    .or_default()
                    .push(serde_json::json!({
                        "token": r.job.token,
                        "platform": r.job.platform,
                        "reason": p.reason,
                        "provider_timestamp": p.provider_ts,
                    }));
            }
        }
        for (app_id, tokens) in callbacks {
            let has_url: Option<(Option<String>,)> =
                sqlx::query_as("SELECT callback_url FROM apps WHERE id = $1")
                    .bind(&app_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if !matches!(has_url, Some((Some(_),))) {
                continue;
            }
            let body = serde_json::json!({
                "type": "devices.pruned",
                "timestamp": rfc3339(now),
                "data": {"app_id": app_id, "tokens": tokens},
            });
            sqlx::query(
                "INSERT INTO callback_outbox (id, app_id, body, status, attempts, next_attempt_at, \
                 created_at) VALUES ($1, $2, $3, 'queued', 0, $4, $4)",
            )
            .bind(new_id("msg"))
            .bind(&app_id)
            .bind(body.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Jobs that reached a final status, by event; in a consistent order, so two batches
        // that lock the same events cannot deadlock.
        let mut finished: std::collections::BTreeMap<&str, i64> = Default::default();
        for r in mine.iter().filter(|r| r.status.is_final()) {
            *finished.entry(r.job.event_id.as_str()).or_default() += 1;
        }
        for (event_id, done) in finished {
            complete_event_if_done(&mut tx, event_id, done, now).await?;
        }
        tx.commit().await?;
        Ok(pruned_count)
    }

    /// Deliveries of one event, paginated by id.
    pub async fn event_deliveries(
        &self,
        app_id: &str,
        event_id: &str,
        after: &str,
        limit: u32,
    ) -> anyhow::Result<Vec<DeliveryRow>> {
        Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM delivery_jobs WHERE app_id = $1 AND event_id = $2 \
             AND id > $3 ORDER BY id LIMIT $4"
        ))
        .bind(app_id)
        .bind(event_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deliveries of an app, newest change first, optionally by status.
    pub async fn list_deliveries(
        &self,
        app_id: &str,
        status: Option<JobStatus>,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> anyhow::Result<Vec<DeliveryRow>> {
        let (ts, id) = before.unwrap_or((i64::MAX, ""));
        Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM delivery_jobs WHERE app_id = $1 \
             AND ($2 = '' OR status = $2) \
             AND (updated_at < $3 OR (updated_at = $3 AND id < $4)) \
             ORDER BY updated_at DESC, id DESC LIMIT $5"
        ))
        .bind(app_id)
        .bind(status.map(JobStatus::as_str).unwrap_or(""))
        .bind(ts)
        .bind(if before.is_some() { id } else { "\u{10FFFF}" })
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One delivery with its attempts.
    pub async fn get_delivery(
        &self,
        app_id: &str,
        id: &str,
    ) -> anyhow::Result<Option<(DeliveryRow, Vec<AttemptRow>)>> {
        let row = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM delivery_jobs WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let attempts = sqlx::query_as::<_, AttemptRow>(
            "SELECT attempt, outcome, reason, provider_id, latency_ms, at FROM delivery_attempts \
             WHERE job_id = $1 ORDER BY at, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((row, attempts)))
    }

    /// The app a delivery belongs to (operator endpoints).
    pub async fn delivery_app(&self, id: &str) -> anyhow::Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT app_id FROM delivery_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(a,)| a))
    }

    /// Job counts of an event by status.
    pub async fn event_counts(&self, event_id: &str) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT status, COUNT(*) FROM delivery_jobs WHERE event_id = $1 GROUP BY status",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Job counts by status of several events (a page of a list): `(event_id, status, n)`.
    /// One grouped statement per 500 events, so a page of events costs one query.
    pub async fn events_counts(
        &self,
        event_ids: &[&str],
    ) -> anyhow::Result<Vec<(String, String, i64)>> {
        let mut out = Vec::new();
        for chunk in event_ids.chunks(500) {
            let sql = format!(
                "SELECT event_id, status, COUNT(*) FROM delivery_jobs WHERE event_id IN ({}) \
                 GROUP BY event_id, status",
                super::values_rows(chunk.len(), "?", 1)
            );
            let mut q = sqlx::query_as::<_, (String, String, i64)>(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    /// Dead letters of an app: the listed ones (`ids`), or all matching `event_id`/`since`.
    pub async fn dead_letters(
        &self,
        app_id: &str,
        ids: Option<&[String]>,
        event_id: Option<&str>,
        since_ms: Option<i64>,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        const COLUMNS: &str = "id, event_id, rule, token, job";
        match ids {
            Some(ids) => {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(
                        sqlx::query_as::<_, DeadLetter>(&format!(
                            "SELECT {COLUMNS} FROM delivery_jobs \
                             WHERE app_id = $1 AND id = $2 AND status = 'dead'"
                        ))
                        .bind(app_id)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?,
                    );
                }
                Ok(out)
            }
            None => Ok(sqlx::query_as::<_, DeadLetter>(&format!(
                "SELECT {COLUMNS} FROM delivery_jobs WHERE app_id = $1 AND status = 'dead' \
                 AND ($2 = '' OR event_id = $2) AND updated_at >= $3 ORDER BY id"
            ))
            .bind(app_id)
            .bind(event_id.unwrap_or(""))
            .bind(since_ms.unwrap_or(0))
            .fetch_all(&self.pool)
            .await?),
        }
    }

    /// Re-queues dead letters of an app, each with its new payload when it was rendered again
    /// (`Some`), else as it is. Attempts restart at zero; a job that is no longer dead is left
    /// alone. Returns how many were re-queued.
    pub async fn requeue_dead(
        &self,
        app_id: &str,
        jobs: &[(String, Option<String>)],
    ) -> anyhow::Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let turn = self.write_turn().await;
        // Every statement here writes first: in SQLite's WAL mode a transaction that reads and
        // then writes can fail when another writer commits in between.
        let now = now_ms();
        let mut tx = turn.db().begin().await?;
        const REQUEUE: &str = "UPDATE delivery_jobs SET status = 'queued', attempts = 0, \
             next_attempt_at = $1, updated_at = $1, created_at = $1";
        let mut reopened: std::collections::BTreeMap<String, i64> = Default::default();
        // Jobs keeping their payload go back several to a statement; re-rendered ones one
        // at a time, each with its own payload.
        let (keep, rerendered): (Vec<_>, Vec<_>) = jobs.iter().partition(|(_, p)| p.is_none());
        let keep: Vec<&String> = keep.into_iter().map(|(id, _)| id).collect();
        for chunk in keep.chunks(self.rows_per_statement()) {
            let sql = format!(
                "{REQUEUE} WHERE app_id = $2 AND status = 'dead' AND id IN ({}) \
                 RETURNING event_id",
                super::values_rows(chunk.len(), "?", 3)
            );
            let mut q = sqlx::query_as::<_, (String,)>(&sql).bind(now).bind(app_id);
            for id in chunk {
                q = q.bind(*id);
            }
            for (event_id,) in q.fetch_all(&mut *tx).await? {
                *reopened.entry(event_id).or_default() += 1;
            }
        }
        for (id, payload) in rerendered {
            let requeued = sqlx::query_as::<_, (String,)>(&format!(
                "{REQUEUE}, job = $4 WHERE app_id = $2 AND id = $3 AND status = 'dead' \
                 RETURNING event_id"
            ))
            .bind(now)
            .bind(app_id)
            .bind(id)
            .bind(payload.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((event_id,)) = requeued {
                *reopened.entry(event_id).or_default() += 1;
            }
        }
        let mut total = 0;
        for (event_id, jobs) in reopened {
            sqlx::query(
                "UPDATE events SET open_jobs = open_jobs + $3, updated_at = $1, \
                 status = CASE WHEN status = 'completed' THEN 'dispatched' ELSE status END \
                 WHERE id = $2",
            )
            .bind(now)
            .bind(&event_id)
            .bind(jobs)
            .execute(&mut *tx)
            .await?;
            total += jobs as u64;
        }
        tx.commit().await?;
        Ok(total)
    }

    /// Records why dead letters stay dead after a replay could not render them.
    pub async fn keep_dead(
        &self,
        app_id: &str,
        reasons: &[(String, String)],
    ) -> anyhow::Result<()> {
        if reasons.is_empty() {
            return Ok(());
        }
        let turn = self.write_turn().await;
        let now = now_ms();
        let mut tx = turn.db().begin().await?;
        for (id, reason) in reasons {
            sqlx::query(
                "UPDATE delivery_jobs SET last_reason = $1, updated_at = $2 \
                 WHERE app_id = $3 AND id = $4 AND status = 'dead'",
            )
            .bind(reason)
            .bind(now)
            .bind(app_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Recently pruned tokens of an app, newest first.
    pub async fn recent_pruned(&self, app_id: &str, limit: u32) -> anyhow::Result<Vec<PrunedRow>> {
        Ok(sqlx::query_as::<_, PrunedRow>(
            "SELECT platform, token, reason, provider_ts, pruned, at FROM pruned_tokens \
             WHERE app_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(app_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets (or clears) the app's pruned-token callback; returns the signing secret.
    pub async fn set_callback(
        &self,
        app_id: &str,
        url: Option<&str>,
        secret: Option<&str>,
    ) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        sqlx::query("UPDATE apps SET callback_url = $1, callback_secret = $2 WHERE id = $3")
            .bind(url)
            .bind(secret)
            .bind(app_id)
            .execute(turn.db())
            .await?;
        Ok(())
    }

    /// The app's callback URL and secret, when configured.
    pub async fn callback_target(&self, app_id: &str) -> anyhow::Result<Option<(String, String)>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT callback_url, callback_secret FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some((Some(url), Some(secret))) => Some((url, secret)),
            _ => None,
        })
    }

    /// Due callbacks, leased by pushing their next attempt into the future.
    pub async fn claim_callbacks(
        &self,
        lease_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<CallbackRow>> {
        let turn = self.write_turn().await;
        let now = now_ms();
        let lock = self.skip_locked();
        Ok(sqlx::query_as::<_, CallbackRow>(&format!(
            "UPDATE callback_outbox SET next_attempt_at = $1 WHERE id IN ( \
               SELECT id FROM callback_outbox WHERE status = 'queued' AND next_attempt_at <= $2 \
               ORDER BY next_attempt_at LIMIT $3 {lock}) \
             RETURNING id, app_id, body, attempts"
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(turn.db())
        .await?)
    }

    /// Records a callback attempt: delivered, retried at `retry_at`, or given up.
    pub async fn finish_callback(
        &self,
        id: &str,
        delivered: bool,
        retry_at: Option<i64>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        let status = match (delivered, retry_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "queued",
            (false, None) => "dead",
        };
        sqlx::query(
            "UPDATE callback_outbox SET status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, last_error = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(retry_at.unwrap_or_else(now_ms))
        .bind(error)
        .bind(id)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Callback messages of an app (for the API), newest first.
    pub async fn list_callbacks(
        &self,
        app_id: &str,
        limit: u32,
    ) -> anyhow::Result<Vec<(String, String, String, i64)>> {
        Ok(sqlx::query_as::<_, (String, String, String, i64)>(
            "SELECT id, status, body, attempts FROM callback_outbox WHERE app_id = $1 \
             ORDER BY created_at DESC LIMIT $2",
        )
        .bind(app_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Subtracts `finished` jobs from the event's count of jobs still to send, and completes the
/// event when none is left and its fan-out has ended. One statement on the event row: on
/// PostgreSQL a concurrent transaction recording the event's other jobs waits for the row lock
/// and then applies its own subtraction to the committed count, so no finish is lost and
/// exactly one of them sees zero.
async fn complete_event_if_done(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    event_id: &str,
    finished: i64,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE events SET open_jobs = open_jobs - $3, \
           status = CASE WHEN status = 'dispatched' AND open_jobs - $3 <= 0 \
             THEN 'completed' ELSE status END, \
           updated_at = CASE WHEN status = 'dispatched' AND open_jobs - $3 <= 0 \
             THEN $1 ELSE updated_at END \
         WHERE id = $2",
    )
    .bind(now)
    .bind(event_id)
    .bind(finished)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
