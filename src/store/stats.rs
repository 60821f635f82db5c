//! Delivery statistics over time windows (every final state, sent or withheld by a delivery
//! policy) and the queue (what waits, and why), per app or across all apps.

use serde::Serialize;

use super::rollups::{minute_of, quantile_of};
use super::Store;
use crate::model::AttemptOutcome;

/// Figures for one window.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct WindowStats {
    /// Window length in seconds.
    pub window_secs: i64,
    /// Deliveries that reached a final state in the window: sent or not (the seven counts
    /// below add up to it).
    pub finished: i64,
    /// Of those, delivered.
    pub delivered: i64,
    /// Of those, dead letters.
    pub dead: i64,
    /// Of those, rejected tokens.
    pub invalid: i64,
    /// Of those, not sent: the user had reached a frequency cap.
    pub capped: i64,
    /// Of those, not sent: a newer delivery with the same collapse key replaced it.
    pub superseded: i64,
    /// Of those, not sent: expired before it could be sent.
    pub expired: i64,
    /// Of those, not sent: its event was cancelled.
    pub cancelled: i64,
    /// `delivered / (delivered + dead + invalid)`: the deliveries a policy withheld (capped,
    /// superseded, expired, cancelled) were never tried and do not count; 1.0 when nothing
    /// was tried.
    pub success_rate: f64,
    /// Provider attempts in the window.
    pub attempts: i64,
    /// Mean provider round trip of delivered attempts, ms.
    pub avg_latency_ms: f64,
    /// 95th percentile provider round trip of delivered attempts, ms.
    pub p95_latency_ms: i64,
    /// Failed attempts (retries included) by outcome and reason.
    pub failures: Vec<FailureCount>,
    /// Devices pruned in the window.
    pub pruned_tokens: i64,
}

/// Deliveries that reached each final state in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FinalCounts {
    delivered: i64,
    dead: i64,
    invalid: i64,
    capped: i64,
    superseded: i64,
    expired: i64,
    cancelled: i64,
}

impl FinalCounts {
    /// Every final delivery, sent or withheld.
    fn finished(&self) -> i64 {
        self.tried() + self.capped + self.superseded + self.expired + self.cancelled
    }

    /// The deliveries that were tried: delivered, dead or invalid.
    fn tried(&self) -> i64 {
        self.delivered + self.dead + self.invalid
    }

    /// Delivered of those tried; 1.0 when none was.
    fn success_rate(&self) -> f64 {
        match self.tried() {
            0 => 1.0,
            tried => self.delivered as f64 / tried as f64,
        }
    }
}

/// The per-minute sums a window needs besides its final counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MinuteSums {
    attempts: i64,
    delivered_attempts: i64,
    latency_sum_ms: i64,
    pruned: i64,
}

/// Provider round trips of the delivered attempts in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Latency {
    attempts: i64,
    avg_ms: f64,
    p95_ms: i64,
}

/// Failed attempts of one kind.
#[derive(Clone, Debug, Serialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
pub struct FailureCount {
    /// `retry`, `failed` or `invalid_token`.
    pub outcome: AttemptOutcome,
    /// Provider reason.
    pub reason: String,
    /// How many.
    pub count: i64,
}

/// One point of the throughput series.
#[derive(Clone, Debug, Serialize, PartialEq, sqlx::FromRow)]
pub struct SeriesPoint {
    /// Bucket start, unix ms.
    pub at: i64,
    /// Delivered attempts in the bucket.
    pub delivered: i64,
    /// Other attempts in the bucket.
    pub failed: i64,
}

/// Queue figures.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct QueueStats {
    /// Jobs waiting: due now or later (`scheduled` and `held` included).
    pub queued: i64,
    /// Of those, waiting for a later time their policy set (`send_at`, `delay`,
    /// `deliver_at_local`).
    pub scheduled: i64,
    /// Of those, held until the end of the device's quiet hours.
    pub held: i64,
    /// Jobs being sent.
    pub in_flight: i64,
    /// Dead letters waiting for a replay.
    pub dead: i64,
    /// Age of the oldest due job, seconds.
    pub oldest_due_age_secs: f64,
}

