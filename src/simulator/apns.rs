//! The simulated APNs endpoint: `POST /3/device/{token}`, checked the way Apple checks it,
//! including the provider token against the known keys and their update history
//! ([`super::identities`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use super::exchange::{json_response, Handled, Received, Reply};
use super::faults::{self, Injected};
use super::identities::TokenUse;
use super::record::Side;
use super::state::State;
use super::tokens::{parse_apns, ApnsTestKind};
use crate::push::apns::wire::{self, header, priority, push_type, reason};

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: i64,
}

pub(super) async fn handle(state: &State, req: &Received) -> Handled {
    let token = req.path.strip_prefix(wire::DEVICE_PATH).map(str::to_string);
    let body = serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null);
    let apns_id = req
        .header(header::ID)
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
            let body = json!({ "reason": reason::SERVICE_UNAVAILABLE });
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
        response.headers_mut().insert(header::ID, value);
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
        return Answer::Error(
            StatusCode::METHOD_NOT_ALLOWED,
            reason::METHOD_NOT_ALLOWED,
            None,
        );
    }
    let Some(token) = token else {
        return Answer::Error(StatusCode::NOT_FOUND, reason::BAD_PATH, None);
    };
    match faults::inject(&state.faults()).await {
        Some(Injected::Reset) => return Answer::Reset,
        Some(Injected::Unavailable { retry_after_secs }) => {
            return Answer::Unavailable(retry_after_secs)
        }
        None => {}
    }
    if let Err(refused) = verify_provider_token(state, req.header("authorization")) {
        return refused;
    }
    if let Err(refused) = check_request(req, token, apns_id) {
        return refused;
    }
    test_token_answer(state, token)
}

/// Apple's checks of headers, token and payload, in Apple's order.
fn check_request(req: &Received, token: &str, apns_id: &str) -> Result<(), Answer> {
    let refuse = |reason| Err(bad(reason));
    if req.header(header::TOPIC).is_none_or(str::is_empty) {
        return refuse(reason::MISSING_TOPIC);
    }
    let push_type = req.header(header::PUSH_TYPE).unwrap_or(push_type::ALERT);
    if !push_type::ALL.contains(&push_type) {
        return refuse(reason::INVALID_PUSH_TYPE);
    }
    let stated_priority = req.header(header::PRIORITY);
    if stated_priority.is_some_and(|p| !priority::ALL.contains(&p)) {
        return refuse(reason::BAD_PRIORITY);
    }
    // Apple: priority 10 is an error for a background push, which must use 5. Only a stated
    // 10 is refused; clients that leave the header out of a background push keep working.
    if push_type == push_type::BACKGROUND && stated_priority == Some(priority::IMMEDIATE) {
        return refuse(reason::BAD_PRIORITY);
    }
    if req
        .header(header::EXPIRATION)
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return refuse(reason::BAD_EXPIRATION_DATE);
    }
    if req
        .header(header::COLLAPSE_ID)
        .is_some_and(|c| c.len() > wire::MAX_COLLAPSE_ID_BYTES)
    {
        return refuse(reason::BAD_COLLAPSE_ID);
    }
    if uuid::Uuid::parse_str(apns_id).is_err() {
        return refuse(reason::BAD_MESSAGE_ID);
    }
    if !(64..=200).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(reason::BAD_DEVICE_TOKEN);
    }
    if req.body.is_empty() {
        return refuse(reason::PAYLOAD_EMPTY);
    }
    if req.body.len() > wire::payload_limit(push_type) {
        return Err(Answer::Error(
            StatusCode::PAYLOAD_TOO_LARGE,
            reason::PAYLOAD_TOO_LARGE,
            None,
        ));
    }
    if !serde_json::from_slice::<Value>(&req.body).is_ok_and(|v| v.is_object()) {
        // Apple has no dedicated reason for malformed JSON; it answers 400 like this.
        return refuse("BadPayload");
    }
    Ok(())
}

