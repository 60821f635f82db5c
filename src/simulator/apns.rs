//! The simulated APNs endpoint: `POST /3/device/{token}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::{inject_faults, json_response, Handled, Injected, Received, Reply};
use super::tokens::{parse_apns, ApnsTestKind};
use super::{Side, State};

const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
];
const MAX_JWT_AGE_SECS: i64 = 3600;

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: i64,
}

pub(super) async fn handle(state: &State, req: &Received) -> Handled {
    let token = req.path.strip_prefix("/3/device/").map(str::to_string);
    let body = serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null);
    let apns_id = req
        .header("apns-id")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let reply = answer(state, req, token.as_deref(), &apns_id).await;
    let reply = match reply {
        Answer::Ok => Reply::Respond(with_apns_id(
            Response::new(Full::new(Bytes::new())),
            &apns_id,
        )),
        Answer::Error(status, reason, timestamp) => {
            let mut body = json!({ "reason": reason });
            if let Some(ts) = timestamp {
                body["timestamp"] = json!(ts);
            }
            Reply::Respond(with_apns_id(json_response(status, &body), &apns_id))
        }
        Answer::Unavailable(retry_after) => {
            let body = json!({ "reason": "ServiceUnavailable" });
            let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            Reply::Respond(with_apns_id(response, &apns_id))
        }
        Answer::Reset => Reply::Reset,
    };
    Handled {
        side: Side::Apns,
        token,
        body,
        reply,
    }
}

fn with_apns_id(mut response: Response<Full<Bytes>>, apns_id: &str) -> Response<Full<Bytes>> {
    if let Ok(value) = HeaderValue::from_str(apns_id) {
        response.headers_mut().insert("apns-id", value);
    }
    response
}

enum Answer {
    Ok,
    Error(StatusCode, &'static str, Option<i64>),
    /// An injected 503 with `Retry-After` seconds.
    Unavailable(u64),
    Reset,
}

fn bad(reason: &'static str) -> Answer {
    Answer::Error(StatusCode::BAD_REQUEST, reason, None)
}

async fn answer(state: &State, req: &Received, token: Option<&str>, apns_id: &str) -> Answer {
    if req.method != http::Method::POST {
        return Answer::Error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", None);
    }
    let Some(token) = token else {
        return Answer::Error(StatusCode::NOT_FOUND, "BadPath", None);
    };
    match inject_faults(state).await {
        Some(Injected::Reset) => return Answer::Reset,
        Some(Injected::Unavailable { retry_after_secs }) => {
            return Answer::Unavailable(retry_after_secs)
        }
        None => {}
    }
    if let Err(reason) = verify_provider_token(state, req.header("authorization")) {
        return Answer::Error(StatusCode::FORBIDDEN, reason, None);
    }
    if req.header("apns-topic").is_none_or(str::is_empty) {
        return bad("MissingTopic");
    }
    let push_type = req.header("apns-push-type").unwrap_or("alert");
    if !PUSH_TYPES.contains(&push_type) {
        return bad("InvalidPushType");
    }
    if req
        .header("apns-priority")
        .is_some_and(|p| !matches!(p, "10" | "5" | "1"))
    {
        return bad("BadPriority");
    }
    if req
        .header("apns-expiration")
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return bad("BadExpirationDate");
    }
    if req.header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return bad("BadCollapseId");
    }
    if uuid::Uuid::parse_str(apns_id).is_err() {
        return bad("BadMessageId");
    }
    if !(64..=200).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad("BadDeviceToken");
    }
    if req.body.is_empty() {
        return bad("PayloadEmpty");
    }
    let limit = if push_type == "voip" { 5120 } else { 4096 };
    if req.body.len() > limit {
        return Answer::Error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", None);
    }
    if !serde_json::from_slice::<Value>(&req.body).is_ok_and(|v| v.is_object()) {
        // Apple has no dedicated reason for malformed JSON; it answers 400 like this.
        return bad("BadPayload");
    }
    let Some((kind, times)) = parse_apns(token) else {
        return Answer::Ok;
    };
    if !state.should_fail(token, times) {
        return Answer::Ok;
    }
    match kind {
        ApnsTestKind::Success => Answer::Ok,
        ApnsTestKind::Unregistered { timestamp_ms } => {
            let ts = timestamp_ms.map(|t| t as i64).unwrap_or_else(now_millis);
            Answer::Error(StatusCode::GONE, "Unregistered", Some(ts))
        }
        ApnsTestKind::ExpiredToken => {
            Answer::Error(StatusCode::GONE, "ExpiredToken", Some(now_millis()))
        }
        ApnsTestKind::BadDeviceToken => bad("BadDeviceToken"),
        ApnsTestKind::DeviceTokenNotForTopic => bad("DeviceTokenNotForTopic"),
        ApnsTestKind::TooManyRequests => {
            Answer::Error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", None)
        }
        ApnsTestKind::ServiceUnavailable => {
            Answer::Error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", None)
        }
        ApnsTestKind::InternalServerError => Answer::Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            None,
        ),
        ApnsTestKind::ExpiredProviderToken => {
            Answer::Error(StatusCode::FORBIDDEN, "ExpiredProviderToken", None)
        }
        ApnsTestKind::ConnectionReset => Answer::Reset,
    }
}

/// Checks the provider JWT the way APNs does; `Err` carries the 403 reason.
fn verify_provider_token(state: &State, authorization: Option<&str>) -> Result<(), &'static str> {
    let Some(jwt) = authorization.and_then(|a| {
        a.strip_prefix("bearer ")
            .or_else(|| a.strip_prefix("Bearer "))
    }) else {
        return Err("MissingProviderToken");
    };
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(state.apns_key_id.as_str()) {
        return Err("InvalidProviderToken");
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<ProviderClaims>(jwt, &state.apns_key, &validation)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    if claims.iss != state.apns_team_id {
        return Err("InvalidProviderToken");
    }
    if now_millis() / 1000 - claims.iat > MAX_JWT_AGE_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}

pub(super) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
