//! Deterministic device tokens that make the simulator answer with a chosen error.
//!
//! APNs tokens stay 64 hex characters: `fa11` `KK` `NN` `TTTTTTTTTTTT` then 44 seed digits.
//! `KK` is the error kind (table in [`ApnsTestKind::code`]), `NN` the number of requests that
//! fail before the token starts succeeding (`00` = fail every time), and `T…` a 48-bit unix-ms
//! timestamp for a 410 (`0` = now).
//!
//! FCM tokens are `pbsim-<ERROR_CODE>-<N>:` followed by seed characters, 160 characters in
//! all, e.g. `pbsim-UNREGISTERED-0:…` or `pbsim-UNAVAILABLE-2:…` (two 503s, then success).
//!
//! Every other well-formed token is delivered.

/// An APNs behaviour a test token asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApnsTestKind {
    /// 200.
    Success,
    /// 410 `Unregistered` with `timestamp` (the given unix ms, or the time of the request).
    Unregistered {
        /// Timestamp to report; `None` = now.
        timestamp_ms: Option<u64>,
    },
    /// 410 `ExpiredToken`.
    ExpiredToken,
    /// 400 `BadDeviceToken`.
    BadDeviceToken,
    /// 400 `DeviceTokenNotForTopic`.
    DeviceTokenNotForTopic,
    /// 429 `TooManyRequests`.
    TooManyRequests,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// 500 `InternalServerError`.
    InternalServerError,
    /// 403 `ExpiredProviderToken`.
    ExpiredProviderToken,
    /// The connection is closed without an answer.
    ConnectionReset,
}

impl ApnsTestKind {
    /// The `KK` byte: 01 Unregistered, 02 ExpiredToken, 03 BadDeviceToken,
    /// 04 DeviceTokenNotForTopic, 05 TooManyRequests, 06 ServiceUnavailable,
    /// 07 InternalServerError, 08 ExpiredProviderToken, 0f connection reset.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::Unregistered { .. } => 0x01,
            Self::ExpiredToken => 0x02,
            Self::BadDeviceToken => 0x03,
            Self::DeviceTokenNotForTopic => 0x04,
            Self::TooManyRequests => 0x05,
            Self::ServiceUnavailable => 0x06,
            Self::InternalServerError => 0x07,
            Self::ExpiredProviderToken => 0x08,
            Self::ConnectionReset => 0x0f,
        }
    }

    fn from_code(code: u8, timestamp_ms: u64) -> Option<Self> {
        Some(match code {
            0x01 => Self::Unregistered {
                timestamp_ms: (timestamp_ms != 0).then_some(timestamp_ms),
            },
            0x02 => Self::ExpiredToken,
            0x03 => Self::BadDeviceToken,
            0x04 => Self::DeviceTokenNotForTopic,
            0x05 => Self::TooManyRequests,
            0x06 => Self::ServiceUnavailable,
            0x07 => Self::InternalServerError,
            0x08 => Self::ExpiredProviderToken,
            0x0f => Self::ConnectionReset,
            _ => return None,
        })
    }
}

/// An FCM behaviour a test token asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FcmTestKind {
    /// 200.
    Success,
    /// 404 `UNREGISTERED`.
    Unregistered,
    /// 403 `SENDER_ID_MISMATCH`.
    SenderIdMismatch,
    /// 400 `INVALID_ARGUMENT` about the token.
    InvalidArgument,
    /// 429 `QUOTA_EXCEEDED` with `Retry-After`.
    QuotaExceeded,
    /// 503 `UNAVAILABLE`.
    Unavailable,
    /// 500 `INTERNAL`.
    Internal,
    /// 401 `THIRD_PARTY_AUTH_ERROR`: the APNs credential configured in Firebase is invalid.
    ThirdPartyAuthError,
    /// The connection is closed without an answer.
    ConnectionReset,
}

