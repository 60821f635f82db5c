//! Webhook signature schemes. Every scheme verifies HMAC-SHA256 over the exact raw body bytes,
//! compares in constant time (`Mac::verify_slice`) and accepts any of several active secrets.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How a source signs its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Standard Webhooks / Svix: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// GitHub: `X-Hub-Signature-256`.
    Github,
    /// Stripe: `Stripe-Signature: t=..,v1=..`.
    Stripe,
    /// `X-Webhook-Signature: sha256=<hex>` over the body alone.
    Generic,
    /// `X-Webhook-Signature: sha256=<hex>` over `{id}.{timestamp}.{body}`, with both headers
    /// required, so neither can be changed or left out without breaking the signature.
    GenericV2,
}

impl Scheme {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard_webhooks",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Generic => "generic",
            Self::GenericV2 => "generic_v2",
        }
    }

    /// A new random secret in the form this scheme's senders expect.
    pub fn generate_secret(self) -> String {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        match self {
            Self::StandardWebhooks => format!("whsec_{}", B64.encode(bytes)),
            Self::Github | Self::Stripe | Self::Generic | Self::GenericV2 => hex::encode(bytes),
        }
    }

    /// Checks a secret a user supplies for this scheme; the error says what a valid one is.
    pub fn check_secret(self, secret: &str) -> Result<(), &'static str> {
        match self {
            Self::StandardWebhooks => match standard_webhooks_key(secret) {
                Some(key) if (16..=64).contains(&key.len()) => Ok(()),
                _ => Err("a Standard Webhooks secret is whsec_ followed by base64 of 16-64 bytes"),
            },
            Self::Github | Self::Stripe | Self::Generic | Self::GenericV2
                if (16..=256).contains(&secret.len())
                    && secret.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) =>
            {
                Ok(())
            }
            Self::Github | Self::Stripe | Self::Generic | Self::GenericV2 => {
                Err("must be 16-256 printable ASCII characters")
            }
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard_webhooks" => Some(Self::StandardWebhooks),
            "github" => Some(Self::Github),
            "stripe" => Some(Self::Stripe),
            "generic" => Some(Self::Generic),
            "generic_v2" => Some(Self::GenericV2),
            _ => None,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Signatures listed in one header beyond this are ignored (bounds work per request).
const MAX_SIGNATURES: usize = 16;

/// What a verified request tells us besides "authentic".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The sender's delivery/event id from a header, when the scheme has one.
    pub event_id: Option<String>,
    /// The event type from a header, when the scheme has one.
    pub event_type: Option<String>,
}

/// Why a request was not accepted as authentic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but cannot be parsed.
    #[error("malformed header {0}: {1}")]
    MalformedHeader(&'static str, &'static str),
    /// The signed timestamp is outside the tolerance window.
    #[error("timestamp outside the allowed window")]
    TimestampOutOfWindow,
    /// No active secret produced a matching signature.
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// A short stable label for counters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::MalformedHeader(..) => "malformed_header",
            Self::TimestampOutOfWindow => "timestamp_out_of_window",
            Self::Mismatch => "bad_signature",
        }
    }

    /// Whether this is a malformed request (400) rather than an authentication failure (401).
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::MalformedHeader(..))
    }
}

/// Verifies `body` under `scheme` against any of `secrets`.
pub fn verify(
    scheme: Scheme,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    match scheme {
        Scheme::StandardWebhooks => {
            verify_standard(headers, body, secrets, now_secs, tolerance_secs)
        }
        Scheme::Github => verify_github(headers, body, secrets),
        Scheme::Stripe => verify_stripe(headers, body, secrets, now_secs, tolerance_secs),
        Scheme::Generic => verify_generic(headers, body, secrets, now_secs, tolerance_secs),
        Scheme::GenericV2 => verify_generic_v2(headers, body, secrets, now_secs, tolerance_secs),
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, SignatureError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| SignatureError::MalformedHeader(name, "not visible ASCII")),
    }
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    header(headers, name)?.ok_or(SignatureError::MissingHeader(name))
}

