//! User identity verification: the proof (`user_auth`) that an app's backend vouches for the
//! user id a device registers with. The client key ships inside every copy of a mobile app, so
//! it cannot prove who the user is; the app's backend, which knows who is logged in, can. It
//! signs the user id with the app's user-auth secret (HMAC-SHA256, or an HS256 JWT), or signs
//! a JWT with a private key whose public half the app registered (ES256, RS256).
//!
//! This module owns that vocabulary ([`ClientUserIds`], [`KeyAlgorithm`]) and the checks; it
//! does no IO. The current time is passed in.

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Latest a JWT proof may expire: proofs are meant to be minted per registration.
pub const MAX_JWT_LIFETIME_SECS: u64 = 3600;
/// Clock skew tolerated on top of [`MAX_JWT_LIFETIME_SECS`] (a backend clock slightly ahead).
/// Expiry itself gets none: a token is refused from its `exp` second on.
pub const JWT_SKEW_SECS: u64 = 60;
/// Public keys an app may register for JWT proofs.
pub const MAX_PUBLIC_KEYS: usize = 10;
/// Prefix of user-auth secrets, so a leaked one is recognisable.
const SECRET_PREFIX: &str = "pbua_";
/// Longest proof we look at; a JWT signed with a 8192-bit RSA key is well below it.
const MAX_PROOF_LEN: usize = 4096;

/// Whether a client-key registration must prove the user id it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientUserIds {
    /// A client key sets or changes `user_id` only with a valid `user_auth` (new apps).
    Verified,
    /// A client key may set any `user_id` without proof (apps created before verification
    /// existed, until they opt in).
    Unverified,
}

impl ClientUserIds {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unverified => "unverified",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verified" => Some(Self::Verified),
            "unverified" => Some(Self::Unverified),
            _ => None,
        }
    }
}

/// Signature algorithm of a registered public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum KeyAlgorithm {
    /// ECDSA over P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048 to 8192-bit keys).
    RS256,
}

impl KeyAlgorithm {
    /// The stored and serialized name (the JWT `alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
        }
    }
}

/// A public key registered for JWT proofs.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// `uak_...` identifier.
    pub id: String,
    /// The only algorithm tokens checked against this key may use.
    pub algorithm: KeyAlgorithm,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: String,
    /// Creation time, unix ms.
    pub created_at: i64,
}

/// Why a public key cannot be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM public key of the stated algorithm.
    #[error("{0}")]
    Invalid(&'static str),
}

/// DER of the named curve prime256v1 (1.2.840.10045.3.1.7) as it appears in a P-256 SPKI.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Checks that `pem` is one SubjectPublicKeyInfo of `algorithm`'s key type and returns it
/// trimmed, ready to store.
pub fn check_public_key(algorithm: KeyAlgorithm, pem: &str) -> Result<String, KeyError> {
    let pem = pem.trim();
    if pem.len() > 16 * 1024 {
        return Err(KeyError::Invalid("public_key is longer than 16 KiB"));
    }
    let der = match rustls_pemfile::read_one_from_slice(pem.as_bytes()) {
        Ok(Some((rustls_pemfile::Item::SubjectPublicKeyInfo(der), _))) => der,
        _ => {
            return Err(KeyError::Invalid(
                "public_key must be a PEM \"BEGIN PUBLIC KEY\" block",
            ))
        }
    };
    let ok = match algorithm {
        KeyAlgorithm::ES256 => {
            DecodingKey::from_ec_pem(pem.as_bytes()).is_ok()
                && der.windows(P256_OID.len()).any(|w| w == P256_OID)
        }
        KeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()).is_ok(),
    };
    if !ok {
        return Err(KeyError::Invalid(match algorithm {
            KeyAlgorithm::ES256 => "ES256 needs a P-256 (prime256v1) public key",
            KeyAlgorithm::RS256 => "RS256 needs an RSA public key",
        }));
    }
    Ok(pem.to_string())
}

/// A new random user-auth secret: `pbua_` and 64 hex characters. The whole string, prefix
/// included, is the HMAC key.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// What a proof is checked against: the app's current secret and registered keys.
#[derive(Clone, Copy, Debug)]
pub struct Verifier<'a> {
    /// The app's id; a JWT carrying `aud` must name it.
    pub app_id: &'a str,
    /// The current user-auth secret.
    pub secret: &'a str,
    /// Registered public keys.
    pub public_keys: &'a [PublicKey],
}

