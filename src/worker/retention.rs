//! The retention task: how long each kind of row is kept (`[retention]`), and the one loop
//! that deletes what is past it on a schedule of the store's clock, a small batch per write
//! turn with a pause between batches so deliveries never wait long for the SQLite writer.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Worker;
use crate::store::retention::{RetentionKind, SWEEPS};
use crate::store::Store;

const DAY_MS: i64 = 86_400_000;
/// Free pages given back per write turn on SQLite (4 MiB at the default page size).
const VACUUM_PAGES_PER_TURN: u32 = 1024;
/// How often the task looks at the clock; a shifted clock is noticed within this.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// How long rows are kept, in days; `0` keeps them forever.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Jobs that are done without being dead (delivered, invalid token, withheld by a
    /// policy), with their attempts, after they finished.
    pub delivered_jobs_days: u64,
    /// Dead letters (and callback messages given up on), after they died.
    pub dead_letters_days: u64,
    /// Completed events, after they completed, once none of their jobs is left.
    pub events_days: u64,
    /// Callback messages delivered to the app (the outbox), after delivery.
    pub sent_callbacks_days: u64,
    /// Pruned devices (listed and restorable until then), after they were pruned, and the
    /// log of pruned tokens.
    pub pruned_devices_days: u64,
    /// Per-minute delivery figures, after their minute (the stats read the last 24 hours).
    pub stats_minutes_days: u64,
    /// How often the sweeper runs.
    pub interval_secs: u64,
    /// Rows deleted per write turn.
    pub batch_size: u32,
    /// Pause between two batches, so other writers get their turns.
    pub pause_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delivered_jobs_days: 7,
            dead_letters_days: 30,
            events_days: 30,
            sent_callbacks_days: 7,
            pruned_devices_days: 30,
            stats_minutes_days: 7,
            interval_secs: 300,
            batch_size: 500,
            pause_ms: 5,
        }
    }
}

impl RetentionConfig {
    /// The retention of `kind` in days (0: forever).
    pub fn days(&self, kind: RetentionKind) -> u64 {
        match kind {
            RetentionKind::DeliveredJobs => self.delivered_jobs_days,
            RetentionKind::DeadLetters | RetentionKind::DeadCallbacks => self.dead_letters_days,
            RetentionKind::Events => self.events_days,
            RetentionKind::SentCallbacks => self.sent_callbacks_days,
            RetentionKind::PrunedDevices | RetentionKind::PrunedTokens => self.pruned_devices_days,
            RetentionKind::StatsMinutes => self.stats_minutes_days,
            // Not a setting: each key expires a day after its first use.
            RetentionKind::IdempotencyKeys => 0,
        }
    }

    /// The first field that is out of range, with the reason.
    pub fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        if self.interval_secs == 0 {
            return Some(("retention.interval_secs", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Some(("retention.batch_size", "must be between 1 and 10000"));
        }
        if self.pause_ms > 10_000 {
            return Some(("retention.pause_ms", "must be at most 10000"));
        }
        let days = [
            ("retention.delivered_jobs_days", self.delivered_jobs_days),
            ("retention.dead_letters_days", self.dead_letters_days),
            ("retention.events_days", self.events_days),
            ("retention.sent_callbacks_days", self.sent_callbacks_days),
            ("retention.pruned_devices_days", self.pruned_devices_days),
            ("retention.stats_minutes_days", self.stats_minutes_days),
        ];
        // Beyond this the cutoff in unix milliseconds would overflow.
        days.into_iter()
            .find(|(_, d)| *d > 1_000_000)
            .map(|(field, _)| (field, "must be at most 1000000 days (0 keeps forever)"))
    }
}

/// Rows deleted by one sweep, per kind (kinds that removed nothing are left out).
pub type Swept = Vec<(RetentionKind, u64)>;

/// Deletes every row past its retention at the store's current time, batch by batch, and
/// on SQLite gives the freed pages back. Stops early (between batches) once `stop` is true.
pub async fn sweep(
    store: &Store,
    config: &RetentionConfig,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Swept> {
    let mut swept = Swept::new();
    let pause = Duration::from_millis(config.pause_ms);
    for entry in SWEEPS {
        let days = config.days(entry.kind);
        if days == 0 {
            continue;
        }
        let cutoff = store.now() - days as i64 * DAY_MS;
        let mut total = 0;
        loop {
            let n = store.sweep_batch(entry, cutoff, config.batch_size).await?;
            total += n;
            if n < u64::from(config.batch_size) || *stop.borrow() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        if total > 0 {
            swept.push((entry.kind, total));
        }
    }
    // Idempotency keys carry their own expiry (a day after first use).
    let mut keys = 0;
    loop {
        let n = store
            .sweep_idempotency_keys(store.now(), i64::from(config.batch_size))
            .await?;
        keys += n;
        if n < u64::from(config.batch_size) || *stop.borrow() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    if keys > 0 {
        swept.push((RetentionKind::IdempotencyKeys, keys));
    }
    if !swept.is_empty() {
        while store.free_pages().await? > 0 && !*stop.borrow() {
            store.reclaim_free_pages(VACUUM_PAGES_PER_TURN).await?;
            tokio::time::sleep(pause).await;
        }
    }
    Ok(swept)
}

impl Worker {
    /// Sweeps at start and then every `retention.interval_secs` of the store's clock.
    pub(crate) async fn retention_loop(self, mut stop: watch::Receiver<bool>) {
        match self.store.reclaims_space().await {
            Ok(false) => tracing::warn!(
                "this SQLite file was created without incremental auto-vacuum: space freed by \
                 retention is reused but not returned to the file system (see the README)"
            ),
            Ok(true) => {}
            Err(e) => tracing::error!(error = %e, "reading the SQLite auto-vacuum mode failed"),
        }
        let every_ms = self.retention.interval_secs as i64 * 1000;
        let mut due = self.store.now();
        loop {
            if self.store.now() >= due {
                due = self.store.now() + every_ms;
                match sweep(&self.store, &self.retention, &stop).await {
                    Ok(swept) => self.report_swept(&swept),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(CLOCK_CHECK) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn report_swept(&self, swept: &Swept) {
        for &(kind, n) in swept {
            self.metrics.retention_swept(kind, n);
            tracing::info!(
                kind = kind.as_str(),
                rows = n,
                "deleted rows past their retention"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_follow_the_documented_ages_and_bad_values_name_their_field() {
        let config = Config::default().retention;
        assert_eq!(config.days(RetentionKind::DeliveredJobs), 7);
        assert_eq!(config.days(RetentionKind::DeadLetters), 30);
        assert_eq!(config.days(RetentionKind::Events), 30);
        assert_eq!(config.days(RetentionKind::SentCallbacks), 7);
        assert_eq!(config.days(RetentionKind::PrunedDevices), 30);
        assert_eq!(config.invalid_field(), None);
        for (toml, field) in [
            ("[retention]\nbatch_size = 0", "retention.batch_size"),
            ("[retention]\ninterval_secs = 0", "retention.interval_secs"),
            (
                "[retention]\nevents_days = 5000000",
                "retention.events_days",
            ),
        ] {
            let table: toml::Table = toml.parse().expect("toml");
            let err = Config::from_table(table).expect_err(toml);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
