//! Persistent state behind one `Store` handle. The store persists; it decides nothing about
//! what an outcome means. SQL lives in one file per table or purpose: `apps`, `devices`,
//! `sources`, `rules`, `user_auth`, `credentials` (provider keys and breakers); for events, `events` (storing and reading them) and
//! `lifecycle` (their way through the pipeline); for jobs, `fanout` (writing them), `queue`
//! (claiming and recording attempts), `dead_letters` (replay), `deliveries` (the read side)
//! and `stats`; `policy` for delivery policies and frequency caps; `endpoints` for apps' event
//! endpoints and `outbox` for the messages to them; `retention` for deleting what is past its
//! age. Each is written in the dialect that SQLite
//! and PostgreSQL share (`$n` parameters, `ON CONFLICT`, `RETURNING`, text JSON, integer
//! times), so one implementation serves both backends through sqlx's `Any` driver; `codec`
//! says how the model's enums are stored. Secrets are stored sealed under the master key
//! (`crate::secrets`); `sealed` lists their columns and seals or re-seals them in bulk.

mod apps;
mod codec;
mod credentials;
mod dead_letters;
mod deliveries;
mod device_import;
mod devices;
mod endpoints;
mod events;
mod fanout;
mod idempotency;
mod lifecycle;
mod outbox;
mod policy;
mod queue;
pub mod retention;
mod rollups;
mod rules;
mod sealed;
mod sources;
mod statement;
mod stats;
mod user_auth;

pub use apps::{ApiKey, App, KeyKind, NewApp};
pub use credentials::Breaker;
pub use dead_letters::DeadLetter;
pub use deliveries::{AttemptRow, DeliveryRow, PrunedRow};
pub use device_import::BatchCounts;
pub use devices::Device;
pub use endpoints::{
    CallbackTarget, Endpoint, EndpointChange, EndpointHealth, NewEndpoint, SigningSecrets,
};
pub use events::{Event, EventInsert, EventWriter, IncomingEvent, NewEvent};
pub use fanout::{
    FanOutCursor, FanOutSlice, Handing, NewJob, SliceWritten, WholeFanOut, WholeWritten,
};
pub use idempotency::{KeyClaim, StoredAnswer};
pub use outbox::{
    message_body, AttemptLogRow, AttemptRecord, BatchLimits, ClaimedMessage, MessageNext,
    MessageRow,
};
pub use policy::{CapRequest, StoredPolicy};
pub use queue::{ClaimedJob, JobResult, Prune, PruneCallbacks, PruneKind, PrunedDevice, Recorded};
pub use rules::{NamedSpec, SpecKind};
pub use sealed::{SealReport, WrongKey};
pub use sources::{SourceSecret, WebhookSource};
pub use stats::{DeliveryPhases, FailureCount, QueueStats, SeriesPoint, WindowStats};
pub use user_auth::UserAuth;

use std::str::FromStr;

use anyhow::Context;
use sqlx::any::Any;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Executor};

/// Which database engine a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (WAL mode).
    Sqlite,
    /// PostgreSQL, for several bridge instances sharing one database.
    Postgres,
}

/// Shared handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes too).
    pool: AnyPool,
    /// Writes. On SQLite one dedicated connection with a large page cache: writers take turns
    /// anyway, and one connection keeps the pages every write touches (queue indexes, the tail
    /// of each B-tree) hot, where spreading writes over the pool would warm a cache per
    /// connection and hold the same pages several times over. The same pool as `pool` on
    /// PostgreSQL.
    writes: AnyPool,
    backend: Backend,
    /// Webhook sources by (app, name), read on every webhook. Entries live for a few seconds
    /// and are dropped on every local change, so another instance's edit (a secret rotation,
    /// an allowlist change) applies here within `sources::CACHE_TTL`.
    source_cache: std::sync::Arc<sources::SourceCache>,
    /// SQLite allows one writer at a time. Writers take turns on this fair (FIFO) lock instead
    /// of racing for the database lock through `busy_timeout`, where under sustained load one
    /// can lose every race until it times out. On a file it holds the writing connection,
    /// taken from `writes` on the first turn and kept, so a turn does not check a connection
    /// out of the pool and back, each a round trip to its thread (an in-memory database has
    /// one connection, which readers need too: there a turn checks it out). PostgreSQL does
    /// not use it.
    write_lock: std::sync::Arc<tokio::sync::Mutex<Option<PoolConnection<Any>>>>,
    /// Whether the writing connection stays with `write_lock` between turns (SQLite on a file).
    keep_writer: bool,
    /// Seals secrets on write and opens them on read.
    keyring: std::sync::Arc<crate::secrets::Keyring>,
    /// The time every stored timestamp and every due check uses.
    clock: crate::clock::Clock,
}

