//! The delivery queue: lease-based claiming of due jobs, lease upkeep, and recording a batch
//! of attempts. What an outcome means (retry when, prune which device, tell the app how) is
//! decided by the worker; this file writes those decisions in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::AnyConnection;

use super::rollups::Rollup;
use super::statement::Statement;
use super::{lifecycle, new_id, outbox, Store};
use crate::model::event_type::EventType;
use crate::model::{ApnsEnvironment, AttemptOutcome, JobStatus, Platform};

/// A job claimed by a worker.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedJob {
    /// Job id.
    pub id: String,
    /// Owning app.
    pub app_id: String,
    /// Source event.
    pub event_id: String,
    /// The device's platform.
    pub platform: Platform,
    /// Device token.
    pub token: String,
    /// Serialized payload.
    pub job: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// When the job was created (for max age and pruning cutoffs).
    pub created_at: i64,
    /// When its event was received (for event-to-delivery latency).
    pub event_at: i64,
    /// It is never sent after this time.
    pub expires_at: Option<i64>,
    /// The device's user, for frequency caps.
    pub user_id: Option<String>,
    /// Its frequency-cap category.
    pub category: Option<String>,
}

/// What recording a batch did beyond the jobs' own rows.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Devices pruned.
    pub pruned: u64,
    /// Jobs that ended without a send (expired, capped, or cancelled meanwhile), by status.
    pub withheld: BTreeMap<JobStatus, u64>,
}

/// What the worker's verdict does to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneKind {
    /// The provider said the token is gone: the device is pruned (kept for a while, not sent
    /// to, restorable) and the app hears of it.
    Gone,
    /// The provider refused the token without saying it is gone: the device is marked
    /// suspect (kept, not sent to, restorable).
    Suspect,
}

/// The worker's verdict that a job's device is gone or suspect.
#[derive(Clone, Debug)]
pub struct Prune {
    /// Gone or suspect.
    pub kind: PruneKind,
    /// Only act on the device when it was last registered at or before this time.
    pub cutoff_ms: i64,
    /// Provider reason.
    pub reason: String,
    /// Provider's timestamp (APNs 410), if any.
    pub provider_ts: Option<i64>,
}

/// The result of one attempt, recorded in a batch.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The claimed job.
    pub job: ClaimedJob,
    /// New status.
    pub status: JobStatus,
    /// Outcome for the attempt log.
    pub outcome: AttemptOutcome,
    /// Provider reason.
    pub reason: Option<String>,
    /// Provider message id.
    pub provider_id: Option<String>,
    /// Round-trip time.
    pub latency_ms: i64,
    /// When the outcome was known (the provider answered, or the worker decided without a
    /// send), unix ms: the attempt log's time, which recording may follow a little later.
    pub decided_at: i64,
    /// When to try again (queued only).
    pub next_attempt_at: i64,
    /// Prune the device.
    pub prune: Option<Prune>,
    /// Whether this was an attempt that counts against the job. A job held back because
    /// its app's credential is refused was not sent (or the refusal was not about it): its
    /// attempt count stays and the attempt log gets no row.
    pub counted: bool,
    /// The APNs environment the device's token turned out to belong to (it was registered
    /// without one), to record on the device.
    pub learned_environment: Option<ApnsEnvironment>,
}

impl JobResult {
    /// The job's attempt count after this result.
    fn attempts_after(&self) -> i64 {
        self.job.attempts + i64::from(self.counted)
    }

    /// Whether this is the job's first attempt and it delivered: the attempt log gets no row
    /// for it, the job's row tells it (see [`crate::store::DeliveryRow::attempt_log`]).
    fn first_try_delivered(&self) -> bool {
        self.counted && self.job.attempts == 0 && self.outcome == AttemptOutcome::Delivered
    }
}

