//! The simulator's control requests, on the FCM port (HTTP/1.1 or HTTP/2) under `/sim/`, so a
//! person or a script can change its identities while it runs (`curl --cacert certs/ca.pem`):
//!
//! | Request | Effect |
//! |---|---|
//! | `GET /sim/identities` | the known APNs keys and service accounts, and which are revoked |
//! | `PUT /sim/apns-keys/{key_id}` `{"team_id", "key"}` | adds a key (`key`: `.p8` or public PEM) |
//! | `POST /sim/apns-keys/{key_id}/revoke` | its provider tokens get 403 `InvalidProviderToken` |
//! | `PUT /sim/service-accounts` (the key file's JSON) | adds a service account |
//! | `POST /sim/service-accounts/{client_email}/revoke` | its access tokens get 401, its assertions `invalid_grant` |
//! | `POST /sim/clock` `{"shift_secs"}` | moves the simulator's clock (the provider-token and assertion time checks), as a bridge running on a shifted clock needs |
//!
//! Answers are JSON; an unknown identity is a 404, a bad body a 400 naming the field.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::exchange::{json_response, Handled, Received, Reply};
use super::record::Side;
use super::state::State;
use crate::push::fcm::ServiceAccount;

/// Where the control requests live.
const PREFIX: &str = "/sim/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApnsKey {
    team_id: String,
    key: String,
}

/// Answers a control request, or `None` when the path is not one.
pub(super) fn handle(state: &State, req: &Received) -> Option<Handled> {
    let path = req.path.split('?').next()?.strip_prefix(PREFIX)?;
    let segments: Vec<&str> = path.split('/').collect();
    let (status, body) = match (&req.method, segments.as_slice()) {
        (&Method::GET, ["identities"]) => (
            StatusCode::OK,
            json!({
                "apns_keys": state.identities.apns_keys(),
                "fcm_service_accounts": state.identities.fcm_accounts(),
            }),
        ),
        (&Method::PUT, ["apns-keys", key_id]) => put_apns_key(state, key_id, &req.body),
        (&Method::POST, ["apns-keys", key_id, "revoke"]) => {
            revoked(state.identities.revoke_apns_key(key_id), key_id)
        }
        (&Method::PUT, ["service-accounts"]) => put_service_account(state, &req.body),
        (&Method::POST, ["clock"]) => shift_clock(state, &req.body),
        (&Method::POST, ["service-accounts", email, "revoke"]) => {
            let email = percent_decoded(email);
            revoked(state.identities.revoke_fcm_account(&email), &email)
        }
        _ => (
            StatusCode::NOT_FOUND,
            json!({ "error": "no such control request" }),
        ),
    };
    Some(Handled {
        side: Side::Admin,
        token: None,
        // Never the body: it may carry a private key.
        body: Value::Null,
        reply: Reply::Respond(json_response(status, &body)),
    })
}

fn put_apns_key(state: &State, key_id: &str, body: &[u8]) -> (StatusCode, Value) {
    let new: NewApnsKey = match serde_json::from_slice(body) {
        Ok(new) => new,
        Err(e) => return bad_request("body", &e.to_string()),
    };
    match state
        .identities
        .add_apns_key(key_id, &new.team_id, &new.key)
    {
        Ok(()) => (
            StatusCode::OK,
            json!({ "key_id": key_id, "team_id": new.team_id }),
        ),
        Err(e) => bad_request("key", &format!("{e:#}")),
    }
}

fn put_service_account(state: &State, body: &[u8]) -> (StatusCode, Value) {
    let account: ServiceAccount = match serde_json::from_slice(body) {
        Ok(account) => account,
        Err(e) => return bad_request("body", &e.to_string()),
    };
    match state.identities.add_fcm_account(&account) {
        Ok(()) => (
            StatusCode::OK,
            json!({ "client_email": account.client_email, "project_id": account.project_id }),
        ),
        Err(e) => bad_request("private_key", &format!("{e:#}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockShift {
    shift_secs: i64,
}

fn shift_clock(state: &State, body: &[u8]) -> (StatusCode, Value) {
    let shift: ClockShift = match serde_json::from_slice(body) {
        Ok(shift) => shift,
        Err(e) => return bad_request("shift_secs", &e.to_string()),
    };
    state.clock.shift(shift.shift_secs);
    (
        StatusCode::OK,
        json!({ "now_ms": state.clock.unix_millis() }),
    )
}

fn revoked(found: bool, id: &str) -> (StatusCode, Value) {
    if found {
        (StatusCode::OK, json!({ "revoked": id }))
    } else {
        (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("{id} is not known") }),
        )
    }
}

fn bad_request(field: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({ "error": message, "field": field }),
    )
}

/// A path segment with its `%XX` escapes decoded (e.g. `%40` for the `@` of an email).
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_in_paths_are_percent_decoded() {
        assert_eq!(percent_decoded("a%40b.com"), "a@b.com");
        assert_eq!(percent_decoded("a@b.com"), "a@b.com");
        assert_eq!(percent_decoded("100%"), "100%");
    }
}
