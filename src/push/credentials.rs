//! Provider credentials as an app uploads them: an APNs token-signing key and an FCM service
//! account, with the checks an upload must pass and the fingerprint that names a key without
//! showing it.
//!
//! The same types carry the config file's default keys, so a sender is built the same way
//! whichever place its key came from.

use std::fmt;

use p256::pkcs8::EncodePublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::apns::auth::signing_key_from_pem;
use super::fcm::ServiceAccount;
use crate::model::{ApnsEnvironment, InvalidField};

/// An APNs token-signing key (`.p8`) with the ids Apple issued it under.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApnsCredential {
    /// The key's 10-character id (JWT `kid`).
    pub key_id: String,
    /// The 10-character developer team id (JWT `iss`).
    pub team_id: String,
    /// The key, PKCS#8 PEM (EC P-256).
    pub private_key: String,
    /// Topic (bundle id) for devices that do not carry one.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// The one APNs environment the key may be used with; both when absent.
    #[serde(default)]
    pub environment: Option<ApnsEnvironment>,
}

impl fmt::Debug for ApnsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsCredential")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("default_topic", &self.default_topic)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// An FCM service account: the fields of its JSON key file the OAuth2 flow needs.
#[derive(Clone)]
pub struct FcmCredential {
    /// The parsed key file.
    pub account: ServiceAccount,
}

impl fmt::Debug for FcmCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmCredential")
            .field("project_id", &self.account.project_id)
            .field("client_email", &self.account.client_email)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a key's public half (SubjectPublicKeyInfo DER for APNs, the RSA public
/// key DER for FCM): names a key in answers and logs without revealing anything of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    fn of(public_der: &[u8]) -> Self {
        Self(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(public_der))
        ))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Apple's key ids and team ids are 10 characters of `[A-Z0-9]`.
fn check_apple_id(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.len() == 10 && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "must be 10 letters or digits, got {} characters",
                value.chars().count()
            ),
        ))
    }
}

impl ApnsCredential {
    /// Checks the ids, that the key is an EC P-256 PKCS#8 key, and that it signs a JWT;
    /// returns its fingerprint.
    pub fn validate(&self) -> Result<Fingerprint, InvalidField> {
        check_apple_id("key_id", &self.key_id)?;
        check_apple_id("team_id", &self.team_id)?;
        if let Some(topic) = &self.default_topic {
            if topic.trim().is_empty() || topic.len() > 255 {
                return Err(InvalidField::new(
                    "default_topic",
                    "must be a bundle id of 1 to 255 characters",
                ));
            }
        }
        let key = signing_key_from_pem(&self.private_key).map_err(|e| {
            InvalidField::new(
                "private_key",
                format!("must be the .p8 key: an EC P-256 private key in PKCS#8 PEM ({e})"),
            )
        })?;
        super::apns::auth::check_signs(&key, &self.key_id, &self.team_id).map_err(|e| {
            InvalidField::new("private_key", format!("cannot sign a provider token: {e}"))
        })?;
        let public = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| InvalidField::new("private_key", format!("no public key: {e}")))?;
        Ok(Fingerprint::of(public.as_bytes()))
    }
}

/// The fields of a service-account key file, each optional so that a missing one is named.
#[derive(Deserialize)]
struct RawServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
}

impl FcmCredential {
    /// Parses and checks a service-account key file given as a JSON object: its `type`, the
    /// required fields, an RSA key that signs, and an `https` token URI. Returns the credential
    /// and its key's fingerprint. Field names are reported under `service_account.`.
    pub fn from_key_file(value: &serde_json::Value) -> Result<(Self, Fingerprint), InvalidField> {
        let field = |name: &str| format!("service_account.{name}");
        if !value.is_object() {
            return Err(InvalidField::new(
                "service_account",
                "must be the service account's JSON key file, as an object",
            ));
        }
        let raw: RawServiceAccount = serde_json::from_value(value.clone())
            .map_err(|e| InvalidField::new("service_account", e.to_string()))?;
        if raw.kind.as_deref() != Some("service_account") {
            return Err(InvalidField::new(
                field("type"),
                "must be \"service_account\" (a key file from Firebase or Google Cloud)",
            ));
        }
        let required = |name: &str, v: Option<String>| match v {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(InvalidField::new(field(name), "is required")),
        };
        let project_id = required("project_id", raw.project_id)?;
        if !is_project_id(&project_id) {
            return Err(InvalidField::new(
                field("project_id"),
                "must be a Firebase project id",
            ));
        }
        let client_email = required("client_email", raw.client_email)?;
        if !client_email.contains('@') {
            return Err(InvalidField::new(
                field("client_email"),
                "must be the service account's e-mail address",
            ));
        }
        let token_uri = required("token_uri", raw.token_uri)?;
        if super::pool::check_endpoint("token_uri", &token_uri).is_err() {
            return Err(InvalidField::new(
                field("token_uri"),
                "must be an https:// URL",
            ));
        }
        let private_key = required("private_key", raw.private_key)?;
        let public = rsa_public_key(&private_key)
            .map_err(|message| InvalidField::new(field("private_key"), message))?;
        let account = ServiceAccount {
            project_id,
            private_key_id: raw.private_key_id.filter(|k| !k.is_empty()),
            private_key,
            client_email,
            token_uri,
        };
        Ok((Self { account }, Fingerprint::of(&public)))
    }
}

/// Whether `id` can be a Firebase project id (it goes into the request path).
pub(crate) fn is_project_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.')
}

/// Parses an RSA private key (PKCS#8 or PKCS#1 PEM), checks that it signs, and returns its
/// public key DER.
fn rsa_public_key(pem: &str) -> Result<Vec<u8>, String> {
    use ring::signature::{KeyPair, RsaKeyPair};
    let item = rustls_pemfile::read_one_from_slice(pem.as_bytes())
        .map_err(|e| format!("must be an RSA private key in PEM: {e:?}"))?
        .map(|(item, _)| item);
    let pair = match item {
        Some(rustls_pemfile::Item::Pkcs8Key(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        Some(rustls_pemfile::Item::Pkcs1Key(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err("must be an RSA private key in PEM (BEGIN PRIVATE KEY)".into()),
    }
    .map_err(|e| format!("is not a usable RSA key: {e}"))?;
    let rng = ring::rand::SystemRandom::new();
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &rng,
        b"pushbridge key check",
        &mut signature,
    )
    .map_err(|_| "cannot sign with the RSA key".to_string())?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// The fingerprint of an APNs key given as PEM, if it parses.
pub fn apns_fingerprint(pem: &str) -> Option<Fingerprint> {
    let key = signing_key_from_pem(pem).ok()?;
    let public = key.verifying_key().to_public_key_der().ok()?;
    Some(Fingerprint::of(public.as_bytes()))
}

/// The fingerprint of an FCM service account's RSA key given as PEM, if it parses.
pub fn fcm_fingerprint(pem: &str) -> Option<Fingerprint> {
    rsa_public_key(pem).ok().map(|der| Fingerprint::of(&der))
}
