//! The columns that hold sealed secrets, and the passes over all of them: at start-up, check
//! that every sealed value opens, then seal those still stored in plaintext (once: a sealed
//! value is never sealed again); on `secrets rotate`, seal again under the current key every
//! value sealed under an older one. The read and write paths of each column (in `apps`,
//! `endpoints`, `sources`, `user_auth`, `credentials`) seal and open through [`Store::seal`] and [`Store::open`].
//!
//! Every pass first opens every value and writes only when all of them open, so a wrong key
//! changes nothing. Each write replaces a value only if it is still the one read, so passes of
//! several instances, or of an instance beside a running one, cannot undo a newer write.

use anyhow::Context;

use super::Store;
use crate::secrets::{self, Field, OpenError};

/// A column of sealed values, and the column that names their row in the associated data.
pub(crate) struct SealedColumn {
    /// Table and column.
    pub field: Field,
    /// The row's primary key column.
    pub row_key: &'static str,
}

/// `apps.user_auth_secret`: the secret user-id proofs are made with.
pub(crate) const USER_AUTH_SECRET: Field = Field {
    table: "apps",
    column: "user_auth_secret",
};
/// `apps.callback_secret`: the secret callbacks to the app's backend are signed with.
pub(crate) const CALLBACK_SECRET: Field = Field {
    table: "apps",
    column: "callback_secret",
};
/// `event_endpoints.secret`: the secret messages to an event endpoint are signed with.
pub(crate) const ENDPOINT_SECRET: Field = Field {
    table: "event_endpoints",
    column: "secret",
};
/// `event_endpoints.previous_secret`: the replaced secret, signing too during a rotation.
pub(crate) const ENDPOINT_PREVIOUS_SECRET: Field = Field {
    table: "event_endpoints",
    column: "previous_secret",
};
/// `webhook_sources.secrets`: a source's verification secrets (the whole JSON list).
pub(crate) const SOURCE_SECRETS: Field = Field {
    table: "webhook_sources",
    column: "secrets",
};

/// `app_credentials.private_key`: an app's APNs signing key or FCM service-account key.
pub(crate) const CREDENTIAL_KEY: Field = Field {
    table: "app_credentials",
    column: "private_key",
};

/// `idempotency_keys.response_body`: a remembered answer, which may show a secret (a new
/// source's). Not in [`SEALED_COLUMNS`]: its rows live a day and have a two-column key, so
/// a rotation leaves them under the key they were sealed with, still open while that key
/// is among the previous keys.
pub(crate) const IDEMPOTENT_ANSWER: Field = Field {
    table: "idempotency_keys",
    column: "response_body",
};

/// Every column that holds secrets. A new secret column is added here, and the passes cover it.
const SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        field: USER_AUTH_SECRET,
        row_key: "id",
    },
    SealedColumn {
        field: CALLBACK_SECRET,
        row_key: "id",
    },
    SealedColumn {
        field: SOURCE_SECRETS,
        row_key: "id",
    },
    SealedColumn {
        field: CREDENTIAL_KEY,
        row_key: "id",
    },
    SealedColumn {
        field: ENDPOINT_SECRET,
        row_key: "id",
    },
    SealedColumn {
        field: ENDPOINT_PREVIOUS_SECRET,
        row_key: "id",
    },
];

/// Rows read per page of a pass.
const PAGE: i64 = 500;

/// What a pass over the sealed columns found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Values stored in plaintext.
    pub plaintext: usize,
    /// Values sealed under a previous key.
    pub under_previous_key: usize,
    /// Values already sealed under the current key.
    pub under_current_key: usize,
    /// Values written (sealed or sealed again) by this pass.
    pub written: usize,
}

/// One stored value: its row and text.
struct StoredValue {
    row: String,
    text: String,
}

impl Store {
    /// Seals `plaintext` for `row` of `field` under the current master key.
    pub(crate) fn seal(&self, field: Field, row: &str, plaintext: &str) -> anyhow::Result<String> {
        self.keyring.seal(field, row, plaintext)
    }

    /// Opens a value of `row` of `field`; an error names the place, never the value.
    pub(crate) fn open(&self, field: Field, row: &str, sealed: &str) -> Result<String, OpenError> {
        self.keyring.open(field, row, sealed)
    }

    /// The id of the key new values are sealed under.
    pub fn sealing_key_id(&self) -> secrets::KeyId {
        self.keyring.current_id()
    }

    /// Start-up pass: checks that every sealed value opens, then seals plaintext ones.
    pub(crate) async fn seal_plaintext_secrets(&self) -> anyhow::Result<SealReport> {
        self.reseal(|text| !secrets::is_sealed(text)).await
    }

    /// `secrets rotate`: seals again under the current key every value sealed under a
    /// previous one (and any still in plaintext). Afterwards no value needs a previous key.
    pub async fn rotate_secrets(&self) -> anyhow::Result<SealReport> {
        let current = self.keyring.current_id().to_string();
        self.reseal(move |text| secrets::sealed_by(text) != Some(current.as_str()))
            .await
    }

