//! Per-minute delivery figures: what a write adds to them (final states, attempts with their
//! round trips and failures, prunes), gathered while the write runs and added to the stored
//! minutes in the same transaction. The stats windows read these minutes, so what they cost
//! does not grow with the number of deliveries.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use super::statement::Statement;
use super::Store;
use crate::model::{AttemptOutcome, JobStatus};

/// The upper bounds (ms) of the round-trip histogram's buckets, in steps of about a quarter;
/// a longer round trip counts in the last. The migration that filled the minutes from the
/// rows before them uses the same list.
pub(crate) const LATENCY_BOUNDS_MS: [i64; 45] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250,
    300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000,
    12_000, 15_000, 20_000, 30_000, 60_000,
];

const MINUTE_MS: i64 = 60_000;

/// The start (unix ms) of the minute holding `at`.
pub(crate) fn minute_of(at: i64) -> i64 {
    at.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// The histogram bucket (its upper bound) of a round trip of `latency_ms`.
pub(crate) fn bucket_of(latency_ms: i64) -> i64 {
    let i = LATENCY_BOUNDS_MS.partition_point(|&le| le < latency_ms);
    LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]
}

/// The bucket bound at or below which `quantile` of the counts fall, from `(le_ms, count)`
/// in ascending `le_ms`; 0 when there are none.
pub(crate) fn quantile_of(buckets: &[(i64, i64)], quantile: f64) -> i64 {
    let total: i64 = buckets.iter().map(|&(_, n)| n).sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as i64;
    let mut seen = 0;
    for &(le, n) in buckets {
        seen += n;
        if seen >= rank {
            return le;
        }
    }
    buckets.last().map_or(0, |&(le, _)| le)
}

/// One app's figures in one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Minute {
    /// Final states reached, in [`FINAL`]'s order.
    finals: [i64; 7],
    attempts: i64,
    delivered_attempts: i64,
    latency_sum_ms: i64,
    pruned: i64,
}

/// The final states, in the order of the table's columns.
const FINAL: [JobStatus; 7] = [
    JobStatus::Delivered,
    JobStatus::Dead,
    JobStatus::Invalid,
    JobStatus::Capped,
    JobStatus::Superseded,
    JobStatus::Expired,
    JobStatus::Cancelled,
];

/// Figures by app: a batch holds few apps, so a list searched by `&str` allocates each app's
/// id once per batch, not once per result.
type ByApp<K, V> = Vec<(String, BTreeMap<K, V>)>;

