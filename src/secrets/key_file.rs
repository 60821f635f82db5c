//! Which master key a process uses: the configured `secrets.master_key`; with SQLite and no
//! key configured, the key file beside the database (made on first start, mode 0600); with an
//! in-memory SQLite database, a key that lives as long as the database. PostgreSQL is shared
//! by several instances, which must all hold the same key, so there it must be configured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;

use super::{Keyring, MasterKey, SecretsConfig};

/// Where the current master key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `secrets.master_key` (config file or `PUSHBRIDGE_SECRETS__MASTER_KEY`).
    Config,
    /// The key file beside the SQLite database.
    KeyFile {
        /// Its path.
        path: PathBuf,
        /// Whether this start created it.
        created: bool,
    },
    /// A fresh key for an in-memory database, which does not outlive the process either.
    Ephemeral,
}

/// The keyring for `database_url` under `config`; see the module comment.
pub fn keyring_for(config: &SecretsConfig, database_url: &str) -> anyhow::Result<Keyring> {
    let previous = config.previous_keys.clone();
    if let Some(key) = &config.master_key {
        return Ok(Keyring::new(key.clone(), previous, KeySource::Config));
    }
    if !database_url.starts_with("sqlite:") {
        anyhow::bail!(
            "secrets.master_key is not set. PostgreSQL is shared by every bridge instance, and \
             they must all seal and open stored secrets with the same key, so it cannot be made \
             up locally. Generate one with `openssl rand -base64 32` and set it as \
             `master_key` in the [secrets] section of the config file, or in the environment \
             variable PUSHBRIDGE_SECRETS__MASTER_KEY, on every instance"
        );
    }
    let Some(path) = key_file_path(database_url)? else {
        return Ok(Keyring::new(
            MasterKey::generate(),
            previous,
            KeySource::Ephemeral,
        ));
    };
    let (key, created) = load_or_create(&path)?;
    if created {
        tracing::info!(path = %path.display(), key_id = %key.id(), "created the master key file; back it up with the database");
    } else {
        tracing::info!(path = %path.display(), key_id = %key.id(), "using the master key file");
    }
    Ok(Keyring::new(
        key,
        previous,
        KeySource::KeyFile { path, created },
    ))
}

/// `<database file>.key`, or `None` for an in-memory database.
fn key_file_path(database_url: &str) -> anyhow::Result<Option<PathBuf>> {
    if database_url.contains(":memory:") || database_url.contains("mode=memory") {
        return Ok(None);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)
        .context("parsing database_url")?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut key_name = file.as_os_str().to_owned();
    key_name.push(".key");
    Ok(Some(PathBuf::from(key_name)))
}

/// Reads the key file, or makes one when there is none. Two processes starting at once
/// agree: the file appears complete or not at all (written aside, then linked in place,
/// which fails if another process linked its own first).
fn load_or_create(path: &Path) -> anyhow::Result<(MasterKey, bool)> {
    if let Some(key) = read_key_file(path)? {
        return Ok((key, false));
    }
    let key = MasterKey::generate();
    let aside = path.with_extension(format!("key.{}.tmp", uuid::Uuid::new_v4().simple()));
    write_private(&aside, &key)
        .with_context(|| format!("writing the master key file {}", aside.display()))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok((key, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = read_key_file(path)?
                .with_context(|| format!("master key file {} vanished", path.display()))?;
            Ok((key, false))
        }
        Err(e) => {
            Err(e).with_context(|| format!("creating the master key file {}", path.display()))
        }
    }
}

fn write_private(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", key.to_base64())?;
    file.sync_all()
}

/// The key in `path`, `None` when there is no such file. A file others may read is refused:
/// whoever reads it reads every stored secret.
fn read_key_file(path: &Path) -> anyhow::Result<Option<MasterKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading master key file {}", path.display()))
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "master key file {} has mode {mode:o}: others may read it. Run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    MasterKey::from_base64(&text)
        .map(Some)
        .map_err(|why| anyhow::anyhow!("master key file {}: {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_sits_beside_the_database() {
        let path = key_file_path("sqlite:///var/lib/pb/bridge.db?mode=rwc").expect("url");
        assert_eq!(path, Some(PathBuf::from("/var/lib/pb/bridge.db.key")));
        let relative = key_file_path("sqlite://pushbridge.db").expect("url");
        assert_eq!(relative, Some(PathBuf::from("pushbridge.db.key")));
        assert_eq!(key_file_path("sqlite::memory:").expect("url"), None);
    }

    #[test]
    fn postgres_without_a_key_is_refused_with_the_way_out() {
        let err = keyring_for(&SecretsConfig::default(), "postgres://db/x").expect_err("no key");
        let text = err.to_string();
        assert!(text.contains("secrets.master_key"), "{text}");
        assert!(text.contains("PUSHBRIDGE_SECRETS__MASTER_KEY"), "{text}");
    }

    #[test]
    fn a_configured_key_wins() {
        let key = MasterKey::generate();
        let config = SecretsConfig {
            master_key: Some(key.clone()),
            previous_keys: vec![],
        };
        let ring = keyring_for(&config, "postgres://db/x").expect("key");
        assert_eq!(ring.current_id(), key.id());
        assert_eq!(ring.source(), &KeySource::Config);
    }
}