impl FcmTestKind {
    /// The marker word in the token.
    pub fn code(self) -> &'static str {
        match self {
            Self::Success => "OK",
            Self::Unregistered => "UNREGISTERED",
            Self::SenderIdMismatch => "SENDER_ID_MISMATCH",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
            Self::ConnectionReset => "RESET",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        [
            Self::Success,
            Self::Unregistered,
            Self::SenderIdMismatch,
            Self::InvalidArgument,
            Self::QuotaExceeded,
            Self::Unavailable,
            Self::Internal,
            Self::ThirdPartyAuthError,
            Self::ConnectionReset,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

const APNS_MARKER: &str = "fa11";
const APNS_TOKEN_LEN: usize = 64;
const FCM_MARKER: &str = "pbsim-";
const FCM_TOKEN_LEN: usize = 160;
const FCM_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// An APNs token that fails with `kind` on every request (or succeeds, for `Success`).
pub fn apns_test_token(kind: ApnsTestKind, seed: u64) -> String {
    apns_test_token_failing_first(kind, 0, seed)
}

/// An APNs token that fails with `kind` for its first `times` requests, then succeeds
/// (`times` = 0: always fails).
pub fn apns_test_token_failing_first(kind: ApnsTestKind, times: u8, seed: u64) -> String {
    let digits = seed_hex(seed);
    if kind == ApnsTestKind::Success {
        // Anything without the marker is delivered.
        return format!("5eed{}", &digits[..APNS_TOKEN_LEN - 4]);
    }
    let timestamp = match kind {
        ApnsTestKind::Unregistered {
            timestamp_ms: Some(ms),
        } => ms & 0xffff_ffff_ffff,
        _ => 0,
    };
    let head = format!(
        "{APNS_MARKER}{:02x}{times:02x}{timestamp:012x}",
        kind.code()
    );
    format!("{head}{}", &digits[..APNS_TOKEN_LEN - head.len()])
}

/// An FCM token that fails with `kind` on every request (or succeeds, for `Success`).
pub fn fcm_test_token(kind: FcmTestKind, seed: u64) -> String {
    fcm_test_token_failing_first(kind, 0, seed)
}

/// An FCM token that fails with `kind` for its first `times` requests, then succeeds.
pub fn fcm_test_token_failing_first(kind: FcmTestKind, times: u32, seed: u64) -> String {
    let head = format!("{FCM_MARKER}{}-{times}:", kind.code());
    let mut token = head;
    let mut state = seed;
    while token.len() < FCM_TOKEN_LEN {
        let r = splitmix64(&mut state);
        token.push(FCM_ALPHABET[(r % FCM_ALPHABET.len() as u64) as usize] as char);
    }
    token
}

/// What an APNs token asks for: kind and fail count (`None` for ordinary tokens).
pub fn parse_apns(token: &str) -> Option<(ApnsTestKind, u32)> {
    let rest = token.strip_prefix(APNS_MARKER)?;
    let code = u8::from_str_radix(rest.get(0..2)?, 16).ok()?;
    let times = u8::from_str_radix(rest.get(2..4)?, 16).ok()?;
    let timestamp = u64::from_str_radix(rest.get(4..16)?, 16).ok()?;
    Some((ApnsTestKind::from_code(code, timestamp)?, u32::from(times)))
}

/// What an FCM token asks for: kind and fail count (`None` for ordinary tokens).
pub fn parse_fcm(token: &str) -> Option<(FcmTestKind, u32)> {
    let rest = token.strip_prefix(FCM_MARKER)?;
    let (head, _) = rest.split_once(':')?;
    let (code, times) = head.rsplit_once('-')?;
    Some((FcmTestKind::from_code(code)?, times.parse().ok()?))
}

fn seed_hex(seed: u64) -> String {
    let mut state = seed;
    let mut out = String::with_capacity(APNS_TOKEN_LEN);
    while out.len() < APNS_TOKEN_LEN {
        out.push_str(&format!("{:016x}", splitmix64(&mut state)));
    }
    out
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_tokens_round_trip_and_stay_hex() {
        let kind = ApnsTestKind::Unregistered {
            timestamp_ms: Some(1_700_000_000_123),
        };
        let token = apns_test_token_failing_first(kind, 3, 7);
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(parse_apns(&token), Some((kind, 3)));
        let ok = apns_test_token(ApnsTestKind::Success, 1);
        assert_eq!(parse_apns(&ok), None);
        assert_ne!(ok, apns_test_token(ApnsTestKind::Success, 2));
    }

    #[test]
    fn fcm_tokens_round_trip_and_use_the_fcm_alphabet() {
        let token = fcm_test_token_failing_first(FcmTestKind::SenderIdMismatch, 2, 9);
        assert_eq!(token.len(), 160);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b)));
        assert_eq!(parse_fcm(&token), Some((FcmTestKind::SenderIdMismatch, 2)));
    }
}
