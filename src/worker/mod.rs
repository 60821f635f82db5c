//! Background work: fan-out of received events into delivery jobs, the delivery loop with its
//! retry policy with its breaker per app and provider, the sender of messages to apps' event
//! endpoints, the refresh of provider credentials and the retention sweeper. All state lives in the store, so any
//! instance can pick up where a crashed one stopped once its leases expire.

pub mod breaker;
mod burst;
pub mod credentials;
mod deliver;
pub(crate) mod dispatch;
mod endpoints;
mod handoff;
pub mod replay;
pub mod retention;
pub mod retry;
mod share;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

pub use self::breaker::Breakers;
pub use self::retention::RetentionConfig;
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::model::{ApnsEnvironment, Notification};
use crate::push::{Providers, ProvidersConfig};
use crate::service::policy::AppPolicies;
use crate::store::Store;

/// What a delivery job carries, versioned so queued jobs survive upgrades.
// Payloads are parsed one at a time and consumed at once; boxing the common variant would
// cost an allocation per job for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum JobPayload {
    /// First version.
    #[serde(rename = "1")]
    V1 {
        /// APNs environment of the device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<ApnsEnvironment>,
        /// APNs topic of the device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The rendered notification.
        notification: Notification,
        /// W3C `traceparent` of the fan-out that wrote it (while traces are exported): its
        /// send joins that trace without reading the event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A job whose template failed to render: nothing to send until a replay renders it
    /// again.
    #[serde(rename = "unrendered")]
    Unrendered,
}

impl JobPayload {
    /// The trace a send of this job continues, if its fan-out was traced.
    pub fn traceparent(&self) -> Option<&str> {
        match self {
            Self::V1 { traceparent, .. } => traceparent.as_deref(),
            Self::Unrendered => None,
        }
    }

    /// The device's APNs environment and topic with the notification to send, if the job
    /// was rendered. Dead letters written before the `unrendered` version carry an empty
    /// notification instead, which no template can render (it needs a title, a body, data
    /// or content-available): they count as unrendered too.
    pub fn into_rendered(self) -> Option<(Option<ApnsEnvironment>, Option<String>, Notification)> {
        match self {
            Self::V1 {
                environment,
                topic,
                notification,
                ..
            } if notification != Notification::default() => {
                Some((environment, topic, notification))
            }
            Self::V1 { .. } | Self::Unrendered => None,
        }
    }
}

/// Wake-up signals; a notification is remembered until a loop takes it.
#[derive(Clone, Default)]
pub struct Wake {
    /// A new event was stored.
    pub events: Arc<Notify>,
    /// Jobs became due (fan-out or replay).
    pub jobs: Arc<Notify>,
}

/// Everything the background loops share.
#[derive(Clone)]
pub struct Worker {
    pub(crate) store: Store,
    pub(crate) providers: Arc<Providers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: WorkerConfig,
    /// How long rows are kept.
    pub(crate) retention: RetentionConfig,
    /// Connection and credential-refresh settings of the providers.
    pub(crate) providers_config: ProvidersConfig,
    /// The open breakers this instance knows of.
    pub(crate) breakers: Arc<Breakers>,
    /// App delivery policies (quiet hours and zones at fan-out, caps at send).
    pub(crate) policies: Arc<AppPolicies>,
    /// Token-level refusals per app, to tell a misconfiguration from bad devices.
    pub(crate) burst: Arc<burst::BurstGuard>,
    /// Wake-ups that cut the poll short: new events, and new or replayed jobs.
    pub(crate) wake: Wake,
    /// Identifies this process's leases.
    pub(crate) owner: String,
    /// Posts messages to event endpoints.
    pub(crate) webhooks: crate::outbound::WebhookClient,
    /// Event endpoint settings.
    pub(crate) endpoints: crate::service::endpoints::EndpointsConfig,
    /// Attempts in flight per endpoint.
    pub(crate) limits: Arc<endpoints::EndpointLimits>,
    /// Where the fan-out hands the jobs it writes leased to this instance's sender; `None`
    /// (no sender runs beside it): every job is queued.
    pub(crate) handoff: Option<handoff::Handoff<crate::store::ClaimedJob>>,
}

