//! The callback outbox: messages to apps' backends, written in the transaction that causes
//! them, then claimed and delivered by the worker; and each app's callback target, whose
//! signing secret is stored sealed.

use std::collections::HashSet;

use sqlx::AnyConnection;

use super::sealed::CALLBACK_SECRET;
use super::{new_id, values_rows, Store};

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

/// Where an app's callbacks go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackTarget {
    /// The URL callbacks are posted to.
    pub url: String,
    /// The Standard Webhooks secret they are signed with.
    pub secret: String,
}

/// What became of one callback attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackAttempt {
    /// The app's backend accepted it.
    Delivered,
    /// It failed; try again at this time, unix ms.
    RetryAt(i64),
    /// It failed for good.
    GiveUp,
}

impl Store {
    /// Sets (or clears) the app's pruned-token callback and its signing secret.
    pub async fn set_callback(
        &self,
        app_id: &str,
        url: Option<&str>,
        secret: Option<&str>,
    ) -> anyhow::Result<()> {
        let sealed = secret
            .map(|s| self.seal(CALLBACK_SECRET, app_id, s))
            .transpose()?;
        let turn = self.write_turn().await;
        sqlx::query("UPDATE apps SET callback_url = $1, callback_secret = $2 WHERE id = $3")
            .bind(url)
            .bind(sealed)
            .bind(app_id)
            .execute(turn.db())
            .await?;
        Ok(())
    }

    /// The app's callback URL and secret, when configured.
    pub async fn callback_target(&self, app_id: &str) -> anyhow::Result<Option<CallbackTarget>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT callback_url, callback_secret FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some((Some(url), Some(sealed))) => Some(CallbackTarget {
                url,
                secret: self.open(CALLBACK_SECRET, app_id, &sealed)?,
            }),
            _ => None,
        })
    }

    /// Those of `app_ids` that have a callback URL.
    pub async fn apps_with_callbacks(&self, app_ids: &[&str]) -> anyhow::Result<HashSet<String>> {
        let mut out = HashSet::new();
        for chunk in app_ids.chunks(self.rows_per_statement()) {
            let sql = format!(
                "SELECT id FROM apps WHERE callback_url IS NOT NULL AND id IN ({})",
                values_rows(chunk.len(), "?", 1)
            );
            let mut q = sqlx::query_as::<_, (String,)>(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            out.extend(q.fetch_all(&self.pool).await?.into_iter().map(|(id,)| id));
        }
        Ok(out)
    }

    /// Due callbacks, leased by pushing their next attempt into the future.
    pub async fn claim_callbacks(
        &self,
        lease_ms: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<CallbackRow>> {
        let turn = self.write_turn().await;
        let now = self.now();
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

    /// Records a callback attempt and, when it failed, why.
    pub async fn finish_callback(
        &self,
        id: &str,
        attempt: CallbackAttempt,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let turn = self.write_turn().await;
        let (status, next_attempt_at) = match attempt {
            CallbackAttempt::Delivered => ("delivered", self.now()),
            CallbackAttempt::RetryAt(at) => ("queued", at),
            CallbackAttempt::GiveUp => ("dead", self.now()),
        };
        sqlx::query(
            "UPDATE callback_outbox SET status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, last_error = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Callback messages of an app (for the API), newest first: id, status, body, attempts.
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

/// Queues one callback message to an app, inside the caller's transaction.
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    app_id: &str,
    body: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO callback_outbox (id, app_id, body, status, attempts, next_attempt_at, \
         created_at) VALUES ($1, $2, $3, 'queued', 0, $4, $4)",
    )
    .bind(new_id("msg"))
    .bind(app_id)
    .bind(body)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
