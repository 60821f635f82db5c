//! APNs response mapping: status and `{"reason"}` to a neutral [`Outcome`].

use http::StatusCode;
use serde::Deserialize;

use super::wire::{header, reason};
use crate::push::outcome::{retry_after, Outcome, RetryClass};
use crate::push::pool::ProviderResponse;

#[derive(Deserialize)]
struct ErrorBody {
    reason: String,
    timestamp: Option<i64>,
}

/// Whether APNs refused the provider token only for its age (sign a new one and resend).
pub(super) fn is_expired_provider_token(response: &ProviderResponse) -> bool {
    response.status == StatusCode::FORBIDDEN
        && serde_json::from_slice::<ErrorBody>(&response.body)
            .is_ok_and(|b| b.reason == reason::EXPIRED_PROVIDER_TOKEN)
}

/// Maps an APNs response to an [`Outcome`], following Apple's table of reasons (README,
/// "Provider answers"): only a 410 `Unregistered` or `ExpiredToken` says a token is gone;
/// other token-level refusals keep the device; credential-level ones pause the app; a
/// reason Apple does not document is retried and counted as unrecognized.
pub fn map_response(response: &ProviderResponse, apns_id: &str) -> Outcome {
    let status = response.status;
    if status == StatusCode::OK {
        let provider_id = response
            .headers
            .get(header::ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(apns_id)
            .to_string();
        return Outcome::Delivered { provider_id };
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
    let timestamp = body.as_ref().and_then(|b| b.timestamp);
    let reason = body
        .map(|b| b.reason)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let after = retry_after(&response.headers);
    match reason.as_str() {
        reason::UNREGISTERED | reason::EXPIRED_TOKEN => Outcome::InvalidToken { reason, timestamp },
        reason::BAD_DEVICE_TOKEN | reason::DEVICE_TOKEN_NOT_FOR_TOPIC => {
            Outcome::TokenRejected { reason }
        }
        // The key, its team or its topics: every send with this credential would fail alike.
        reason::INVALID_PROVIDER_TOKEN
        | reason::MISSING_PROVIDER_TOKEN
        | reason::BAD_CERTIFICATE
        | reason::BAD_CERTIFICATE_ENVIRONMENT
        | reason::TOPIC_DISALLOWED => Outcome::CredentialRejected { reason },
        reason::TOO_MANY_REQUESTS
        | reason::INTERNAL_SERVER_ERROR
        | reason::SERVICE_UNAVAILABLE
        | reason::SHUTDOWN
        | reason::IDLE_TIMEOUT
        | reason::EXPIRED_PROVIDER_TOKEN
        | reason::TOO_MANY_PROVIDER_TOKEN_UPDATES => {
            Outcome::retry(reason, after, RetryClass::Transient)
        }
        // This notification or request is wrong; the device is fine.
        reason::BAD_TOPIC
        | reason::MISSING_TOPIC
        | reason::INVALID_PUSH_TYPE
        | reason::BAD_PRIORITY
        | reason::BAD_EXPIRATION_DATE
        | reason::BAD_COLLAPSE_ID
        | reason::BAD_MESSAGE_ID
        | reason::PAYLOAD_EMPTY
        | reason::PAYLOAD_TOO_LARGE
        | reason::BAD_PATH
        | reason::METHOD_NOT_ALLOWED
        | reason::MISSING_DEVICE_TOKEN
        | reason::DUPLICATE_HEADERS
        | reason::FORBIDDEN
        | reason::BAD_PAYLOAD => Outcome::Failed { reason },
        _ if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::retry(reason, after, RetryClass::Transient)
        }
        // Not in Apple's table (a 410 included: only the two documented reasons prune).
        _ => Outcome::retry(reason, after, RetryClass::Unrecognized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;

    fn response(status: u16, body: &str) -> ProviderResponse {
        ProviderResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn apple_reasons_map_to_outcomes() {
        assert_eq!(
            map_response(
                &response(410, r#"{"reason":"Unregistered","timestamp":7}"#),
                "id"
            ),
            Outcome::InvalidToken {
                reason: "Unregistered".into(),
                timestamp: Some(7)
            }
        );
        assert_eq!(
            map_response(&response(400, r#"{"reason":"BadDeviceToken"}"#), "id"),
            Outcome::TokenRejected {
                reason: "BadDeviceToken".into(),
            }
        );
        assert_eq!(
            map_response(
                &response(400, r#"{"reason":"DeviceTokenNotForTopic"}"#),
                "id"
            ),
            Outcome::TokenRejected {
                reason: "DeviceTokenNotForTopic".into(),
            }
        );
        // Only Apple's two reasons prune; an unknown 410 is retried and counted apart.
        assert_eq!(
            map_response(&response(410, r#"{"reason":"SomethingNew"}"#), "id"),
            Outcome::retry("SomethingNew", None, RetryClass::Unrecognized)
        );
        assert_eq!(
            map_response(&response(400, r#"{"reason":"SomethingNew"}"#), "id").label(),
            "unrecognized"
        );
        assert!(matches!(
            map_response(&response(403, r#"{"reason":"ExpiredProviderToken"}"#), "id"),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            map_response(&response(403, r#"{"reason":"InvalidProviderToken"}"#), "id"),
            Outcome::credential("InvalidProviderToken")
        );
        assert_eq!(
            map_response(&response(400, r#"{"reason":"TopicDisallowed"}"#), "id"),
            Outcome::credential("TopicDisallowed")
        );
        assert_eq!(
            map_response(&response(400, r#"{"reason":"BadTopic"}"#), "id"),
            Outcome::failed("BadTopic")
        );
        assert_eq!(
            map_response(&response(200, ""), "id"),
            Outcome::Delivered {
                provider_id: "id".into()
            }
        );
    }
}
