//! Webhook sources: a named sender per app with a signature scheme and rotating secrets.
//!
//! HMAC verification needs the secrets themselves, so they cannot be hashed: the list is
//! stored sealed under the master key (one value per source), and opened when a source is
//! read. The API never returns them after creation except as ids and hints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::sealed::SOURCE_SECRETS;
use super::{new_id, Store};
use crate::model::source::NewSource;
use crate::signature::Scheme;

/// One verification secret; any active secret of a source verifies (rotation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceSecret {
    /// `sec_...` identifier used to remove it.
    pub id: String,
    /// The secret itself.
    pub secret: String,
    /// When it was added, unix ms.
    pub created_at: i64,
}

/// A configured webhook source.
#[derive(Clone, Debug)]
pub struct WebhookSource {
    /// `src_...` identifier.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Name used in the webhook URL.
    pub name: String,
    /// Signature scheme.
    pub scheme: Scheme,
    /// Active secrets.
    pub secrets: Vec<SourceSecret>,
    /// JSON path of the event type in the body (when the scheme has no type header).
    pub event_type_path: Option<String>,
    /// Allowed client networks; empty means any.
    pub allowed_cidrs: Vec<IpNet>,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct SourceRow {
    id: String,
    app_id: String,
    name: String,
    scheme: String,
    secrets: String,
    event_type_path: Option<String>,
    allowed_cidrs: String,
    created_at: i64,
    updated_at: i64,
}

impl SourceRow {
    /// The source, its secrets opened with the store's keys.
    fn decode(self, store: &Store) -> anyhow::Result<WebhookSource> {
        let r = self;
        let secrets = store.open(SOURCE_SECRETS, &r.id, &r.secrets)?;
        Ok(WebhookSource {
            scheme: Scheme::parse(&r.scheme)
                .ok_or_else(|| anyhow::anyhow!("unknown scheme {} in source {}", r.scheme, r.id))?,
            secrets: serde_json::from_str(&secrets)
                .map_err(|_| anyhow::anyhow!("the secrets of source {} are not a list", r.id))?,
            allowed_cidrs: serde_json::from_str(&r.allowed_cidrs)?,
            id: r.id,
            app_id: r.app_id,
            name: r.name,
            event_type_path: r.event_type_path,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// How long a cached source may be served.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// A cached lookup: when it was made, and the source (or its absence).
type CachedSource = (Instant, Option<Arc<WebhookSource>>);

/// A small TTL cache of sources (including misses, so unknown-source floods stay cheap).
#[derive(Debug, Default)]
pub(crate) struct SourceCache {
    entries: std::sync::Mutex<HashMap<(String, String), CachedSource>>,
}

impl SourceCache {
    fn get(&self, app_id: &str, name: &str) -> Option<Option<Arc<WebhookSource>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(app_id.to_string(), name.to_string()))
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, s)| s.clone())
    }

    fn put(&self, app_id: &str, name: &str, source: Option<Arc<WebhookSource>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(
            (app_id.to_string(), name.to_string()),
            (Instant::now(), source),
        );
    }

    fn forget(&self, app_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(app, _), _| app != app_id);
    }
}

const SOURCE_COLUMNS: &str =
    "id, app_id, name, scheme, secrets, event_type_path, allowed_cidrs, created_at, updated_at";

impl Store {
    /// Creates a source. A duplicate name within the app is a unique violation.
    pub async fn create_source(
        &self,
        app_id: &str,
        new: &NewSource,
    ) -> Result<WebhookSource, sqlx::Error> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let secrets: Vec<SourceSecret> = new
            .secrets
            .iter()
            .map(|s| SourceSecret {
                id: new_id("sec"),
                secret: s.clone(),
                created_at: now,
            })
            .collect();
        let source = WebhookSource {
            id: new_id("src"),
            app_id: app_id.to_string(),
            name: new.name.clone(),
            scheme: new.scheme,
            secrets,
            event_type_path: new.event_type_path.clone(),
            allowed_cidrs: new.allowed_cidrs.clone(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(&format!(
            "INSERT INTO webhook_sources ({SOURCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        ))
        .bind(&source.id)
        .bind(app_id)
        .bind(&source.name)
        .bind(source.scheme.as_str())
        .bind(self.sealed_secrets(&source).map_err(|e| sqlx::Error::Encode(e.into()))?)
        .bind(&source.event_type_path)
        .bind(json_text(&source.allowed_cidrs)?)
        .bind(now)
        .execute(turn.db())
        .await?;
        self.source_cache.forget(app_id);
        Ok(source)
    }

    /// A source by app and name.
    pub async fn get_source(
        &self,
        app_id: &str,
        name: &str,
    ) -> anyhow::Result<Option<WebhookSource>> {
        let row = sqlx::query_as::<_, SourceRow>(&format!(
            "SELECT {SOURCE_COLUMNS} FROM webhook_sources WHERE app_id = $1 AND name = $2"
        ))
        .bind(app_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.decode(self)).transpose()
    }

    /// A source by app and name for webhook verification, served from a short-lived cache.
    pub async fn get_source_cached(
        &self,
        app_id: &str,
        name: &str,
    ) -> anyhow::Result<Option<Arc<WebhookSource>>> {
        if let Some(hit) = self.source_cache.get(app_id, name) {
            return Ok(hit);
        }
        let source = self.get_source(app_id, name).await?.map(Arc::new);
        self.source_cache.put(app_id, name, source.clone());
        Ok(source)
    }

    /// All sources of an app.
    pub async fn list_sources(&self, app_id: &str) -> anyhow::Result<Vec<WebhookSource>> {
        let rows = sqlx::query_as::<_, SourceRow>(&format!(
            "SELECT {SOURCE_COLUMNS} FROM webhook_sources WHERE app_id = $1 ORDER BY name"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| r.decode(self)).collect()
    }

    /// Replaces the mutable settings and secrets of a source.
    pub async fn update_source(&self, source: &WebhookSource) -> anyhow::Result<()> {
        let secrets = self.sealed_secrets(source)?;
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "UPDATE webhook_sources SET secrets = $1, event_type_path = $2, allowed_cidrs = $3, \
             updated_at = $4 WHERE id = $5 AND app_id = $6",
        )
        .bind(secrets)
        .bind(&source.event_type_path)
        .bind(json_text(&source.allowed_cidrs)?)
        .bind(self.now())
        .bind(&source.id)
        .bind(&source.app_id)
        .execute(turn.db())
        .await?;
        self.source_cache.forget(&source.app_id);
        Ok(())
    }

    /// Deletes a source; its past events stay (with no source).
    pub async fn delete_source(&self, app_id: &str, name: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("DELETE FROM webhook_sources WHERE app_id = $1 AND name = $2")
            .bind(app_id)
            .bind(name)
            .execute(turn.db())
            .await?;
        self.source_cache.forget(app_id);
        Ok(r.rows_affected() > 0)
    }
}

impl Store {
    /// The source's secrets as stored: their JSON list, sealed for the source's row.
    fn sealed_secrets(&self, source: &WebhookSource) -> anyhow::Result<String> {
        self.seal(SOURCE_SECRETS, &source.id, &json_text(&source.secrets)?)
    }
}

/// A list column's JSON text. Failing is an error: an allowlist stored as `[]` would let
/// any network in.
fn json_text<T: Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}
