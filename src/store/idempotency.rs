//! Idempotency keys: which request each app's `Idempotency-Key` was first used with, and the
//! answer it got, so a retried request is answered without being handled twice. The
//! primary key (app, key) is what makes two concurrent first uses impossible: only one
//! insert wins.

use super::sealed::IDEMPOTENT_ANSWER;
use super::Store;

/// The row a sealed answer is bound to (app ids hold no `/`).
fn sealed_row(app_id: &str, key: &str) -> String {
    format!("{app_id}/{key}")
}

/// The answer stored for a key, replayed to every retry with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the answer, when it had one.
    pub content_type: Option<String>,
    /// The answer's body.
    pub body: String,
}

/// What claiming a key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new (or its earlier use expired or was abandoned): handle the request.
    Claimed,
    /// The key was used with this same request, which got this answer.
    Answered(StoredAnswer),
    /// The key was used with this same request, which is still being handled.
    InProgress,
    /// The key was used with a different request.
    Mismatch,
    /// The key was answered, but the answer is sealed under a master key no longer
    /// configured.
    Unreadable,
}

/// A key's row as read back on a conflict.
#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: String,
    status: Option<i64>,
    content_type: Option<String>,
    response_body: Option<String>,
    created_at: i64,
    expires_at: i64,
}

impl Store {
    /// Claims `key` of `app_id` for the request hashed `request_hash`, for `lifetime_ms`. An
    /// unanswered claim older than `abandoned_after_ms` is taken over (its request's handler
    /// died before answering).
    pub async fn claim_idempotency_key(
        &self,
        app_id: &str,
        key: &str,
        request_hash: &str,
        lifetime_ms: i64,
        abandoned_after_ms: i64,
    ) -> anyhow::Result<KeyClaim> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (app_id, idem_key, request_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, idem_key) DO NOTHING",
        )
        .bind(app_id)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .bind(now + lifetime_ms)
        .execute(turn.db())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(KeyClaim::Claimed);
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, status, content_type, response_body, created_at, expires_at \
             FROM idempotency_keys WHERE app_id = $1 AND idem_key = $2",
        )
        .bind(app_id)
        .bind(key)
        .fetch_optional(turn.db())
        .await?;
        let Some(row) = row else {
            // Swept between the insert and the read: a retry of the caller claims it anew.
            return Ok(KeyClaim::InProgress);
        };
        let expired = row.expires_at <= now;
        let abandoned = row.status.is_none() && row.created_at <= now - abandoned_after_ms;
        if expired || abandoned {
            // Conditional on the row read, so of two takers-over only one wins.
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET request_hash = $3, status = NULL, \
                   content_type = NULL, response_body = NULL, created_at = $4, expires_at = $5 \
                 WHERE app_id = $1 AND idem_key = $2 AND created_at = $6",
            )
            .bind(app_id)
            .bind(key)
            .bind(request_hash)
            .bind(now)
            .bind(now + lifetime_ms)
            .bind(row.created_at)
            .execute(turn.db())
            .await?;
            return Ok(if taken.rows_affected() == 1 {
                KeyClaim::Claimed
            } else {
                KeyClaim::InProgress
            });
        }
        if row.request_hash != request_hash {
            return Ok(KeyClaim::Mismatch);
        }
        let (Some(status), Some(sealed)) = (row.status, row.response_body) else {
            return Ok(KeyClaim::InProgress);
        };
        let Ok(body) = self.open(IDEMPOTENT_ANSWER, &sealed_row(app_id, key), &sealed) else {
            return Ok(KeyClaim::Unreadable);
        };
        Ok(KeyClaim::Answered(StoredAnswer {
            status: u16::try_from(status)
                .map_err(|_| anyhow::anyhow!("stored idempotent status {status}"))?,
            content_type: row.content_type,
            body,
        }))
    }

    /// Stores the answer to the request that claimed `key`, sealed.
    pub async fn answer_idempotency_key(
        &self,
        app_id: &str,
        key: &str,
        answer: &StoredAnswer,
    ) -> anyhow::Result<()> {
        let sealed = self.seal(IDEMPOTENT_ANSWER, &sealed_row(app_id, key), &answer.body)?;
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, content_type = $4, response_body = $5 \
             WHERE app_id = $1 AND idem_key = $2",
        )
        .bind(app_id)
        .bind(key)
        .bind(i64::from(answer.status))
        .bind(answer.content_type.as_deref())
        .bind(sealed)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Gives up an unanswered claim on `key`, so that a retry with it is handled afresh (the
    /// request failed in a way worth retrying: a 5xx, a rate limit, bad credentials).
    pub async fn release_idempotency_key(&self, app_id: &str, key: &str) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE app_id = $1 AND idem_key = $2 AND status IS NULL",
        )
        .bind(app_id)
        .bind(key)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Deletes up to `batch` keys expired by `now_ms`; returns how many. Called repeatedly
    /// until it returns less than `batch`, it never holds the writer for long.
    pub async fn sweep_idempotency_keys(&self, now_ms: i64, batch: i64) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (app_id, idem_key) IN (SELECT app_id, idem_key \
             FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now_ms)
        .bind(batch)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }
}