fn check_timestamp(
    name: &'static str,
    raw: &str,
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<i64, SignatureError> {
    let ts: i64 = raw
        .parse()
        .map_err(|_| SignatureError::MalformedHeader(name, "not unix seconds"))?;
    if now_secs.abs_diff(ts) > tolerance_secs {
        return Err(SignatureError::TimestampOutOfWindow);
    }
    Ok(ts)
}

/// True when HMAC(key, parts...) equals `expected`, compared in constant time.
fn hmac_matches(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

fn any_secret_matches(
    keys: &[Vec<u8>],
    signatures: &[Vec<u8>],
    parts: &[&[u8]],
) -> Result<(), SignatureError> {
    // Try every pair rather than stopping early on the secret axis, so timing does not reveal
    // which of several secrets is active.
    let mut ok = false;
    for key in keys {
        for sig in signatures {
            ok |= hmac_matches(key, parts, sig);
        }
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Decodes a Standard Webhooks secret: base64 after an optional `whsec_` prefix.
pub fn standard_webhooks_key(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
}

/// The header names of a Standard Webhooks request: the standard's own, or Svix's defaults
/// (Svix senders use those unless they pay for white-labelled headers).
struct StandardHeaders {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const WEBHOOK_HEADERS: StandardHeaders = StandardHeaders {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX_HEADERS: StandardHeaders = StandardHeaders {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

fn verify_standard(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    // One family for all three headers; never a mix.
    let names =
        if !headers.contains_key(WEBHOOK_HEADERS.id) && headers.contains_key(SVIX_HEADERS.id) {
            &SVIX_HEADERS
        } else {
            &WEBHOOK_HEADERS
        };
    let id = required(headers, names.id)?;
    let ts_raw = required(headers, names.timestamp)?;
    let sig_header = required(headers, names.signature)?;
    check_timestamp(names.timestamp, ts_raw, now_secs, tolerance_secs)?;
    let mut signatures = Vec::new();
    for entry in sig_header
        .split(' ')
        .filter(|s| !s.is_empty())
        .take(MAX_SIGNATURES)
    {
        let Some((version, sig)) = entry.split_once(',') else {
            return Err(SignatureError::MalformedHeader(
                names.signature,
                "expected v1,<base64>",
            ));
        };
        // Other versions (e.g. asymmetric v1a) are skipped, as the spec says.
        if version == "v1" {
            signatures.push(B64.decode(sig).map_err(|_| {
                SignatureError::MalformedHeader(names.signature, "signature is not base64")
            })?);
        }
    }
    if signatures.is_empty() {
        return Err(SignatureError::MissingHeader(names.signature));
    }
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .filter_map(|s| standard_webhooks_key(s))
        .collect();
    any_secret_matches(
        &keys,
        &signatures,
        &[id.as_bytes(), b".", ts_raw.as_bytes(), b".", body],
    )?;
    Ok(Verified {
        event_id: Some(id.to_string()),
        event_type: None,
    })
}

fn hex_signature(name: &'static str, value: &str) -> Result<Vec<u8>, SignatureError> {
    let hex_part = value
        .strip_prefix("sha256=")
        .ok_or(SignatureError::MalformedHeader(
            name,
            "expected sha256=<hex>",
        ))?;
    hex::decode(hex_part).map_err(|_| SignatureError::MalformedHeader(name, "signature is not hex"))
}

fn raw_keys(secrets: &[&str]) -> Vec<Vec<u8>> {
    secrets.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn verify_github(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
) -> Result<Verified, SignatureError> {
    let sig = hex_signature(
        "x-hub-signature-256",
        required(headers, "x-hub-signature-256")?,
    )?;
    any_secret_matches(&raw_keys(secrets), &[sig], &[body])?;
    Ok(Verified {
        event_id: header(headers, "x-github-delivery")?.map(str::to_string),
        event_type: header(headers, "x-github-event")?.map(str::to_string),
    })
}

fn verify_stripe(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    let value = required(headers, "stripe-signature")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in value.split(',').take(MAX_SIGNATURES * 2) {
        let Some((k, v)) = item.trim().split_once('=') else {
            return Err(SignatureError::MalformedHeader(
                "stripe-signature",
                "expected t=<ts>,v1=<hex>",
            ));
        };
        match k {
            "t" => timestamp = Some(v),
            "v1" => signatures.push(hex::decode(v).map_err(|_| {
                SignatureError::MalformedHeader("stripe-signature", "v1 is not hex")
            })?),
            _ => {} // v0 and future schemes are ignored, as Stripe's libraries do.
        }
    }
    let ts = timestamp.ok_or(SignatureError::MalformedHeader(
        "stripe-signature",
        "missing t=",
    ))?;
    if signatures.is_empty() {
        return Err(SignatureError::MissingHeader("stripe-signature"));
    }
    check_timestamp("stripe-signature", ts, now_secs, tolerance_secs)?;
    any_secret_matches(
        &raw_keys(secrets),
        &signatures,
        &[ts.as_bytes(), b".", body],
    )?;
    Ok(Verified::default())
}

fn verify_generic(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    let sig = hex_signature(
        "x-webhook-signature",
        required(headers, "x-webhook-signature")?,
    )?;
    if let Some(ts) = header(headers, "x-webhook-timestamp")? {
        check_timestamp("x-webhook-timestamp", ts, now_secs, tolerance_secs)?;
    }
    any_secret_matches(&raw_keys(secrets), &[sig], &[body])?;
    Ok(Verified {
        event_id: header(headers, "x-webhook-id")?.map(str::to_string),
        event_type: None,
    })
}

fn verify_generic_v2(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, SignatureError> {
    let sig = hex_signature(
        "x-webhook-signature",
        required(headers, "x-webhook-signature")?,
    )?;
    let id = required(headers, "x-webhook-id")?;
    if id.is_empty() {
        return Err(SignatureError::MalformedHeader("x-webhook-id", "empty"));
    }
    let ts = required(headers, "x-webhook-timestamp")?;
    check_timestamp("x-webhook-timestamp", ts, now_secs, tolerance_secs)?;
    any_secret_matches(
        &raw_keys(secrets),
        &[sig],
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    )?;
    Ok(Verified {
        event_id: Some(id.to_string()),
        event_type: None,
    })
}

/// A secret that cannot sign for its scheme: a Standard Webhooks secret that is not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Standard Webhooks secret must be base64, optionally after a whsec_ prefix")]
pub struct InvalidSecret;

/// Signs like a sender would; used by the outbound callbacks, the CLI's test sender, the
/// benches and the tests. Fails rather than sign with a key other than the secret.
pub fn sign(
    scheme: Scheme,
    secret: &str,
    body: &[u8],
    id: &str,
    ts: i64,
) -> Result<Vec<(String, String)>, InvalidSecret> {
    let hmac_hex = |key: &[u8], parts: &[&[u8]]| -> String {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        for p in parts {
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    };
    let ts_s = ts.to_string();
    Ok(match scheme {
        Scheme::StandardWebhooks => {
            let key = standard_webhooks_key(secret).ok_or(InvalidSecret)?;
            let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts any key length");
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            let sig = B64.encode(mac.finalize().into_bytes());
            vec![
                ("webhook-id".into(), id.into()),
                ("webhook-timestamp".into(), ts_s),
                ("webhook-signature".into(), format!("v1,{sig}")),
            ]
        }
        Scheme::Github => vec![
            (
                "x-hub-signature-256".into(),
                format!("sha256={}", hmac_hex(secret.as_bytes(), &[body])),
            ),
            ("x-github-delivery".into(), id.into()),
        ],
        Scheme::Stripe => vec![(
            "stripe-signature".into(),
            format!(
                "t={ts_s},v1={}",
                hmac_hex(secret.as_bytes(), &[ts_s.as_bytes(), b".", body])
            ),
        )],
        Scheme::Generic => vec![
            (
                "x-webhook-signature".into(),
                format!("sha256={}", hmac_hex(secret.as_bytes(), &[body])),
            ),
            ("x-webhook-id".into(), id.into()),
            ("x-webhook-timestamp".into(), ts_s),
        ],
        Scheme::GenericV2 => vec![
            (
                "x-webhook-signature".into(),
                format!(
                    "sha256={}",
                    hmac_hex(
                        secret.as_bytes(),
                        &[id.as_bytes(), b".", ts_s.as_bytes(), b".", body]
                    )
                ),
            ),
            ("x-webhook-id".into(), id.into()),
            ("x-webhook-timestamp".into(), ts_s),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn github_documented_example_verifies() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let secret = "It's a Secret to Everybody";
        assert!(verify(Scheme::Github, &h, b"Hello, World!", &[secret], 0, 300).is_ok());
        assert_eq!(
            verify(Scheme::Github, &h, b"Hello, World?", &[secret], 0, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_spec_example_verifies() {
        // The example from the Standard Webhooks specification's reference test suite.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let v = verify(
            Scheme::StandardWebhooks,
            &h,
            body,
            &[secret],
            1614265330,
            300,
        )
        .expect("spec vector verifies");
        assert_eq!(v.event_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &h,
                body,
                &[secret],
                1614265330 + 301,
                300
            ),
            Err(SignatureError::TimestampOutOfWindow)
        );
    }

    #[test]
    fn standard_webhooks_accepts_svix_header_names() {
        // The same published vector, under the names Svix sends by default.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let h = headers(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", signature),
        ]);
        let v = verify(
            Scheme::StandardWebhooks,
            &h,
            body,
            &[secret],
            1614265330,
            300,
        )
        .expect("svix names verify");
        assert_eq!(v.event_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &h,
                b"{}",
                &[secret],
                1614265330,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &h,
                body,
                &[secret],
                1614265330 + 301,
                300
            ),
            Err(SignatureError::TimestampOutOfWindow)
        );
        // The two families are never mixed: a webhook-id selects the standard's names.
        let mixed = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", signature),
        ]);
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &mixed,
                body,
                &[secret],
                1614265330,
                300
            ),
            Err(SignatureError::MissingHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn every_scheme_round_trips_and_rejects_tampering() {
        for scheme in [
            Scheme::StandardWebhooks,
            Scheme::Github,
            Scheme::Stripe,
            Scheme::Generic,
            Scheme::GenericV2,
        ] {
            let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
            let body = br#"{"type":"x"}"#;
            let pairs = sign(scheme, secret, body, "id-1", 1000).expect("a valid secret");
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let h = headers(&pairs);
            assert!(
                verify(scheme, &h, body, &["other", secret], 1000, 300).is_ok(),
                "{scheme:?}"
            );
            assert_eq!(
                verify(scheme, &h, br#"{"type":"y"}"#, &[secret], 1000, 300),
                Err(SignatureError::Mismatch),
                "{scheme:?}"
            );
            assert_eq!(
                verify(scheme, &h, body, &["whsec_b3RoZXI="], 1000, 300),
                Err(SignatureError::Mismatch),
                "{scheme:?}"
            );
        }
    }

    #[test]
    fn generic_v2_fixed_vector_authenticates_id_and_timestamp() {
        // Computed independently with Python's standard library:
        //   hmac.new(b"generic-v2-test-secret-0123",
        //            b'evt_8f3a.1700000000.{"type":"payment.completed","amount":42}',
        //            hashlib.sha256).hexdigest()
        let secret = "generic-v2-test-secret-0123";
        let body = br#"{"type":"payment.completed","amount":42}"#;
        let signed = "sha256=7854d9349dfc72798933e12e13b241be21447539535d7fb72b7d3e65505174a1";
        let with = |id: &str, ts: &str, sig: &str| {
            headers(&[
                ("x-webhook-id", id),
                ("x-webhook-timestamp", ts),
                ("x-webhook-signature", sig),
            ])
        };
        let ok = with("evt_8f3a", "1700000000", signed);
        let v = verify(Scheme::GenericV2, &ok, body, &[secret], 1_700_000_000, 300)
            .expect("the vector verifies");
        assert_eq!(v.event_id.as_deref(), Some("evt_8f3a"));
        assert_eq!(
            sign(Scheme::GenericV2, secret, body, "evt_8f3a", 1_700_000_000).expect("signs")[0].1,
            signed
        );
        // Another id or timestamp under the same signature is refused.
        for h in [
            with("evt_8f3b", "1700000000", signed),
            with("evt_8f3a", "1700000001", signed),
        ] {
            assert_eq!(
                verify(Scheme::GenericV2, &h, body, &[secret], 1_700_000_000, 300),
                Err(SignatureError::Mismatch)
            );
        }
        // The v1 signature of the same body (HMAC of the body alone, the same way in Python)
        // is not a v2 signature.
        let v1 = "sha256=bc49236c3a7c7b7104b494425afe75570fb4757096b4fa47249202af59cb7bc9";
        let h = with("evt_8f3a", "1700000000", v1);
        assert_eq!(
            verify(Scheme::GenericV2, &h, body, &[secret], 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        // Same tolerance as the other timestamped schemes; both headers are required.
        assert_eq!(
            verify(Scheme::GenericV2, &ok, body, &[secret], 1_700_000_301, 300),
            Err(SignatureError::TimestampOutOfWindow)
        );
        let no_id = headers(&[
            ("x-webhook-timestamp", "1700000000"),
            ("x-webhook-signature", signed),
        ]);
        assert_eq!(
            verify(
                Scheme::GenericV2,
                &no_id,
                body,
                &[secret],
                1_700_000_000,
                300
            ),
            Err(SignatureError::MissingHeader("x-webhook-id"))
        );
        let no_ts = headers(&[
            ("x-webhook-id", "evt_8f3a"),
            ("x-webhook-signature", signed),
        ]);
        assert_eq!(
            verify(
                Scheme::GenericV2,
                &no_ts,
                body,
                &[secret],
                1_700_000_000,
                300
            ),
            Err(SignatureError::MissingHeader("x-webhook-timestamp"))
        );
    }

    #[test]
    fn stripe_accepts_any_of_several_v1_entries() {
        let secret = "sk_test";
        let body = b"{}";
        let good = sign(Scheme::Stripe, secret, body, "", 50).expect("a valid secret");
        let value = good[0].1.replace("t=50,", "t=50,v1=00ff,");
        let h = headers(&[("stripe-signature", &value)]);
        assert!(verify(Scheme::Stripe, &h, body, &[secret], 50, 300).is_ok());
    }

    #[test]
    fn malformed_headers_are_reported_as_such() {
        let h = headers(&[("stripe-signature", "garbage")]);
        let err = verify(Scheme::Stripe, &h, b"{}", &["s"], 0, 300).expect_err("malformed");
        assert!(err.is_malformed());
        let h = headers(&[("x-hub-signature-256", "md5=abc")]);
        assert!(verify(Scheme::Github, &h, b"{}", &["s"], 0, 300)
            .expect_err("malformed")
            .is_malformed());
        let h = HeaderMap::new();
        assert_eq!(
            verify(Scheme::Generic, &h, b"{}", &["s"], 0, 300),
            Err(SignatureError::MissingHeader("x-webhook-signature"))
        );
    }
}
