//! Event endpoints: an app's webhook subscriptions, their sealed signing secrets (current and,
//! during a rotation, previous), their failure state, and the start-up move of the legacy
//! per-app callback (`apps.callback_url`) and its queued messages into an endpoint.

use sqlx::AnyConnection;

use super::sealed::{CALLBACK_SECRET, ENDPOINT_PREVIOUS_SECRET, ENDPOINT_SECRET};
use super::{new_id, Store};
use crate::model::event_type::{EventType, MessageStatus};

/// An event endpoint as stored (secrets not included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `ep_...`.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Where messages are posted.
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// Subscribed event types.
    pub events: Vec<EventType>,
    /// Whether messages are sent to it.
    pub enabled: bool,
    /// Why it was disabled by the bridge, if it was.
    pub disabled_reason: Option<String>,
    /// Start of the current run of failed attempts, unix ms.
    pub failing_since: Option<i64>,
    /// Managed through `PUT /v1/app/callback`.
    pub legacy_callback: bool,
    /// When the previous secret stops signing, during a rotation.
    pub previous_secret_expires_at: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

type EndpointTuple = (
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
    i64,
    i64,
);

/// An endpoint and how its messages fare (see [`Store::endpoint_health`]).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EndpointHealth {
    /// Endpoint id.
    pub id: String,
    /// Its app.
    pub app_id: String,
    /// Where its messages go.
    pub url: String,
    /// 1 while messages are sent to it.
    pub enabled: i64,
    /// Start of its current run of failed attempts, unix ms.
    pub failing_since: Option<i64>,
    /// Why it was disabled, when it was.
    pub disabled_reason: Option<String>,
    /// Messages waiting for an attempt.
    pub pending: i64,
    /// Messages whose every attempt failed (kept for `recover` until retention).
    pub failed: i64,
}

const COLUMNS: &str = "id, app_id, url, description, events, enabled, disabled_reason, \
     failing_since, legacy_callback, previous_secret_expires_at, created_at, updated_at";

fn endpoint(row: EndpointTuple) -> anyhow::Result<Endpoint> {
    let (
        id,
        app_id,
        url,
        description,
        events,
        enabled,
        disabled_reason,
        failing_since,
        legacy,
        prev_exp,
        created_at,
        updated_at,
    ) = row;
    Ok(Endpoint {
        events: serde_json::from_str(&events)
            .map_err(|e| anyhow::anyhow!("endpoint {id}: stored event types unreadable: {e}"))?,
        id,
        app_id,
        url,
        description,
        enabled: enabled != 0,
        disabled_reason,
        failing_since,
        legacy_callback: legacy != 0,
        previous_secret_expires_at: prev_exp,
        created_at,
        updated_at,
    })
}

/// A new endpoint.
#[derive(Clone, Debug)]
pub struct NewEndpoint<'a> {
    /// Where messages are posted.
    pub url: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// Subscribed types.
    pub events: &'a [EventType],
    /// Its signing secret (`whsec_...`).
    pub secret: &'a str,
}

/// A change to an endpoint; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointChange<'a> {
    /// New URL.
    pub url: Option<&'a str>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<&'a str>>,
    /// New subscriptions.
    pub events: Option<&'a [EventType]>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// The secrets a message is signed with now: the current one, and the previous one while its
/// grace period lasts.
#[derive(Clone, Debug)]
pub struct SigningSecrets {
    /// The endpoint's URL.
    pub url: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Every secret that signs.
    pub secrets: Vec<String>,
}

/// The app's legacy callback: where it goes and the secret that signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackTarget {
    /// The URL.
    pub url: String,
    /// The current signing secret.
    pub secret: String,
}

impl Store {
    /// Creates an endpoint of `app_id`.
    pub async fn create_endpoint(
        &self,
        app_id: &str,
        new: NewEndpoint<'_>,
    ) -> anyhow::Result<Endpoint> {
        let id = new_id("ep");
        self.insert_endpoint(&id, app_id, &new, false).await?;
        self.endpoint(app_id, &id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("endpoint {id} vanished after its insert"))
    }