/// Why a proof was refused. Messages are shown to the caller: they say what is wrong without
/// revealing anything about the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Neither an HMAC nor a JWT.
    #[error("user_auth is neither a hex HMAC-SHA256 of user_id nor a JWT")]
    Malformed,
    /// An HMAC that does not match.
    #[error("user_auth does not match user_id under the app's user-auth secret")]
    HmacMismatch,
    /// A JWT whose `alg` is not HS256, ES256 or RS256, or has no registered key.
    #[error("user_auth JWT algorithm {0} is not accepted (HS256, or ES256/RS256 with a registered public key)")]
    Algorithm(String),
    /// A JWT whose signature no accepted key verifies.
    #[error("user_auth JWT signature does not verify")]
    Signature,
    /// A JWT without the claims a proof needs.
    #[error("user_auth JWT must carry string sub and numeric exp claims")]
    Claims,
    /// `sub` names someone else.
    #[error("user_auth JWT sub does not equal user_id")]
    Subject,
    /// Expired.
    #[error("user_auth JWT has expired")]
    Expired,
    /// `exp` too far ahead.
    #[error("user_auth JWT exp is more than {MAX_JWT_LIFETIME_SECS} seconds away")]
    TooLongLived,
    /// `nbf` still ahead.
    #[error("user_auth JWT is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` does not name this app.
    #[error("user_auth JWT aud does not name this app")]
    Audience,
}

impl Verifier<'_> {
    /// Checks that `proof` vouches for `user_id` at `now_secs` (unix seconds).
    pub fn verify(&self, proof: &str, user_id: &str, now_secs: u64) -> Result<(), ProofError> {
        if proof.len() > MAX_PROOF_LEN {
            return Err(ProofError::Malformed);
        }
        if proof.len() == 64 && proof.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.verify_hmac(proof, user_id);
        }
        if proof.split('.').count() == 3 {
            return self.verify_jwt(proof, user_id, now_secs);
        }
        Err(ProofError::Malformed)
    }

    fn verify_hmac(&self, proof: &str, user_id: &str) -> Result<(), ProofError> {
        // Lowercase hex is the documented form; uppercase digits are the same bytes.
        let presented = hex::decode(proof).map_err(|_| ProofError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(self.secret.as_bytes())
            .map_err(|_| ProofError::HmacMismatch)?;
        mac.update(user_id.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&presented)
            .map_err(|_| ProofError::HmacMismatch)
    }

    fn verify_jwt(&self, token: &str, user_id: &str, now_secs: u64) -> Result<(), ProofError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An unknown `alg` (including "none") fails to parse as a header.
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                ProofError::Algorithm(unparsed_alg(token).unwrap_or_else(|| "?".into()))
            }
            _ => ProofError::Malformed,
        })?;
        let keys: Vec<DecodingKey> = match header.alg {
            Algorithm::HS256 => vec![DecodingKey::from_secret(self.secret.as_bytes())],
            Algorithm::ES256 | Algorithm::RS256 => self
                .public_keys
                .iter()
                .filter(|k| k.algorithm.jwt() == header.alg)
                .filter_map(|k| match k.algorithm {
                    KeyAlgorithm::ES256 => DecodingKey::from_ec_pem(k.public_key.as_bytes()).ok(),
                    KeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(k.public_key.as_bytes()).ok(),
                })
                .collect(),
            other => return Err(ProofError::Algorithm(format!("{other:?}"))),
        };
        if keys.is_empty() {
            return Err(ProofError::Algorithm(format!("{:?}", header.alg)));
        }
        // The library checks the signature and the algorithm only; time and subject are
        // checked below against the given clock, so the rules are ours and testable.
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = keys
            .iter()
            .find_map(|key| jsonwebtoken::decode::<Claims>(token, key, &validation).ok())
            .ok_or(ProofError::Signature)?
            .claims;
        claims.check(self.app_id, user_id, now_secs)
    }
}

/// The claims a JWT proof carries; `serde_json::Value` so a wrong type is a clear error.
#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
}

impl Claims {
    fn check(&self, app_id: &str, user_id: &str, now: u64) -> Result<(), ProofError> {
        let sub = self.sub.as_ref().and_then(|v| v.as_str());
        let exp = self.exp.as_ref().and_then(numeric_date);
        let (Some(sub), Some(exp)) = (sub, exp) else {
            return Err(ProofError::Claims);
        };
        if exp <= now {
            return Err(ProofError::Expired);
        }
        if exp > now + MAX_JWT_LIFETIME_SECS + JWT_SKEW_SECS {
            return Err(ProofError::TooLongLived);
        }
        match self.nbf.as_ref().map(numeric_date) {
            None => {}
            Some(Some(nbf)) if nbf <= now + JWT_SKEW_SECS => {}
            Some(Some(_)) => return Err(ProofError::NotYetValid),
            Some(None) => return Err(ProofError::Claims),
        }
        let names_app = match &self.aud {
            None => true,
            Some(serde_json::Value::String(a)) => a == app_id,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(app_id)),
            Some(_) => false,
        };
        if !names_app {
            return Err(ProofError::Audience);
        }
        // Both are caller-visible strings, not secrets: an ordinary comparison is fine.
        if sub != user_id {
            return Err(ProofError::Subject);
        }
        Ok(())
    }
}

