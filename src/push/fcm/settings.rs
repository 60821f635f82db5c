//! FCM HTTP v1 settings (service-account authentication) and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::wire;
use crate::push::pool::{check_endpoint, check_pool};

/// FCM HTTP v1 settings (service-account authentication).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// Send to FCM at all.
    pub enabled: bool,
    /// FCM host.
    pub endpoint: String,
    /// Service-account key file (JSON) from the Firebase console.
    pub service_account_path: PathBuf,
    /// Overrides the key file's `project_id`.
    pub project_id: Option<String>,
    /// Overrides the key file's `token_uri` (the OAuth2 token endpoint).
    pub token_uri: Option<String>,
    /// HTTP/2 connections to the FCM host.
    pub pool_size: usize,
    /// Limit for one send, including connecting.
    pub request_timeout_ms: u64,
    /// Extra trusted root certificates (PEM), e.g. the simulator's CA.
    pub extra_root_certs: Vec<PathBuf>,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: wire::PRODUCTION_ENDPOINT.into(),
            service_account_path: PathBuf::new(),
            project_id: None,
            token_uri: None,
            pool_size: 2,
            request_timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
        }
    }
}

impl FcmConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        check_endpoint("fcm.endpoint", &self.endpoint)?;
        if let Some(uri) = &self.token_uri {
            check_endpoint("fcm.token_uri", uri)?;
        }
        check_pool("fcm", self.pool_size, self.request_timeout_ms)?;
        if self.enabled && self.service_account_path.as_os_str().is_empty() {
            return Err("fcm.service_account_path: must not be empty when fcm.enabled".into());
        }
        if matches!(&self.project_id, Some(p) if p.trim().is_empty()) {
            return Err("fcm.project_id: must not be empty when set".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let fcm = FcmConfig {
            endpoint: "http://fcm".into(),
            ..FcmConfig::default()
        };
        assert_eq!(
            fcm.validate().unwrap_err(),
            "fcm.endpoint: must be an https:// URL"
        );
        assert!(FcmConfig::default().validate().is_ok());
    }
}