/// A device pruned while recording a batch.
#[derive(Clone, Copy, Debug)]
pub struct PrunedDevice<'a> {
    /// Its platform.
    pub platform: Platform,
    /// Its token.
    pub token: &'a str,
    /// The provider's reason.
    pub reason: &'a str,
    /// The provider's timestamp (APNs 410), if any.
    pub provider_ts: Option<i64>,
}

/// Tells an app what a batch did (which devices it pruned, which deliveries failed): the
/// worker owns whether an app hears about it and what the message says; the store writes the
/// messages to the outbox in the same transaction as the changes.
pub trait PruneCallbacks: Sync {
    /// The callback body telling `app_id` that `pruned` were deleted at `at_ms`, or `None`
    /// when the app takes no callbacks.
    fn body(
        &self,
        app_id: &str,
        pruned: &[PrunedDevice<'_>],
        at_ms: i64,
    ) -> anyhow::Result<Option<String>>;

    /// Messages about the batch's results (`status` gives each one's final status): each
    /// with its app and type.
    fn results(
        &self,
        results: &[&JobResult],
        status: &dyn Fn(&JobResult) -> JobStatus,
        at_ms: i64,
    ) -> anyhow::Result<Vec<(String, EventType, String)>>;
}

impl Store {
    /// Puts jobs whose lease expired (their worker died) back in the queue.
    pub async fn requeue_expired(&self) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let r = sqlx::query(&format!(
            "UPDATE delivery_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, \
             updated_at = $1 WHERE id IN (SELECT id FROM delivery_jobs \
             WHERE status = 'in_flight' AND lease_until < $1 {})",
            self.skip_locked()
        ))
        .bind(now)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }

    /// Extends the leases this worker holds, so a slow batch is not taken for a dead one.
    pub async fn renew_leases(&self, owner: &str, lease_ms: i64) -> anyhow::Result<u64> {
        let mut turn = self.write_turn().await?;
        // Rows locked right now are being recorded by this worker; skipping them (PostgreSQL)
        // avoids a lock-order deadlock with that transaction.
        let r = sqlx::query(&format!(
            "UPDATE delivery_jobs SET lease_until = $1 WHERE id IN (SELECT id FROM delivery_jobs \
             WHERE lease_owner = $2 AND status = 'in_flight' {})",
            self.skip_locked()
        ))
        .bind(self.now() + lease_ms)
        .bind(owner)
        .execute(turn.db())
        .await?;
        Ok(r.rows_affected())
    }

