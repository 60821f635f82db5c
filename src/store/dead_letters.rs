//! Dead letters: the jobs that will not be sent again unless replayed, read for a replay and
//! put back in the queue (or kept dead with the reason a replay could not render them).

use std::collections::BTreeMap;

use super::{lifecycle, values_rows, Store};

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

impl Store {
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
        let mut turn = self.write_turn().await?;
        // Every statement here writes first: in SQLite's WAL mode a transaction that reads and
        // then writes can fail when another writer commits in between.
        let now = self.now();
        let mut tx = turn.begin().await?;
        const REQUEUE: &str = "UPDATE delivery_jobs SET status = 'queued', attempts = 0, \
             next_attempt_at = $1, updated_at = $1, created_at = $1";
        let mut reopened: BTreeMap<String, i64> = Default::default();
        // Jobs keeping their payload go back several to a statement; re-rendered ones one
        // at a time, each with its own payload.
        let (keep, rerendered): (Vec<_>, Vec<_>) = jobs.iter().partition(|(_, p)| p.is_none());
        let keep: Vec<&String> = keep.into_iter().map(|(id, _)| id).collect();
        for chunk in keep.chunks(self.rows_per_statement()) {
            let sql = format!(
                "{REQUEUE} WHERE app_id = $2 AND status = 'dead' AND id IN ({}) \
                 RETURNING event_id",
                values_rows(chunk.len(), "?", 3)
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
        let total = lifecycle::reopen_events(&mut tx, &reopened, now).await?;
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
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
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
}
