//! The simulated FCM HTTP v1 endpoint, `POST /v1/projects/{project}/messages:send`: the access
//! token must be unexpired and belong to an unrevoked service account, and the project in the
//! path must be that account's. Token requests on the same port go to [`oauth`], and the
//! simulator's own control requests to [`admin`].

use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::admin;
use super::exchange::{json_response, Handled, Received, Reply};
use super::faults::{self, Injected};
use super::oauth::{self, TOKEN_PATH};
use super::record::Side;
use super::state::State;
use super::tokens::{parse_fcm, FcmTestKind};
use crate::push::apns::wire as apns_wire;
use crate::push::fcm::request::is_reserved_data_key;
use crate::push::fcm::wire::{
    self, error_code, BAD_REQUEST_TYPE, FCM_ERROR_TYPE, MAX_PAYLOAD_BYTES, TOKEN_FIELD,
};

/// `Retry-After` seconds on a `QUOTA_EXCEEDED` test token.
pub const QUOTA_RETRY_AFTER_SECS: u64 = 2;

pub(super) async fn handle(state: &State, req: &Received) -> Handled {
    if req.path.split('?').next() == Some(TOKEN_PATH) {
        return oauth::handle(state, req);
    }
    if let Some(handled) = admin::handle(state, req) {
        return handled;
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

async fn send(state: &State, req: &Received, body: &Value, token: Option<&str>) -> Reply {
    let Some(project) = wire::project_of(&req.path) else {
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
    match faults::inject(&state.faults()).await {
        Some(Injected::Reset) => return Reply::Reset,
        Some(Injected::Unavailable { retry_after_secs }) => {
            return with_retry_after(
                rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                    Some(error_code::UNAVAILABLE),
                    vec![],
                ),
                retry_after_secs,
            )
        }
        None => {}
    }
    let Some(project_id) = access_token_project(state, req.header("authorization")) else {
        return rpc_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            None,
            vec![],
        );
    };
    if project != project_id {
        return rpc_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!(
                "Permission 'cloudmessaging.messages.create' denied on resource \
                 '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
            ),
            None,
            vec![],
        );
    }
    let Some(message) = body.get("message").and_then(Value::as_object) else {
        return invalid_argument("Invalid JSON payload received.", None);
    };
    if let Some(refused) = refuse_message(message) {
        return refused;
    }
    let Some(token) = token else {
        if message.contains_key("topic") || message.contains_key("condition") {
            return success(state, project);
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
    test_token_reply(state, project, token)
}

/// Google's checks of the message (string data values, payload size): the refusal, if any.
fn refuse_message(message: &serde_json::Map<String, Value>) -> Option<Reply> {
    if let Some(data) = message.get("data") {
        let Some(data) = data.as_object() else {
            return Some(invalid_argument(
                "Invalid value at 'message.data'",
                Some("message.data"),
            ));
        };
        if let Some((i, _)) = data.values().enumerate().find(|(_, v)| !v.is_string()) {
            let field = format!("message.data[{i}].value");
            return Some(invalid_argument(
                &format!("Invalid value at '{field}' (TYPE_STRING)"),
                Some(&field),
            ));
        }
        if let Some(key) = data.keys().find(|k| is_reserved_data_key(k)) {
            return Some(invalid_argument(
                &format!("Invalid data payload key: {key}"),
                Some("message.data"),
            ));
        }
    }
    if apns_priority_10_for_data_only(message) {
        return Some(invalid_argument(
            "Only normal priority (apns-priority 5) is allowed for a data message to Apple \
             devices",
            Some("message.apns.headers"),
        ));
    }
    let counted: usize = ["notification", "data"]
        .iter()
        .filter_map(|key| message.get(*key))
        .map(|v| v.to_string().len())
        .sum();
    if counted > MAX_PAYLOAD_BYTES {
        return Some(invalid_argument("Message is too big", None));
    }
    None
}

/// Google: "when sending payloads containing only data fields to iOS devices, only normal
/// priority (apns-priority 5) is allowed in ApnsConfig". Only data: no `notification`, and
/// the APNs block's `aps` shows nothing (no alert, badge or sound).
fn apns_priority_10_for_data_only(message: &serde_json::Map<String, Value>) -> bool {
    let apns = message.get("apns");
    let priority = apns
        .and_then(|a| a.pointer(&format!("/headers/{}", apns_wire::header::PRIORITY)))
        .and_then(Value::as_str);
    let aps = apns.and_then(|a| a.pointer("/payload/aps"));
    let shows_something = aps.is_some_and(|aps| {
        ["alert", "badge", "sound"]
            .iter()
            .any(|key| aps.get(*key).is_some())
    });
    priority == Some(apns_wire::priority::IMMEDIATE)
        && !message.contains_key("notification")
        && !shows_something
}

/// The answer a test token asks for (see [`super::tokens`]); ordinary tokens are delivered.
fn test_token_reply(state: &State, project: &str, token: &str) -> Reply {
    let Some((kind, times)) = parse_fcm(token) else {
        return success(state, project);
    };
    if !state.should_fail(token, times) {
        return success(state, project);
    }
    match kind {
        FcmTestKind::Success => success(state, project),
        FcmTestKind::Unregistered => rpc_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some(error_code::UNREGISTERED),
            vec![],
        ),
        FcmTestKind::SenderIdMismatch => rpc_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some(error_code::SENDER_ID_MISMATCH),
            vec![],
        ),
        FcmTestKind::InvalidArgument => invalid_token(),
        FcmTestKind::QuotaExceeded => with_retry_after(
            rpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for sending messages to this device.",
                Some(error_code::QUOTA_EXCEEDED),
                vec![],
            ),
            QUOTA_RETRY_AFTER_SECS,
        ),
        FcmTestKind::Unavailable => rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some(error_code::UNAVAILABLE),
            vec![],
        ),
        FcmTestKind::Internal => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            Some(error_code::INTERNAL),
            vec![],
        ),
        FcmTestKind::ThirdPartyAuthError => rpc_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Auth error from APNS or Web Push Service",
            Some(error_code::THIRD_PARTY_AUTH_ERROR),
            vec![],
        ),
        FcmTestKind::ConnectionReset => Reply::Reset,
    }
}

fn success(state: &State, project: &str) -> Reply {
    let id = format!("0:{}%{:016x}", state.now_millis(), rand::random::<u64>());
    Reply::Respond(json_response(
        StatusCode::OK,
        &json!({ "name": format!("projects/{project}/messages/{id}") }),
    ))
}

fn invalid_token() -> Reply {
    invalid_argument(
        "The registration token is not a valid FCM registration token",
        Some(TOKEN_FIELD),
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
        Some(error_code::INVALID_ARGUMENT),
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

/// The project the bearer's access token may send to: unexpired, and issued to a service
/// account that is still known and not revoked.
fn access_token_project(state: &State, authorization: Option<&str>) -> Option<String> {
    let token = authorization.and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
    })?;
    let owner = state.access_token_owner(token, state.now_secs())?;
    Some(state.identities.fcm_account(&owner)?.project_id)
}
