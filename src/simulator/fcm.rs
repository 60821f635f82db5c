//! The simulated FCM HTTP v1 endpoint and its OAuth2 token endpoint.

use http::{HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use rand::distributions::{Alphanumeric, DistString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::apns::now_millis;
use super::server::{inject_faults, json_response, Handled, Injected, Received, Reply};
use super::tokens::{parse_fcm, FcmTestKind};
use super::{Side, State};
use crate::push::fcm::{BAD_REQUEST_TYPE, FCM_ERROR_TYPE, MAX_PAYLOAD_BYTES, SCOPE};

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `Retry-After` seconds on a `QUOTA_EXCEEDED` test token.
pub const QUOTA_RETRY_AFTER_SECS: u64 = 2;

pub(super) async fn handle(state: &State, req: &Received) -> Handled {
    if req.path == "/token" || req.path.starts_with("/token?") {
        return token_endpoint(state, req);
    }
    let body = serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null);
    let token = body["message"]["token"].as_str().map(str::to_string);
    let reply = send(state, req, &body, token.as_deref()).await;
    Handled {
        side: Side::Fcm,
        token,
        body,
        reply,
    }
}

fn project_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/projects/")?
        .strip_suffix("/messages:send")
        .filter(|p| !p.is_empty() && !p.contains('/'))
}

async fn send(state: &State, req: &Received, body: &Value, token: Option<&str>) -> Reply {
    let Some(project) = project_of(&req.path) else {
        return rpc_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Not found",
            None,
            vec![],
        );
    };
    if req.method != http::Method::POST {
        return rpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_ARGUMENT",
            "Method not allowed",
            None,
            vec![],
        );
    }
    match inject_faults(state).await {
        Some(Injected::Reset) => return Reply::Reset,
        Some(Injected::Unavailable { retry_after_secs }) => {
            return with_retry_after(
                rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                    Some("UNAVAILABLE"),
                    vec![],
                ),
                retry_after_secs,
            )
        }
        None => {}
    }
    if !access_token_valid(state, req.header("authorization")) {
        return rpc_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            None,
            vec![],
        );
    }
    if project != state.fcm_project_id {
        return rpc_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied on resource",
            None,
            vec![],
        );
    }
    let Some(message) = body.get("message").and_then(Value::as_object) else {
        return invalid_argument("Invalid JSON payload received.", None);
    };
    if let Some(data) = message.get("data") {
        let Some(data) = data.as_object() else {
            return invalid_argument("Invalid value at 'message.data'", Some("message.data"));
        };
        if let Some((i, _)) = data.values().enumerate().find(|(_, v)| !v.is_string()) {
            let field = format!("message.data[{i}].value");
            return invalid_argument(
                &format!("Invalid value at '{field}' (TYPE_STRING)"),
                Some(&field),
            );
        }
    }
    let counted: usize = ["notification", "data"]
        .iter()
        .filter_map(|key| message.get(*key))
        .map(|v| v.to_string().len())
        .sum();
    if counted > MAX_PAYLOAD_BYTES {
        return invalid_argument("Message is too big", None);
    }
    let Some(token) = token else {
        if message.contains_key("topic") || message.contains_key("condition") {
            return success(state);
        }
        return invalid_argument("Recipient of the message is not set.", None);
    };
    let well_formed = (100..=4096).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
    if !well_formed {
        return invalid_token();
    }
    let Some((kind, times)) = parse_fcm(token) else {
        return success(state);
    };
    if !state.should_fail(token, times) {
        return success(state);
    }
    match kind {
        FcmTestKind::Success => success(state),
        FcmTestKind::Unregistered => rpc_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
            vec![],
        ),
        FcmTestKind::SenderIdMismatch => rpc_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
            vec![],
        ),
        FcmTestKind::InvalidArgument => invalid_token(),
        FcmTestKind::QuotaExceeded => with_retry_after(
            rpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for sending messages to this device.",
                Some("QUOTA_EXCEEDED"),
                vec![],
            ),
            QUOTA_RETRY_AFTER_SECS,
        ),
        FcmTestKind::Unavailable => rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
            vec![],
        ),
        FcmTestKind::Internal => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            Some("INTERNAL"),
            vec![],
        ),
        FcmTestKind::ConnectionReset => Reply::Reset,
    }
}

