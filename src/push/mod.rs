//! Provider transport: the neutral [`Outcome`] of a send, the [`Target`] it goes to, the
//! credentials senders sign with, and the [`Providers`] that pick each app's sender and hold
//! its pooled HTTP/2 connections.
//!
//! The delivery pipeline hands an app id, a [`Target`] and a rendered [`Notification`] to
//! [`Providers::send`] and gets back one [`Outcome`]; everything platform-specific (settings,
//! payload format, authentication, error vocabulary, wire constants) stays in [`apns`] and
//! [`fcm`].

pub mod apns;
pub mod credentials;
pub mod fcm;
mod outcome;
pub mod pool;
mod providers;
mod target;

pub use self::apns::ApnsConfig;
pub use self::credentials::{ApnsCredential, FcmCredential, Fingerprint};
pub use self::fcm::FcmConfig;
pub use self::outcome::{Outcome, RetryClass};
pub use self::pool::PoolStats;
pub use self::providers::{
    AppCredential, CredentialKey, CredentialSource, DefaultApnsKey, DefaultFcmAccount, PoolSample,
    Providers, ProvidersConfig, UnusableCredential,
};
pub use self::target::Target;