    /// Claims up to `limit` due jobs under a lease, none of an app and platform in `skip`
    /// (those already hold their share of the worker's send slots). Every app and platform
    /// with work due takes its turn: the claim interleaves their oldest due jobs one by one,
    /// so one app's large backlog never makes another app's jobs wait behind it. Each app
    /// and platform is read through its own index range, a bounded number of rows, never the
    /// whole due backlog. `updated_at` stays the time of the last recorded outcome, so a
    /// claim moves the job in none of the indexes keyed by it.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        skip: &[(String, Platform)],
    ) -> anyhow::Result<Vec<ClaimedJob>> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut due: Vec<(String, Platform)> = due_queues(turn.db(), now)
            .await?
            .into_iter()
            .filter(|q| !skip.contains(q))
            .collect();
        let mut claimed = Vec::new();
        // A queue with fewer due jobs than its part leaves room for the others: claim again
        // from those that filled their part, a few rounds at most.
        for _ in 0..CLAIM_ROUNDS {
            let want = limit - claimed.len() as i64;
            if want <= 0 || due.is_empty() {
                break;
            }
            let part = (want * 2 / due.len() as i64).clamp(1, want);
            let jobs = self
                .claim_from(turn.db(), owner, now, lease_ms, want, part, &due)
                .await?;
            let mut taken: HashMap<(&str, Platform), i64> = HashMap::new();
            for j in &jobs {
                *taken.entry((j.app_id.as_str(), j.platform)).or_default() += 1;
            }
            due.retain(|(app, platform)| {
                taken.get(&(app.as_str(), *platform)).copied().unwrap_or(0) >= part
            });
            let got = jobs.len() as i64;
            claimed.extend(jobs);
            if got < want && due.is_empty() {
                break;
            }
        }
        Ok(claimed)
    }

    /// One claim round: up to `part` jobs from each of `queues`, oldest due first within
    /// each, taken in turns across them, `want` at most in all.
    #[allow(clippy::too_many_arguments)]
    async fn claim_from(
        &self,
        db: &mut sqlx::AnyConnection,
        owner: &str,
        now: i64,
        lease_ms: i64,
        want: i64,
        part: i64,
        queues: &[(String, Platform)],
    ) -> anyhow::Result<Vec<ClaimedJob>> {
        let sql = claim_sql(queues.len(), self.skip_locked());
        let mut q = sqlx::query_as::<_, ClaimedJob>(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(want)
            .bind(part);
        for (app_id, platform) in queues {
            q = q.bind(app_id).bind(*platform);
        }
        Ok(q.fetch_all(db).await?)
    }

    /// Returns claimed jobs to the queue untouched (graceful shutdown).
    pub async fn release_jobs(&self, owner: &str, ids: &[String]) -> anyhow::Result<()> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE delivery_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in_flight'",
            )
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a batch of attempts in one transaction: job state and attempt log in a few
    /// multi-row statements, then the prunes the worker decided (each with its
    /// re-registration guard), the callbacks `callbacks` builds for the devices actually
    /// deleted, event completion, and what all this adds to the per-minute stats.
    pub async fn record_results(
        &self,
        owner: &str,
        results: &[JobResult],
        callbacks: &dyn PruneCallbacks,
    ) -> anyhow::Result<Recorded> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let cancelled = cancelled_events(&mut tx, results).await?;
        let status = |r: &JobResult| match r.status {
            JobStatus::Queued if cancelled.contains(r.job.event_id.as_str()) => {
                JobStatus::Cancelled
            }
            s => s,
        };
        let owned = self
            .update_jobs(&mut tx, owner, results, &status, now)
            .await?;
        let mut mine: Vec<&JobResult> = results
            .iter()
            .filter(|r| owned.contains(&r.job.id))
            .collect();
        // Devices are updated in a consistent order, so batches recorded at once (PostgreSQL)
        // that touch the same devices cannot deadlock.
        mine.sort_unstable_by(|a, b| {
            (&a.job.app_id, &a.job.token).cmp(&(&b.job.app_id, &b.job.token))
        });
        // A first try that delivered is told by its job's row alone (attempts 1, the answer's
        // time and round trip): at most one write per delivered notification.
        let attempted: Vec<&JobResult> = mine
            .iter()
            .copied()
            .filter(|r| r.counted && !r.first_try_delivered())
            .collect();
        self.insert_attempts(&mut tx, &attempted).await?;
        let pruned = prune_devices(&mut tx, &mine, now).await?;
        learn_environments(&mut tx, &mine).await?;
        let mut rollup = Rollup::default();
        for r in &mine {
            rollup.finished(&r.job.app_id, now, status(r), 1);
            if r.counted {
                let reason = r.reason.as_deref();
                rollup.attempt(&r.job.app_id, r.decided_at, r.outcome, reason, r.latency_ms);
            }
        }
        let mut pruned_count = 0;
        for (app_id, devices) in &pruned {
            pruned_count += devices.len() as u64;
            rollup.pruned(app_id, now, devices.len() as i64);
            if let Some(body) = callbacks.body(app_id, devices, now)? {
                outbox::enqueue(&mut tx, app_id, EventType::DevicePruned, &body, now).await?;
            }
        }
        for (app_id, event_type, body) in callbacks.results(&mine, &status, now)? {
            outbox::enqueue(&mut tx, &app_id, event_type, &body, now).await?;
        }
        // Jobs that reached a final status, by event; in a consistent order, so two batches
        // that lock the same events cannot deadlock.
        let mut finished: BTreeMap<&str, i64> = Default::default();
        for r in mine.iter().filter(|r| status(r).is_final()) {
            *finished.entry(r.job.event_id.as_str()).or_default() += 1;
        }
        let finished: Vec<(&str, i64)> = finished.into_iter().collect();
        lifecycle::complete_events_if_done(&mut tx, self.backend(), &finished, now).await?;
        rollup.write(self, &mut tx).await?;
        tx.commit().await?;
        let mut withheld: BTreeMap<JobStatus, u64> = Default::default();
        for r in &mine {
            let s = status(r);
            if JobStatus::WITHHELD.contains(&s) {
                *withheld.entry(s).or_default() += 1;
            }
        }
        Ok(Recorded {
            pruned: pruned_count,
            withheld,
        })
    }

    /// Writes each result's job state, and returns the jobs whose lease this worker still
    /// holds; a job re-claimed by another instance after our lease expired is theirs now, and
    /// their result wins.
    async fn update_jobs(
        &self,
        conn: &mut AnyConnection,
        owner: &str,
        results: &[JobResult],
        status: &(dyn Fn(&JobResult) -> JobStatus + Sync),
        now: i64,
    ) -> anyhow::Result<HashSet<String>> {
        let mut owned: HashSet<String> = HashSet::with_capacity(results.len());
        for chunk in results.chunks(self.rows_per_statement()) {
            let mut sql = Statement::new(
                self.backend(),
                "WITH v(id, status, attempts, next_at, reason, pid, answered, latency) AS (VALUES ",
            );
            sql.rows(chunk, |row, r| {
                row.bind(r.job.id.as_str())
                    .bind(status(r))
                    .bind_as(r.attempts_after(), "BIGINT")
                    .bind_as(r.next_attempt_at, "BIGINT")
                    .bind(r.reason.as_deref())
                    .bind(r.provider_id.as_deref())
                    .bind_as(r.counted.then_some(r.decided_at), "BIGINT")
                    .bind_as(r.counted.then_some(r.latency_ms), "BIGINT");
            });
            sql.push(
                ") UPDATE delivery_jobs SET status = v.status, attempts = v.attempts, \
                 next_attempt_at = v.next_at, last_reason = v.reason, \
                 provider_id = COALESCE(v.pid, delivery_jobs.provider_id), \
                 answered_at = COALESCE(v.answered, delivery_jobs.answered_at), \
                 latency_ms = COALESCE(v.latency, delivery_jobs.latency_ms), lease_owner = NULL, \
                 lease_until = NULL, updated_at = ",
            )
            .bind(now)
            .push(" FROM v WHERE delivery_jobs.id = v.id AND delivery_jobs.lease_owner = ")
            .bind(owner)
            .push(" AND delivery_jobs.status = 'in_flight' RETURNING delivery_jobs.id");
            let (text, args) = sql.finish()?;
            owned.extend(
                sqlx::query_as_with::<_, (String,), _>(&text, args)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|(id,)| id),
            );
        }
        Ok(owned)
    }

    /// Appends one attempt-log row per result.
    async fn insert_attempts(
        &self,
        conn: &mut AnyConnection,
        results: &[&JobResult],
    ) -> anyhow::Result<()> {
        for chunk in results.chunks(self.rows_per_statement()) {
            let mut sql = Statement::new(
                self.backend(),
                "INSERT INTO delivery_attempts (job_id, app_id, platform, attempt, outcome, \
                 reason, provider_id, latency_ms, at) VALUES ",
            );
            sql.rows(chunk, |row, r| {
                row.bind(r.job.id.as_str())
                    .bind(r.job.app_id.as_str())
                    .bind(r.job.platform)
                    .bind(r.job.attempts + 1)
                    .bind(r.outcome)
                    .bind(r.reason.as_deref())
                    .bind(r.provider_id.as_deref())
                    .bind(r.latency_ms)
                    .bind(r.decided_at);
            });
            let (text, args) = sql.finish()?;
            sqlx::query_with(&text, args).execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// The events among `results`' jobs going back to the queue that were cancelled meanwhile:
/// those jobs end `cancelled` instead.
async fn cancelled_events<'r>(
    conn: &mut AnyConnection,
    results: &'r [JobResult],
) -> anyhow::Result<HashSet<&'r str>> {
    let retried: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.status == JobStatus::Queued)
        .map(|r| r.job.event_id.as_str())
        .collect();
    let mut cancelled = HashSet::new();
    for event_id in retried {
        let hit: Option<(i64,)> = sqlx::query_as(
            "SELECT cancelled_at FROM events WHERE id = $1 AND cancelled_at IS NOT NULL",
        )
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
        if hit.is_some() {
            cancelled.insert(event_id);
        }
    }
    Ok(cancelled)
}

