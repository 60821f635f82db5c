//! Messages to apps' event endpoints: what the messages about a recorded batch say and which
//! apps get them (`device.pruned`, `delivery.failed`, `delivery.succeeded`), and the loop that delivers the outbox
//! (Standard Webhooks signatures with every active secret, the retry schedule, a limit per
//! endpoint, and disabling an endpoint that has failed for too long).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::retry::{decide_endpoint, RetryDecision};
use super::Worker;
use crate::model::event_type::{EndpointOutcome, EventType};
use crate::model::JobStatus;
use crate::signature::{sign, Scheme};
use crate::store::{
    message_body, rfc3339, AttemptRecord, ClaimedMessage, JobResult, MessageNext, PruneCallbacks,
    PrunedDevice,
};

/// Messages claimed per round.
const MESSAGE_BATCH: i64 = 64;
/// How long past twice the attempt timeout a claimed message stays leased to this worker,
/// ms: a live attempt never loses its message to another instance, and a crashed
/// instance's messages are sent again soon after.
const LEASE_MARGIN_MS: i64 = 5_000;
/// How long a message claimed while its endpoint had no room waits before it is claimed
/// again, ms: behind the other endpoints' due messages.
const NO_ROOM_DELAY_MS: i64 = 1_000;
/// The most saturated endpoints a claim skips by name.
const MAX_SKIPPED: usize = 256;

/// The messages a recorded batch produces, for the apps whose endpoints subscribed to them.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndpointEvents {
    /// Subscribed types per app.
    pub(crate) subscriptions: HashMap<String, BTreeSet<EventType>>,
}

impl EndpointEvents {
    fn wants(&self, app_id: &str, event_type: EventType) -> bool {
        self.subscriptions
            .get(app_id)
            .is_some_and(|types| types.contains(&event_type))
    }
}

