//! Bulk device writes for imports: one batch of registrations per write transaction, telling
//! which were new, which changed and which were already stored as given (and so not written).

use std::collections::HashMap;

use super::devices::{DeviceRow, DEVICE_COLUMNS, DEVICE_READ};
use super::{values_rows, Device, Store};
use crate::model::device::{DeviceRegistration, DeviceState};

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Tokens not registered before.
    pub created: u64,
    /// Registered tokens whose registration (or state) changed.
    pub updated: u64,
    /// Registered tokens already stored exactly as given: not written.
    pub unchanged: u64,
}

/// Whether `device` is stored as `reg` registers it, active.
fn same(device: &Device, reg: &DeviceRegistration) -> bool {
    device.state == DeviceState::Active
        && device.platform == reg.platform
        && device.user_id == reg.user_id
        && device.locale == reg.locale
        && device.timezone == reg.timezone
        && device.app_version == reg.app_version
        && device.environment == reg.environment
        && device.topic == reg.topic
        && device.attributes == reg.attributes
        && device.tags == reg.tags
}

impl Store {
    /// Upserts `devices` of `app_id` in one transaction, as `upsert_device` would one by one
    /// in order (a token given twice ends as its last line says). Registrations already
    /// stored as given are left alone, so re-importing a file writes nothing.
    pub async fn upsert_device_batch(
        &self,
        app_id: &str,
        devices: &[(String, DeviceRegistration)],
    ) -> anyhow::Result<BatchCounts> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let per_statement = self.rows_per_statement();
        let mut stored: HashMap<String, Device> = HashMap::with_capacity(devices.len());
        let mut tokens: Vec<&str> = devices.iter().map(|(t, _)| t.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        for chunk in tokens.chunks(per_statement) {
            let sql = format!(
                "SELECT {DEVICE_READ} FROM devices WHERE app_id = $1 AND token IN ({})",
                values_rows(chunk.len(), "?", 2)
            );
            let mut q = sqlx::query_as::<_, DeviceRow>(&sql).bind(app_id);
            for token in chunk {
                q = q.bind(*token);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let device = Device::try_from(row)?;
                stored.insert(device.token.clone(), device);
            }
        }
        let mut counts = BatchCounts::default();
        // The last registration of each token, in first-seen order.
        let mut writes: Vec<(&str, &DeviceRegistration)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        let mut seen: HashMap<&str, &DeviceRegistration> = HashMap::new();
        for (token, reg) in devices {
            let before = seen.get(token.as_str()).copied();
            let unchanged = match before {
                Some(prev) => prev == reg,
                None => stored.get(token).is_some_and(|d| same(d, reg)),
            };
            if before.is_none() && !stored.contains_key(token) {
                counts.created += 1;
            } else if unchanged {
                counts.unchanged += 1;
            } else {
                counts.updated += 1;
            }
            seen.insert(token, reg);
            if !unchanged {
                match slot.get(token.as_str()) {
                    Some(&i) => writes[i].1 = reg,
                    None => {
                        slot.insert(token, writes.len());
                        writes.push((token, reg));
                    }
                }
            }
        }
        for chunk in writes.chunks(per_statement) {
            let mut sql = format!("INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ");
            sql.push_str(&values_rows(
                chunk.len(),
                "($1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, $2, $2)",
                3,
            ));
            sql.push_str(
                " ON CONFLICT (app_id, token) DO UPDATE SET platform = excluded.platform, \
                 user_id = excluded.user_id, locale = excluded.locale, timezone = excluded.timezone, \
                 app_version = excluded.app_version, environment = excluded.environment, \
                 topic = excluded.topic, attributes = excluded.attributes, tags = excluded.tags, \
                 updated_at = CASE WHEN excluded.updated_at > devices.updated_at \
                   THEN excluded.updated_at ELSE devices.updated_at + 1 END, \
                 state = 'active', state_reason = NULL, state_at = NULL",
            );
            let mut q = sqlx::query(&sql).bind(app_id).bind(now);
            for (token, reg) in chunk {
                q = q
                    .bind(*token)
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
        Ok(counts)
    }
}
