//! Apps and their API keys. Keys are stored only as SHA-256 hashes of their secret part.
//! User-auth settings of an app live in `user_auth.rs`; its user-auth secret is stored sealed.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::sealed::USER_AUTH_SECRET;
use super::{new_id, Store};
use crate::user_auth::{generate_secret, ClientUserIds};

/// A tenant: every device, source and event belongs to exactly one app.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct App {
    /// `app_...` identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation time, unix ms.
    pub created_at: i64,
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Full access to the app's data; for backend systems.
    Server,
    /// Device registration only; safe to embed in mobile apps.
    Client,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "server" => Some(Self::Server),
            "client" => Some(Self::Client),
            _ => None,
        }
    }
}

/// A verified API key: who is calling and with what rights.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    /// Key identifier (the non-secret part).
    pub id: String,
    /// The app the key belongs to.
    pub app_id: String,
    /// Server or client.
    pub kind: KeyKind,
    /// Creation time, unix ms.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// A freshly created app with its plaintext keys, shown exactly once.
#[derive(Clone, Debug, Serialize)]
pub struct NewApp {
    /// The app.
    pub app: App,
    /// Full-access key.
    pub server_key: String,
    /// Registration-only key.
    pub client_key: String,
    /// Signs user ids for client-key registrations (`user_auth`); readable again later.
    pub user_auth_secret: String,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    app_id: String,
    kind: String,
    secret_hash: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl KeyRow {
    fn into_key(self) -> Option<ApiKey> {
        Some(ApiKey {
            kind: KeyKind::parse(&self.kind)?,
            id: self.id,
            app_id: self.app_id,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        })
    }
}

const KEY_PREFIX: &str = "pb";

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `pb_<kind>_<key id>_<secret>` into key id and secret.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.splitn(4, '_');
    let (prefix, _kind, id, secret) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (prefix == KEY_PREFIX && !id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

impl Store {
    /// Creates an app with one server key, one client key and a user-auth secret; client keys
    /// of a new app must prove the user ids they register.
    pub async fn create_app(&self, name: &str) -> anyhow::Result<NewApp> {
        let mut turn = self.write_turn().await?;
        let app = App {
            id: new_id("app"),
            name: name.to_string(),
            created_at: self.now(),
        };
        let user_auth_secret = generate_secret();
        let sealed = self.seal(USER_AUTH_SECRET, &app.id, &user_auth_secret)?;
        let mut tx = turn.begin().await?;
        sqlx::query(
            "INSERT INTO apps (id, name, created_at, user_auth_secret, client_user_ids) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&app.id)
        .bind(&app.name)
        .bind(app.created_at)
        .bind(&sealed)
        .bind(ClientUserIds::Verified.as_str())
        .execute(&mut *tx)
        .await?;
        let server_key = insert_key(&mut tx, &app.id, KeyKind::Server, self.now()).await?;
        let client_key = insert_key(&mut tx, &app.id, KeyKind::Client, self.now()).await?;
        tx.commit().await?;
        Ok(NewApp {
            app,
            server_key,
            client_key,
            user_auth_secret,
        })
    }

    /// All apps, oldest first.
    pub async fn list_apps(&self) -> anyhow::Result<Vec<App>> {
        Ok(sqlx::query_as::<_, App>(
            "SELECT id, name, created_at FROM apps ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One app by id.
    pub async fn get_app(&self, id: &str) -> anyhow::Result<Option<App>> {
        Ok(
            sqlx::query_as::<_, App>("SELECT id, name, created_at FROM apps WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Deletes an app and everything it owns.
    pub async fn delete_app(&self, id: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r = sqlx::query("DELETE FROM apps WHERE id = $1")
            .bind(id)
            .execute(turn.db())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Adds a key to an app (rotation); returns the plaintext key, shown once.
    pub async fn create_key(&self, app_id: &str, kind: KeyKind) -> anyhow::Result<String> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let key = insert_key(&mut tx, app_id, kind, self.now()).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Keys of an app (never their secrets).
    pub async fn list_keys(&self, app_id: &str) -> anyhow::Result<Vec<ApiKey>> {
        let rows = sqlx::query_as::<_, KeyRow>(
            "SELECT id, app_id, kind, secret_hash, created_at, revoked_at FROM api_keys \
             WHERE app_id = $1 ORDER BY created_at, id",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(KeyRow::into_key).collect())
    }

    /// Revokes a key; it stops authenticating immediately.
    pub async fn revoke_key(&self, key_id: &str) -> anyhow::Result<bool> {
        let mut turn = self.write_turn().await?;
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(self.now())
                .bind(key_id)
                .execute(turn.db())
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Resolves a presented key. The secret hash is compared in constant time.
    pub async fn authenticate(&self, presented: &str) -> anyhow::Result<Option<ApiKey>> {
        let Some((id, secret)) = parse_key(presented) else {
            return Ok(None);
        };
        let row = sqlx::query_as::<_, KeyRow>(
            "SELECT id, app_id, kind, secret_hash, created_at, revoked_at FROM api_keys \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let matches: bool = hash_secret(secret)
            .as_bytes()
            .ct_eq(row.secret_hash.as_bytes())
            .into();
        if !matches || row.revoked_at.is_some() {
            return Ok(None);
        }
        Ok(row.into_key())
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    app_id: &str,
    kind: KeyKind,
    now: i64,
) -> anyhow::Result<String> {
    let mut secret_bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret_bytes);
    let secret = hex::encode(secret_bytes);
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    sqlx::query(
        "INSERT INTO api_keys (id, app_id, kind, secret_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(app_id)
    .bind(kind.as_str())
    .bind(hash_secret(&secret))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(format!("{KEY_PREFIX}_{}_{id}_{secret}", kind.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format_round_trips() {
        assert_eq!(parse_key("pb_server_abc_def"), Some(("abc", "def")));
        assert_eq!(parse_key("pb_server_abc_"), None);
        assert_eq!(parse_key("xx_server_abc_def"), None);
        assert_eq!(parse_key("garbage"), None);
    }
}
