//! APNs response mapping: status and `{"reason"}` to a neutral [`Outcome`].

use http::StatusCode;
use serde::Deserialize;

use super::wire::{header, reason};
use crate::push::outcome::{retry_after, Outcome};
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

/// Maps an APNs response to an [`Outcome`] (Apple's table in DESIGN.md).
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
    let retry = |reason: String| Outcome::Retry {
        after: retry_after(&response.headers),
        reason,
    };
    match reason.as_str() {
        reason::UNREGISTERED | reason::EXPIRED_TOKEN => Outcome::InvalidToken { reason, timestamp },
        reason::BAD_DEVICE_TOKEN | reason::DEVICE_TOKEN_NOT_FOR_TOPIC => Outcome::InvalidToken {
            reason,
            timestamp: None,
        },
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
        | reason::TOO_MANY_PROVIDER_TOKEN_UPDATES => retry(reason),
        _ if status == StatusCode::GONE => Outcome::InvalidToken { reason, timestamp },
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => retry(reason),
        _ => Outcome::Failed { reason },
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
            Outcome::InvalidToken {
                reason: "BadDeviceToken".into(),
                timestamp: None
            }
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