impl PruneCallbacks for EndpointEvents {
    fn body(
        &self,
        app_id: &str,
        pruned: &[PrunedDevice<'_>],
        at_ms: i64,
    ) -> anyhow::Result<Option<String>> {
        if !self.wants(app_id, EventType::DevicePruned) {
            return Ok(None);
        }
        Ok(Some(pruned_body(app_id, pruned, at_ms)))
    }

    fn results(
        &self,
        results: &[&JobResult],
        status: &dyn Fn(&JobResult) -> JobStatus,
        at_ms: i64,
    ) -> anyhow::Result<Vec<(String, EventType, String)>> {
        // One message per app per batch listing its dead letters (a failing fan-out of 100k
        // becomes a few hundred messages, not 100k), and the deliveries to gather.
        let mut failed: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
        let mut succeeded: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
        for r in results {
            let (list, wanted) = match status(r) {
                JobStatus::Dead => (&mut failed, EventType::DeliveryFailed),
                JobStatus::Delivered => (&mut succeeded, EventType::DeliverySucceeded),
                _ => continue,
            };
            if !self.wants(&r.job.app_id, wanted) {
                continue;
            }
            let mut item = json!({
                "delivery_id": r.job.id,
                "event_id": r.job.event_id,
                "platform": r.job.platform,
                "token": r.job.token,
            });
            if wanted == EventType::DeliveryFailed {
                item["reason"] = json!(r.reason);
            }
            list.entry(r.job.app_id.as_str()).or_default().push(item);
        }
        let mut out = Vec::new();
        for (app_id, deliveries) in failed {
            let data = json!({"app_id": app_id, "deliveries": deliveries});
            let body = message_body(EventType::DeliveryFailed, at_ms, data);
            out.push((app_id.to_string(), EventType::DeliveryFailed, body));
        }
        // Batched: the outbox gathers these items into messages of up to N.
        for (app_id, deliveries) in succeeded {
            let items = serde_json::to_string(&deliveries)?;
            out.push((app_id.to_string(), EventType::DeliverySucceeded, items));
        }
        Ok(out)
    }
}

/// The body telling an app which of its devices were pruned at `at_ms`.
fn pruned_body(app_id: &str, pruned: &[PrunedDevice<'_>], at_ms: i64) -> String {
    let tokens: Vec<serde_json::Value> = pruned
        .iter()
        .map(|p| {
            json!({
                "token": p.token,
                "platform": p.platform,
                "reason": p.reason,
                "provider_timestamp": p.provider_ts,
            })
        })
        .collect();
    message_body(
        EventType::DevicePruned,
        at_ms,
        json!({"app_id": app_id, "tokens": tokens}),
    )
}

/// Attempts in flight per endpoint on this instance.
#[derive(Default)]
pub(crate) struct EndpointLimits {
    per_endpoint: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointLimits {
    /// A permit for one attempt to `endpoint_id`, or `None` while it has `limit` in flight.
    fn try_acquire(&self, endpoint_id: &str, limit: u32) -> Option<OwnedSemaphorePermit> {
        let mut map = self
            .per_endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Endpoints with nothing in flight are forgotten, so the map stays small.
        map.retain(|_, s| s.available_permits() < limit as usize);
        let semaphore = map
            .entry(endpoint_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }

    /// Endpoints with no room left: a claim skips their messages, so one slow endpoint's
    /// backlog never fills the claims and holds up the others.
    fn saturated(&self) -> Vec<String> {
        let map = self
            .per_endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|(_, s)| s.available_permits() == 0)
            .map(|(id, _)| id.clone())
            .take(MAX_SKIPPED)
            .collect()
    }
}

impl Worker {
    /// The messages a batch of results calls for: asks the store which of the batch's apps
    /// subscribed to what, when the batch holds anything to tell.
    pub(crate) async fn endpoint_events(
        &self,
        batch: &[JobResult],
    ) -> anyhow::Result<EndpointEvents> {
        let apps: BTreeSet<&str> = batch
            .iter()
            .filter(|r| {
                r.prune.is_some() || matches!(r.status, JobStatus::Dead | JobStatus::Delivered)
            })
            .map(|r| r.job.app_id.as_str())
            .collect();
        if apps.is_empty() {
            return Ok(EndpointEvents::default());
        }
        let apps: Vec<&str> = apps.into_iter().collect();
        Ok(EndpointEvents {
            subscriptions: self.store.subscriptions(&apps).await?,
        })
    }

    pub(crate) async fn endpoint_loop(self, mut stop: watch::Receiver<bool>) {
        let all = Arc::new(Semaphore::new(self.endpoints.concurrency as usize));
        loop {
            if *stop.borrow() {
                return;
            }
            let lease_ms = 2 * self.endpoints.timeout().as_millis() as i64 + LEASE_MARGIN_MS;
            if let Err(e) = self
                .store
                .flush_gathered(self.endpoints.batch_limits())
                .await
            {
                tracing::error!(error = %e, "turning gathered items into messages failed");
            }
            let busy = self.limits.saturated();
            let started = match self
                .store
                .claim_messages(lease_ms, MESSAGE_BATCH, &busy)
                .await
            {
                Ok(rows) => self.start_attempts(rows, &all).await,
                Err(e) => {
                    tracing::error!(error = %e, "claiming endpoint messages failed");
                    0
                }
            };
            if started == 0 {
                tokio::select! {
                    () = tokio::time::sleep(self.poll_interval()) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Starts an attempt for each claimed message whose endpoint has room; gives the others
    /// back. Returns how many started.
    async fn start_attempts(&self, rows: Vec<ClaimedMessage>, all: &Arc<Semaphore>) -> usize {
        let mut started = 0;
        for row in rows {
            let permit = self
                .limits
                .try_acquire(&row.endpoint_id, self.endpoints.concurrency_per_endpoint);
            let (Some(permit), Ok(total)) = (permit, all.clone().try_acquire_owned()) else {
                // A slow endpoint holds its own slots only; its message waits its turn.
                let at = self.store.now() + NO_ROOM_DELAY_MS;
                if let Err(e) = self.store.release_message(&row.id, at).await {
                    tracing::error!(message = %row.id, error = %e, "releasing a message failed; its lease will expire");
                }
                continue;
            };
            started += 1;
            let worker = self.clone();
            tokio::spawn(async move {
                worker.deliver_message(&row).await;
                drop((permit, total));
            });
        }
        started
    }

    /// One attempt of one message, and what follows from it.
    async fn deliver_message(&self, row: &ClaimedMessage) {
        let target = match self.store.signing_secrets(&row.endpoint_id).await {
            Ok(Some(target)) => target,
            Ok(None) => return, // Deleted meanwhile, with its messages.
            Err(e) => {
                // Left leased; it is claimed again when the lease ends.
                tracing::error!(endpoint = %row.endpoint_id, error = %e, "loading endpoint secrets failed");
                return;
            }
        };
        if !target.enabled {
            let attempt = failed_attempt("endpoint disabled", 0);
            self.record_attempt(row, &attempt, MessageNext::Failed)
                .await;
            return;
        }
        let headers = match signed_headers(&target.secrets, row, self.store.now() / 1000) {
            Ok(headers) => headers,
            Err(e) => {
                // Stored secrets are generated by us; one that cannot sign is corrupt data,
                // and retrying cannot repair it.
                tracing::error!(endpoint = %row.endpoint_id, message = %row.id, error = %e, "endpoint secret cannot sign");
                self.record_attempt(row, &failed_attempt(&e.to_string(), 0), MessageNext::Failed)
                    .await;
                return;
            }
        };
        let posted = self
            .webhooks
            .post(&target.url, &headers, Bytes::from(row.body.clone()))
            .await;
        let duration_ms = posted.duration.as_millis() as i64;
        let (attempt, retry_after) = match &posted.result {
            Ok(answer) if (200..300).contains(&answer.status) => (
                AttemptRecord {
                    outcome: EndpointOutcome::Succeeded,
                    response_code: Some(answer.status),
                    response_body: Some(&answer.excerpt),
                    error: None,
                    duration_ms,
                },
                None,
            ),
            Ok(answer) => (
                AttemptRecord {
                    outcome: EndpointOutcome::Failed,
                    response_code: Some(answer.status),
                    response_body: Some(&answer.excerpt),
                    error: Some(http_error(answer.status)),
                    duration_ms,
                },
                answer.retry_after,
            ),
            Err(reason) => (failed_attempt(reason, duration_ms), None),
        };
        let next = if attempt.outcome == EndpointOutcome::Succeeded {
            MessageNext::Delivered
        } else {
            // A count past u32 is far past the schedule: failing is the decision anyway.
            let failures = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            match decide_endpoint(failures, retry_after, &mut rand::thread_rng()) {
                RetryDecision::After(delay) => {
                    MessageNext::RetryAt(self.store.now() + delay.as_millis() as i64)
                }
                RetryDecision::GiveUp => MessageNext::Failed,
            }
        };
        tracing::info!(endpoint = %row.endpoint_id, message = %row.id, outcome = attempt.outcome.as_str(),
            status = ?attempt.response_code, error = ?attempt.error, "endpoint attempt");
        if let Some(since) = self.record_attempt(row, &attempt, next).await {
            self.disable_if_failing_too_long(row, since).await;
        }
    }

    /// Records the attempt; returns the start of the endpoint's failure run, if it fails.
    async fn record_attempt(
        &self,
        row: &ClaimedMessage,
        attempt: &AttemptRecord<'_>,
        next: MessageNext,
    ) -> Option<i64> {
        match self.store.record_endpoint_attempt(row, attempt, next).await {
            Ok(since) => since,
            Err(e) => {
                tracing::error!(message = %row.id, error = %e, "recording an endpoint attempt failed");
                None
            }
        }
    }

    async fn disable_if_failing_too_long(&self, row: &ClaimedMessage, since: i64) {
        let limit_ms = (self.endpoints.disable_after_failing_secs * 1000) as i64;
        if self.store.now() - since < limit_ms {
            return;
        }
        let reason = format!(
            "failing continuously since {} (more than {} s)",
            rfc3339(since),
            self.endpoints.disable_after_failing_secs
        );
        let now = self.store.now();
        let endpoint_id = row.endpoint_id.clone();
        let notice = |app_id: &str, url: &str| {
            Ok(message_body(
                EventType::EndpointDisabled,
                now,
                json!({"app_id": app_id, "endpoint_id": endpoint_id, "url": url,
                       "failing_since": rfc3339(since)}),
            ))
        };
        match self
            .store
            .disable_failing_endpoint(&row.endpoint_id, &reason, notice)
            .await
        {
            Ok(true) => tracing::warn!(endpoint = %row.endpoint_id, %reason, "endpoint disabled"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(endpoint = %row.endpoint_id, error = %e, "disabling an endpoint failed")
            }
        }
    }
}

/// The attempt record of a failure without an answer.
fn failed_attempt(error: &str, duration_ms: i64) -> AttemptRecord<'_> {
    AttemptRecord {
        outcome: EndpointOutcome::Failed,
        response_code: None,
        response_body: None,
        error: Some(error),
        duration_ms,
    }
}

/// The error text of a non-2xx answer.
fn http_error(status: u16) -> &'static str {
    match status {
        300..=399 => "redirect (not followed)",
        400..=499 => "client error answer",
        _ => "server error answer",
    }
}

/// Standard Webhooks headers for `row`, with one `v1` signature per active secret (during a
/// rotation the old and the new one), space-separated as the spec allows.
fn signed_headers(
    secrets: &[String],
    row: &ClaimedMessage,
    ts: i64,
) -> Result<Vec<(String, String)>, crate::signature::InvalidSecret> {
    let mut headers = Vec::new();
    let mut signatures = Vec::new();
    for secret in secrets {
        for (name, value) in sign(
            Scheme::StandardWebhooks,
            secret,
            row.body.as_bytes(),
            &row.id,
            ts,
        )? {
            if name == "webhook-signature" {
                signatures.push(value);
            } else if !headers.iter().any(|(n, _): &(String, String)| *n == name) {
                headers.push((name, value));
            }
        }
    }
    headers.push(("webhook-signature".to_string(), signatures.join(" ")));
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;

    #[test]
    fn pruned_message_lists_the_deleted_tokens_for_subscribed_apps_only() {
        let pruned = [PrunedDevice {
            platform: Platform::Apns,
            token: "abc",
            reason: "Unregistered",
            provider_ts: Some(7),
        }];
        let events = EndpointEvents {
            subscriptions: HashMap::from([(
                "app_1".to_string(),
                BTreeSet::from([EventType::DevicePruned]),
            )]),
        };
        let body = events
            .body("app_1", &pruned, 1_500)
            .expect("body")
            .expect("app_1 subscribed");
        assert_eq!(
            body,
            r#"{"data":{"app_id":"app_1","tokens":[{"platform":"apns","provider_timestamp":7,"reason":"Unregistered","token":"abc"}]},"timestamp":"1970-01-01T00:00:01.500Z","type":"device.pruned"}"#
        );
        assert!(events
            .body("app_2", &pruned, 1_500)
            .expect("no error")
            .is_none());
    }

    #[test]
    fn during_a_rotation_both_secrets_sign() {
        let old = Scheme::StandardWebhooks.generate_secret();
        let new = Scheme::StandardWebhooks.generate_secret();
        let row = ClaimedMessage {
            id: "msg_1".into(),
            endpoint_id: "ep_1".into(),
            app_id: "app_1".into(),
            body: "{}".into(),
            attempts: 0,
        };
        let headers =
            signed_headers(&[new.clone(), old.clone()], &row, 1_700_000_000).expect("signed");
        let mut map = http::HeaderMap::new();
        for (k, v) in &headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let signature = map["webhook-signature"].to_str().expect("text");
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        for secret in [&old, &new] {
            crate::signature::verify(
                Scheme::StandardWebhooks,
                &map,
                b"{}",
                &[secret.as_str()],
                1_700_000_000,
                300,
            )
            .expect("each secret verifies");
        }
    }
}
