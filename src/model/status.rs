//! Lifecycle states of delivery jobs and events, and the outcomes of delivery attempts,
//! with their stored names.

use std::str::FromStr;

use serde::Serialize;

use super::UnknownValue;

/// Where a delivery job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 5] = [
        Self::Queued,
        Self::InFlight,
        Self::Delivered,
        Self::Dead,
        Self::Invalid,
    ];

    /// Delivered, dead or invalid: the job will not be sent again unless replayed.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Dead | Self::Invalid)
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Invalid => "invalid",
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
