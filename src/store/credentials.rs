//! Provider credentials per app (`app_credentials`, private keys sealed) with the epoch
//! every instance polls to notice changes, and the circuit breakers per app and provider
//! (`provider_breakers`) with the queued jobs they hold back.

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use super::sealed::CREDENTIAL_KEY;
use super::{new_id, Store};
use crate::model::event_type::EventType;
use crate::model::{ApnsEnvironment, Platform};
use crate::push::fcm::ServiceAccount;
use crate::push::{
    ApnsCredential, AppCredential, CredentialKey, FcmCredential, Fingerprint, UnusableCredential,
};

/// The public part of an APNs key, stored as JSON.
#[derive(Serialize, Deserialize)]
struct ApnsSettings {
    key_id: String,
    team_id: String,
    #[serde(default)]
    default_topic: Option<String>,
    #[serde(default)]
    environment: Option<ApnsEnvironment>,
}

/// The public part of a service account, stored as JSON.
#[derive(Serialize, Deserialize)]
struct FcmSettings {
    project_id: String,
    client_email: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    id: String,
    app_id: String,
    provider: Platform,
    settings: String,
    private_key: String,
    fingerprint: String,
    updated_at: i64,
}

/// An open breaker: an app's sends to a provider are paused.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Breaker {
    /// The app.
    pub app_id: String,
    /// The provider.
    pub provider: Platform,
    /// The provider's answer that opened it.
    pub reason: String,
    /// When it opened (unix millis).
    pub since: i64,
    /// When the next probe may go (unix millis); the held jobs are due then.
    pub probe_at: i64,
}

impl Store {
    /// Stores `key` as `app_id`'s credential for its provider (replacing any), closes that
    /// breaker and makes the jobs it held due now, all in one transaction. Returns the
    /// stored credential.
    pub async fn put_credential(
        &self,
        app_id: &str,
        key: &CredentialKey,
        fingerprint: &Fingerprint,
    ) -> anyhow::Result<AppCredential> {
        let (settings, private_key) = match key {
            CredentialKey::Apns(k) => (
                serde_json::to_string(&ApnsSettings {
                    key_id: k.key_id.clone(),
                    team_id: k.team_id.clone(),
                    default_topic: k.default_topic.clone(),
                    environment: k.environment,
                })?,
                k.private_key.as_str(),
            ),
            CredentialKey::Fcm(k) => (
                serde_json::to_string(&FcmSettings {
                    project_id: k.account.project_id.clone(),
                    client_email: k.account.client_email.clone(),
                    private_key_id: k.account.private_key_id.clone(),
                    token_uri: k.account.token_uri.clone(),
                })?,
                k.account.private_key.as_str(),
            ),
        };
        let provider = key.platform();
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        // Keep the row id across replacements: the sealed key is bound to it.
        let existing: Option<(String, i64)> = sqlx::query_as(
            "SELECT id, updated_at FROM app_credentials WHERE app_id = $1 AND provider = $2",
        )
        .bind(app_id)
        .bind(provider)
        .fetch_optional(&mut *tx)
        .await?;
        // A change within the same millisecond must still look like a change.
        let updated_at = existing.as_ref().map_or(now, |(_, at)| now.max(at + 1));
        let id = existing.map_or_else(|| new_id("crd"), |(id, _)| id);
        let sealed = self.seal(CREDENTIAL_KEY, &id, private_key)?;
        sqlx::query(
            "INSERT INTO app_credentials (id, app_id, provider, settings, private_key, \
             fingerprint, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (app_id, provider) DO UPDATE SET settings = excluded.settings, \
             private_key = excluded.private_key, fingerprint = excluded.fingerprint, \
             updated_at = excluded.updated_at",
        )
        .bind(&id)
        .bind(app_id)
        .bind(provider)
        .bind(&settings)
        .bind(&sealed)
        .bind(&fingerprint.0)
        .bind(updated_at)
        .execute(&mut *tx)
        .await?;
        bump_epoch(&mut tx).await?;
        close_breaker_in(&mut tx, app_id, provider, now).await?;
        tx.commit().await?;
        Ok(AppCredential {
            app_id: app_id.to_string(),
            key: key.clone(),
            fingerprint: fingerprint.clone(),
            updated_at,
        })
    }

