//! The vocabulary of the bridge and its validation: what a device, a job or an event is, and
//! which values each may take. No IO and no HTTP here; the store persists these types, the
//! HTTP layer and the CLI accept them, the worker and the providers act on them.

pub mod device;
pub mod event_type;
pub mod locale;
pub mod notification;
pub mod policy;
pub mod rules;
pub mod source;
pub mod status;
pub mod template;

pub use device::{ApnsEnvironment, Platform};
pub use locale::canonical_locale;
pub use notification::{Notification, Priority};
pub use status::{AttemptOutcome, EventStatus, JobStatus};

/// A stored or submitted value outside its closed set: which kind of value, and what it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    /// The vocabulary, e.g. `platform` or `job status`.
    pub kind: &'static str,
    /// The value that is not in it.
    pub value: String,
}

impl UnknownValue {
    pub(crate) fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}

/// A value that breaks a rule of the vocabulary, named by the field that carries it. The HTTP
/// layer answers it as a 422 `invalid_field`; the CLI prints it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// Dotted name of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidField {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a resource name (sources, rules, templates): 1-64 of `[a-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<(), InvalidField> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new(
            "name",
            "must be 1-64 characters of [a-z0-9_-]",
        ))
    }
}