/// Claim rounds at most: the first takes a part from every queue with work due, later ones
/// fill what queues with fewer due jobs left.
const CLAIM_ROUNDS: usize = 3;

/// The apps and platforms with a job due now, found by skipping from one app to the next
/// through the due index (a probe per app with queued jobs, not a row per job).
async fn due_queues(
    db: &mut sqlx::AnyConnection,
    now: i64,
) -> anyhow::Result<Vec<(String, Platform)>> {
    Ok(sqlx::query_as::<_, (String, Platform)>(&due_queues_sql())
        .bind(now)
        .fetch_all(db)
        .await?)
}

/// See [`due_queues`]; `$1` is now.
fn due_queues_sql() -> String {
    let platforms: Vec<String> = Platform::ALL
        .iter()
        .map(|p| format!("SELECT '{}' AS platform", p.as_str()))
        .collect();
    format!(
        "WITH RECURSIVE apps(app_id) AS ( \
           SELECT MIN(app_id) FROM delivery_jobs WHERE status = 'queued' \
           UNION ALL \
           SELECT (SELECT MIN(j.app_id) FROM delivery_jobs j WHERE j.status = 'queued' \
                   AND j.app_id > apps.app_id) FROM apps WHERE apps.app_id IS NOT NULL) \
         SELECT app_id, platform FROM (SELECT apps.app_id, p.platform, \
           (SELECT j.next_attempt_at FROM delivery_jobs j WHERE j.status = 'queued' \
            AND j.app_id = apps.app_id AND j.platform = p.platform \
            ORDER BY j.app_id, j.platform, j.next_attempt_at LIMIT 1) AS due_at \
           FROM apps, ({}) p WHERE apps.app_id IS NOT NULL) queues WHERE due_at <= $1",
        platforms.join(" UNION ALL ")
    )
}