    /// Removes `app_id`'s own credential for `provider` (its sends use the default again),
    /// closing that breaker. Returns whether there was one.
    pub async fn delete_credential(
        &self,
        app_id: &str,
        provider: Platform,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let deleted =
            sqlx::query("DELETE FROM app_credentials WHERE app_id = $1 AND provider = $2")
                .bind(app_id)
                .bind(provider)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if deleted > 0 {
            bump_epoch(&mut tx).await?;
            close_breaker_in(&mut tx, app_id, provider, now).await?;
        }
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// `app_id`'s own credentials.
    pub async fn app_credentials(&self, app_id: &str) -> anyhow::Result<Vec<AppCredential>> {
        let rows: Vec<CredentialRow> = sqlx::query_as(
            "SELECT id, app_id, provider, settings, private_key, fingerprint, updated_at \
             FROM app_credentials WHERE app_id = $1 ORDER BY provider",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| self.credential(r)).collect()
    }

    /// Every app's own credentials, with the epoch they were read at. A row that cannot be
    /// read is returned as unusable, so its app is not silently given the default key.
    pub async fn all_credentials(
        &self,
    ) -> anyhow::Result<(i64, Vec<Result<AppCredential, UnusableCredential>>)> {
        let mut tx = self.pool.begin().await?;
        let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM credential_epoch WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<CredentialRow> = sqlx::query_as(
            "SELECT id, app_id, provider, settings, private_key, fingerprint, updated_at \
             FROM app_credentials ORDER BY app_id, provider",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let credentials = rows
            .into_iter()
            .map(|r| {
                let unusable = UnusableCredential {
                    app_id: r.app_id.clone(),
                    provider: r.provider,
                    updated_at: r.updated_at,
                    fingerprint: Fingerprint(r.fingerprint.clone()),
                    error: String::new(),
                };
                self.credential(r).map_err(|e| UnusableCredential {
                    error: format!("{e:#}"),
                    ..unusable
                })
            })
            .collect();
        Ok((epoch, credentials))
    }

    /// The counter every credential change bumps.
    pub async fn credential_epoch(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT epoch FROM credential_epoch WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn credential(&self, row: CredentialRow) -> anyhow::Result<AppCredential> {
        let place = || format!("app {} {} credential", row.app_id, row.provider.as_str());
        let private_key = self
            .open(CREDENTIAL_KEY, &row.id, &row.private_key)
            .map_err(|e| anyhow::anyhow!("{}: {e}", place()))?;
        let key = match row.provider {
            Platform::Apns => {
                let s: ApnsSettings = serde_json::from_str(&row.settings)
                    .map_err(|e| anyhow::anyhow!("{}: unreadable settings: {e}", place()))?;
                CredentialKey::Apns(ApnsCredential {
                    key_id: s.key_id,
                    team_id: s.team_id,
                    private_key,
                    default_topic: s.default_topic,
                    environment: s.environment,
                })
            }
            Platform::Fcm => {
                let s: FcmSettings = serde_json::from_str(&row.settings)
                    .map_err(|e| anyhow::anyhow!("{}: unreadable settings: {e}", place()))?;
                CredentialKey::Fcm(FcmCredential {
                    account: ServiceAccount {
                        project_id: s.project_id,
                        private_key_id: s.private_key_id,
                        private_key,
                        client_email: s.client_email,
                        token_uri: s.token_uri,
                    },
                })
            }
        };
        Ok(AppCredential {
            app_id: row.app_id,
            key,
            fingerprint: Fingerprint(row.fingerprint),
            updated_at: row.updated_at,
        })
    }

    /// Opens the breaker of `app_id` and `provider` unless it is open already, and holds
    /// the app's queued jobs for that provider until `probe_at`. Returns the breaker and
    /// whether this call opened it.
    pub async fn open_breaker(
        &self,
        app_id: &str,
        provider: Platform,
        reason: &str,
        probe_at: i64,
    ) -> anyhow::Result<(Breaker, bool)> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let opened = sqlx::query(
            "INSERT INTO provider_breakers (app_id, provider, reason, since, probe_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, provider) DO NOTHING",
        )
        .bind(app_id)
        .bind(provider)
        .bind(reason)
        .bind(now)
        .bind(probe_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        let breaker: Breaker = sqlx::query_as(
            "SELECT app_id, provider, reason, since, probe_at FROM provider_breakers \
             WHERE app_id = $1 AND provider = $2",
        )
        .bind(app_id)
        .bind(provider)
        .fetch_one(&mut *tx)
        .await?;
        if opened {
            hold_jobs(&mut tx, app_id, provider, breaker.probe_at).await?;
            let data =
                serde_json::json!({"app_id": app_id, "provider": provider, "reason": reason});
            let body = super::message_body(EventType::CredentialFailing, now, data);
            super::outbox::enqueue(&mut tx, app_id, EventType::CredentialFailing, &body, now)
                .await?;
        }
        tx.commit().await?;
        Ok((breaker, opened))
    }

    /// Takes the next probe of an open breaker if it is due: moves `probe_at` to
    /// `next_probe_at` and returns true for exactly one caller across all instances.
    pub async fn take_probe(
        &self,
        app_id: &str,
        provider: Platform,
        next_probe_at: i64,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let taken = sqlx::query(
            "UPDATE provider_breakers SET probe_at = $1 \
             WHERE app_id = $2 AND provider = $3 AND probe_at <= $4",
        )
        .bind(next_probe_at)
        .bind(app_id)
        .bind(provider)
        .bind(self.now())
        .execute(turn.db())
        .await?
        .rows_affected();
        Ok(taken > 0)
    }

    /// Closes a breaker after a successful probe and makes the jobs it held due now.
    /// Returns whether it was open.
    pub async fn close_breaker(&self, app_id: &str, provider: Platform) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let closed = close_breaker_in(&mut tx, app_id, provider, self.now()).await?;
        tx.commit().await?;
        Ok(closed)
    }

    /// Every open breaker.
    pub async fn breakers(&self) -> anyhow::Result<Vec<Breaker>> {
        Ok(sqlx::query_as(
            "SELECT app_id, provider, reason, since, probe_at FROM provider_breakers \
             ORDER BY app_id, provider",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn bump_epoch(conn: &mut AnyConnection) -> anyhow::Result<()> {
    sqlx::query("UPDATE credential_epoch SET epoch = epoch + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Holds the app's queued jobs for `provider` that are due before `until`.
async fn hold_jobs(
    conn: &mut AnyConnection,
    app_id: &str,
    provider: Platform,
    until: i64,
) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "UPDATE delivery_jobs SET next_attempt_at = $1 WHERE app_id = $2 AND platform = $3 \
         AND status = 'queued' AND next_attempt_at < $1",
    )
    .bind(until)
    .bind(app_id)
    .bind(provider)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Deletes the breaker, if open, and makes the jobs it held (due by its `probe_at`) due now.
async fn close_breaker_in(
    conn: &mut AnyConnection,
    app_id: &str,
    provider: Platform,
    now: i64,
) -> anyhow::Result<bool> {
    let probe_at: Option<i64> = sqlx::query_scalar(
        "DELETE FROM provider_breakers WHERE app_id = $1 AND provider = $2 RETURNING probe_at",
    )
    .bind(app_id)
    .bind(provider)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(probe_at) = probe_at else {
        return Ok(false);
    };
    let data = serde_json::json!({"app_id": app_id, "provider": provider});
    let body = super::message_body(EventType::CredentialRecovered, now, data);
    super::outbox::enqueue(
        &mut *conn,
        app_id,
        EventType::CredentialRecovered,
        &body,
        now,
    )
    .await?;
    sqlx::query(
        "UPDATE delivery_jobs SET next_attempt_at = $1 WHERE app_id = $2 AND platform = $3 \
         AND status = 'queued' AND next_attempt_at > $1 AND next_attempt_at <= $4",
    )
    .bind(now)
    .bind(app_id)
    .bind(provider)
    .bind(probe_at)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}
