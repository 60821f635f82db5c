//! The delivery loop: claim due jobs under a lease, send them concurrently, record every
//! attempt, then retry with backoff, dead-letter, or prune.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::retry::{decide, RetryDecision};
use super::{JobPayload, Worker};
use crate::push::{ApnsEnvironment, Outcome, Platform, Target};
use crate::redact::Redacted;
use crate::store::{now_ms, ClaimedJob, JobResult, JobStatus, Prune};

/// Delivery loops per process; several keep the pipe full while one batch is recorded.
const DELIVERY_LOOPS: usize = 2;

impl Worker {
    pub(crate) async fn deliver_loop(self, stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency as usize));
        let mut loops = JoinSet::new();
        for _ in 0..DELIVERY_LOOPS {
            let w = self.clone();
            let s = stop.clone();
            let p = permits.clone();
            loops.spawn(async move { w.deliver_batches(s, p).await });
        }
        while loops.join_next().await.is_some() {}
    }

    async fn deliver_batches(self, mut stop: watch::Receiver<bool>, permits: Arc<Semaphore>) {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        loop {
            if *stop.borrow() {
                return;
            }
            let jobs = match self
                .store
                .claim_jobs(&self.owner, lease_ms, i64::from(self.config.batch_size))
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming jobs failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if jobs.is_empty() {
                if !self.idle(&self.wake.jobs, &mut stop).await {
                    return;
                }
                continue;
            }
            if jobs.len() == self.config.batch_size as usize {
                // More is probably waiting: let the sibling loop claim it meanwhile.
                self.wake.jobs.notify_one();
            }
            self.run_batch(jobs, stop.clone(), permits.clone()).await;
        }
    }

    /// Sends one claimed batch. On shutdown, sends get `shutdown_grace_secs` to finish; jobs
    /// still unsent after that are released to the queue for another instance or restart.
    async fn run_batch(
        &self,
        jobs: Vec<ClaimedJob>,
        mut stop: watch::Receiver<bool>,
        permits: Arc<Semaphore>,
    ) {
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let mut set = JoinSet::new();
        for job in jobs {
            let w = self.clone();
            let permits = permits.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.ok();
                w.attempt(job).await
            });
        }
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let deadline = async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(deadline);
        let mut results = Vec::with_capacity(ids.len());
        loop {
            tokio::select! {
                joined = set.join_next() => match joined {
                    Some(Ok(result)) => results.push(result),
                    Some(Err(e)) => tracing::error!(error = %e, "delivery task failed"),
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!(unfinished = set.len(), "shutdown grace over; releasing unsent jobs");
                    set.abort_all();
                    break;
                }
            }
        }
        let done: HashSet<&str> = results.iter().map(|r| r.job.id.as_str()).collect();
        let mut unfinished: Vec<String> = ids
            .iter()
            .filter(|id| !done.contains(id.as_str()))
            .cloned()
            .collect();
        // A failed recording (e.g. a deadlock victim on PostgreSQL) is retried once; if it
        // fails again the batch goes back to the queue rather than staying in flight under
        // leases this worker keeps renewing.
        let mut recorded = self.store.record_results(&self.owner, &results).await;
        if let Err(e) = &recorded {
            tracing::warn!(error = %format!("{e:#}"), jobs = results.len(), "recording results failed; retrying once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            recorded = self.store.record_results(&self.owner, &results).await;
        }
        match recorded {
            Ok(pruned) => self.metrics.pruned(pruned),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), jobs = results.len(), "recording results failed; releasing the batch");
                unfinished.extend(results.iter().map(|r| r.job.id.clone()));
            }
        }
        if !unfinished.is_empty() {
            if let Err(e) = self.store.release_jobs(&self.owner, &unfinished).await {
                tracing::error!(error = %e, "releasing unfinished jobs failed; their leases will expire");
            }
        }
    }

    /// One send and the decision that follows from its outcome.
    async fn attempt(&self, job: ClaimedJob) -> JobResult {
        let started = Instant::now();
        let outcome = match serde_json::from_str::<JobPayload>(&job.job) {
            Ok(JobPayload::V1 {
                environment,
                topic,
                notification,
            }) => {
                let platform = if job.platform == "apns" {
                    Platform::Apns
                } else {
                    Platform::Fcm
                };
                let target = Target {
                    platform,
                    token: job.token.clone(),
                    environment: if environment.as_deref() == Some("sandbox") {
                        ApnsEnvironment::Sandbox
                    } else {
                        ApnsEnvironment::Production
                    },
                    topic,
                };
                self.providers.send(&target, &notification).await
            }
            Err(e) => Outcome::Failed {
                reason: format!("unreadable job payload: {e}"),
            },
        };
        let latency_ms = started.elapsed().as_millis() as i64;
        let now = now_ms();
        self.metrics
            .delivery(&job.platform, &outcome, started.elapsed());
        let attempts = (job.attempts + 1) as u32;
        let mut result = JobResult {
            status: JobStatus::Dead,
            outcome: "failed",
            reason: None,
            provider_id: None,
            latency_ms,
            next_attempt_at: now,
            prune: None,
            job,
        };
        match outcome {
            Outcome::Delivered { provider_id } => {
                self.metrics.event_delivered(now - result.job.event_at);
                result.status = JobStatus::Delivered;
                result.outcome = "delivered";
                result.provider_id = Some(provider_id);
            }
            Outcome::InvalidToken { reason, timestamp } => {
                tracing::info!(token = %Redacted(&result.job.token), %reason, "provider reports an invalid token; pruning");
                result.status = JobStatus::Invalid;
                result.outcome = "invalid_token";
                // A device registered again after the provider's verdict (or, without a
                // timestamp, after this job was queued) holds a fresh token: keep it.
                result.prune = Some(Prune {
                    cutoff_ms: timestamp.unwrap_or(result.job.created_at),
                    reason: reason.clone(),
                    provider_ts: timestamp,
                });
                result.reason = Some(reason);
            }
            Outcome::Retry { after, reason } => {
                let age = Duration::from_millis((now - result.job.created_at).max(0) as u64);
                result.outcome = "retry";
                match decide(&self.config, attempts, age, after, &mut rand::thread_rng()) {
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
        }
        result
    }
}