/// A JWT NumericDate: non-negative seconds, possibly fractional (truncated).
fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

/// The `alg` of a header the library refused, for the error message.
fn unparsed_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let alg = value.get("alg")?.as_str()?;
    Some(alg.chars().take(16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn hmac_proof(secret: &str, user_id: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(user_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    const SECRET: &str = "pbua_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn verifier(keys: &[PublicKey]) -> Verifier<'_> {
        Verifier {
            app_id: "app_1",
            secret: SECRET,
            public_keys: keys,
        }
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn hmac_matches_the_published_construction() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_proof("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let v = verifier(&[]);
        assert_eq!(v.verify(&hmac_proof(SECRET, "u1"), "u1", NOW), Ok(()));
        assert_eq!(
            v.verify(&hmac_proof(SECRET, "u2"), "u1", NOW),
            Err(ProofError::HmacMismatch)
        );
        assert_eq!(
            v.verify(&hmac_proof("pbua_other", "u1"), "u1", NOW),
            Err(ProofError::HmacMismatch)
        );
        assert_eq!(v.verify("abc", "u1", NOW), Err(ProofError::Malformed));
    }

    #[test]
    fn jwt_time_rules() {
        let v = verifier(&[]);
        let ok = hs256(json!({"sub": "u1", "exp": NOW + 600}));
        assert_eq!(v.verify(&ok, "u1", NOW), Ok(()));
        assert_eq!(v.verify(&ok, "u2", NOW), Err(ProofError::Subject));
        let expired = hs256(json!({"sub": "u1", "exp": NOW}));
        assert_eq!(v.verify(&expired, "u1", NOW), Err(ProofError::Expired));
        let edge = hs256(json!({"sub": "u1", "exp": NOW + MAX_JWT_LIFETIME_SECS}));
        assert_eq!(v.verify(&edge, "u1", NOW), Ok(()));
        let far = hs256(json!({"sub": "u1", "exp": NOW + 2 * MAX_JWT_LIFETIME_SECS}));
        assert_eq!(v.verify(&far, "u1", NOW), Err(ProofError::TooLongLived));
        let no_exp = hs256(json!({"sub": "u1"}));
        assert_eq!(v.verify(&no_exp, "u1", NOW), Err(ProofError::Claims));
        let early = hs256(json!({"sub": "u1", "exp": NOW + 600, "nbf": NOW + 300}));
        assert_eq!(v.verify(&early, "u1", NOW), Err(ProofError::NotYetValid));
        let other_app = hs256(json!({"sub": "u1", "exp": NOW + 600, "aud": "app_2"}));
        assert_eq!(v.verify(&other_app, "u1", NOW), Err(ProofError::Audience));
        let this_app = hs256(json!({"sub": "u1", "exp": NOW + 600, "aud": ["app_1"]}));
        assert_eq!(v.verify(&this_app, "u1", NOW), Ok(()));
    }

    #[test]
    fn jwt_algorithms_are_restricted() {
        let v = verifier(&[]);
        let claims = json!({"sub": "u1", "exp": NOW + 600});
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert!(matches!(
            v.verify(&hs512, "u1", NOW),
            Err(ProofError::Algorithm(_))
        ));
        // alg "none" with an empty signature.
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims));
        assert_eq!(
            v.verify(&none, "u1", NOW),
            Err(ProofError::Algorithm("none".into()))
        );
        // A wrong HS256 key.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u1", "exp": NOW + 600}),
            &EncodingKey::from_secret(b"guess"),
        )
        .expect("encode");
        assert_eq!(v.verify(&forged, "u1", NOW), Err(ProofError::Signature));
    }

    #[test]
    fn es256_needs_a_registered_key() {
        let pair = rcgen::KeyPair::generate().expect("p256 key");
        let pem = check_public_key(KeyAlgorithm::ES256, &pair.public_key_pem()).expect("valid");
        let token = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "u1", "exp": NOW + 600}),
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key"),
        )
        .expect("encode");
        assert!(matches!(
            verifier(&[]).verify(&token, "u1", NOW),
            Err(ProofError::Algorithm(_))
        ));
        let key = PublicKey {
            id: "uak_1".into(),
            algorithm: KeyAlgorithm::ES256,
            public_key: pem,
            created_at: 0,
        };
        assert_eq!(
            verifier(std::slice::from_ref(&key)).verify(&token, "u1", NOW),
            Ok(())
        );
        // The same key registered as RS256 is refused.
        assert!(check_public_key(KeyAlgorithm::RS256, &key.public_key).is_err());
        assert!(check_public_key(KeyAlgorithm::ES256, "not a key").is_err());
    }
}
