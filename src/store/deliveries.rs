//! The read side of delivery: the delivery log of an app or an event, one delivery with its
//! attempts, job counts per event, and the pruned-token log, as the API and dashboard show
//! them.

use serde::Serialize;

use super::{rfc3339, values_rows, Store};
use crate::model::AttemptOutcome;
use crate::model::{JobStatus, Platform};

/// A delivery job as shown by the API.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Job id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Source event.
    pub event_id: String,
    /// Rule that produced it.
    pub rule: Option<String>,
    /// Platform.
    pub platform: Platform,
    /// Device token.
    pub token: String,
    /// Status.
    pub status: JobStatus,
    /// Attempts so far.
    pub attempts: i64,
    /// Next attempt time, unix ms.
    pub next_attempt_at: i64,
    /// Why it waits for a later due time, if it was given one.
    pub hold: Option<crate::model::policy::Hold>,
    /// Last failure reason.
    pub last_reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
    /// When the provider last answered, unix ms (none before that, or for jobs recorded before
    /// this was kept).
    pub answered_at: Option<i64>,
    /// The round trip of that answer, ms.
    pub latency_ms: Option<i64>,
}

/// One recorded attempt.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    /// Attempt number (1-based).
    pub attempt: i64,
    /// What came of it.
    pub outcome: AttemptOutcome,
    /// Provider reason.
    pub reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Round trip in ms.
    pub latency_ms: i64,
    /// When, unix ms.
    pub at: i64,
}

/// A pruned token, for the API and dashboard.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PrunedRow {
    /// The app of the device.
    pub app_id: String,
    /// Platform.
    pub platform: Platform,
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

const DELIVERY_COLUMNS: &str = "id, app_id, event_id, rule, platform, token, status, attempts, \
     next_attempt_at, hold, last_reason, provider_id, created_at, updated_at, answered_at, latency_ms";

impl DeliveryRow {
    /// The job's attempts: those `logged`, and a first try that delivered, which is kept on
    /// the job's own row instead of in the log.
    pub fn attempt_log(&self, mut logged: Vec<AttemptRow>) -> Vec<AttemptRow> {
        let delivered_logged = logged
            .iter()
            .any(|a| a.outcome == AttemptOutcome::Delivered);
        if self.status == JobStatus::Delivered && self.attempts == 1 && !delivered_logged {
            if let (Some(at), Some(latency_ms)) = (self.answered_at, self.latency_ms) {
                logged.push(AttemptRow {
                    attempt: 1,
                    outcome: AttemptOutcome::Delivered,
                    reason: None,
                    provider_id: self.provider_id.clone(),
                    latency_ms,
                    at,
                });
            }
        }
        logged
    }

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
            "next_attempt_at": (self.status == JobStatus::Queued)
                .then(|| rfc3339(self.next_attempt_at)),
            "last_reason": self.last_reason,
            "provider_id": self.provider_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

impl Store {
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
        let attempts = row.attempt_log(attempts);
        Ok(Some((row, attempts)))
    }

    /// The stored payload of a delivery (the worker's `JobPayload` as JSON text).
    pub async fn delivery_payload(&self, app_id: &str, id: &str) -> anyhow::Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT job FROM delivery_jobs WHERE app_id = $1 AND id = $2")
                .bind(app_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(job,)| job))
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
    pub async fn event_counts(&self, event_id: &str) -> anyhow::Result<Vec<(JobStatus, i64)>> {
        Ok(sqlx::query_as::<_, (JobStatus, i64)>(
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
    ) -> anyhow::Result<Vec<(String, JobStatus, i64)>> {
        let mut out = Vec::new();
        for chunk in event_ids.chunks(500) {
            let sql = format!(
                "SELECT event_id, status, COUNT(*) FROM delivery_jobs WHERE event_id IN ({}) \
                 GROUP BY event_id, status",
                values_rows(chunk.len(), "?", 1)
            );
            let mut q = sqlx::query_as::<_, (String, JobStatus, i64)>(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    /// Recently pruned tokens of an app (`None`: of every app), newest first.
    pub async fn recent_pruned(
        &self,
        app_id: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<PrunedRow>> {
        // Two statements, so each reads its index (by app, or by time) newest first.
        const COLUMNS: &str = "app_id, platform, token, reason, provider_ts, pruned, at";
        let limit = i64::from(limit);
        let rows = match app_id {
            Some(app_id) => {
                sqlx::query_as::<_, PrunedRow>(&format!(
                    "SELECT {COLUMNS} FROM pruned_tokens WHERE app_id = $1 \
                     ORDER BY at DESC LIMIT $2"
                ))
                .bind(app_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as::<_, PrunedRow>(&format!(
                    "SELECT {COLUMNS} FROM pruned_tokens ORDER BY at DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// The latest dead letters of an app (`None`: of every app), newest first.
    pub async fn recent_dead_letters(
        &self,
        app_id: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<DeliveryRow>> {
        let Some(app_id) = app_id else {
            return Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM delivery_jobs WHERE status = 'dead' \
                 ORDER BY updated_at DESC, id DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?);
        };
        self.list_deliveries(app_id, Some(JobStatus::Dead), None, limit)
            .await
    }
}