    async fn insert_endpoint(
        &self,
        id: &str,
        app_id: &str,
        new: &NewEndpoint<'_>,
        legacy: bool,
    ) -> anyhow::Result<()> {
        let sealed = self.seal(ENDPOINT_SECRET, id, new.secret)?;
        let now = self.now();
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "INSERT INTO event_endpoints (id, app_id, url, description, events, enabled, secret, \
             legacy_callback, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8)",
        )
        .bind(id)
        .bind(app_id)
        .bind(new.url)
        .bind(new.description)
        .bind(serde_json::to_string(new.events)?)
        .bind(sealed)
        .bind(i64::from(legacy))
        .bind(now)
        .execute(turn.db())
        .await?;
        Ok(())
    }

    /// One endpoint of `app_id`.
    pub async fn endpoint(&self, app_id: &str, id: &str) -> anyhow::Result<Option<Endpoint>> {
        let row: Option<EndpointTuple> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM event_endpoints WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(endpoint).transpose()
    }

    /// Every endpoint of `app_id`, oldest first.
    pub async fn endpoints(&self, app_id: &str) -> anyhow::Result<Vec<Endpoint>> {
        let rows: Vec<EndpointTuple> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM event_endpoints WHERE app_id = $1 ORDER BY created_at, id"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(endpoint).collect()
    }

    /// Each endpoint of `app_id` (every app's when `None`) with its messages waiting and
    /// failed for good, for the stats report and the dashboard.
    pub async fn endpoint_health(
        &self,
        app_id: Option<&str>,
    ) -> anyhow::Result<Vec<EndpointHealth>> {
        Ok(sqlx::query_as(
            "SELECT e.id, e.app_id, e.url, e.enabled, e.failing_since, e.disabled_reason, \
               CAST(COALESCE(SUM(CASE WHEN m.status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 AS pending, \
               CAST(COALESCE(SUM(CASE WHEN m.status = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT) \
                 AS failed \
             FROM event_endpoints e LEFT JOIN endpoint_messages m ON m.endpoint_id = e.id \
             WHERE ($1 = '' OR e.app_id = $1) \
             GROUP BY e.id, e.app_id, e.url, e.enabled, e.failing_since, e.disabled_reason, \
               e.created_at \
             ORDER BY e.app_id, e.created_at, e.id",
        )
        .bind(app_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies `change`; false when the endpoint does not exist. Enabling clears the failure
    /// state, so a re-enabled endpoint gets its full five days again.
    pub async fn update_endpoint(
        &self,
        app_id: &str,
        id: &str,
        change: EndpointChange<'_>,
    ) -> anyhow::Result<bool> {
        let Some(current) = self.endpoint(app_id, id).await? else {
            return Ok(false);
        };
        let events = change.events.map(serde_json::to_string).transpose()?;
        let description = match change.description {
            Some(d) => d.map(str::to_string),
            None => current.description,
        };
        let enabled = change.enabled.unwrap_or(current.enabled);
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(
            "UPDATE event_endpoints SET url = COALESCE($1, url), description = $2, \
             events = COALESCE($3, events), enabled = $4, \
             disabled_reason = CASE WHEN $4 = 1 THEN NULL ELSE disabled_reason END, \
             failing_since = CASE WHEN $4 = 1 AND enabled = 0 THEN NULL ELSE failing_since END, \
             updated_at = $5 WHERE app_id = $6 AND id = $7",
        )
        .bind(change.url)
        .bind(description)
        .bind(events)
        .bind(i64::from(enabled))
        .bind(self.now())
        .bind(app_id)
        .bind(id)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes an endpoint with its messages and attempts; false when it does not exist.
    pub async fn delete_endpoint(&self, app_id: &str, id: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        // Children first: foreign-key cascades are not relied on (SQLite enforces them only
        // with the pragma on).
        for sql in [
            "DELETE FROM endpoint_attempts WHERE endpoint_id = $1",
            "DELETE FROM endpoint_messages WHERE endpoint_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        let r = sqlx::query("DELETE FROM event_endpoints WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Replaces the secret; the old one keeps signing until `grace_until` (unix ms). False
    /// when the endpoint does not exist.
    pub async fn rotate_endpoint_secret(
        &self,
        app_id: &str,
        id: &str,
        new_secret: &str,
        grace_until: i64,
    ) -> anyhow::Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT secret FROM event_endpoints WHERE app_id = $1 AND id = $2")
                .bind(app_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((sealed_old,)) = row else {
            return Ok(false);
        };
        let old = self.open(ENDPOINT_SECRET, id, &sealed_old)?;
        let previous = self.seal(ENDPOINT_PREVIOUS_SECRET, id, &old)?;
        let current = self.seal(ENDPOINT_SECRET, id, new_secret)?;
        let mut turn = self.write_turn().await?;
        // Only if the secret is still the one read: two rotations at once must not both win.
        let r = sqlx::query(
            "UPDATE event_endpoints SET secret = $1, previous_secret = $2, \
             previous_secret_expires_at = $3, updated_at = $4 \
             WHERE app_id = $5 AND id = $6 AND secret = $7",
        )
        .bind(current)
        .bind(previous)
        .bind(grace_until)
        .bind(self.now())
        .bind(app_id)
        .bind(id)
        .bind(sealed_old)
        .execute(turn.db())
        .await?;
        anyhow::ensure!(
            r.rows_affected() == 1,
            "the secret changed during the rotation"
        );
        Ok(true)
    }

    /// The URL and the secrets that sign a message to endpoint `id` now.
    pub async fn signing_secrets(&self, id: &str) -> anyhow::Result<Option<SigningSecrets>> {
        type Row = (String, i64, String, Option<String>, Option<i64>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT url, enabled, secret, previous_secret, previous_secret_expires_at \
             FROM event_endpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((url, enabled, secret, previous, expires)) = row else {
            return Ok(None);
        };
        let mut secrets = vec![self.open(ENDPOINT_SECRET, id, &secret)?];
        if let (Some(previous), Some(expires)) = (previous, expires) {
            if expires > self.now() {
                secrets.push(self.open(ENDPOINT_PREVIOUS_SECRET, id, &previous)?);
            }
        }
        Ok(Some(SigningSecrets {
            url,
            enabled: enabled != 0,
            secrets,
        }))
    }

    /// Sets (or, with `None`, removes) the app's legacy callback: the endpoint subscribed to
    /// `device.pruned` that `PUT /v1/app/callback` manages.
    pub async fn set_callback(
        &self,
        app_id: &str,
        target: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let existing: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM event_endpoints WHERE app_id = $1 AND legacy_callback = 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        match (existing, target) {
            (Some((id,)), Some((url, secret))) => {
                // In place, so the messages still pending go to the new URL, as before.
                let sealed = self.seal(ENDPOINT_SECRET, &id, secret)?;
                let mut turn = self.write_turn().await?;
                sqlx::query(
                    "UPDATE event_endpoints SET url = $1, secret = $2, previous_secret = NULL, \
                     previous_secret_expires_at = NULL, enabled = 1, disabled_reason = NULL, \
                     failing_since = NULL, updated_at = $3 WHERE id = $4",
                )
                .bind(url)
                .bind(sealed)
                .bind(self.now())
                .bind(&id)
                .execute(turn.db())
                .await?;
            }
            (None, Some((url, secret))) => {
                let new = NewEndpoint {
                    url,
                    description: Some("callback (PUT /v1/app/callback)"),
                    events: &[EventType::DevicePruned],
                    secret,
                };
                self.insert_endpoint(&new_id("ep"), app_id, &new, true)
                    .await?;
            }
            (Some((id,)), None) => {
                self.delete_endpoint(app_id, &id).await?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The URL of the app's legacy callback, when set.
    pub async fn callback_url(&self, app_id: &str) -> anyhow::Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT url FROM event_endpoints WHERE app_id = $1 AND legacy_callback = 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(url,)| url))
    }

    /// The app's legacy callback URL and its secret, when set.
    pub async fn callback_target(&self, app_id: &str) -> anyhow::Result<Option<CallbackTarget>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM event_endpoints WHERE app_id = $1 AND legacy_callback = 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id,)) = row else { return Ok(None) };
        Ok(self.signing_secrets(&id).await?.and_then(|s| {
            let secret = s.secrets.into_iter().next()?;
            Some(CallbackTarget { url: s.url, secret })
        }))
    }

    /// Moves each app's callback from `apps.callback_url/callback_secret` into a legacy
    /// endpoint, with the messages still queued for it, one app per transaction. Runs at
    /// start-up after the plaintext pass; the guarded update makes concurrent starts safe.
    pub(crate) async fn adopt_legacy_callbacks(&self) -> anyhow::Result<usize> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, callback_url, callback_secret FROM apps \
             WHERE callback_url IS NOT NULL AND callback_secret IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut adopted = 0;
        for (app_id, url, sealed) in rows {
            let secret = self.open(CALLBACK_SECRET, &app_id, &sealed)?;
            let id = new_id("ep");
            let resealed = self.seal(ENDPOINT_SECRET, &id, &secret)?;
            let now = self.now();
            let mut turn = self.write_turn().await?;
            let mut tx = turn.begin().await?;
            let taken = sqlx::query(
                "UPDATE apps SET callback_url = NULL, callback_secret = NULL \
                 WHERE id = $1 AND callback_secret = $2",
            )
            .bind(&app_id)
            .bind(&sealed)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 {
                continue;
            }
            adopt_one(&mut tx, &app_id, &id, &url, &resealed, now).await?;
            tx.commit().await?;
            adopted += 1;
        }
        Ok(adopted)
    }
}

/// Inserts the legacy endpoint `id` and moves the app's queued callbacks to it.
async fn adopt_one(
    conn: &mut AnyConnection,
    app_id: &str,
    id: &str,
    url: &str,
    sealed_secret: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM event_endpoints WHERE app_id = $1 AND legacy_callback = 1")
        .bind(app_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO event_endpoints (id, app_id, url, description, events, enabled, secret, \
         legacy_callback, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, 1, $7, $7)",
    )
    .bind(id)
    .bind(app_id)
    .bind(url)
    .bind("callback (PUT /v1/app/callback)")
    .bind(serde_json::to_string(&[EventType::DevicePruned])?)
    .bind(sealed_secret)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO endpoint_messages (id, endpoint_id, app_id, event_type, body, status, \
         attempts, next_attempt_at, created_at) \
         SELECT id, $1, app_id, $2, body, $3, attempts, next_attempt_at, created_at \
         FROM callback_outbox WHERE app_id = $4 AND status = 'queued'",
    )
    .bind(id)
    .bind(EventType::DevicePruned)
    .bind(MessageStatus::Pending)
    .bind(app_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM callback_outbox WHERE app_id = $1 AND status = 'queued'")
        .bind(app_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
