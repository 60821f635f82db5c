//! Bulk device import, for the HTTP API (`POST /v1/devices/import`) and the CLI: NDJSON fed
//! in chunks of any size, split into lines as it comes, each line validated as a
//! registration (`DeviceRegistration::validate`, the one home of that rule) and written in
//! batches, so neither a large file nor a large body is ever held whole.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::device::{DeviceLimits, DeviceRegistration, RegistrationRequest};
use crate::model::InvalidField;
use crate::store::{BatchCounts, Store};

/// Registrations written per write transaction.
pub const BATCH: usize = 1_000;
/// Longest line taken; a longer one is rejected without being held.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Rejected lines listed in a report; the count covers them all.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

/// One line of an import (and of an export): the token and its registration, the fields
/// of `PUT /v1/devices/{token}` without `user_auth` (the server key vouches for user ids).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceLine {
    /// The provider's device token.
    pub token: String,
    /// `apns` or `fcm`.
    pub platform: String,
    /// The owning user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// BCP-47 language tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// App version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// APNs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// APNs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl DeviceLine {
    /// The line of a stored device, as an export writes it.
    pub fn of(device: &crate::store::Device) -> Self {
        Self {
            token: device.token.clone(),
            platform: device.platform.as_str().to_string(),
            user_id: device.user_id.clone(),
            locale: device.locale.clone(),
            timezone: device.timezone.clone(),
            app_version: device.app_version.clone(),
            environment: device.environment.map(|e| e.as_str().to_string()),
            topic: device.topic.clone(),
            attributes: Some(device.attributes.clone()),
            tags: device.tags.clone(),
        }
    }
}

/// A line that was not imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RejectedLine {
    /// 1-based line number in the input.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Tokens registered by this import.
    pub created: u64,
    /// Registered tokens whose registration changed.
    pub updated: u64,
    /// Registered tokens already stored as given (not written).
    pub unchanged: u64,
    /// Lines not imported.
    pub rejected: u64,
    /// The first rejected lines (at most 1000), in input order.
    pub rejected_lines: Vec<RejectedLine>,
    /// True when more lines were rejected than `rejected_lines` lists.
    pub rejected_lines_truncated: bool,
}

/// An import in progress: feed it chunks, then finish it.
pub struct Importer<'a> {
    store: &'a Store,
    app_id: &'a str,
    limits: &'a DeviceLimits,
    /// The unfinished last line of the chunks so far.
    partial: Vec<u8>,
    /// The current line is over [`MAX_LINE_BYTES`]: its bytes are dropped up to its end.
    skipping: bool,
    line_no: u64,
    batch: Vec<(String, DeviceRegistration)>,
    report: ImportReport,
}

impl<'a> Importer<'a> {
    /// A new import of `app_id`'s devices.
    pub fn new(store: &'a Store, app_id: &'a str, limits: &'a DeviceLimits) -> Self {
        Self {
            store,
            app_id,
            limits,
            partial: Vec::new(),
            skipping: false,
            line_no: 0,
            batch: Vec::with_capacity(BATCH),
            report: ImportReport::default(),
        }
    }

