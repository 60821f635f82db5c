//! The delivery loop: claim due jobs under a lease, send them concurrently, record every
//! attempt, then retry with backoff, dead-letter, or prune.
//!
//! It is a pipeline, not a sequence of batches: the claimer tops the in-flight set up to the
//! send limit as sends finish, each finished send hands its result to the recorder, and the
//! recorder writes whatever has accumulated in one transaction while the next sends are
//! already on the wire (a small batch first waits a few milliseconds for more). A slow send
//! delays only itself, never a whole batch.
//!
//! The send limit is what the providers' open connections take (the concurrent streams their
//! servers advertise), never more than `worker.concurrency`; it is read again before every
//! claim, so it follows the servers as they raise or lower their limits. When it falls, the
//! claimer claims less until enough sends finished; no claimed job is ever dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::{self, JoinSet};
use tracing::{field, Instrument};

use super::breaker::Gate;
use super::burst::Verdict;
use super::handoff::{take_notification, Inbox};
use super::retry::{decide, throttled_backoff, RetryDecision};
use super::share::{ShareKey, Shares};
use super::{JobPayload, Worker};
use crate::model::JobStatus;
use crate::model::{ApnsEnvironment, Platform};
use crate::model::{AttemptOutcome, Notification};
use crate::push::apns::wire::reason::BAD_DEVICE_TOKEN;
use crate::push::{Outcome, RetryClass, Target};
use crate::redact::Redacted;
use crate::store::{
    Backend, CapRequest, ClaimedJob, JobResult, Prune, PruneKind, Recorded, StoredPolicy,
};
use crate::telemetry;

/// A token-level refusal the burst guard cannot judge yet is retried after this long...
const UNDECIDED_WAIT: Duration = Duration::from_secs(30);
/// ... until the job has been tried this many times; then its device is marked.
const UNDECIDED_ATTEMPTS: i64 = 3;

/// Claims wait until at least this share of a batch is free, so that a steady stream of
/// finishing sends leads to a few large claims rather than many one-row claims.
const CLAIM_FRACTION: usize = 4;

/// Result batches recorded at once on PostgreSQL.
const POSTGRES_RECORDERS: usize = 4;

/// A result batch smaller than this waits up to [`RECORD_LINGER`] for more before it is
/// written: at a moderate rate results trickle in one by one, and each write turn (a
/// transaction of several statements) would otherwise record one or two of them.
const RECORD_GATHER: usize = 64;

/// How long a small result batch waits for more. Only the bookkeeping waits: the
/// notifications are already with the provider.
const RECORD_LINGER: Duration = Duration::from_millis(10);