impl Worker {
    /// Builds a worker over the app's shared state.
    pub fn new(state: &crate::state::AppState) -> anyhow::Result<Self> {
        let config = state.config.worker.clone();
        let burst = Arc::new(burst::BurstGuard::new(
            config.burst_guard_share,
            config.burst_guard_min_sends,
        ));
        Ok(Self {
            burst,
            store: state.store.clone(),
            providers: state.providers.clone(),
            metrics: state.metrics.clone(),
            config,
            retention: state.config.retention.clone(),
            providers_config: state.config.providers.clone(),
            breakers: state.breakers.clone(),
            policies: state.policies.clone(),
            wake: state.wake.clone(),
            owner: crate::store::new_id("wrk"),
            webhooks: crate::outbound::WebhookClient::new(
                state.config.endpoints.guard(),
                &state.config.endpoints.extra_root_certs,
                state.config.endpoints.timeout(),
            )?,
            endpoints: state.config.endpoints.clone(),
            limits: Default::default(),
            handoff: None,
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }

    /// Sleeps until woken, the poll interval passes, or shutdown starts. False on shutdown.
    pub(crate) async fn idle(&self, wake: &Notify, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            () = wake.notified() => true,
            () = tokio::time::sleep(self.poll_interval()) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Starts the loops; they run until `stop` turns true, then finish or release their work.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        // As many handed jobs may wait as one claim takes.
        let (handed, inbox) = handoff::channel(self.config.batch_size as usize);
        let w = Self {
            handoff: Some(handed),
            ..self.clone()
        };
        let s = stop.clone();
        set.spawn(async move { w.dispatch_loop(s).await });
        let w = self.clone();
        let s = stop.clone();
        set.spawn(async move { w.deliver_loop(s, inbox).await });
        let w = self.clone();
        let s = stop.clone();
        set.spawn(async move { w.endpoint_loop(s).await });
        let w = self.clone();
        let s = stop.clone();
        set.spawn(async move { w.credentials_loop(s).await });
        let w = self.clone();
        let s = stop.clone();
        set.spawn(async move { w.retention_loop(s).await });
        let w = self;
        set.spawn(async move { w.reaper_loop(stop).await });
        set
    }

    /// Renews this worker's own leases (a live worker never loses its jobs to a slow batch)
    /// and returns expired leases to the queue, so a crashed instance's jobs are sent by others.
    async fn reaper_loop(self, mut stop: watch::Receiver<bool>) {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        let period = Duration::from_millis((self.config.lease_secs * 1000 / 4).max(100));
        loop {
            if let Err(e) = self.store.renew_leases(&self.owner, lease_ms).await {
                tracing::error!(error = %e, "renewing leases failed");
            }
            match self.store.requeue_expired().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(jobs = n, "re-queued jobs whose lease expired");
                    self.wake.jobs.notify_one();
                }
                Err(e) => tracing::error!(error = %e, "re-queueing expired leases failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rendered_payloads_have_something_to_send() {
        let parse = |text: &str| serde_json::from_str::<JobPayload>(text).expect("payload");
        // Dead letters from before the `unrendered` version: an empty notification.
        assert!(parse(r#"{"v":"1","notification":{}}"#)
            .into_rendered()
            .is_none());
        assert!(parse(r#"{"v":"unrendered"}"#).into_rendered().is_none());
        let (_, topic, n) = parse(r#"{"v":"1","topic":"t","notification":{"body":"hi"}}"#)
            .into_rendered()
            .expect("rendered");
        assert_eq!(
            (topic.as_deref(), n.body.as_deref()),
            (Some("t"), Some("hi"))
        );
    }
}