fn success(state: &State) -> Reply {
    let id = format!("0:{}%{:016x}", now_millis(), rand::random::<u64>());
    Reply::Respond(json_response(
        StatusCode::OK,
        &json!({ "name": format!("projects/{}/messages/{id}", state.fcm_project_id) }),
    ))
}

fn invalid_token() -> Reply {
    invalid_argument(
        "The registration token is not a valid FCM registration token",
        Some("message.token"),
    )
}

fn invalid_argument(message: &str, field: Option<&str>) -> Reply {
    let extra = field
        .map(|f| {
            vec![json!({
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{ "field": f, "description": message }],
            })]
        })
        .unwrap_or_default();
    rpc_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        Some("INVALID_ARGUMENT"),
        extra,
    )
}

/// A `google.rpc.Status` error, with an `FcmError` detail when `error_code` is given.
fn rpc_error(
    status: StatusCode,
    rpc_status: &str,
    message: &str,
    error_code: Option<&str>,
    extra_details: Vec<Value>,
) -> Reply {
    let mut details: Vec<Value> = error_code
        .map(|code| json!({ "@type": FCM_ERROR_TYPE, "errorCode": code }))
        .into_iter()
        .collect();
    details.extend(extra_details);
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "status": rpc_status,
    });
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    Reply::Respond(json_response(status, &json!({ "error": error })))
}

fn with_retry_after(reply: Reply, secs: u64) -> Reply {
    match reply {
        Reply::Respond(mut response) => {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            Reply::Respond(response)
        }
        Reply::Reset => Reply::Reset,
    }
}

fn access_token_valid(state: &State, authorization: Option<&str>) -> bool {
    let Some(token) = authorization.and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    }) else {
        return false;
    };
    let now = now_millis() / 1000;
    let tokens = state
        .access_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    tokens.get(token).is_some_and(|expires| now < *expires)
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

fn token_endpoint(state: &State, req: &Received) -> Handled {
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = Value::Object(
        form.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    let reply = if req.method != http::Method::POST {
        oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "POST only",
        )
    } else if field("grant_type") != Some(JWT_GRANT) {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        )
    } else {
        match field("assertion").map(|a| verify_assertion(state, a)) {
            None => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing assertion",
            ),
            Some(Err(why)) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
            Some(Ok(())) => issue_access_token(state),
        }
    };
    Handled {
        side: Side::Token,
        token: None,
        body,
        reply,
    }
}

fn verify_assertion(state: &State, assertion: &str) -> Result<(), &'static str> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    validation.leeway = 60;
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &state.fcm_key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe",
            _ => "Invalid JWT Signature.",
        })?
        .claims;
    if claims.iss != state.fcm_client_email {
        return Err("Invalid JWT: unknown issuer");
    }
    if !claims.scope.split_whitespace().any(|s| s == SCOPE) {
        return Err("Invalid OAuth scope or ID token audience provided.");
    }
    let aud_is_token_uri = claims
        .aud
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("https") && u.path() == "/token");
    if !aud_is_token_uri {
        return Err("Invalid JWT: audience must be the token endpoint");
    }
    let now = now_millis() / 1000;
    if claims.exp - claims.iat > 3600 || claims.iat > now + 60 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe",
        );
    }
    Ok(())
}

fn issue_access_token(state: &State) -> Reply {
    let token = format!(
        "ya29.sim-{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 48)
    );
    let ttl = state.access_token_ttl_secs;
    state
        .access_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.clone(), now_millis() / 1000 + ttl as i64);
    Reply::Respond(json_response(
        StatusCode::OK,
        &json!({ "access_token": token, "expires_in": ttl, "token_type": "Bearer" }),
    ))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::Respond(json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    ))
}