/// The claim of [`Store::claim_from`] over `queues` queues: `$1` owner, `$2` lease end, `$3`
/// now, `$4` jobs in all, `$5` jobs per queue, then each queue's app and platform. One queue
/// (the common case: one app busy) needs no turns and reads its range directly.
fn claim_sql(queues: usize, lock: &str) -> String {
    let range = |i: usize, limit: &str| {
        let n = 6 + 2 * i;
        format!(
            "SELECT id, app_id, next_attempt_at FROM delivery_jobs \
             WHERE status = 'queued' AND app_id = ${n} AND platform = ${} \
             AND next_attempt_at <= $3 ORDER BY app_id, platform, next_attempt_at \
             LIMIT {limit} {lock}",
            n + 1
        )
    };
    let chosen = if queues == 1 {
        format!("SELECT id FROM ({}) q0", range(0, "$4"))
    } else {
        let branches: Vec<String> = (0..queues)
            .map(|i| format!("SELECT * FROM ({}) q{i}", range(i, "$5")))
            .collect();
        format!(
            "SELECT id FROM (SELECT id, next_attempt_at, ROW_NUMBER() OVER \
               (PARTITION BY app_id ORDER BY next_attempt_at) AS turn FROM ({}) due) ranked \
             ORDER BY turn, next_attempt_at LIMIT $4",
            branches.join(" UNION ALL ")
        )
    };
    format!(
        "UPDATE delivery_jobs SET status = 'in_flight', lease_owner = $1, lease_until = $2 \
         WHERE id IN ({chosen}) \
         RETURNING id, app_id, event_id, platform, token, job, attempts, created_at, event_at, \
         expires_at, user_id, category"
    )
}