impl Store {
    /// Stats for the window of `window_secs` ending at `now`, read from the per-minute
    /// figures: it starts at the beginning of the minute `now - window_secs` falls in.
    /// `app_id` None means all apps.
    pub async fn window_stats(
        &self,
        app_id: Option<&str>,
        now: i64,
        window_secs: i64,
    ) -> anyhow::Result<WindowStats> {
        let since = minute_of(now - window_secs * 1000);
        let app = app_id.unwrap_or("");
        let (sums, counts) = self.minute_sums(app, since, now).await?;
        let latency = self.latency(app, since, now, &sums).await?;
        let failures = sqlx::query_as::<_, FailureCount>(
            "SELECT outcome, reason, CAST(SUM(count) AS BIGINT) AS count \
             FROM stats_failure_minutes WHERE ($1 = '' OR app_id = $1) \
             AND minute >= $2 AND minute <= $3 \
             GROUP BY outcome, reason ORDER BY SUM(count) DESC, outcome, reason",
        )
        .bind(app)
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(WindowStats {
            window_secs,
            finished: counts.finished(),
            delivered: counts.delivered,
            dead: counts.dead,
            invalid: counts.invalid,
            capped: counts.capped,
            superseded: counts.superseded,
            expired: counts.expired,
            cancelled: counts.cancelled,
            success_rate: counts.success_rate(),
            attempts: latency.attempts,
            avg_latency_ms: latency.avg_ms,
            p95_latency_ms: latency.p95_ms,
            failures,
            pruned_tokens: sums.pruned,
        })
    }

