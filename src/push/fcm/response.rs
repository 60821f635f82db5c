//! FCM response mapping: `google.rpc.Status` errors with an `FcmError` detail to a neutral
//! [`Outcome`].

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::wire::{self, error_code};
use crate::push::outcome::{retry_after, Outcome, RetryClass};
use crate::push::pool::ProviderResponse;

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: RpcStatus,
}

#[derive(Deserialize)]
struct RpcStatus {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

impl RpcStatus {
    fn fcm_error_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d["@type"] == wire::FCM_ERROR_TYPE)
            .and_then(|d| d["errorCode"].as_str())
    }

    /// Whether an INVALID_ARGUMENT is about the registration token (not the payload).
    fn blames_token(&self) -> bool {
        let field_is_token = self
            .details
            .iter()
            .filter(|d| d["@type"] == wire::BAD_REQUEST_TYPE)
            .filter_map(|d| d["fieldViolations"].as_array())
            .flatten()
            .any(|v| v["field"] == wire::TOKEN_FIELD);
        let message_says_token = self
            .message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"));
        field_is_token || message_says_token
    }
}

/// Maps an FCM response to an [`Outcome`] (Google's table in DESIGN.md).
pub fn map_response(response: &ProviderResponse) -> Outcome {
    let status = response.status;
    if status.is_success() {
        let name = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Outcome::Delivered { provider_id: name };
    }
    let rpc = serde_json::from_slice::<ErrorEnvelope>(&response.body)
        .ok()
        .map(|e| e.error);
    let code = rpc
        .as_ref()
        .and_then(|r| r.fcm_error_code().or(r.status.as_deref()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let after = retry_after(&response.headers);
    match code.as_str() {
        error_code::UNREGISTERED => Outcome::InvalidToken {
            reason: code,
            timestamp: None,
        },
        error_code::SENDER_ID_MISMATCH => Outcome::TokenRejected { reason: code },
        error_code::INVALID_ARGUMENT if rpc.as_ref().is_some_and(RpcStatus::blames_token) => {
            Outcome::TokenRejected { reason: code }
        }
        // The project, the service account or the APNs key uploaded to Firebase: every send
        // with this credential would fail alike. (A 401 other than THIRD_PARTY_AUTH_ERROR is
        // refreshed once before it gets here.)
        error_code::THIRD_PARTY_AUTH_ERROR
        | error_code::UNAUTHENTICATED
        | error_code::PERMISSION_DENIED => Outcome::CredentialRejected { reason: code },
        _ if status == StatusCode::UNAUTHORIZED => Outcome::CredentialRejected { reason: code },
        error_code::QUOTA_EXCEEDED => Outcome::retry(code, after, RetryClass::Throttled),
        error_code::UNAVAILABLE | error_code::INTERNAL | error_code::UNSPECIFIED_ERROR => {
            Outcome::retry(code, after, RetryClass::Transient)
        }
        // The message itself is wrong; the device is fine.
        error_code::INVALID_ARGUMENT => Outcome::Failed { reason: code },
        _ if status == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::retry(code, after, RetryClass::Throttled)
        }
        _ if status.is_server_error() => Outcome::retry(code, after, RetryClass::Transient),
        // Not in Google's table.
        _ => Outcome::retry(code, after, RetryClass::Unrecognized),
    }
}

/// Whether a 401 is worth one access-token refresh: not when Google says the APNs
/// certificate or web-push key configured in Firebase is at fault, which no token fixes.
pub(super) fn refresh_may_help(response: &ProviderResponse) -> bool {
    response.status == StatusCode::UNAUTHORIZED
        && !serde_json::from_slice::<ErrorEnvelope>(&response.body)
            .is_ok_and(|e| e.error.fcm_error_code() == Some(error_code::THIRD_PARTY_AUTH_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use serde_json::json;
    use wire::FCM_ERROR_TYPE;

    fn response(status: u16, body: Value) -> ProviderResponse {
        ProviderResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn invalid_argument_prunes_only_when_about_the_token() {
        let about_token = response(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "The registration token is not a valid FCM registration token",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"}]}}),
        );
        assert!(matches!(
            map_response(&about_token),
            Outcome::TokenRejected { .. }
        ));
        let about_payload = response(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "Invalid value at 'message.android.ttl'",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"}]}}),
        );
        assert_eq!(
            map_response(&about_payload),
            Outcome::failed("INVALID_ARGUMENT")
        );
    }

    #[test]
    fn quota_and_unknown_codes_are_retried_in_their_own_class() {
        let quota = response(
            429,
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "QUOTA_EXCEEDED"}]}}),
        );
        assert_eq!(
            map_response(&quota),
            Outcome::retry("QUOTA_EXCEEDED", None, RetryClass::Throttled)
        );
        let unknown = response(
            400,
            json!({"error": {"code": 400, "status": "FAILED_PRECONDITION", "details": []}}),
        );
        assert_eq!(map_response(&unknown).label(), "unrecognized");
        let unspecified = response(
            500,
            json!({"error": {"code": 500, "status": "INTERNAL",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "UNSPECIFIED_ERROR"}]}}),
        );
        assert_eq!(
            map_response(&unspecified),
            Outcome::retry("UNSPECIFIED_ERROR", None, RetryClass::Transient)
        );
    }

    #[test]
    fn credential_answers_pause_instead_of_failing() {
        let third_party = response(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                "details": [{"@type": FCM_ERROR_TYPE, "errorCode": "THIRD_PARTY_AUTH_ERROR"}]}}),
        );
        assert_eq!(
            map_response(&third_party),
            Outcome::credential("THIRD_PARTY_AUTH_ERROR")
        );
        let denied = response(
            403,
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "details": []}}),
        );
        assert_eq!(
            map_response(&denied),
            Outcome::credential("PERMISSION_DENIED")
        );
    }
}
