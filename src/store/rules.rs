//! Named templates and rules of an app. Specs are stored as JSON text and validated by the
//! API before they get here.

use super::{new_id, Store};

/// A stored named object (template or rule) with its JSON spec.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NamedSpec {
    /// Identifier.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Unique name within the app.
    pub name: String,
    /// JSON spec text.
    pub spec: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
}

/// Which table a `NamedSpec` lives in.
#[derive(Clone, Copy, Debug)]
pub enum SpecKind {
    /// `templates`.
    Template,
    /// `rules`.
    Rule,
}

impl SpecKind {
    fn table(self) -> &'static str {
        match self {
            Self::Template => "templates",
            Self::Rule => "rules",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Template => "tpl",
            Self::Rule => "rule",
        }
    }
}

impl Store {
    /// Creates or replaces a named spec; returns it and whether it was new.
    pub async fn put_spec(
        &self,
        kind: SpecKind,
        app_id: &str,
        name: &str,
        spec: &str,
    ) -> anyhow::Result<(NamedSpec, bool)> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let row = sqlx::query_as::<_, NamedSpec>(&format!(
            "INSERT INTO {table} (id, app_id, name, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (app_id, name) DO UPDATE SET spec = excluded.spec, \
               updated_at = CASE WHEN excluded.updated_at > {table}.updated_at \
                 THEN excluded.updated_at ELSE {table}.updated_at + 1 END \
             RETURNING id, app_id, name, spec, created_at, updated_at",
            table = kind.table()
        ))
        .bind(new_id(kind.prefix()))
        .bind(app_id)
        .bind(name)
        .bind(spec)
        .bind(now)
        .fetch_one(turn.db())
        .await?;
        let created = row.created_at == row.updated_at;
        Ok((row, created))
    }

    /// One named spec.
    pub async fn get_spec(
        &self,
        kind: SpecKind,
        app_id: &str,
        name: &str,
    ) -> anyhow::Result<Option<NamedSpec>> {
        Ok(sqlx::query_as::<_, NamedSpec>(&format!(
            "SELECT id, app_id, name, spec, created_at, updated_at FROM {} \
             WHERE app_id = $1 AND name = $2",
            kind.table()
        ))
        .bind(app_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// All named specs of an app, by name.
    pub async fn list_specs(&self, kind: SpecKind, app_id: &str) -> anyhow::Result<Vec<NamedSpec>> {
        Ok(sqlx::query_as::<_, NamedSpec>(&format!(
            "SELECT id, app_id, name, spec, created_at, updated_at FROM {} \
             WHERE app_id = $1 ORDER BY name",
            kind.table()
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a named spec.
    pub async fn delete_spec(
        &self,
        kind: SpecKind,
        app_id: &str,
        name: &str,
    ) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query(&format!(
            "DELETE FROM {} WHERE app_id = $1 AND name = $2",
            kind.table()
        ))
        .bind(app_id)
        .bind(name)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected() > 0)
    }
}