    /// The per-minute figures of `app` (`""`: every app) from the minute `since` to `now`,
    /// added up.
    async fn minute_sums(
        &self,
        app: &str,
        since: i64,
        now: i64,
    ) -> anyhow::Result<(MinuteSums, FinalCounts)> {
        let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(delivered), 0) AS BIGINT), \
               CAST(COALESCE(SUM(dead), 0) AS BIGINT), \
               CAST(COALESCE(SUM(invalid), 0) AS BIGINT), \
               CAST(COALESCE(SUM(capped), 0) AS BIGINT), \
               CAST(COALESCE(SUM(superseded), 0) AS BIGINT), \
               CAST(COALESCE(SUM(expired), 0) AS BIGINT), \
               CAST(COALESCE(SUM(cancelled), 0) AS BIGINT), \
               CAST(COALESCE(SUM(attempts), 0) AS BIGINT), \
               CAST(COALESCE(SUM(delivered_attempts), 0) AS BIGINT), \
               CAST(COALESCE(SUM(latency_sum_ms), 0) AS BIGINT), \
               CAST(COALESCE(SUM(pruned), 0) AS BIGINT) \
             FROM stats_minutes WHERE ($1 = '' OR app_id = $1) AND minute >= $2 AND minute <= $3",
        )
        .bind(app)
        .bind(since)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let counts = FinalCounts {
            delivered: row.0,
            dead: row.1,
            invalid: row.2,
            capped: row.3,
            superseded: row.4,
            expired: row.5,
            cancelled: row.6,
        };
        let sums = MinuteSums {
            attempts: row.7,
            delivered_attempts: row.8,
            latency_sum_ms: row.9,
            pruned: row.10,
        };
        Ok((sums, counts))
    }

    /// Attempts of `app` (`""`: every app) from the minute `since` to `now`, and the mean and
    /// 95th percentile (to its histogram bucket's bound) round trip of the delivered ones.
    async fn latency(
        &self,
        app: &str,
        since: i64,
        now: i64,
        sums: &MinuteSums,
    ) -> anyhow::Result<Latency> {
        if sums.delivered_attempts == 0 {
            return Ok(Latency {
                attempts: sums.attempts,
                ..Latency::default()
            });
        }
        let buckets: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT le_ms, CAST(SUM(count) AS BIGINT) FROM stats_latency_minutes \
             WHERE ($1 = '' OR app_id = $1) AND minute >= $2 AND minute <= $3 \
             GROUP BY le_ms ORDER BY le_ms",
        )
        .bind(app)
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(Latency {
            attempts: sums.attempts,
            avg_ms: sums.latency_sum_ms as f64 / sums.delivered_attempts as f64,
            p95_ms: quantile_of(&buckets, 0.95),
        })
    }

    /// Attempts per `bucket_secs` bucket (a whole number of minutes) from the minute `since`
    /// on, oldest first; buckets without attempts are left out.
    pub async fn throughput_series(
        &self,
        app_id: Option<&str>,
        since: i64,
        bucket_secs: i64,
    ) -> anyhow::Result<Vec<SeriesPoint>> {
        let bucket = bucket_secs * 1000;
        Ok(sqlx::query_as::<_, SeriesPoint>(
            "SELECT (minute / $3) * $3 AS at, \
               CAST(SUM(delivered_attempts) AS BIGINT) AS delivered, \
               CAST(SUM(attempts - delivered_attempts) AS BIGINT) AS failed \
             FROM stats_minutes WHERE ($1 = '' OR app_id = $1) AND minute >= $2 \
             GROUP BY (minute / $3) * $3 HAVING SUM(attempts) > 0 ORDER BY 1",
        )
        .bind(app_id.unwrap_or(""))
        .bind(minute_of(since))
        .bind(bucket)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queue depth and the age of the oldest due job.
    pub async fn queue_stats(&self, app_id: Option<&str>, now: i64) -> anyhow::Result<QueueStats> {
        let app = app_id.unwrap_or("");
        // One subquery per status, so each reads only its partial index. The scheduled and
        // held counts read the queued jobs' index too, as the queued count does.
        let (queued, scheduled, held, in_flight, dead): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT \
                   (SELECT COUNT(*) FROM delivery_jobs WHERE status = 'queued' \
                     AND ($1 = '' OR app_id = $1)), \
                   (SELECT COUNT(*) FROM delivery_jobs WHERE status = 'queued' \
                     AND hold = 'scheduled' AND next_attempt_at > $2 \
                     AND ($1 = '' OR app_id = $1)), \
                   (SELECT COUNT(*) FROM delivery_jobs WHERE status = 'queued' \
                     AND hold = 'quiet_hours' AND next_attempt_at > $2 \
                     AND ($1 = '' OR app_id = $1)), \
                   (SELECT COUNT(*) FROM delivery_jobs WHERE status = 'in_flight' \
                     AND ($1 = '' OR app_id = $1)), \
                   (SELECT COUNT(*) FROM delivery_jobs WHERE status = 'dead' \
                     AND ($1 = '' OR app_id = $1))",
        )
        .bind(app)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let (oldest,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(next_attempt_at) AS t FROM delivery_jobs WHERE status = 'queued' \
                 AND next_attempt_at <= $2 AND ($1 = '' OR app_id = $1) \
               UNION ALL \
               SELECT MIN(next_attempt_at) AS t FROM delivery_jobs WHERE status = 'in_flight' \
                 AND ($1 = '' OR app_id = $1)) AS due",
        )
        .bind(app)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let oldest_due_age_secs = oldest
            .map(|t| ((now - t).max(0) as f64) / 1000.0)
            .unwrap_or(0.0);
        Ok(QueueStats {
            queued,
            scheduled,
            held,
            in_flight,
            dead,
            oldest_due_age_secs,
        })
    }

    /// Event-to-delivery times (ms) of an event's delivered jobs, ascending.
    pub async fn delivery_latencies(&self, event_id: &str) -> anyhow::Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT updated_at - event_at FROM delivery_jobs WHERE event_id = $1 \
             AND status = 'delivered' ORDER BY 1",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// For each delivered job of an event, ms: how long after the event it was created (the
    /// fan-out's wait), how long after that the provider accepted it (the queue's wait and
    /// the send), and how long after that its result was recorded (the recorder's wait).
    pub async fn delivery_phases(&self, event_id: &str) -> anyhow::Result<Vec<DeliveryPhases>> {
        Ok(sqlx::query_as(
            "SELECT created_at - event_at AS fan_out_ms, answered_at - created_at AS sent_ms, \
               updated_at - answered_at AS recorded_ms \
             FROM delivery_jobs \
             WHERE event_id = $1 AND status = 'delivered' AND answered_at IS NOT NULL",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Where a delivered job's time went, ms (see [`Store::delivery_phases`]).
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct DeliveryPhases {
    /// From the event to its job being written.
    pub fan_out_ms: i64,
    /// From the job being written to the provider accepting it.
    pub sent_ms: i64,
    /// From the provider accepting it to its result being recorded.
    pub recorded_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::FinalCounts;

    #[test]
    fn withheld_deliveries_finish_but_do_not_lower_the_success_rate() {
        let counts = FinalCounts {
            delivered: 8,
            dead: 1,
            invalid: 1,
            capped: 2,
            superseded: 3,
            expired: 4,
            cancelled: 5,
        };
        assert_eq!(counts.finished(), 24);
        assert!((counts.success_rate() - 0.8).abs() < 1e-12);
        let withheld_only = FinalCounts {
            expired: 3,
            ..FinalCounts::default()
        };
        assert_eq!(withheld_only.finished(), 3);
        assert_eq!(withheld_only.success_rate(), 1.0);
        assert_eq!(FinalCounts::default().success_rate(), 1.0);
    }
}