/// What one write adds to the per-minute figures, by app, then by minute.
#[derive(Debug, Default)]
pub(crate) struct Rollup {
    minutes: ByApp<i64, Minute>,
    /// By (minute, bucket bound).
    latency: ByApp<(i64, i64), i64>,
    /// By (minute, outcome, reason).
    failures: ByApp<(i64, &'static str, String), i64>,
}

/// The figures of `app_id`, made when missing.
fn of_app<'m, K, V>(list: &'m mut ByApp<K, V>, app_id: &str) -> &'m mut BTreeMap<K, V> {
    let i = match list.iter().position(|(app, _)| app == app_id) {
        Some(i) => i,
        None => {
            list.push((app_id.to_string(), BTreeMap::new()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

/// Every `(app, key, value)`, in (app, key) order.
fn flat<K, V>(list: &ByApp<K, V>) -> Vec<(&str, &K, &V)> {
    let mut apps: Vec<&(String, BTreeMap<K, V>)> = list.iter().collect();
    apps.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    apps.into_iter()
        .flat_map(|(app, inner)| inner.iter().map(move |(k, v)| (app.as_str(), k, v)))
        .collect()
}

impl Rollup {
    fn minute(&mut self, app_id: &str, at: i64) -> &mut Minute {
        of_app(&mut self.minutes, app_id)
            .entry(minute_of(at))
            .or_default()
    }

    /// `n` deliveries of `app_id` reached `status` at `at`; not final statuses add nothing.
    pub(crate) fn finished(&mut self, app_id: &str, at: i64, status: JobStatus, n: i64) {
        if n == 0 {
            return;
        }
        if let Some(i) = FINAL.iter().position(|&s| s == status) {
            self.minute(app_id, at).finals[i] += n;
        }
    }

    /// An attempt the provider answered at `at` with `outcome` after `latency_ms`.
    pub(crate) fn attempt(
        &mut self,
        app_id: &str,
        at: i64,
        outcome: AttemptOutcome,
        reason: Option<&str>,
        latency_ms: i64,
    ) {
        let minute = self.minute(app_id, at);
        minute.attempts += 1;
        if outcome == AttemptOutcome::Delivered {
            minute.delivered_attempts += 1;
            minute.latency_sum_ms += latency_ms;
            *of_app(&mut self.latency, app_id)
                .entry((minute_of(at), bucket_of(latency_ms)))
                .or_default() += 1;
        } else {
            let key = (
                minute_of(at),
                outcome.as_str(),
                reason.unwrap_or_default().to_string(),
            );
            *of_app(&mut self.failures, app_id).entry(key).or_default() += 1;
        }
    }

    /// `n` devices of `app_id` pruned at `at`.
    pub(crate) fn pruned(&mut self, app_id: &str, at: i64, n: i64) {
        if n > 0 {
            self.minute(app_id, at).pruned += n;
        }
    }

    /// Adds these figures to the stored minutes. Rows are written in key order, so that
    /// transactions adding to the same minutes at once (PostgreSQL) cannot deadlock; call it
    /// last in a transaction, as the rows stay locked until it commits.
    pub(crate) async fn write(
        &self,
        store: &Store,
        conn: &mut AnyConnection,
    ) -> anyhow::Result<()> {
        let per = store.rows_per_statement();
        let minutes = flat(&self.minutes);
        for chunk in minutes.chunks(per) {
            let mut sql = Statement::new(
                store.backend(),
                "INSERT INTO stats_minutes (app_id, minute, delivered, dead, invalid, capped, \
                 superseded, expired, cancelled, attempts, delivered_attempts, latency_sum_ms, \
                 pruned) VALUES ",
            );
            sql.rows(chunk, |row, &(app, &minute, m)| {
                row.bind(app).bind(minute);
                for n in m.finals {
                    row.bind(n);
                }
                row.bind(m.attempts)
                    .bind(m.delivered_attempts)
                    .bind(m.latency_sum_ms)
                    .bind(m.pruned);
            });
            sql.push(
                " ON CONFLICT (app_id, minute) DO UPDATE SET \
                 delivered = stats_minutes.delivered + excluded.delivered, \
                 dead = stats_minutes.dead + excluded.dead, \
                 invalid = stats_minutes.invalid + excluded.invalid, \
                 capped = stats_minutes.capped + excluded.capped, \
                 superseded = stats_minutes.superseded + excluded.superseded, \
                 expired = stats_minutes.expired + excluded.expired, \
                 cancelled = stats_minutes.cancelled + excluded.cancelled, \
                 attempts = stats_minutes.attempts + excluded.attempts, \
                 delivered_attempts = stats_minutes.delivered_attempts + excluded.delivered_attempts, \
                 latency_sum_ms = stats_minutes.latency_sum_ms + excluded.latency_sum_ms, \
                 pruned = stats_minutes.pruned + excluded.pruned",
            );
            let (text, args) = sql.finish()?;
            sqlx::query_with(&text, args).execute(&mut *conn).await?;
        }
        let latency = flat(&self.latency);
        for chunk in latency.chunks(per) {
            let mut sql = Statement::new(
                store.backend(),
                "INSERT INTO stats_latency_minutes (app_id, minute, le_ms, count) VALUES ",
            );
            sql.rows(chunk, |row, &(app, &(minute, le), &n)| {
                row.bind(app).bind(minute).bind(le).bind(n);
            });
            sql.push(
                " ON CONFLICT (app_id, minute, le_ms) DO UPDATE SET \
                 count = stats_latency_minutes.count + excluded.count",
            );
            let (text, args) = sql.finish()?;
            sqlx::query_with(&text, args).execute(&mut *conn).await?;
        }
        let failures = flat(&self.failures);
        for chunk in failures.chunks(per) {
            let mut sql = Statement::new(
                store.backend(),
                "INSERT INTO stats_failure_minutes (app_id, minute, outcome, reason, count) \
                 VALUES ",
            );
            sql.rows(chunk, |row, &(app, (minute, outcome, reason), &n)| {
                row.bind(app)
                    .bind(*minute)
                    .bind(*outcome)
                    .bind(reason.as_str())
                    .bind(n);
            });
            sql.push(
                " ON CONFLICT (app_id, minute, outcome, reason) DO UPDATE SET \
                 count = stats_failure_minutes.count + excluded.count",
            );
            let (text, args) = sql.finish()?;
            sqlx::query_with(&text, args).execute(&mut *conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0), 1);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(11), 12);
        assert_eq!(bucket_of(12), 12);
        assert_eq!(bucket_of(13), 15);
        assert_eq!(bucket_of(60_000), 60_000);
        assert_eq!(bucket_of(3_600_000), 60_000);
    }

    #[test]
    fn the_quantile_is_the_bound_of_the_bucket_that_reaches_its_rank() {
        assert_eq!(quantile_of(&[], 0.95), 0);
        // 95 of 100 at or below 10 ms: the 95th is in the 10 ms bucket, the 96th is not.
        let buckets = [(5, 90), (10, 5), (200, 5)];
        assert_eq!(quantile_of(&buckets, 0.95), 10);
        assert_eq!(quantile_of(&buckets, 0.96), 200);
        assert_eq!(quantile_of(&[(3, 1)], 0.95), 3);
    }

    #[test]
    fn minutes_start_on_the_minute_before_the_epoch_too() {
        assert_eq!(minute_of(119_999), 60_000);
        assert_eq!(minute_of(120_000), 120_000);
        assert_eq!(minute_of(-1), -60_000);
    }

    #[test]
    fn figures_gather_by_app_and_minute() {
        let mut r = Rollup::default();
        r.finished("a", 1_000, JobStatus::Delivered, 2);
        r.finished("a", 59_000, JobStatus::Dead, 1);
        r.finished("a", 61_000, JobStatus::Delivered, 1);
        r.finished("b", 1_000, JobStatus::Queued, 5);
        r.attempt("a", 2_000, AttemptOutcome::Delivered, None, 7);
        r.attempt(
            "a",
            3_000,
            AttemptOutcome::Retry,
            Some("TooManyRequests"),
            9,
        );
        r.pruned("a", 4_000, 1);
        let of = |app: &str| {
            let found = r.minutes.iter().find(|(a, _)| a == app);
            found.map(|(_, m)| m.clone())
        };
        let a = of("a").expect("app a");
        let first = a[&0];
        assert_eq!(first.finals, [2, 1, 0, 0, 0, 0, 0]);
        assert_eq!((first.attempts, first.delivered_attempts), (2, 1));
        assert_eq!((first.latency_sum_ms, first.pruned), (7, 1));
        assert_eq!(a[&60_000].finals[0], 1);
        assert!(of("b").is_none(), "queued is not final");
        assert_eq!(flat(&r.latency), vec![("a", &(0, 7), &1)]);
        assert_eq!(
            flat(&r.failures),
            vec![("a", &(0, "retry", "TooManyRequests".to_string()), &1)]
        );
    }
}