/// The answer a test token asks for (see [`super::tokens`]); ordinary tokens are delivered.
fn test_token_answer(state: &State, token: &str) -> Answer {
    let Some((kind, times)) = parse_apns(token) else {
        return Answer::Ok;
    };
    if !state.should_fail(token, times) {
        return Answer::Ok;
    }
    match kind {
        ApnsTestKind::Success => Answer::Ok,
        ApnsTestKind::Unregistered { timestamp_ms } => {
            let ts = timestamp_ms
                .map(|t| t as i64)
                .unwrap_or_else(|| state.now_millis());
            Answer::Error(StatusCode::GONE, reason::UNREGISTERED, Some(ts))
        }
        ApnsTestKind::ExpiredToken => Answer::Error(
            StatusCode::GONE,
            reason::EXPIRED_TOKEN,
            Some(state.now_millis()),
        ),
        ApnsTestKind::BadDeviceToken => bad(reason::BAD_DEVICE_TOKEN),
        ApnsTestKind::DeviceTokenNotForTopic => bad(reason::DEVICE_TOKEN_NOT_FOR_TOPIC),
        ApnsTestKind::TooManyRequests => Answer::Error(
            StatusCode::TOO_MANY_REQUESTS,
            reason::TOO_MANY_REQUESTS,
            None,
        ),
        ApnsTestKind::ServiceUnavailable => Answer::Error(
            StatusCode::SERVICE_UNAVAILABLE,
            reason::SERVICE_UNAVAILABLE,
            None,
        ),
        ApnsTestKind::InternalServerError => Answer::Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            reason::INTERNAL_SERVER_ERROR,
            None,
        ),
        ApnsTestKind::ExpiredProviderToken => {
            Answer::Error(StatusCode::FORBIDDEN, reason::EXPIRED_PROVIDER_TOKEN, None)
        }
        ApnsTestKind::ConnectionReset => Answer::Reset,
    }
}

/// Checks the provider JWT the way APNs does: a known, unrevoked `kid`, its signature and
/// team, its age, and how often the key's token changes. `Err` is the refusal.
fn verify_provider_token(state: &State, authorization: Option<&str>) -> Result<(), Answer> {
    let forbidden = |reason| Answer::Error(StatusCode::FORBIDDEN, reason, None);
    let Some(jwt) = authorization.and_then(|a| {
        a.strip_prefix("bearer ")
            .or_else(|| a.strip_prefix("Bearer "))
    }) else {
        return Err(forbidden(reason::MISSING_PROVIDER_TOKEN));
    };
    let invalid = || forbidden(reason::INVALID_PROVIDER_TOKEN);
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| invalid())?;
    let Some(key_id) = header.kid.filter(|_| header.alg == Algorithm::ES256) else {
        return Err(invalid());
    };
    let key = state
        .identities
        .apns_key(&key_id, jwt)
        .ok_or_else(invalid)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    if key.is_current {
        // The key's current token had its signature checked when it became current.
        validation.insecure_disable_signature_validation();
    }
    let claims = jsonwebtoken::decode::<ProviderClaims>(jwt, &key.verifier, &validation)
        .map_err(|_| invalid())?
        .claims;
    if claims.iss != key.team_id {
        return Err(invalid());
    }
    if state.now_secs() - claims.iat > wire::MAX_PROVIDER_TOKEN_AGE_SECS {
        return Err(forbidden(reason::EXPIRED_PROVIDER_TOKEN));
    }
    match state
        .identities
        .use_apns_token(&key_id, jwt, claims.iat, state.now_millis())
    {
        TokenUse::Accepted => Ok(()),
        TokenUse::TooManyUpdates => Err(Answer::Error(
            StatusCode::TOO_MANY_REQUESTS,
            reason::TOO_MANY_PROVIDER_TOKEN_UPDATES,
            None,
        )),
    }
}
