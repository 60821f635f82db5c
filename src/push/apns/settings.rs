//! APNs settings (token-based authentication) and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::wire;
use crate::push::pool::{check_endpoint, check_pool};

/// APNs settings (token-based authentication).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// Send to APNs at all.
    pub enabled: bool,
    /// Production host.
    pub endpoint: String,
    /// Sandbox (development) host.
    pub sandbox_endpoint: String,
    /// The `.p8` token-signing key from the Apple developer account.
    pub key_path: PathBuf,
    /// The key's 10-character id.
    pub key_id: String,
    /// The developer team id (JWT issuer).
    pub team_id: String,
    /// Topic (bundle id) for devices that do not carry one.
    pub default_topic: Option<String>,
    /// HTTP/2 connections per host.
    pub pool_size: usize,
    /// Limit for one send, including connecting.
    pub request_timeout_ms: u64,
    /// Extra trusted root certificates (PEM), e.g. the simulator's CA.
    pub extra_root_certs: Vec<PathBuf>,
    /// Age after which the provider JWT is replaced (Apple: 20 to 60 minutes).
    pub jwt_refresh_secs: u64,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: wire::PRODUCTION_ENDPOINT.into(),
            sandbox_endpoint: wire::SANDBOX_ENDPOINT.into(),
            key_path: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            default_topic: None,
            pool_size: 2,
            request_timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
            jwt_refresh_secs: 50 * 60,
        }
    }
}

impl ApnsConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        check_endpoint("apns.endpoint", &self.endpoint)?;
        check_endpoint("apns.sandbox_endpoint", &self.sandbox_endpoint)?;
        check_pool("apns", self.pool_size, self.request_timeout_ms)?;
        if !(20 * 60..=55 * 60).contains(&self.jwt_refresh_secs) {
            return Err("apns.jwt_refresh_secs: must be between 1200 and 3300".into());
        }
        if self.enabled {
            if self.key_path.as_os_str().is_empty() {
                return Err("apns.key_path: must not be empty when apns.enabled".into());
            }
            if self.key_id.trim().is_empty() {
                return Err("apns.key_id: must not be empty when apns.enabled".into());
            }
            if self.team_id.trim().is_empty() {
                return Err("apns.team_id: must not be empty when apns.enabled".into());
            }
        }
        if matches!(&self.default_topic, Some(t) if t.trim().is_empty()) {
            return Err("apns.default_topic: must not be empty when set".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let apns = ApnsConfig {
            enabled: true,
            key_path: "k.p8".into(),
            team_id: "T".into(),
            ..ApnsConfig::default()
        };
        assert_eq!(
            apns.validate().unwrap_err(),
            "apns.key_id: must not be empty when apns.enabled"
        );
        assert!(ApnsConfig::default().validate().is_ok());
    }
}
