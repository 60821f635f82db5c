//! Webhook sources: what a valid source is (name, secrets, event-type path, client allowlist).
//! How requests are signed is `crate::signature`'s.

use ipnet::IpNet;

use super::InvalidField;
use crate::signature::Scheme;

/// Active secrets a source may hold at once (rotation needs two; a few spare).
pub const MAX_SECRETS: usize = 5;

/// A validated source, ready to store.
#[derive(Clone, Debug)]
pub struct NewSource {
    /// URL name.
    pub name: String,
    /// Scheme.
    pub scheme: Scheme,
    /// Initial secrets.
    pub secrets: Vec<String>,
    /// Event type JSON path.
    pub event_type_path: Option<String>,
    /// IP allowlist.
    pub allowed_cidrs: Vec<IpNet>,
}

/// Checks the optional dotted path to the event type in a source's payloads.
pub fn validate_event_type_path(path: Option<String>) -> Result<Option<String>, InvalidField> {
    match path {
        Some(p)
            if p.is_empty()
                || p.len() > 128
                || p.split('.').any(str::is_empty)
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Err(InvalidField::new(
                "event_type_path",
                "must be a dotted path such as type or data.event",
            ))
        }
        other => Ok(other),
    }
}

/// Parses a client allowlist: CIDRs or single addresses, IPv4 or IPv6.
pub fn parse_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>, InvalidField> {
    cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    InvalidField::new(
                        format!("allowed_cidrs[{i}]"),
                        "not a CIDR such as 10.0.0.0/8",
                    )
                })
        })
        .collect()
}

/// Validates a create request; shared by the API and the CLI. Without secrets, one is
/// generated.
pub fn new_source(
    name: String,
    scheme: Scheme,
    secrets: Vec<String>,
    event_type_path: Option<String>,
    allowed_cidrs: &[String],
) -> Result<NewSource, InvalidField> {
    super::validate_name(&name)?;
    if secrets.len() > MAX_SECRETS {
        return Err(InvalidField::new(
            "secrets",
            format!("at most {MAX_SECRETS}"),
        ));
    }
    for (i, s) in secrets.iter().enumerate() {
        scheme
            .check_secret(s)
            .map_err(|m| InvalidField::new(format!("secrets[{i}]"), m))?;
    }
    let secrets = if secrets.is_empty() {
        vec![scheme.generate_secret()]
    } else {
        secrets
    };
    Ok(NewSource {
        name,
        scheme,
        secrets,
        event_type_path: validate_event_type_path(event_type_path)?,
        allowed_cidrs: parse_cidrs(allowed_cidrs)?,
    })
}