    /// Takes the next bytes of the input, writing each batch once it is full.
    pub async fn feed(&mut self, mut chunk: &[u8]) -> anyhow::Result<()> {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&chunk[..end], &chunk[end + 1..]);
            chunk = rest;
            if self.skipping {
                self.skipping = false;
                self.line_no += 1;
                self.reject(format!("line longer than {MAX_LINE_BYTES} bytes"));
            } else if self.partial.is_empty() {
                self.take_line(head);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.take_line(&line);
            }
            if self.batch.len() >= BATCH {
                self.flush().await?;
            }
        }
        if !self.skipping {
            self.partial.extend_from_slice(chunk);
            if self.partial.len() > MAX_LINE_BYTES {
                self.partial = Vec::new();
                self.skipping = true;
            }
        }
        Ok(())
    }

    /// Takes the last line (without a final newline) and writes what is left.
    pub async fn finish(mut self) -> anyhow::Result<ImportReport> {
        if self.skipping {
            self.line_no += 1;
            self.reject(format!("line longer than {MAX_LINE_BYTES} bytes"));
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.take_line(&line);
        }
        self.flush().await?;
        Ok(self.report)
    }

    fn take_line(&mut self, raw: &[u8]) {
        self.line_no += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match parse_line(raw, self.limits) {
            Ok(device) => self.batch.push(device),
            Err(reason) => self.reject(reason),
        }
    }

    fn reject(&mut self, reason: String) {
        let report = &mut self.report;
        report.rejected += 1;
        if report.rejected_lines.len() < MAX_LISTED_REJECTIONS {
            report.rejected_lines.push(RejectedLine {
                line: self.line_no,
                reason,
            });
        } else {
            report.rejected_lines_truncated = true;
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let BatchCounts {
            created,
            updated,
            unchanged,
        } = self
            .store
            .upsert_device_batch(self.app_id, &self.batch)
            .await?;
        self.report.created += created;
        self.report.updated += updated;
        self.report.unchanged += unchanged;
        self.batch.clear();
        Ok(())
    }
}

/// One line as a validated registration, or why it is not one (naming the field).
fn parse_line(raw: &[u8], limits: &DeviceLimits) -> Result<(String, DeviceRegistration), String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let line: DeviceLine = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        match (inner.is_data(), e.path().to_string()) {
            (true, path) if path == "." => inner.to_string(),
            (true, path) => format!("{path}: {inner}"),
            (false, _) => format!("invalid JSON: {inner}"),
        }
    })?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    line.validate(limits)
        .map_err(|e| format!("{}: {}", e.field, e.message))
}

impl DeviceLine {
    /// The token's stored form and the registration, validated as `PUT /v1/devices/{token}`
    /// validates one; the error names the field.
    pub fn validate(
        self,
        limits: &DeviceLimits,
    ) -> Result<(String, DeviceRegistration), InvalidField> {
        for (field, text) in [
            ("token", Some(&self.token)),
            ("user_id", self.user_id.as_ref()),
        ] {
            if text.is_some_and(|t| t.contains('\0')) {
                return Err(InvalidField::new(field, "must not contain NUL characters"));
            }
        }
        if self
            .attributes
            .as_ref()
            .is_some_and(|a| a.to_string().contains("\\u0000"))
        {
            return Err(InvalidField::new(
                "attributes",
                "must not contain NUL characters",
            ));
        }
        let request = RegistrationRequest {
            platform: self.platform,
            user_id: self.user_id,
            locale: self.locale,
            timezone: self.timezone,
            app_version: self.app_version,
            environment: self.environment,
            topic: self.topic,
            attributes: self.attributes,
            tags: self.tags,
        };
        DeviceRegistration::validate(&self.token, request, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_checked_like_a_registration() {
        let limits = DeviceLimits::default();
        let token = "ab".repeat(32);
        let ok = format!(r#"{{"token":"{token}","platform":"apns","locale":"fr-ca"}}"#);
        let (stored, reg) = parse_line(ok.as_bytes(), &limits).expect("valid");
        assert_eq!(stored, token);
        assert_eq!(reg.locale.as_deref(), Some("fr-CA"));
        let bad = format!(r#"{{"token":"{token}","platform":"fcm"}}"#);
        assert!(parse_line(bad.as_bytes(), &limits)
            .expect_err("an APNs token is not an FCM one")
            .starts_with("token:"));
        let unknown = format!(r#"{{"token":"{token}","platform":"apns","user_auth":"x"}}"#);
        assert!(parse_line(unknown.as_bytes(), &limits)
            .expect_err("no proofs in imports")
            .contains("user_auth"));
        assert!(parse_line(b"{not json", &limits)
            .expect_err("syntax")
            .starts_with("invalid JSON"));
    }
}