impl Worker {
    pub(crate) async fn deliver_loop(self, stop: watch::Receiver<bool>, inbox: Inbox<ClaimedJob>) {
        let cap = self.config.concurrency.max(1) as usize;
        // Never more results waiting than sends in flight.
        let (results, to_record) = mpsc::channel(cap);
        let recorder = tokio::spawn(self.clone().record_loop(to_record));
        self.claim_loop(stop, results, cap, inbox).await;
        // Every sender is gone (the claimer's and the sends'): the recorder drains and stops.
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "delivery recorder failed");
        }
    }

    /// The sends that may be in flight now: as many as the providers' open connections
    /// take, at least one and at most `cap` (`worker.concurrency`).
    fn send_limit(&self, cap: usize) -> usize {
        let capacity = usize::try_from(self.providers.stream_capacity()).unwrap_or(usize::MAX);
        capacity.clamp(1, cap)
    }

    /// Keeps up to the send limit in flight until shutdown; then gives the sends
    /// `shutdown_grace_secs` and releases whatever is still unsent to the queue.
    ///
    /// Jobs come from two places: those the fan-out handed over already leased (see
    /// [`super::handoff`]) and those claimed from the queue. The queue is claimed only while
    /// it may hold due jobs: after a claim found fewer than it asked for, not until a wake-up
    /// says jobs were queued, or a poll interval passed (retries fall due unannounced). While
    /// it may, handed jobs take at most half the free slots, so a stream of small events
    /// cannot keep queued work waiting.
    async fn claim_loop(
        &self,
        mut stop: watch::Receiver<bool>,
        results: mpsc::Sender<JobResult>,
        cap: usize,
        mut inbox: Inbox<ClaimedJob>,
    ) {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        let batch_size = self.config.batch_size.max(1) as usize;
        // Every spawned send until it is reaped; a send ends once its result reached the
        // recorder, so this counts the slots in use.
        let mut sends = JoinSet::new();
        // The job each send task carries, until the task has handed its result to the
        // recorder: what is left here at shutdown was never sent and goes back to the queue.
        let mut tasks: HashMap<task::Id, InFlightJob> = HashMap::new();
        let mut shares = Shares::default();
        let mut queue_due = true;
        let mut last_claim = tokio::time::Instant::now();
        loop {
            while let Some(joined) = sends.try_join_next_with_id() {
                self.reap(joined, &mut tasks, &mut shares).await;
            }
            if *stop.borrow() {
                break;
            }
            let limit = self.send_limit(cap);
            let batch = batch_size.min(limit);
            let in_flight = sends.len();
            // Above the limit after it fell: claim nothing until enough sends finished.
            let free = limit.saturating_sub(in_flight);
            if free < batch.div_ceil(CLAIM_FRACTION) {
                // Full: wait for sends to finish.
                let joined = tokio::select! {
                    joined = sends.join_next_with_id() => joined,
                    _ = stop.wait_for(|s| *s) => None,
                };
                if let Some(joined) = joined {
                    self.reap(joined, &mut tasks, &mut shares).await;
                }
                continue;
            }
            let want = free.min(batch);
            if take_notification(&self.wake.jobs) || last_claim.elapsed() >= self.poll_interval() {
                queue_due = true;
            }
            let mut jobs = inbox.take(if queue_due { want.div_ceil(2) } else { want });
            // Whether apps over their share have work due that this claim left alone.
            let mut held_back = false;
            if queue_due && jobs.len() < want {
                let ask = want - jobs.len();
                let saturated = shares.saturated(limit);
                last_claim = tokio::time::Instant::now();
                if let Some(mut claimed) = self.claim(lease_ms, ask, &saturated).await {
                    if claimed.len() < ask && !saturated.is_empty() {
                        // Nobody else has work due: the saturated may use spare slots.
                        let spare = Shares::spare(limit, in_flight + jobs.len() + claimed.len())
                            .min(ask - claimed.len());
                        if spare > 0 {
                            let more = self.claim(lease_ms, spare, &[]).await.unwrap_or_default();
                            held_back = more.len() == spare;
                            claimed.extend(more);
                        } else {
                            held_back = true;
                        }
                    }
                    queue_due = held_back || claimed.len() == ask;
                    jobs.extend(claimed);
                }
                let rest = want - jobs.len();
                jobs.extend(inbox.take(rest));
            }
            let drained = jobs.len() < want;
            let jobs = self.within_caps(jobs, &results).await;
            for job in jobs {
                let in_flight = InFlightJob {
                    id: job.id.clone(),
                    share: (job.app_id.clone(), job.platform),
                };
                shares.add(in_flight.share.clone());
                let (w, results) = (self.clone(), results.clone());
                let handle = sends.spawn(async move {
                    let result = w.attempt(job).await;
                    results.send(result).await.is_ok()
                });
                tasks.insert(handle.id(), in_flight);
            }
            if held_back && !sends.is_empty() {
                // Work is due but its apps are at their share: claim again when a send
                // finishes (or new work arrives).
                let joined = tokio::select! {
                    joined = sends.join_next_with_id() => joined,
                    () = self.wake.jobs.notified() => None,
                    () = inbox.arrival() => None,
                    _ = stop.wait_for(|s| *s) => None,
                };
                if let Some(joined) = joined {
                    self.reap(joined, &mut tasks, &mut shares).await;
                }
                continue;
            }
            if drained {
                // Nothing more now: wait for jobs handed over, queued, or falling due.
                tokio::select! {
                    () = inbox.arrival() => {}
                    () = self.wake.jobs.notified() => queue_due = true,
                    () = tokio::time::sleep(self.poll_interval()) => queue_due = true,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let waiting = inbox.close(grace).await.into_iter().map(|j| j.id).collect();
        self.finish_sends(sends, tasks, waiting).await;
    }

    /// The claimed jobs that may be sent: each one whose user reached the app's frequency
    /// cap for its category ends `capped` here (its result goes straight to the recorder).
    /// When the cap ledger cannot be read, the capped categories' jobs wait a little and are
    /// claimed again, rather than being sent past a cap.
    async fn within_caps(
        &self,
        jobs: Vec<ClaimedJob>,
        results: &mpsc::Sender<JobResult>,
    ) -> Vec<ClaimedJob> {
        if jobs.iter().all(|j| j.category.is_none()) {
            return jobs;
        }
        let mut free = Vec::with_capacity(jobs.len());
        let mut asking: Vec<(ClaimedJob, Arc<StoredPolicy>)> = Vec::new();
        for job in jobs {
            let (Some(category), Some(_)) = (&job.category, &job.user_id) else {
                free.push(job);
                continue;
            };
            match self.policies.get(&self.store, &job.app_id).await {
                Ok(p) if p.policy.cap(category).is_some() => asking.push((job, p)),
                Ok(_) => free.push(job),
                Err(e) => {
                    tracing::error!(app = %job.app_id, error = %e, "reading the app's policy failed; the job waits");
                    let until = self.store.now() + 1_000;
                    let _ = results
                        .send(held(job, until, "policy unreadable", 0, self.store.now()))
                        .await;
                }
            }
        }
        let requests: Vec<CapRequest<'_>> = asking
            .iter()
            .filter_map(|(job, p)| {
                Some(CapRequest {
                    app_id: &job.app_id,
                    user_id: job.user_id.as_deref()?,
                    cap: p.policy.cap(job.category.as_deref()?)?,
                })
            })
            .collect();
        let verdicts = self.store.admit_capped(&requests).await;
        drop(requests);
        let verdicts = match verdicts {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, jobs = asking.len(), "checking frequency caps failed; the jobs wait");
                let until = self.store.now() + 1_000;
                for (job, _) in asking {
                    let _ = results
                        .send(held(
                            job,
                            until,
                            "frequency caps unreadable",
                            0,
                            self.store.now(),
                        ))
                        .await;
                }
                return free;
            }
        };
        let mut capped = 0;
        for ((job, _), admitted) in asking.into_iter().zip(verdicts) {
            if admitted {
                free.push(job);
            } else {
                capped += 1;
                let reason = "its user reached the frequency cap of its category";
                let _ = results
                    .send(withheld(job, JobStatus::Capped, reason, self.store.now()))
                    .await;
            }
        }
        if capped > 0 {
            tracing::debug!(capped, "jobs over their frequency cap");
        }
        free
    }

    /// Claims up to `want` jobs, none of `skip`; `None` after a failed claim (logged, and
    /// waited on a little).
    async fn claim(
        &self,
        lease_ms: i64,
        want: usize,
        skip: &[ShareKey],
    ) -> Option<Vec<ClaimedJob>> {
        match self
            .store
            .claim_jobs(&self.owner, lease_ms, want as i64, skip)
            .await
        {
            Ok(jobs) => Some(jobs),
            Err(e) => {
                tracing::error!(error = %e, "claiming jobs failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        }
    }

    /// Shutdown: gives running sends `shutdown_grace_secs`, then aborts the rest and
    /// releases every job that was never sent back to the queue.
    async fn finish_sends(
        &self,
        mut sends: JoinSet<bool>,
        mut tasks: HashMap<task::Id, InFlightJob>,
        handed: Vec<String>,
    ) {
        let mut shares = Shares::default();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let finished = tokio::time::timeout(grace, async {
            while let Some(joined) = sends.join_next_with_id().await {
                self.reap(joined, &mut tasks, &mut shares).await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                unfinished = sends.len(),
                "shutdown grace over; releasing unsent jobs"
            );
            sends.abort_all();
            // Aborted sends stay in `tasks`; one that finished meanwhile is reaped as usual.
            while let Some(joined) = sends.join_next_with_id().await {
                self.reap(joined, &mut tasks, &mut shares).await;
            }
        }
        let unsent: Vec<String> = tasks.into_values().map(|t| t.id).chain(handed).collect();
        if !unsent.is_empty() {
            if let Err(e) = self.store.release_jobs(&self.owner, &unsent).await {
                tracing::error!(error = %e, "releasing unsent jobs failed; their leases will expire");
            }
        }
    }

    /// Forgets a send whose result reached the recorder. One that panicked, or found the
    /// recorder gone, never handed its result over: its job goes back to the queue now rather
    /// than staying in flight under a lease this worker keeps renewing. An aborted send
    /// (shutdown) stays in `tasks`, released with the other unsent jobs.
    async fn reap(
        &self,
        joined: Result<(task::Id, bool), task::JoinError>,
        tasks: &mut HashMap<task::Id, InFlightJob>,
        shares: &mut Shares,
    ) {
        let (id, lost) = match &joined {
            Ok((id, handed_over)) => (*id, !handed_over),
            Err(e) if e.is_cancelled() => return,
            Err(e) => (e.id(), true),
        };
        let Some(InFlightJob { id: job, share }) = tasks.remove(&id) else {
            return;
        };
        shares.remove(&share);
        if lost {
            tracing::error!(job = %job, "a send ended without recording its result; releasing its job");
            if let Err(e) = self.store.release_jobs(&self.owner, &[job]).await {
                tracing::error!(error = %e, "releasing the job failed; its lease will expire");
            }
        }
    }

    /// Writes results as they arrive: everything that accumulated while the previous write
    /// was running goes into the next one (one transaction, a few multi-row statements),
    /// after a short wait for more when that is only a few.
    /// PostgreSQL takes several such transactions at once, each a few round trips that
    /// would otherwise wait on one another; SQLite has one writer, so one at a time.
    async fn record_loop(self, mut results: mpsc::Receiver<JobResult>) {
        let max = (self.config.batch_size.max(1) as usize).max(64);
        let writers = match self.store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_RECORDERS,
        };
        let mut recording: JoinSet<()> = JoinSet::new();
        loop {
            while recording.len() >= writers {
                recording.join_next().await;
            }
            let mut batch = Vec::with_capacity(max);
            if results.recv_many(&mut batch, max).await == 0 {
                break;
            }
            gather(&mut results, &mut batch, max).await;
            let worker = self.clone();
            recording.spawn(async move { worker.record_or_release(batch).await });
        }
        while recording.join_next().await.is_some() {}
    }

    /// Records one batch. A failed recording (e.g. a deadlock victim on PostgreSQL) is
    /// retried once; if it fails again the jobs go back to the queue rather than staying in
    /// flight under leases this worker keeps renewing.
    async fn record_or_release(&self, batch: Vec<JobResult>) {
        let mut recorded = self.record(&batch).await;
        if let Err(e) = &recorded {
            tracing::warn!(error = %format!("{e:#}"), jobs = batch.len(), "recording results failed; retrying once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            recorded = self.record(&batch).await;
        }
        match recorded {
            Ok(recorded) => {
                self.metrics.pruned(recorded.pruned);
                for (status, n) in recorded.withheld {
                    self.metrics.withheld(status, n);
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), jobs = batch.len(), "recording results failed; releasing the jobs");
                let ids: Vec<String> = batch.iter().map(|r| r.job.id.clone()).collect();
                if let Err(e) = self.store.release_jobs(&self.owner, &ids).await {
                    tracing::error!(error = %e, "releasing jobs failed; their leases will expire");
                }
            }
        }
    }

    /// Records a batch of results, with the messages it calls for to each app's event
    /// endpoints.
    async fn record(&self, batch: &[JobResult]) -> anyhow::Result<Recorded> {
        let events = self.endpoint_events(batch).await?;
        self.store.record_results(&self.owner, batch, &events).await
    }

    /// One send and the decision that follows from its outcome; or, while the app's
    /// credential for the provider is refused, no send and an uncounted return to the queue.
    async fn attempt(&self, job: ClaimedJob) -> JobResult {
        let now = self.store.now();
        if job.expires_at.is_some_and(|at| at <= now) {
            return withheld(
                job,
                JobStatus::Expired,
                "it expired before it could be sent",
                now,
            );
        }
        let probe = match self.gate(&job.app_id, job.platform).await {
            Gate::Send { probe } => probe,
            Gate::Hold { until, reason } => return held(job, until, &reason, 0, self.store.now()),
        };
        let started = Instant::now();
        let (outcome, learned_environment) = self.send(&job).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        self.metrics
            .delivery(job.platform, &outcome, started.elapsed());
        let now = self.store.now();
        self.burst.sent(&job.app_id, now);
        match &outcome {
            Outcome::CredentialRejected { reason } => {
                let until = Box::pin(self.trip(&job.app_id, job.platform, reason)).await;
                return held(job, until, reason, latency_ms, self.store.now());
            }
            Outcome::TokenRejected { reason } => match self.burst.refused(&job.app_id, reason, now)
            {
                Verdict::Burst {
                    refused,
                    sends,
                    since_ms,
                } => {
                    let held = self.burst_held(job, reason, refused, sends, since_ms, latency_ms);
                    return Box::pin(held).await;
                }
                Verdict::Undecided if job.attempts + 1 < UNDECIDED_ATTEMPTS => {
                    let outcome =
                        Outcome::retry(reason.clone(), Some(UNDECIDED_WAIT), RetryClass::Transient);
                    return self.judge(job, outcome, latency_ms);
                }
                Verdict::Undecided | Verdict::Act => {}
            },
            // The provider authenticated the send: the credential works (again).
            Outcome::Delivered { .. } | Outcome::InvalidToken { .. } => {
                self.recovered(&job.app_id, job.platform).await;
            }
            // A timeout, an overloaded provider or a refused payload says nothing about the
            // credential; an open breaker stays open until a probe gets through.
            Outcome::Retry { .. } | Outcome::Failed { .. } => {
                if probe {
                    tracing::info!(app = %job.app_id, provider = job.platform.as_str(),
                        outcome = outcome.label(), "the probe was inconclusive; still paused");
                }
            }
        }
        let mut result = self.judge(job, outcome, latency_ms);
        result.learned_environment = learned_environment;
        result
    }

    /// A burst of `reason` refusals: the app's configuration, not its devices. Holds the job
    /// behind the app's breaker for the provider (the operator sees it there) and makes
    /// active again the devices marked suspect for that reason in the window.
    async fn burst_held(
        &self,
        job: ClaimedJob,
        reason: &str,
        refused: u64,
        sends: u64,
        since_ms: i64,
        latency_ms: i64,
    ) -> JobResult {
        let breaker_reason = format!("{reason} (burst guard)");
        if self.breaker_known(&job.app_id, job.platform) {
            let until = self.trip(&job.app_id, job.platform, &breaker_reason).await;
            return held(job, until, &breaker_reason, latency_ms, self.store.now());
        }
        tracing::warn!(app = %job.app_id, provider = job.platform.as_str(), %reason, refused,
            sends, "burst guard: a large share of the app's sends are refused for the same \
            token-level reason, which points at its configuration (topic, environment, \
            project); devices are no longer marked suspect for it and its sends are held");
        self.metrics.burst_guard_tripped(job.platform, reason);
        match self
            .store
            .restore_suspects(&job.app_id, reason, since_ms)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(app = %job.app_id, restored = n, %reason,
                "burst guard: devices marked suspect in the burst are active again"),
            Err(e) => tracing::error!(error = %e, "restoring suspect devices failed"),
        }
        let until = self.trip(&job.app_id, job.platform, &breaker_reason).await;
        held(job, until, &breaker_reason, latency_ms, self.store.now())
    }

    /// Hands a job's notification to its provider. An APNs device registered without an
    /// environment is tried on production and, when production calls the token bad, once on
    /// the sandbox; the environment that took it is returned, to record on the device.
    async fn send(&self, job: &ClaimedJob) -> (Outcome, Option<ApnsEnvironment>) {
        let payload = serde_json::from_str::<JobPayload>(&job.job);
        let span = tracing::info_span!(target: telemetry::SPANS, "provider.send",
            otel.kind = "client", app_id = %job.app_id, event_id = %job.event_id,
            job_id = %job.id, platform = job.platform.as_str(), attempt = job.attempts + 1,
            outcome = field::Empty);
        let trace = payload.as_ref().ok().and_then(JobPayload::traceparent);
        telemetry::continue_trace(&span, trace);
        let (outcome, learned) = self
            .send_rendered(job, payload.map(JobPayload::into_rendered))
            .instrument(span.clone())
            .await;
        span.record("outcome", outcome.label());
        (outcome, learned)
    }

    /// [`Self::send`] once the job's payload is read.
    async fn send_rendered(
        &self,
        job: &ClaimedJob,
        rendered: serde_json::Result<Option<Rendered>>,
    ) -> (Outcome, Option<ApnsEnvironment>) {
        let (environment, topic, notification) = match rendered {
            // Never send what was not rendered (a replay renders it again first).
            Ok(None) => {
                let reason = "the job has no rendered notification".into();
                return (Outcome::Failed { reason }, None);
            }
            Ok(Some(rendered)) => rendered,
            Err(e) => {
                let reason = format!("unreadable job payload: {e}");
                return (Outcome::Failed { reason }, None);
            }
        };
        let notification = match job.expires_at {
            Some(at) => remaining_lifetime(notification, at, self.store.now()),
            None => notification,
        };
        let mut target = Target {
            platform: job.platform,
            token: job.token.clone(),
            // FCM devices have none; an APNs device without one is tried on production first.
            environment: environment.unwrap_or_default(),
            topic,
        };
        // Boxed: the provider's send (its request, the pool's checkout and the HTTP/2
        // exchange) is most of a send's state, and every async layer above would carry it
        // at least twice (an awaited future is built, then moved into its caller's state).
        // With it and the rare paths boxed, a send's task is ~4 KB instead of ~500 KB.
        let outcome = Box::pin(self.providers.send(&job.app_id, &target, &notification)).await;
        let unknown_environment = job.platform == Platform::Apns && environment.is_none();
        if !unknown_environment {
            return (outcome, None);
        }
        match &outcome {
            Outcome::Delivered { .. } => (outcome, Some(target.environment)),
            Outcome::TokenRejected { reason } if reason == BAD_DEVICE_TOKEN => {
                // Apple answers BadDeviceToken for a sandbox token sent to production.
                target.environment = ApnsEnvironment::Sandbox;
                // Boxed like the send above.
                let retried =
                    Box::pin(self.providers.send(&job.app_id, &target, &notification)).await;
                let learned = matches!(retried, Outcome::Delivered { .. })
                    .then_some(ApnsEnvironment::Sandbox);
                (retried, learned)
            }
            _ => (outcome, None),
        }
    }

    /// What an outcome means for the job: delivered, retried later, pruned, or dead.
    fn judge(&self, job: ClaimedJob, outcome: Outcome, latency_ms: i64) -> JobResult {
        let now = self.store.now();
        let attempts = (job.attempts + 1) as u32;
        let mut result = JobResult {
            status: JobStatus::Dead,
            outcome: AttemptOutcome::Failed,
            reason: None,
            provider_id: None,
            latency_ms,
            decided_at: now,
            next_attempt_at: now,
            prune: None,
            counted: true,
            learned_environment: None,
            job,
        };
        match outcome {
            Outcome::Delivered { provider_id } => {
                self.metrics.event_delivered(now - result.job.event_at);
                result.status = JobStatus::Delivered;
                result.outcome = AttemptOutcome::Delivered;
                result.provider_id = Some(provider_id);
            }
            Outcome::InvalidToken { reason, timestamp } => {
                tracing::info!(token = %Redacted(&result.job.token), %reason, "the provider says the token is gone; pruning the device");
                result.status = JobStatus::Invalid;
                result.outcome = AttemptOutcome::InvalidToken;
                // A device registered again after the provider's verdict (or, without a
                // timestamp, after this job was queued) holds a fresh token: keep it.
                result.prune = Some(Prune {
                    kind: PruneKind::Gone,
                    cutoff_ms: timestamp.unwrap_or(result.job.created_at),
                    reason: reason.clone(),
                    provider_ts: timestamp,
                });
                result.reason = Some(reason);
            }
            Outcome::TokenRejected { reason } => {
                tracing::info!(token = %Redacted(&result.job.token), %reason, "the provider refused the token; marking the device suspect");
                result.status = JobStatus::Invalid;
                result.outcome = AttemptOutcome::InvalidToken;
                result.prune = Some(Prune {
                    kind: PruneKind::Suspect,
                    cutoff_ms: result.job.created_at,
                    reason: reason.clone(),
                    provider_ts: None,
                });
                result.reason = Some(reason);
            }
            Outcome::Retry {
                after,
                reason,
                class,
            } => {
                let age = Duration::from_millis((now - result.job.created_at).max(0) as u64);
                result.outcome = AttemptOutcome::Retry;
                let mut rng = rand::thread_rng();
                let after = match class {
                    RetryClass::Throttled => {
                        after.or_else(|| Some(throttled_backoff(&self.config, attempts, &mut rng)))
                    }
                    _ => after,
                };
                // A connection that died under the send says nothing about the job: the
                // attempt is not counted (only the job's age can end it).
                result.counted = class != RetryClass::ConnectionLost;
                // An uncounted attempt can only end by the job's age.
                let attempts_left = if result.counted { attempts } else { 0 };
                match decide(&self.config, attempts_left, age, after, &mut rng) {
                    RetryDecision::After(delay) => {
                        result.status = JobStatus::Queued;
                        result.next_attempt_at = now + delay.as_millis() as i64;
                        self.metrics.retried();
                    }
                    RetryDecision::GiveUp => {
                        self.metrics.dead_lettered();
                        tracing::warn!(job = %result.job.id, %reason, attempts, "retries exhausted; dead letter");
                    }
                }
                result.reason = Some(reason);
            }
            Outcome::Failed { reason } => {
                self.metrics.dead_lettered();
                tracing::warn!(job = %result.job.id, %reason, "permanent failure; dead letter");
                result.reason = Some(reason);
            }
            Outcome::CredentialRejected { reason } => {
                // `attempt` holds these before judging; never dead-letter one.
                let until = now + (self.config.breaker_probe_secs * 1000) as i64;
                return held(result.job, until, &reason, latency_ms, now);
            }
        }
        result
    }
}

/// A rendered job's APNs environment and topic, and its notification.
type Rendered = (Option<ApnsEnvironment>, Option<String>, Notification);

/// A claimed job and the app and provider whose share of the send slots it holds.
struct InFlightJob {
    id: String,
    share: ShareKey,
}

/// The job ended by its delivery policy without a send (and without an attempt).
fn withheld(job: ClaimedJob, status: JobStatus, reason: &str, now: i64) -> JobResult {
    JobResult {
        status,
        outcome: AttemptOutcome::Failed,
        reason: Some(reason.to_string()),
        provider_id: None,
        latency_ms: 0,
        decided_at: now,
        next_attempt_at: job.created_at,
        prune: None,
        counted: false,
        learned_environment: None,
        job,
    }
}

/// What the provider is told about a job that expires at `expires_at`: keep trying for the
/// time left (`apns-expiration`, FCM `ttl`), or less when the template asked for less.
/// Whole seconds, rounded up: a notification sent at once keeps the lifetime it was given.
fn remaining_lifetime(mut n: Notification, expires_at: i64, now: i64) -> Notification {
    let left = u64::try_from(((expires_at - now).max(0) + 999) / 1000).unwrap_or(0);
    n.ttl_seconds = Some(n.ttl_seconds.map_or(left, |ttl| ttl.min(left)));
    n
}

/// Tops a small batch of results up with those that arrive within [`RECORD_LINGER`]: it
/// waits while the batch holds fewer than [`RECORD_GATHER`] (or `max`, when that is
/// smaller), never takes it beyond `max`, and returns at once when the batch is large
/// already or every sender is gone.
async fn gather<T>(results: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    let enough = RECORD_GATHER.min(max);
    if batch.len() >= enough {
        return;
    }
    let until = tokio::time::Instant::now() + RECORD_LINGER;
    while batch.len() < enough {
        let more = results.recv_many(batch, max - batch.len());
        match tokio::time::timeout_at(until, more).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The job back in the queue until `until`, its attempt not counted: the app's credential
/// was refused, which says nothing about this job.
fn held(job: ClaimedJob, until: i64, reason: &str, latency_ms: i64, now: i64) -> JobResult {
    JobResult {
        status: JobStatus::Queued,
        outcome: AttemptOutcome::Retry,
        reason: Some(format!("paused: {reason}")),
        provider_id: None,
        latency_ms,
        decided_at: now,
        next_attempt_at: until,
        prune: None,
        counted: false,
        learned_environment: None,
        job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_result_batch_waits_briefly_for_more() {
        let (tx, mut rx) = mpsc::channel(1000);
        // A large batch is written at once: nothing is taken from the channel.
        tx.send(100).await.expect("open");
        let mut batch: Vec<u32> = (0..RECORD_GATHER as u32).collect();
        gather(&mut rx, &mut batch, 1000).await;
        assert_eq!(batch.len(), RECORD_GATHER);

        // A small one takes in what arrives and waits out the linger for more (the linger
        // is a deadline, so it cannot end sooner; how much later is the machine's business).
        let mut batch = vec![0];
        tx.send(1).await.expect("open");
        let started = Instant::now();
        gather(&mut rx, &mut batch, 1000).await;
        assert!(started.elapsed() >= RECORD_LINGER);
        assert_eq!(batch, vec![0, 100, 1]);

        // It stops waiting once it holds `max`, when that is below the gathering size.
        for i in 2..6 {
            tx.send(i).await.expect("open");
        }
        let mut batch = vec![];
        gather(&mut rx, &mut batch, 3).await;
        assert_eq!(batch, vec![2, 3, 4]);

        // Every sender gone: what there is is written without waiting for the linger.
        drop(tx);
        let mut batch = vec![9];
        gather(&mut rx, &mut batch, 1000).await;
        assert_eq!(batch, vec![9, 5]);
    }
}
