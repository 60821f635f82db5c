//! APNs wire vocabulary shared by the sender and the simulator: hosts, request path, header
//! names, push types, priorities, size limits and Apple's reason strings.

/// Apple's production host.
pub const PRODUCTION_ENDPOINT: &str = "https://api.push.apple.com";
/// Apple's development host.
pub const SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";
/// Request path prefix; the hex device token follows.
pub const DEVICE_PATH: &str = "/3/device/";
/// Payload limit for every push type but VoIP.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Payload limit for VoIP pushes.
pub const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;
/// Limit on `apns-collapse-id`.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// APNs refuses provider tokens older than this.
pub const MAX_PROVIDER_TOKEN_AGE_SECS: i64 = 3600;

/// The request path for a device token.
pub fn device_path(token: &str) -> String {
    format!("{DEVICE_PATH}{token}")
}

/// The payload limit for a push type.
pub fn payload_limit(push_type: &str) -> usize {
    if push_type == push_type::VOIP {
        MAX_VOIP_PAYLOAD_BYTES
    } else {
        MAX_PAYLOAD_BYTES
    }
}

/// Request and response header names.
pub mod header {
    /// Bundle id the push is for.
    pub const TOPIC: &str = "apns-topic";
    /// Kind of push (see [`super::push_type`]).
    pub const PUSH_TYPE: &str = "apns-push-type";
    /// Delivery priority (see [`super::priority`]).
    pub const PRIORITY: &str = "apns-priority";
    /// Unix seconds after which APNs stops trying; 0 = try once.
    pub const EXPIRATION: &str = "apns-expiration";
    /// Groups notifications so the device shows only the latest.
    pub const COLLAPSE_ID: &str = "apns-collapse-id";
    /// Request UUID, echoed in the response.
    pub const ID: &str = "apns-id";
}

/// `apns-push-type` values.
pub mod push_type {
    /// A visible notification (the default).
    pub const ALERT: &str = "alert";
    /// A silent content-available push.
    pub const BACKGROUND: &str = "background";
    /// A VoIP call (larger payload limit).
    pub const VOIP: &str = "voip";
    /// Every push type Apple accepts.
    pub const ALL: &[&str] = &[
        ALERT,
        BACKGROUND,
        "location",
        VOIP,
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
    ];
}

/// `apns-priority` values.
pub mod priority {
    /// Deliver immediately (APNs' default).
    pub const IMMEDIATE: &str = "10";
    /// Deliver when it saves power; required for background pushes.
    pub const POWER_SAVING: &str = "5";
    /// Deliver whenever the device is awake anyway.
    pub const LOW: &str = "1";
    /// Every priority Apple accepts.
    pub const ALL: &[&str] = &[IMMEDIATE, POWER_SAVING, LOW];
}

/// Apple's `{"reason": ...}` strings (and the few the sender reports before sending).
pub mod reason {
    /// 410: the token is no longer active for the topic.
    pub const UNREGISTERED: &str = "Unregistered";
    /// 410: the token has expired.
    pub const EXPIRED_TOKEN: &str = "ExpiredToken";
    /// 400: the token is malformed or belongs to the other environment.
    pub const BAD_DEVICE_TOKEN: &str = "BadDeviceToken";
    /// 400: the token does not match the topic.
    pub const DEVICE_TOKEN_NOT_FOR_TOPIC: &str = "DeviceTokenNotForTopic";
    /// 400: `apns-topic` is missing.
    pub const MISSING_TOPIC: &str = "MissingTopic";
    /// 400: `apns-topic` is invalid.
    pub const BAD_TOPIC: &str = "BadTopic";
    /// 400: the topic is not allowed for this key.
    pub const TOPIC_DISALLOWED: &str = "TopicDisallowed";
    /// 400: `apns-push-type` is not a known push type.
    pub const INVALID_PUSH_TYPE: &str = "InvalidPushType";
    /// 400: `apns-priority` is not 10, 5 or 1.
    pub const BAD_PRIORITY: &str = "BadPriority";
    /// 400: `apns-expiration` is not unix seconds.
    pub const BAD_EXPIRATION_DATE: &str = "BadExpirationDate";
    /// 400: `apns-collapse-id` is too long.
    pub const BAD_COLLAPSE_ID: &str = "BadCollapseId";
    /// 400: `apns-id` is not a UUID.
    pub const BAD_MESSAGE_ID: &str = "BadMessageId";
    /// 400: the body is empty.
    pub const PAYLOAD_EMPTY: &str = "PayloadEmpty";
    /// 413: the body is over [`super::payload_limit`].
    pub const PAYLOAD_TOO_LARGE: &str = "PayloadTooLarge";
    /// 403: no provider token was sent.
    pub const MISSING_PROVIDER_TOKEN: &str = "MissingProviderToken";
    /// 403: the provider token does not verify.
    pub const INVALID_PROVIDER_TOKEN: &str = "InvalidProviderToken";
    /// 403: the provider token is too old; sign a new one.
    pub const EXPIRED_PROVIDER_TOKEN: &str = "ExpiredProviderToken";
    /// 403: the certificate (certificate-based auth) is invalid.
    pub const BAD_CERTIFICATE: &str = "BadCertificate";
    /// 403: the certificate is for the other environment.
    pub const BAD_CERTIFICATE_ENVIRONMENT: &str = "BadCertificateEnvironment";
    /// 429: the provider token changed too often.
    pub const TOO_MANY_PROVIDER_TOKEN_UPDATES: &str = "TooManyProviderTokenUpdates";
    /// Ours, not Apple's: the app's key is limited to the other APNs environment.
    pub const KEY_NOT_FOR_ENVIRONMENT: &str = "KeyNotForEnvironment";
    /// 429: too many requests for the same token.
    pub const TOO_MANY_REQUESTS: &str = "TooManyRequests";
    /// 500.
    pub const INTERNAL_SERVER_ERROR: &str = "InternalServerError";
    /// 503.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// 503: the server is shutting down.
    pub const SHUTDOWN: &str = "Shutdown";
    /// The connection was idle too long.
    pub const IDLE_TIMEOUT: &str = "IdleTimeout";
    /// 405.
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// 404: the path is not `/3/device/<token>`.
    pub const BAD_PATH: &str = "BadPath";
    /// 400: the path names no device token.
    pub const MISSING_DEVICE_TOKEN: &str = "MissingDeviceToken";
    /// 400: a header was repeated.
    pub const DUPLICATE_HEADERS: &str = "DuplicateHeaders";
    /// 403: the action is not allowed.
    pub const FORBIDDEN: &str = "Forbidden";
    /// 400 (the simulator's; Apple has no dedicated reason): the body is not a JSON object.
    pub const BAD_PAYLOAD: &str = "BadPayload";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_voip_gets_the_larger_payload_limit() {
        assert_eq!(payload_limit(push_type::VOIP), 5120);
        assert_eq!(payload_limit(push_type::ALERT), 4096);
        assert_eq!(payload_limit(push_type::BACKGROUND), 4096);
    }
}