/// Applies the verdicts among `results`: prunes each gone device and marks each suspect one,
/// unless it registered again after the guard time, and logs every prune in
/// `pruned_tokens`. Returns the devices actually pruned, by app.
async fn prune_devices<'r>(
    conn: &mut AnyConnection,
    results: &[&'r JobResult],
    now: i64,
) -> anyhow::Result<BTreeMap<&'r str, Vec<PrunedDevice<'r>>>> {
    let mut pruned_by_app: BTreeMap<&str, Vec<PrunedDevice<'_>>> = Default::default();
    for r in results {
        let Some(p) = &r.prune else { continue };
        let (state, from) = match p.kind {
            PruneKind::Gone => ("pruned", "state <> 'pruned'"),
            PruneKind::Suspect => ("suspect", "state = 'active'"),
        };
        let changed = sqlx::query(&format!(
            "UPDATE devices SET state = '{state}', state_reason = $4, state_at = $5 \
             WHERE app_id = $1 AND token = $2 AND updated_at <= $3 AND {from}"
        ))
        .bind(&r.job.app_id)
        .bind(&r.job.token)
        .bind(p.cutoff_ms)
        .bind(&p.reason)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if p.kind == PruneKind::Suspect {
            continue;
        }
        sqlx::query(
            "INSERT INTO pruned_tokens (id, app_id, platform, token, reason, provider_ts, \
             pruned, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new_id("prn"))
        .bind(&r.job.app_id)
        .bind(r.job.platform)
        .bind(&r.job.token)
        .bind(&p.reason)
        .bind(p.provider_ts)
        .bind(changed as i64)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        // (app, token) is the devices table's key: at most one row changed.
        if changed > 0 {
            pruned_by_app
                .entry(r.job.app_id.as_str())
                .or_default()
                .push(PrunedDevice {
                    platform: r.job.platform,
                    token: &r.job.token,
                    reason: &p.reason,
                    provider_ts: p.provider_ts,
                });
        }
    }
    Ok(pruned_by_app)
}

/// Records the APNs environments the worker learned, on devices registered without one.
async fn learn_environments(
    conn: &mut AnyConnection,
    results: &[&JobResult],
) -> anyhow::Result<()> {
    for r in results {
        let Some(environment) = r.learned_environment else {
            continue;
        };
        sqlx::query(
            "UPDATE devices SET environment = $3 WHERE app_id = $1 AND token = $2 \
             AND environment IS NULL",
        )
        .bind(&r.job.app_id)
        .bind(&r.job.token)
        .bind(environment)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{claim_sql, due_queues_sql};
    use crate::store::Store;

    /// Every read of a claim goes through the per-queue due index: finding the queues with
    /// work due and taking their oldest jobs never scans the backlog.
    #[tokio::test]
    async fn claims_read_the_due_index_not_the_backlog() {
        let keyring =
            crate::secrets::keyring_for(&Default::default(), "sqlite::memory:").expect("keyring");
        let store = Store::connect("sqlite::memory:", 1, keyring)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        for sql in [due_queues_sql(), claim_sql(1, ""), claim_sql(2, "")] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(&store.pool)
                    .await
                    .expect("plan");
            let reads: Vec<&str> = plan
                .iter()
                .map(|r| r.3.as_str())
                .filter(|d| d.contains("delivery_jobs") && !d.contains("(id=?)"))
                .collect();
            assert!(!reads.is_empty(), "{plan:?}");
            for read in reads {
                assert!(read.contains("delivery_jobs_due"), "{read}: {plan:?}");
            }
        }
    }
}