/// SQLite page cache of the one writing connection, KiB. 16 MiB holds the hot index pages
/// of a 1M-job queue; 32 MiB was no faster and cost ~18 MB more peak RSS (docs/BENCHMARKS.md).
const SQLITE_WRITER_CACHE_KIB: i64 = 16 * 1024;
/// SQLite page cache of each reading connection, KiB (SQLite's default is about 2 MiB).
const SQLITE_READER_CACHE_KIB: i64 = 2 * 1024;

/// This process's turn to write, with the connection to write on; see [`Store::write_turn`].
pub(crate) struct WriteTurn {
    conn: TurnConnection,
}

/// The connection of a write turn.
enum TurnConnection {
    /// SQLite on a file: the one writing connection, kept under the write lock.
    Kept(tokio::sync::OwnedMappedMutexGuard<Option<PoolConnection<Any>>, PoolConnection<Any>>),
    /// A connection of the pool for this turn: on PostgreSQL, and on an in-memory SQLite
    /// database (with the write lock held, `lock`).
    Pooled {
        conn: PoolConnection<Any>,
        lock: Option<tokio::sync::OwnedMutexGuard<Option<PoolConnection<Any>>>>,
    },
}

impl WriteTurn {
    /// The connection writes go to: the one writing connection on SQLite.
    pub(crate) fn db(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            TurnConnection::Kept(conn) => conn,
            TurnConnection::Pooled { conn, .. } => conn,
        }
    }

    /// Starts a transaction on the turn's connection. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`, waiting through `busy_timeout` while another process writes):
    /// a deferred transaction that reads first would fail at its first write if another
    /// process committed in between, since its snapshot could not become a write.
    pub(crate) async fn begin(&mut self) -> sqlx::Result<sqlx::Transaction<'_, Any>> {
        let immediate = match &self.conn {
            TurnConnection::Kept(_) => true,
            TurnConnection::Pooled { lock, .. } => lock.is_some(),
        };
        if immediate {
            sqlx::Connection::begin_with(self.db(), "BEGIN IMMEDIATE").await
        } else {
            sqlx::Connection::begin(self.db()).await
        }
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects (creating a SQLite file if needed), sealing and opening secrets with
    /// `keyring`. Does not migrate.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        keyring: crate::secrets::Keyring,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url).context("parsing database_url")?;
        let connect = |connections: u32, cache_kib: i64| {
            let mut pool_options = AnyPoolOptions::new().max_connections(connections);
            if backend == Backend::Sqlite {
                // A connection to a local file cannot go away between uses, so it is not
                // pinged before each use (sqlx still checks it when it comes back).
                pool_options = pool_options.test_before_acquire(false);
                // Incremental auto-vacuum lets retention give freed pages back; it takes
                // effect only on a new file, so it must come before WAL mode writes the
                // header (an existing file keeps its mode). WAL lets readers proceed beside the writer, busy_timeout makes a writer of
                // another process queue instead of failing, and NORMAL sync is durable across
                // process crashes in WAL mode. A negative cache_size is in KiB.
                pool_options = pool_options.after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            format!(
                                "PRAGMA auto_vacuum=INCREMENTAL; \
                                 PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                                 PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; \
                                 PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{cache_kib};"
                            )
                            .as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                });
            }
            pool_options.connect_with(options.clone())
        };
        let pool = connect(max_connections, SQLITE_READER_CACHE_KIB)
            .await
            .with_context(|| format!("connecting to {}", redact_url(&url)))?;
        // An in-memory database exists once per connection pool: it cannot have a second one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let writes = match backend {
            Backend::Sqlite if !in_memory => connect(1, SQLITE_WRITER_CACHE_KIB)
                .await
                .with_context(|| format!("connecting to {}", redact_url(&url)))?,
            Backend::Sqlite | Backend::Postgres => pool.clone(),
        };
        Ok(Self {
            pool,
            writes,
            backend,
            source_cache: Default::default(),
            write_lock: Default::default(),
            keep_writer: backend == Backend::Sqlite && !in_memory,
            keyring: std::sync::Arc::new(keyring),
            clock: crate::clock::Clock::system(),
        })
    }

    /// The same store on `clock` (every handle cloned from it too).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The store's clock.
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// Current time as unix milliseconds, the unit every stored timestamp uses.
    pub fn now(&self) -> i64 {
        self.clock.unix_millis()
    }

    /// Applies pending migrations for this backend, then seals the secrets still stored in
    /// plaintext. Fails, having changed no secret, when a stored one does not open with the
    /// configured keys.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        {
            // Migrations check a connection out of `writes`: the kept writing connection
            // goes back to it first, and no write turn starts meanwhile.
            let mut writer = self.write_lock.lock().await;
            writer.take();
            migrator
                .run(&self.writes)
                .await
                .context("running migrations")?;
        }
        let sealed = self.seal_plaintext_secrets().await?;
        if sealed.written > 0 {
            tracing::info!(
                secrets = sealed.written,
                key_id = %self.keyring.current_id(),
                "sealed the secrets stored in plaintext under the master key"
            );
            self.forget_plaintext().await?;
        }
        let adopted = self
            .adopt_legacy_callbacks()
            .await
            .context("moving app callbacks to event endpoints")?;
        if adopted > 0 {
            tracing::info!(apps = adopted, "moved app callbacks to event endpoints");
        }
        let filled = self
            .fill_user_auth_secrets()
            .await
            .context("giving apps their user-auth secrets")?;
        if filled > 0 {
            tracing::info!(
                apps = filled,
                "generated user-auth secrets for existing apps"
            );
        }
        Ok(())
    }

    /// Waits for this process's turn to write (SQLite; immediate on PostgreSQL). Writes go
    /// through the turn's [`WriteTurn::db`], so taking the turn and using the writing
    /// connection cannot come apart.
    pub(crate) async fn write_turn(&self) -> sqlx::Result<WriteTurn> {
        let conn = match self.backend {
            Backend::Sqlite if self.keep_writer => {
                let mut guard = self.write_lock.clone().lock_owned().await;
                if guard.is_none() {
                    *guard = Some(self.writes.acquire().await?);
                }
                let kept =
                    tokio::sync::OwnedMutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
                        sqlx::Error::Protocol("the writing connection was not kept".into())
                    })?;
                TurnConnection::Kept(kept)
            }
            Backend::Sqlite => {
                let turn = self.write_lock.clone().lock_owned().await;
                TurnConnection::Pooled {
                    conn: self.writes.acquire().await?,
                    lock: Some(turn),
                }
            }
            Backend::Postgres => TurnConnection::Pooled {
                conn: self.writes.acquire().await?,
                lock: None,
            },
        };
        Ok(WriteTurn { conn })
    }

    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL (rows another transaction is working on are
    /// left to it); nothing on SQLite, where writers take turns anyway.
    pub(crate) fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Rows per multi-row statement. On SQLite a statement is an in-process call, so small
    /// ones cost little; numbered parameters (`values_rows`) are looked up by name in time
    /// linear in their number, so those statements must stay small, and with positional
    /// ones (`statement::Statement`) 64 rows measured no faster than 16. On PostgreSQL each
    /// statement is a network round trip, so larger ones win (well below its 65 535-parameter
    /// limit).
    pub(crate) fn rows_per_statement(&self) -> usize {
        match self.backend {
            Backend::Sqlite => 16,
            Backend::Postgres => 200,
        }
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap round trip used by `/readyz`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes all connections.
    pub async fn close(&self) {
        // The kept writing connection goes back first: closing waits for every connection.
        self.write_lock.lock().await.take();
        self.writes.close().await;
        self.pool.close().await;
    }
}

/// `rows` copies of `row` joined by commas, each `?` in them replaced by the next parameter
/// number from `first` on: per-row values are bound in order after the shared ones (`$1`...).
/// `values_rows(2, "(?, ?, $1)", 2)` is `"($2, $3, $1),($4, $5, $1)"`.
pub(crate) fn values_rows(rows: usize, row: &str, first: usize) -> String {
    let mut out = String::with_capacity(rows * (row.len() + 8));
    let mut next = first;
    for i in 0..rows {
        if i > 0 {
            out.push(',');
        }
        for c in row.chars() {
            if c == '?' {
                out.push('$');
                out.push_str(&next.to_string());
                next += 1;
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// Formats unix milliseconds as RFC 3339 UTC with fixed millisecond precision, so the strings
/// sort in time order.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// Hides the password in a database URL before it is logged.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Unique identifier with a readable prefix, e.g. `evt_019a...`. UUIDv7: time-ordered, so rows
/// keyed by it are appended to the end of their B-tree instead of scattered through it, and
/// random enough in its low bits to be unguessable.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn values_rows_numbers_parameters_in_order() {
        assert_eq!(values_rows(2, "(?, ?, $1)", 2), "($2, $3, $1),($4, $5, $1)");
        assert_eq!(values_rows(3, "?", 3), "$3,$4,$5");
    }

    #[test]
    fn rfc3339_formats_millis() {
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
    }
}
