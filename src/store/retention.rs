//! Deleting rows past their retention: one table-driven list of what ages out (each entry
//! a kind and one shared-dialect `DELETE` of at most a batch), and on SQLite giving the
//! freed pages back to the file system. The store deletes what it is told; the worker's
//! retention task decides when and how old.

use super::{Backend, Store};

/// What the sweeper removes; the `kind` label of `pushbridge_retention_swept_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionKind {
    /// Jobs that will not be sent again (delivered, invalid, withheld), with their attempts.
    DeliveredJobs,
    /// Dead-lettered jobs, with their attempts.
    DeadLetters,
    /// Completed events none of whose jobs is left.
    Events,
    /// Messages delivered to apps' event endpoints, with their attempts.
    SentCallbacks,
    /// Messages to event endpoints that failed for good, with their attempts.
    DeadCallbacks,
    /// Devices pruned (soft-deleted) on a provider's word.
    PrunedDevices,
    /// The log of tokens a provider called invalid (the stats' and dashboard's list).
    PrunedTokens,
    /// `Idempotency-Key`s past their expiry (swept by their own time, not a setting).
    IdempotencyKeys,
    /// Per-minute delivery figures (the stats windows and series read at most a day).
    StatsMinutes,
}

impl RetentionKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeliveredJobs => "delivered_jobs",
            Self::DeadLetters => "dead_letters",
            Self::Events => "events",
            Self::SentCallbacks => "sent_callbacks",
            Self::DeadCallbacks => "dead_callbacks",
            Self::PrunedDevices => "pruned_devices",
            Self::PrunedTokens => "pruned_tokens",
            Self::IdempotencyKeys => "idempotency_keys",
            Self::StatsMinutes => "stats_minutes",
        }
    }
}

/// One sweep: `$1` is the cutoff (unix ms; older rows go), `$2` the batch size. Each
/// statement selects by an indexed age column, so a batch costs the rows it deletes.
pub struct Sweep {
    /// What it removes.
    pub kind: RetentionKind,
    /// The `DELETE` of one batch.
    pub sql: &'static str,
}

/// Every sweep, in order: jobs before events, because an event is kept while any of its
/// jobs is (a dead letter outlives its event's own retention rather than vanish with it).
pub const SWEEPS: &[Sweep] = &[
    Sweep {
        kind: RetentionKind::DeliveredJobs,
        // The status list matches the partial index `delivery_jobs_finished`.
        sql: "DELETE FROM delivery_jobs WHERE id IN (SELECT id FROM delivery_jobs \
              WHERE status IN ('delivered', 'invalid', 'capped', 'superseded', 'expired', \
              'cancelled') AND updated_at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::DeadLetters,
        sql: "DELETE FROM delivery_jobs WHERE id IN (SELECT id FROM delivery_jobs \
              WHERE status = 'dead' AND updated_at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::Events,
        // Completed before the cutoff implies received before it, which the index narrows.
        sql: "DELETE FROM events WHERE id IN (SELECT e.id FROM events e \
              WHERE e.status = 'completed' AND e.received_at < $1 AND e.updated_at < $1 \
              AND NOT EXISTS (SELECT 1 FROM delivery_jobs j WHERE j.event_id = e.id) LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::SentCallbacks,
        // A finished message's next_attempt_at is at most its last lease's end, seconds after
        // it finished: the index narrows by it, `finished_at` decides. Attempts go with it.
        sql: "DELETE FROM endpoint_messages WHERE id IN (SELECT id FROM endpoint_messages \
              WHERE status = 'delivered' AND next_attempt_at < $1 AND finished_at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::DeadCallbacks,
        sql: "DELETE FROM endpoint_messages WHERE id IN (SELECT id FROM endpoint_messages \
              WHERE status = 'failed' AND next_attempt_at < $1 AND finished_at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::PrunedDevices,
        sql: "DELETE FROM devices WHERE (app_id, token) IN (SELECT app_id, token FROM devices \
              WHERE state = 'pruned' AND state_at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::PrunedTokens,
        sql: "DELETE FROM pruned_tokens WHERE id IN (SELECT id FROM pruned_tokens \
              WHERE at < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::StatsMinutes,
        sql: "DELETE FROM stats_minutes WHERE (app_id, minute) IN (SELECT app_id, minute \
              FROM stats_minutes WHERE minute < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::StatsMinutes,
        sql: "DELETE FROM stats_latency_minutes WHERE (app_id, minute, le_ms) IN \
              (SELECT app_id, minute, le_ms FROM stats_latency_minutes WHERE minute < $1 LIMIT $2)",
    },
    Sweep {
        kind: RetentionKind::StatsMinutes,
        sql: "DELETE FROM stats_failure_minutes WHERE (app_id, minute, outcome, reason) IN \
              (SELECT app_id, minute, outcome, reason FROM stats_failure_minutes \
               WHERE minute < $1 LIMIT $2)",
    },
];

impl Store {
    /// Runs one batch of `sweep` in its own short write turn; returns the rows it deleted.
    pub async fn sweep_batch(
        &self,
        sweep: &Sweep,
        cutoff_ms: i64,
        batch: u32,
    ) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(sweep.sql)
            .bind(cutoff_ms)
            .bind(i64::from(batch))
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected())
    }

    /// Whether this SQLite file returns freed pages to the file system on
    /// [`Store::reclaim_free_pages`] (`auto_vacuum = INCREMENTAL`, set on new files; a file
    /// created before it keeps reusing its free pages instead). Always true on PostgreSQL,
    /// whose autovacuum does this itself.
    pub async fn reclaims_space(&self) -> anyhow::Result<bool> {
        if self.backend == Backend::Postgres {
            return Ok(true);
        }
        let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await?;
        Ok(mode == 2)
    }

    /// Unused pages in the SQLite file (0 on PostgreSQL).
    pub async fn free_pages(&self) -> anyhow::Result<u64> {
        if self.backend == Backend::Postgres {
            return Ok(0);
        }
        let (n,): (i64,) = sqlx::query_as("PRAGMA freelist_count")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n)?)
    }

    /// Gives at most `pages` free pages back to the file system in one write turn
    /// (incremental vacuum); a no-op on PostgreSQL and on SQLite files without it.
    pub async fn reclaim_free_pages(&self, pages: u32) -> anyhow::Result<()> {
        if self.backend == Backend::Postgres {
            return Ok(());
        }
        let mut turn = self.write_turn().await?;
        sqlx::query(&format!("PRAGMA incremental_vacuum({pages})"))
            .execute(turn.db())
            .await?;
        Ok(())
    }

    /// Bytes the SQLite file's pages take, free pages included (0 on PostgreSQL).
    pub async fn file_bytes(&self) -> anyhow::Result<u64> {
        if self.backend == Backend::Postgres {
            return Ok(0);
        }
        let (count,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&self.pool)
            .await?;
        let (size,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count * size)?)
    }
}
