//! FCM HTTP v1 wire vocabulary shared by the sender and the simulator: host, send path,
//! OAuth2 grant and scope, error detail types and error codes, size limit.

/// Google's FCM host.
pub const PRODUCTION_ENDPOINT: &str = "https://fcm.googleapis.com";
/// Send path prefix; the project id follows.
pub const SEND_PATH_PREFIX: &str = "/v1/projects/";
/// Send path suffix, after the project id.
pub const SEND_PATH_SUFFIX: &str = "/messages:send";
/// The OAuth2 scope for sending.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The OAuth2 grant type of the service-account flow.
pub const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The `@type` of FCM's error detail.
pub const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
/// The `@type` of the field-violation detail Google adds to INVALID_ARGUMENT.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// The field a violation names when the registration token is at fault.
pub const TOKEN_FIELD: &str = "message.token";
/// Longest lifetime Google accepts for a service-account assertion (`exp - iat`).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// Limit on the message payload (`notification` plus `data`).
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// `data` keys Google reserves (see [`RESERVED_DATA_KEY_PREFIXES`] for the rest).
pub const RESERVED_DATA_KEYS: &[&str] = &["from", "message_type"];
/// Prefixes Google reserves for its own `data` keys ("any word starting with").
pub const RESERVED_DATA_KEY_PREFIXES: &[&str] = &["google", "gcm"];

/// The send path for a project.
pub fn send_path(project: &str) -> String {
    format!("{SEND_PATH_PREFIX}{project}{SEND_PATH_SUFFIX}")
}

/// The project a send path addresses, if it is one.
pub fn project_of(path: &str) -> Option<&str> {
    path.strip_prefix(SEND_PATH_PREFIX)?
        .strip_suffix(SEND_PATH_SUFFIX)
        .filter(|p| !p.is_empty() && !p.contains('/'))
}

/// `errorCode` values of the `FcmError` detail (some double as `google.rpc` statuses).
pub mod error_code {
    /// 404: the token is no longer registered.
    pub const UNREGISTERED: &str = "UNREGISTERED";
    /// 403: the token belongs to another sender.
    pub const SENDER_ID_MISMATCH: &str = "SENDER_ID_MISMATCH";
    /// 400: a field (maybe the token) is invalid.
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    /// 429: a send quota is exhausted.
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    /// 503.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// 500.
    pub const INTERNAL: &str = "INTERNAL";
    /// 401: the APNs certificate or web-push key configured at Google is invalid or missing.
    pub const THIRD_PARTY_AUTH_ERROR: &str = "THIRD_PARTY_AUTH_ERROR";
    /// 401 (`google.rpc` status): the access token is not accepted.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// 403 (`google.rpc` status): the service account may not send for the project.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// 500: an unknown error at Google.
    pub const UNSPECIFIED_ERROR: &str = "UNSPECIFIED_ERROR";
}

/// Google asks senders that exceeded the message rate to back off exponentially from at
/// least this long when it gives no `Retry-After`.
pub const QUOTA_BACKOFF_MIN_SECS: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_paths_round_trip() {
        let path = send_path("demo-project");
        assert_eq!(path, "/v1/projects/demo-project/messages:send");
        assert_eq!(project_of(&path), Some("demo-project"));
        assert_eq!(project_of("/v1/projects//messages:send"), None);
        assert_eq!(project_of("/v1/projects/a/b/messages:send"), None);
    }
}
