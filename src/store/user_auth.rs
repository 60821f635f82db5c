//! Each app's user-auth settings: the secret its backend signs user ids with, whether client
//! keys must prove the user ids they register (`client_user_ids`), and the public keys JWT
//! proofs may be signed for. Verifying an HMAC needs the secret itself, so it is stored
//! sealed under the master key, not hashed.

use anyhow::Context;

use super::sealed::USER_AUTH_SECRET;
use super::{new_id, Store};
use crate::user_auth::{generate_secret, ClientUserIds, KeyAlgorithm, PublicKey, MAX_PUBLIC_KEYS};

/// An app's user-auth settings, as verification needs them.
#[derive(Clone, Debug)]
pub struct UserAuth {
    /// The current secret (HMAC and HS256 key).
    pub secret: String,
    /// Whether client keys must prove user ids.
    pub client_user_ids: ClientUserIds,
    /// Keys for ES256/RS256 proofs, oldest first.
    pub public_keys: Vec<PublicKey>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    algorithm: String,
    public_key: String,
    created_at: i64,
}

impl Store {
    /// The app's user-auth settings; `None` when there is no such app. An app without a
    /// secret yet (created by an instance older than this feature) gets one here.
    pub async fn user_auth(&self, app_id: &str) -> anyhow::Result<Option<UserAuth>> {
        let row: Option<(Option<String>, String)> =
            sqlx::query_as("SELECT user_auth_secret, client_user_ids FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((secret, policy)) = row else {
            return Ok(None);
        };
        let secret = match secret {
            Some(sealed) => self.open(USER_AUTH_SECRET, app_id, &sealed)?,
            None => self.fill_secret(app_id).await?,
        };
        let client_user_ids = ClientUserIds::parse(&policy)
            .with_context(|| format!("app {app_id} has client_user_ids {policy:?}"))?;
        Ok(Some(UserAuth {
            secret,
            client_user_ids,
            public_keys: self.user_auth_keys(app_id).await?,
        }))
    }

    /// Gives the app a secret if it still has none, and returns the secret it has. Another
    /// instance may fill it at the same moment; the first write wins and both read it back.
    async fn fill_secret(&self, app_id: &str) -> anyhow::Result<String> {
        let sealed = self.seal(USER_AUTH_SECRET, app_id, &generate_secret())?;
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "UPDATE apps SET user_auth_secret = $1 WHERE id = $2 AND user_auth_secret IS NULL",
        )
        .bind(sealed)
        .bind(app_id)
        .execute(turn.db())
        .await?;
        let (secret,): (Option<String>,) =
            sqlx::query_as("SELECT user_auth_secret FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_one(turn.db())
                .await?;
        let sealed = secret
            .with_context(|| format!("app {app_id} has no user-auth secret after filling it"))?;
        Ok(self.open(USER_AUTH_SECRET, app_id, &sealed)?)
    }

    /// Gives every app without a user-auth secret its own (after migration 0005).
    pub(crate) async fn fill_user_auth_secrets(&self) -> anyhow::Result<usize> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM apps WHERE user_auth_secret IS NULL")
                .fetch_all(&self.pool)
                .await?;
        for (id,) in &ids {
            self.fill_secret(id).await?;
        }
        Ok(ids.len())
    }

    /// Replaces the app's secret; proofs made with the old one stop verifying at once.
    /// Returns the new secret, or `None` when there is no such app.
    pub async fn rotate_user_auth_secret(&self, app_id: &str) -> anyhow::Result<Option<String>> {
        let secret = generate_secret();
        let sealed = self.seal(USER_AUTH_SECRET, app_id, &secret)?;
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("UPDATE apps SET user_auth_secret = $1 WHERE id = $2")
            .bind(&sealed)
            .bind(app_id)
            .execute(turn.db())
            .await?;
        Ok((r.rows_affected() > 0).then_some(secret))
    }

    /// Sets whether client keys must prove user ids; false when there is no such app.
    pub async fn set_client_user_ids(
        &self,
        app_id: &str,
        policy: ClientUserIds,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("UPDATE apps SET client_user_ids = $1 WHERE id = $2")
            .bind(policy.as_str())
            .bind(app_id)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// How many apps let client keys set user ids without proof.
    pub async fn count_unverified_apps(&self) -> anyhow::Result<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM apps WHERE client_user_ids = 'unverified'")
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    /// The app's public keys for JWT proofs, oldest first.
    pub async fn user_auth_keys(&self, app_id: &str) -> anyhow::Result<Vec<PublicKey>> {
        let rows = sqlx::query_as::<_, KeyRow>(
            "SELECT id, algorithm, public_key, created_at FROM user_auth_keys \
             WHERE app_id = $1 ORDER BY created_at, id",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PublicKey {
                    algorithm: KeyAlgorithm::parse(&r.algorithm).with_context(|| {
                        format!("user-auth key {} has algorithm {:?}", r.id, r.algorithm)
                    })?,
                    id: r.id,
                    public_key: r.public_key,
                    created_at: r.created_at,
                })
            })
            .collect()
    }

    /// Registers a public key (already checked by `user_auth::check_public_key`). `None` when
    /// the app already has [`MAX_PUBLIC_KEYS`].
    pub async fn add_user_auth_key(
        &self,
        app_id: &str,
        algorithm: KeyAlgorithm,
        public_key: &str,
    ) -> anyhow::Result<Option<PublicKey>> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        // Serializes concurrent additions on PostgreSQL, so the limit holds.
        let lock = match self.backend {
            super::Backend::Postgres => "FOR UPDATE",
            super::Backend::Sqlite => "",
        };
        sqlx::query(&format!("SELECT id FROM apps WHERE id = $1 {lock}"))
            .bind(app_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM user_auth_keys WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?;
        if n >= MAX_PUBLIC_KEYS as i64 {
            return Ok(None);
        }
        let key = PublicKey {
            id: new_id("uak"),
            algorithm,
            public_key: public_key.to_string(),
            created_at: self.now(),
        };
        sqlx::query(
            "INSERT INTO user_auth_keys (id, app_id, algorithm, public_key, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(app_id)
        .bind(algorithm.as_str())
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Removes a public key; tokens signed for it stop verifying at once. False when the app
    /// has no such key.
    pub async fn remove_user_auth_key(&self, app_id: &str, key_id: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("DELETE FROM user_auth_keys WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(key_id)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