    /// Opens every value (failing on the first that does not open, before writing anything),
    /// then seals again those for which `rewrite` holds.
    async fn reseal(&self, rewrite: impl Fn(&str) -> bool) -> anyhow::Result<SealReport> {
        let mut report = SealReport::default();
        let current = self.keyring.current_id().to_string();
        let mut columns = Vec::with_capacity(SEALED_COLUMNS.len());
        for column in SEALED_COLUMNS {
            let values = self.stored_values(column).await?;
            for value in &values {
                if !secrets::is_sealed(&value.text) {
                    report.plaintext += 1;
                    continue;
                }
                self.open(column.field, &value.row, &value.text)
                    .map_err(|e| self.explain(e))?;
                if secrets::sealed_by(&value.text) == Some(current.as_str()) {
                    report.under_current_key += 1;
                } else {
                    report.under_previous_key += 1;
                }
            }
            columns.push((column, values));
        }
        for (column, values) in columns {
            let due: Vec<StoredValue> = values.into_iter().filter(|v| rewrite(&v.text)).collect();
            for page in due.chunks(PAGE as usize) {
                report.written += self.rewrite_page(column, page).await?;
            }
        }
        Ok(report)
    }

    /// Seals each value of `page` again under the current key, in one transaction. A value
    /// changed since it was read is left as it is now.
    async fn rewrite_page(
        &self,
        column: &SealedColumn,
        page: &[StoredValue],
    ) -> anyhow::Result<usize> {
        let Field {
            table,
            column: name,
        } = column.field;
        let sql = format!(
            "UPDATE {table} SET {name} = $1 WHERE {key} = $2 AND {name} = $3",
            key = column.row_key
        );
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let mut written = 0;
        for value in page {
            let plaintext = if secrets::is_sealed(&value.text) {
                self.open(column.field, &value.row, &value.text)?
            } else {
                value.text.clone()
            };
            let sealed = self.seal(column.field, &value.row, &plaintext)?;
            let r = sqlx::query(&sql)
                .bind(&sealed)
                .bind(&value.row)
                .bind(&value.text)
                .execute(&mut *tx)
                .await?;
            written += r.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Every non-null value of a column, page by page in key order.
    async fn stored_values(&self, column: &SealedColumn) -> anyhow::Result<Vec<StoredValue>> {
        let Field {
            table,
            column: name,
        } = column.field;
        let key = column.row_key;
        let sql = format!(
            "SELECT {key}, {name} FROM {table} WHERE {name} IS NOT NULL AND {key} > $1 \
             ORDER BY {key} LIMIT $2"
        );
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let rows: Vec<(String, String)> = sqlx::query_as(&sql)
                .bind(&after)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await
                .with_context(|| format!("reading {}", column.field))?;
            let full = rows.len() as i64 == PAGE;
            out.extend(
                rows.into_iter()
                    .map(|(row, text)| StoredValue { row, text }),
            );
            match out.last() {
                Some(last) if full => after = last.row.clone(),
                _ => return Ok(out),
            }
        }
    }

    /// After plaintext secrets were sealed, rewrites the SQLite file and empties its WAL, so
    /// no free page or old frame keeps a copy of them. (PostgreSQL keeps old row versions
    /// until its own `VACUUM FULL`; the README says so.)
    pub(crate) async fn forget_plaintext(&self) -> anyhow::Result<()> {
        if self.backend != super::Backend::Sqlite {
            return Ok(());
        }
        tracing::info!("compacting the database so that no copy of the plaintext secrets remains");
        let mut turn = self.write_turn().await?;
        sqlx::query("VACUUM")
            .execute(turn.db())
            .await
            .context("VACUUM after sealing")?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(turn.db())
            .await
            .context("checkpointing the WAL after sealing")?;
        Ok(())
    }

    /// Adds to a failed open where this process's key came from, which is what to check.
    fn explain(&self, e: OpenError) -> anyhow::Error {
        let hint = match self.keyring.source() {
            secrets::KeySource::Config => "the key is secrets.master_key; add the key the \
                 values need to secrets.previous_keys (with SQLite, the key file's content if \
                 the database was used with one)"
                .to_string(),
            secrets::KeySource::KeyFile { path, created } => format!(
                "the key is the key file {}{}; restore the key file the database was used \
                 with, or set secrets.master_key (and secrets.previous_keys) to the key it \
                 needs",
                path.display(),
                if *created {
                    ", created on this start because there was none"
                } else {
                    ""
                }
            ),
            secrets::KeySource::Ephemeral => "the key is a fresh in-memory key".to_string(),
        };
        anyhow::Error::new(WrongKey(e.to_string())).context(format!(
            "the stored secrets do not open with the configured keys, so nothing was changed \
             ({hint})"
        ))
    }
}

/// A stored secret does not open with this process's keys (a wrong or missing master key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WrongKey(String);
