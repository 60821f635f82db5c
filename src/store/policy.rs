//! Delivery policy state: each app's policy, each user's preferences, and the frequency-cap
//! ledger that admits or refuses a send against its user's cap.

use std::collections::HashMap;

use super::{values_rows, Store};
use crate::model::policy::{AppPolicy, FrequencyCap, UserPreferences};

/// An app's policy as fan-out and sends read it.
#[derive(Clone, Debug, Default)]
pub struct StoredPolicy {
    /// The app's policy.
    pub policy: AppPolicy,
    /// Whether any of the app's users has stored preferences (fan-out reads them only then).
    pub has_user_preferences: bool,
}

/// One send asking to be let through its user's frequency cap.
#[derive(Clone, Debug)]
pub struct CapRequest<'a> {
    /// The app.
    pub app_id: &'a str,
    /// The user the send is for.
    pub user_id: &'a str,
    /// The cap on the send's category.
    pub cap: &'a FrequencyCap,
}

impl Store {
    /// The app's policy, or `None` when the app does not exist.
    pub async fn app_policy(&self, app_id: &str) -> anyhow::Result<Option<StoredPolicy>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT policy, CASE WHEN EXISTS (SELECT 1 FROM user_preferences p \
               WHERE p.app_id = apps.id) THEN 1 ELSE 0 END FROM apps WHERE id = $1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((policy, has_prefs)) = row else {
            return Ok(None);
        };
        let policy = serde_json::from_str(&policy)
            .map_err(|e| anyhow::anyhow!("stored policy of app {app_id} does not parse: {e}"))?;
        Ok(Some(StoredPolicy {
            policy,
            has_user_preferences: has_prefs != 0,
        }))
    }

    /// Replaces the app's policy; false when the app does not exist.
    pub async fn put_app_policy(&self, app_id: &str, policy: &AppPolicy) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("UPDATE apps SET policy = $1 WHERE id = $2")
            .bind(serde_json::to_string(policy)?)
            .bind(app_id)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A user's stored preferences, if any.
    pub async fn user_preferences(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> anyhow::Result<Option<UserPreferences>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT preferences FROM user_preferences WHERE app_id = $1 AND user_id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(p,)| parse_preferences(app_id, &p)).transpose()
    }

    /// The stored preferences of those of `user_ids` that have some.
    pub async fn preferences_of_users(
        &self,
        app_id: &str,
        user_ids: &[&str],
    ) -> anyhow::Result<HashMap<String, UserPreferences>> {
        let mut found = HashMap::new();
        for chunk in user_ids.chunks(self.rows_per_statement()) {
            let sql = format!(
                "SELECT user_id, preferences FROM user_preferences WHERE app_id = $1 \
                 AND user_id IN ({})",
                values_rows(chunk.len(), "?", 2)
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(app_id);
            for user in chunk {
                q = q.bind(*user);
            }
            for (user, prefs) in q.fetch_all(&self.pool).await? {
                let prefs = parse_preferences(app_id, &prefs)?;
                found.insert(user, prefs);
            }
        }
        Ok(found)
    }

    /// Stores a user's preferences.
    pub async fn put_user_preferences(
        &self,
        app_id: &str,
        user_id: &str,
        preferences: &UserPreferences,
    ) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "INSERT INTO user_preferences (app_id, user_id, preferences, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (app_id, user_id) \
             DO UPDATE SET preferences = excluded.preferences, updated_at = excluded.updated_at",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(serde_json::to_string(preferences)?)
        .bind(self.now())
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// Deletes a user's preferences; false when there were none.
    pub async fn delete_user_preferences(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("DELETE FROM user_preferences WHERE app_id = $1 AND user_id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Admits or refuses each request against its user's cap, in order, in one transaction:
    /// a send is let through while fewer than `max` sends of its user and category were let
    /// through in the `per` window before now, and counts from then on. Each user and
    /// category's counter row is taken first, so concurrent admissions (other instances)
    /// wait their turn and the count stays exact. Ledger rows older than the window go.
    pub async fn admit_capped(&self, requests: &[CapRequest<'_>]) -> anyhow::Result<Vec<bool>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let mut admitted = Vec::with_capacity(requests.len());
        for r in requests {
            let since = now - r.cap.per.as_millis();
            sqlx::query(
                "INSERT INTO frequency_counters (app_id, user_id, category, touched) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (app_id, user_id, category) \
                 DO UPDATE SET touched = excluded.touched",
            )
            .bind(r.app_id)
            .bind(r.user_id)
            .bind(&r.cap.category)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM frequency_sends WHERE app_id = $1 AND user_id = $2 \
                 AND category = $3 AND at <= $4",
            )
            .bind(r.app_id)
            .bind(r.user_id)
            .bind(&r.cap.category)
            .bind(since)
            .execute(&mut *tx)
            .await?;
            let (sent,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM frequency_sends WHERE app_id = $1 AND user_id = $2 \
                 AND category = $3 AND at > $4",
            )
            .bind(r.app_id)
            .bind(r.user_id)
            .bind(&r.cap.category)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?;
            let admit = sent < i64::from(r.cap.max);
            if admit {
                sqlx::query(
                    "INSERT INTO frequency_sends (app_id, user_id, category, at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(r.app_id)
                .bind(r.user_id)
                .bind(&r.cap.category)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            admitted.push(admit);
        }
        tx.commit().await?;
        Ok(admitted)
    }
}

fn parse_preferences(app_id: &str, text: &str) -> anyhow::Result<UserPreferences> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("stored user preferences of app {app_id} do not parse: {e}"))
}
