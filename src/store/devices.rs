//! The device registry: one row per (app, token).

use serde_json::Value;

use super::Store;
use crate::model::device::{DeviceRegistration, DeviceState};
use crate::model::{ApnsEnvironment, Platform};
use crate::redact::Redacted;

/// A registered device.
#[derive(Clone, Debug)]
pub struct Device {
    /// Owning app.
    pub app_id: String,
    /// Provider token (APNs hex or FCM registration token).
    pub token: String,
    /// Push platform.
    pub platform: Platform,
    /// The user the device belongs to.
    pub user_id: Option<String>,
    /// BCP-47 locale.
    pub locale: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// App version string.
    pub app_version: Option<String>,
    /// APNs environment (APNs devices only).
    pub environment: Option<ApnsEnvironment>,
    /// APNs topic (bundle id).
    pub topic: Option<String>,
    /// Free attributes: always a JSON object.
    pub attributes: Value,
    /// Tags.
    pub tags: Vec<String>,
    /// First registration, unix ms.
    pub created_at: i64,
    /// Last registration, unix ms.
    pub updated_at: i64,
    /// Whether it is sent to.
    pub state: DeviceState,
    /// The provider's reason for a suspect or pruned device.
    pub state_reason: Option<String>,
    /// When it became suspect or pruned, unix ms.
    pub state_at: Option<i64>,
}

/// A device row as stored: attributes and tags are JSON text.
#[derive(sqlx::FromRow)]
pub(super) struct DeviceRow {
    app_id: String,
    token: String,
    platform: Platform,
    user_id: Option<String>,
    locale: Option<String>,
    timezone: Option<String>,
    app_version: Option<String>,
    environment: Option<ApnsEnvironment>,
    topic: Option<String>,
    attributes: String,
    tags: String,
    created_at: i64,
    updated_at: i64,
    state: DeviceState,
    state_reason: Option<String>,
    state_at: Option<i64>,
}

impl TryFrom<DeviceRow> for Device {
    type Error = anyhow::Error;

    fn try_from(r: DeviceRow) -> anyhow::Result<Self> {
        // Registration stores only a JSON object and a list of strings: anything else is
        // corrupt, and guessing (an empty object) would change which rules match the device.
        let corrupt = |field: &str, why: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "device {} of app {}: stored {field} {why}",
                Redacted(&r.token),
                r.app_id
            )
        };
        let attributes: Value = serde_json::from_str(&r.attributes)
            .map_err(|e| corrupt("attributes", &format_args!("are not JSON: {e}")))?;
        if !attributes.is_object() {
            return Err(corrupt("attributes", &"are not a JSON object"));
        }
        let tags: Vec<String> = serde_json::from_str(&r.tags)
            .map_err(|e| corrupt("tags", &format_args!("are not a list of strings: {e}")))?;
        Ok(Self {
            app_id: r.app_id,
            token: r.token,
            platform: r.platform,
            user_id: r.user_id,
            locale: r.locale,
            timezone: r.timezone,
            app_version: r.app_version,
            environment: r.environment,
            topic: r.topic,
            attributes,
            tags,
            created_at: r.created_at,
            updated_at: r.updated_at,
            state: r.state,
            state_reason: r.state_reason,
            state_at: r.state_at,
        })
    }
}

/// The columns a registration writes.
pub(super) const DEVICE_COLUMNS: &str =
    "app_id, token, platform, user_id, locale, timezone, app_version, \
     environment, topic, attributes, tags, created_at, updated_at";
/// The columns a read returns: the registration and the state.
pub(super) const DEVICE_READ: &str =
    "app_id, token, platform, user_id, locale, timezone, app_version, \
     environment, topic, attributes, tags, created_at, updated_at, state, state_reason, state_at";

