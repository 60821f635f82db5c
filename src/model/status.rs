//! Lifecycle states of delivery jobs and events, and the outcomes of delivery attempts,
//! with their stored names.

use std::str::FromStr;

use serde::Serialize;

use super::UnknownValue;

/// Where a delivery job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[schema(as = DeliveryStatus)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for `next_attempt_at`.
    Queued,
    /// Claimed by a worker under a lease.
    InFlight,
    /// Accepted by the provider.
    Delivered,
    /// Dead letter: failed permanently or out of retries.
    Dead,
    /// The provider said the token is invalid; the device was pruned.
    Invalid,
    /// Not sent: its user had reached the app's frequency cap for its category.
    Capped,
    /// Not sent: a newer job for the same device with the same collapse key replaced it
    /// while it was still waiting.
    Superseded,
    /// Not sent: it expired (`expires_at` or `ttl`) before it could be sent.
    Expired,
    /// Not sent: its event was cancelled before it was sent.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 9] = [
        Self::Queued,
        Self::InFlight,
        Self::Delivered,
        Self::Dead,
        Self::Invalid,
        Self::Capped,
        Self::Superseded,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The statuses a delivery policy ends a job with, without sending it.
    pub const WITHHELD: [JobStatus; 4] = [
        Self::Capped,
        Self::Superseded,
        Self::Expired,
        Self::Cancelled,
    ];

    /// Every status but queued and in flight: the job will not be sent again unless a dead
    /// letter is replayed.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::InFlight)
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Invalid => "invalid",
            Self::Capped => "capped",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Stored, not yet fanned out.
    Received,
    /// Delivery jobs created.
    Dispatched,
    /// Every job reached a final state.
    Completed,
}

impl FromStr for JobStatus {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownValue::new("job status", s))
    }
}

impl EventStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [EventStatus; 3] = [Self::Received, Self::Dispatched, Self::Completed];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Dispatched => "dispatched",
            Self::Completed => "completed",
        }
    }
}

impl FromStr for EventStatus {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownValue::new("event status", s))
    }
}

/// The provider-neutral result of one attempt, as the attempt log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider accepted the notification.
    Delivered,
    /// A transient failure; the job may be tried again.
    Retry,
    /// The provider declared the token invalid.
    InvalidToken,
    /// A permanent failure.
    Failed,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 4] = [
        Self::Delivered,
        Self::Retry,
        Self::InvalidToken,
        Self::Failed,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::InvalidToken => "invalid_token",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for AttemptOutcome {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownValue::new("attempt outcome", s))
    }
}
