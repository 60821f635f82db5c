//! Provider transport: the neutral [`Outcome`] of a send, the [`Target`] it goes to, and the
//! [`Providers`] that hold one sender per platform over pooled HTTP/2 connections.
//!
//! The delivery pipeline hands a [`Target`] and a rendered [`Notification`] to
//! [`Providers::send`] and gets back one [`Outcome`]; everything platform-specific (settings,
//! payload format, authentication, error vocabulary, wire constants) stays in [`apns`] and
//! [`fcm`].

pub mod apns;
mod clock;
pub mod fcm;
mod outcome;
pub mod pool;
mod target;

use serde::Serialize;

pub use self::apns::ApnsConfig;
use self::apns::ApnsSender;
pub use self::clock::Clock;
pub use self::fcm::FcmConfig;
use self::fcm::FcmSender;
pub use self::outcome::Outcome;
pub use self::pool::PoolStats;
pub use self::target::Target;
use crate::model::{Notification, Platform};

/// Connection counters per provider endpoint; `None` when the provider is not configured.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProviderStats {
    /// APNs production host.
    pub apns_production: Option<PoolStats>,
    /// APNs sandbox host.
    pub apns_sandbox: Option<PoolStats>,
    /// FCM host (message sends; token fetches are not counted).
    pub fcm: Option<PoolStats>,
}

/// The configured senders.
pub struct Providers {
    apns: Option<ApnsSender>,
    fcm: Option<FcmSender>,
}

impl Providers {
    /// Loads keys and prepares connection pools for every enabled provider.
    pub fn new(apns: &ApnsConfig, fcm: &FcmConfig) -> anyhow::Result<Self> {
        Self::with_clock(apns, fcm, Clock::system())
    }

    /// Like [`Providers::new`], with an explicit clock for credential lifetimes.
    pub fn with_clock(apns: &ApnsConfig, fcm: &FcmConfig, clock: Clock) -> anyhow::Result<Self> {
        apns.validate().map_err(anyhow::Error::msg)?;
        fcm.validate().map_err(anyhow::Error::msg)?;
        let apns = if apns.enabled {
            Some(ApnsSender::new(apns, clock.clone())?)
        } else {
            None
        };
        let fcm = if fcm.enabled {
            Some(FcmSender::new(fcm, clock)?)
        } else {
            None
        };
        Ok(Self { apns, fcm })
    }

    /// Sends one notification to one device.
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        match target.platform {
            Platform::Apns => match &self.apns {
                Some(sender) => sender.send(target, n).await,
                None => not_configured(),
            },
            Platform::Fcm => match &self.fcm {
                Some(sender) => sender.send(&target.token, n).await,
                None => not_configured(),
            },
        }
    }

    /// Connection counters for metrics.
    pub fn stats(&self) -> ProviderStats {
        let (apns_production, apns_sandbox) = match &self.apns {
            Some(s) => {
                let (p, s) = s.stats();
                (Some(p), Some(s))
            }
            None => (None, None),
        };
        ProviderStats {
            apns_production,
            apns_sandbox,
            fcm: self.fcm.as_ref().map(|s| s.stats()),
        }
    }
}

fn not_configured() -> Outcome {
    Outcome::failed("ProviderNotConfigured")
}