impl Store {
    /// Registers or updates a device; returns it and whether it was new.
    /// Re-registering moves the token to the new user and refreshes `updated_at`.
    pub async fn upsert_device(
        &self,
        app_id: &str,
        token: &str,
        reg: &DeviceRegistration,
    ) -> anyhow::Result<(Device, bool)> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let sql = format!(
            "INSERT INTO devices ({DEVICE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (app_id, token) DO UPDATE SET \
               platform = excluded.platform, user_id = excluded.user_id, locale = excluded.locale, \
               timezone = excluded.timezone, app_version = excluded.app_version, \
               environment = excluded.environment, topic = excluded.topic, \
               attributes = excluded.attributes, tags = excluded.tags, \
               updated_at = CASE WHEN excluded.updated_at > devices.updated_at \
                 THEN excluded.updated_at ELSE devices.updated_at + 1 END, \
               state = 'active', state_reason = NULL, state_at = NULL \
             RETURNING {DEVICE_READ}"
        );
        let device: Device = sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(token)
            .bind(reg.platform)
            .bind(&reg.user_id)
            .bind(&reg.locale)
            .bind(&reg.timezone)
            .bind(&reg.app_version)
            .bind(reg.environment)
            .bind(&reg.topic)
            .bind(reg.attributes.to_string())
            .bind(serde_json::to_string(&reg.tags)?)
            .bind(now)
            .fetch_one(turn.db())
            .await?
            .try_into()?;
        let created = device.created_at == device.updated_at;
        Ok((device, created))
    }

    /// Updates a registration only while the device is still registered to the user it names
    /// (`reg.user_id`); `None` when it is not (or no longer) so. Keeping a user needs no proof,
    /// so this write must not land on a device that moved to someone else or was deleted
    /// since the caller looked.
    pub async fn update_device_keeping_user(
        &self,
        app_id: &str,
        token: &str,
        reg: &DeviceRegistration,
    ) -> anyhow::Result<Option<Device>> {
        let Some(user_id) = &reg.user_id else {
            return Ok(None);
        };
        let mut turn = self.write_turn().await?;
        let sql = format!(
            "UPDATE devices SET platform = $3, locale = $5, timezone = $6, app_version = $7, \
               environment = $8, topic = $9, attributes = $10, tags = $11, \
               updated_at = CASE WHEN $12 > updated_at THEN $12 ELSE updated_at + 1 END, \
               state = 'active', state_reason = NULL, state_at = NULL \
             WHERE app_id = $1 AND token = $2 AND user_id = $4 \
             RETURNING {DEVICE_READ}"
        );
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(token)
            .bind(reg.platform)
            .bind(user_id)
            .bind(&reg.locale)
            .bind(&reg.timezone)
            .bind(&reg.app_version)
            .bind(reg.environment)
            .bind(&reg.topic)
            .bind(reg.attributes.to_string())
            .bind(serde_json::to_string(&reg.tags)?)
            .bind(self.now())
            .fetch_optional(turn.db())
            .await?
            .map(Device::try_from)
            .transpose()
    }

    /// One device of an app.
    pub async fn get_device(&self, app_id: &str, token: &str) -> anyhow::Result<Option<Device>> {
        let sql = format!("SELECT {DEVICE_READ} FROM devices WHERE app_id = $1 AND token = $2");
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(token)
            .fetch_optional(&self.pool)
            .await?
            .map(Device::try_from)
            .transpose()
    }

    /// Unregisters a device; false when it did not exist.
    pub async fn delete_device(&self, app_id: &str, token: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("DELETE FROM devices WHERE app_id = $1 AND token = $2")
            .bind(app_id)
            .bind(token)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A page of a user's devices ordered by token, starting after `after`.
    pub async fn list_user_devices(
        &self,
        app_id: &str,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<Device>> {
        let sql = format!(
            "SELECT {DEVICE_READ} FROM devices WHERE app_id = $1 AND user_id = $2 \
             AND token > $3 ORDER BY token LIMIT $4"
        );
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(user_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Device::try_from)
            .collect()
    }

    /// Active devices of the given users (any number; queried in chunks).
    pub async fn devices_of_users(
        &self,
        app_id: &str,
        users: &[String],
    ) -> anyhow::Result<Vec<Device>> {
        self.devices_where_in(app_id, "user_id", users).await
    }

    /// Active devices among the given tokens.
    pub async fn devices_by_tokens(
        &self,
        app_id: &str,
        tokens: &[String],
    ) -> anyhow::Result<Vec<Device>> {
        self.devices_where_in(app_id, "token", tokens).await
    }

    async fn devices_where_in(
        &self,
        app_id: &str,
        column: &'static str,
        values: &[String],
    ) -> anyhow::Result<Vec<Device>> {
        // No stored value holds a NUL (PostgreSQL refuses it in text, and registration checks
        // tokens), so such a value matches nothing; binding it would fail the whole query on
        // PostgreSQL and wedge the fan-out of the event that named it.
        let values: Vec<&String> = values.iter().filter(|v| !v.contains('\0')).collect();
        let mut out = Vec::new();
        for chunk in values.chunks(LOOKUP_CHUNK) {
            let (sql, args) = where_in(self.backend(), column, app_id, chunk)?;
            // Only active devices are sent to. The state is checked here, not in SQL, so the
            // planner looks rows up by user or token rather than scanning every active device
            // of the app through the state index.
            for row in sqlx::query_as_with::<_, DeviceRow, _>(&sql, args)
                .fetch_all(&self.pool)
                .await?
            {
                if row.state == DeviceState::Active {
                    out.push(Device::try_from(row)?);
                }
            }
        }
        out.sort_by(|a, b| a.token.cmp(&b.token));
        Ok(out)
    }

    /// A page of an app's active devices ordered by token (for attribute/tag audiences).
    pub async fn devices_page(
        &self,
        app_id: &str,
        platform: Option<&str>,
        after: &str,
        limit: u32,
    ) -> anyhow::Result<Vec<Device>> {
        let sql = format!(
            "SELECT {DEVICE_READ} FROM devices WHERE app_id = $1 AND state = 'active' \
             AND ($2 = '' OR platform = $2) AND token > $3 ORDER BY token LIMIT $4"
        );
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(platform.unwrap_or(""))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Device::try_from)
            .collect()
    }

    /// Registers many devices in one transaction (bulk import, benchmarks), in multi-row
    /// statements; existing tokens are updated as by `upsert_device`.
    pub async fn import_devices(
        &self,
        app_id: &str,
        devices: &[(String, DeviceRegistration)],
    ) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        for chunk in devices.chunks(self.rows_per_statement()) {
            let mut sql = format!("INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ");
            sql.push_str(&super::values_rows(
                chunk.len(),
                "($1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, $2, $2)",
                3,
            ));
            sql.push_str(
                " ON CONFLICT (app_id, token) DO UPDATE SET platform = excluded.platform, \
                 user_id = excluded.user_id, locale = excluded.locale, timezone = excluded.timezone, \
                 app_version = excluded.app_version, environment = excluded.environment, \
                 topic = excluded.topic, attributes = excluded.attributes, tags = excluded.tags, \
                 updated_at = excluded.updated_at, state = 'active', state_reason = NULL, \
                 state_at = NULL",
            );
            let mut q = sqlx::query(&sql).bind(app_id).bind(now);
            for (token, reg) in chunk {
                q = q
                    .bind(token)
                    .bind(reg.platform)
                    .bind(&reg.user_id)
                    .bind(&reg.locale)
                    .bind(&reg.timezone)
                    .bind(&reg.app_version)
                    .bind(reg.environment)
                    .bind(&reg.topic)
                    .bind(reg.attributes.to_string())
                    .bind(serde_json::to_string(&reg.tags)?);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A page of an app's devices in `state`, ordered by token, starting after `after`.
    pub async fn devices_in_state(
        &self,
        app_id: &str,
        state: DeviceState,
        after: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<Device>> {
        let sql = format!(
            "SELECT {DEVICE_READ} FROM devices WHERE app_id = $1 AND state = $2 \
             AND token > $3 ORDER BY token LIMIT $4"
        );
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(state)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Device::try_from)
            .collect()
    }

    /// Makes a suspect or pruned device active again; `None` when there is no such device.
    pub async fn restore_device(
        &self,
        app_id: &str,
        token: &str,
    ) -> anyhow::Result<Option<Device>> {
        let mut turn = self.write_turn().await?;
        let sql = format!(
            "UPDATE devices SET state = 'active', state_reason = NULL, state_at = NULL \
             WHERE app_id = $1 AND token = $2 RETURNING {DEVICE_READ}"
        );
        sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(app_id)
            .bind(token)
            .fetch_optional(turn.db())
            .await?
            .map(Device::try_from)
            .transpose()
    }

    /// Makes active again the devices of `app_id` marked suspect for `reason` since
    /// `since_ms` (the burst guard found the reason was the app's configuration, not the
    /// devices). Returns how many.
    pub async fn restore_suspects(
        &self,
        app_id: &str,
        reason: &str,
        since_ms: i64,
    ) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(
            "UPDATE devices SET state = 'active', state_reason = NULL, state_at = NULL \
             WHERE app_id = $1 AND state = 'suspect' AND state_reason = $2 AND state_at >= $3",
        )
        .bind(app_id)
        .bind(reason)
        .bind(since_ms)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }
}

/// The devices of an app whose `column` is one of `n` values (`$2` on). No `ORDER BY`: with
/// one, SQLite walks the app's whole primary key in token order instead of probing the
/// user index once per value; the caller sorts.
/// Values looked up per statement: the lookups bind positionally on SQLite (see
/// `store/statement.rs`), so a long list costs no more per value than a short one.
const LOOKUP_CHUNK: usize = 500;

/// The devices of `app_id`, in any state, whose `column` is one of `values`.
fn where_in<'q>(
    backend: super::Backend,
    column: &str,
    app_id: &'q str,
    values: &[&'q String],
) -> anyhow::Result<(String, sqlx::any::AnyArguments<'q>)> {
    let mut sql = super::statement::Statement::new(
        backend,
        &format!("SELECT {DEVICE_READ} FROM devices WHERE app_id = "),
    );
    sql.bind(app_id)
        .push(&format!(" AND {column} IN ("))
        .list(values.iter().map(|v| v.as_str()))
        .push(")");
    sql.finish()
}

#[cfg(test)]
mod tests {
    use super::where_in;
    use crate::store::Store;

    /// Fan-out looks devices up by user or token, never by scanning the app's devices: with
    /// the state index beside them, a query that also filtered on the state let SQLite scan
    /// every active device of the app once per event.
    #[tokio::test]
    async fn fan_out_lookups_use_the_user_and_token_indexes() {
        let keyring =
            crate::secrets::keyring_for(&Default::default(), "sqlite::memory:").expect("keyring");
        let store = Store::connect("sqlite::memory:", 1, keyring)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        for (column, index) in [
            ("user_id", "devices_user"),
            ("token", "sqlite_autoindex_devices_1"),
        ] {
            let values = ["a".to_string(), "b".to_string(), "c".to_string()];
            let values: Vec<&String> = values.iter().collect();
            let (sql, args) = where_in(store.backend(), column, "app", &values).expect("statement");
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as_with(&format!("EXPLAIN QUERY PLAN {sql}"), args)
                    .fetch_all(&store.pool)
                    .await
                    .expect("plan");
            let detail: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
            assert!(
                detail
                    .iter()
                    .any(|d| d.contains(index) && d.contains(column)),
                "{column}: {detail:?}"
            );
        }
    }
}
