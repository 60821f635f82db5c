//! Secrets at rest: sealing a stored secret (a webhook source's secrets, an app's callback and
//! user-auth secrets, a provider's private key) under the master key, and opening it again.
//!
//! This module owns the master key and its rotation set ([`Keyring`]), the `[secrets]` config,
//! and the sealed text format. It does no database IO: the store seals on write and opens on
//! read, naming each value's place with a [`Field`] and its row id. `key_file` finds or makes
//! the key when none is configured.
//!
//! A sealed value is ASCII text, `sealed:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`:
//! AES-256-GCM with a random 96-bit nonce per value. The key id is derived from the key, so a
//! value says which key sealed it and `previous_keys` can still open it after a rotation. The
//! associated data is the value's header, field and row, so a sealed value copied into another
//! column or row does not open.

mod key_file;

pub use key_file::{keyring_for, KeySource};

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The first part of every sealed value; plaintext secrets never start with it.
const PREFIX: &str = "sealed:";
/// The format version this build writes.
const VERSION: &str = "v1";
/// Length of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
const TAG_LEN: usize = 16;

/// The `[secrets]` config: the master key that seals stored secrets, and older keys that may
/// still open them during a rotation.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of 32 random bytes (`openssl rand -base64 32`). Required with PostgreSQL; with
    /// SQLite, a key file beside the database is used when unset.
    pub master_key: Option<MasterKey>,
    /// Keys that sealed values before the current one; they open, never seal.
    pub previous_keys: Vec<MasterKey>,
}

/// A 256-bit AES key and the short id derived from it. Its `Debug` shows only the id.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    bytes: [u8; 32],
    id: KeyId,
}

/// Eight hex digits derived from a key, written into every value it seals. It identifies
/// the key without revealing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"pushbridge master key id\n")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest[..4]);
        Self {
            bytes,
            id: KeyId(id),
        }
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self::from_bytes(Aes256Gcm::generate_key(&mut OsRng).into())
    }

    /// Parses base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let text = text.trim();
        let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or("must be base64 (generate a key with `openssl rand -base64 32`)")?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|d: Vec<u8>| {
            format!(
                "must be base64 of 32 bytes, not {} (generate a key with `openssl rand -base64 32`)",
                d.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as standard base64, as the key file and the config hold it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// The id sealed values carry.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl<'de> Deserialize<'de> for MasterKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for MasterKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

/// Where a sealed value lives: its table and column. With the row id it is bound into the
/// ciphertext, so a value moved to another place does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Table name.
    pub table: &'static str,
    /// Column name.
    pub column: &'static str,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// Why a sealed value could not be opened. It names the value's place, never the value.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {field} of row {row}: {reason}")]
pub struct OpenError {
    /// The column.
    pub field: Field,
    /// The row id.
    pub row: String,
    /// What went wrong.
    pub reason: OpenFailure,
}

/// What went wrong opening a value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    /// A plaintext value where a sealed one belongs (written by an older version).
    #[error("it is stored in plaintext; restart the bridge to seal stored secrets")]
    Plaintext,
    /// Not in the sealed format.
    #[error("it is not a well-formed sealed value")]
    Malformed,
    /// A format version this build does not know.
    #[error("it is sealed in format {0:?}, which this version does not know")]
    UnknownVersion(String),
    /// Sealed under a key that is not configured.
    #[error(
        "it is sealed under key id {sealed_by}, which is neither secrets.master_key nor one of \
         secrets.previous_keys (configured key ids: {configured}); configure that key"
    )]
    UnknownKey {
        /// The id in the value.
        sealed_by: String,
        /// The ids this keyring holds.
        configured: String,
    },
    /// The key id matches but the value does not authenticate: altered, or moved from another
    /// field or row.
    #[error(
        "it does not authenticate under key id {0} (altered, or copied from another field or row)"
    )]
    Rejected(KeyId),
}

/// The keys this process seals and opens with: the current key seals; it and every previous
/// key open.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
    source: KeySource,
}

impl Keyring {
    /// A keyring that seals under `current` and also opens values of `previous`.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>, source: KeySource) -> Self {
        Self {
            current,
            previous,
            source,
        }
    }

    /// The id of the key new values are sealed under.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// Where the current key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Seals `plaintext` for `row` of `field` under the current key.
    pub fn seal(&self, field: Field, row: &str, plaintext: &str) -> anyhow::Result<String> {
        let header = format!("{PREFIX}{VERSION}:{}:", self.current.id);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(&header, field, row);
        let sealed = self
            .current
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing {field} of row {row} failed"))?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        Ok(format!(
            "{header}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(body)
        ))
    }

    /// Opens a value sealed for `row` of `field` by any key of this keyring.
    pub fn open(&self, field: Field, row: &str, sealed: &str) -> Result<String, OpenError> {
        self.open_inner(field, row, sealed)
            .map_err(|reason| OpenError {
                field,
                row: row.to_string(),
                reason,
            })
    }

    fn open_inner(&self, field: Field, row: &str, sealed: &str) -> Result<String, OpenFailure> {
        let envelope = Envelope::parse(sealed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id.to_string() == envelope.key_id)
            .ok_or_else(|| OpenFailure::UnknownKey {
                sealed_by: envelope.key_id.to_string(),
                configured: self.configured_ids(),
            })?;
        let body = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(envelope.body)
            .map_err(|_| OpenFailure::Malformed)?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenFailure::Malformed);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let aad = associated_data(envelope.header, field, row);
        let plain = key
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenFailure::Rejected(key.id))?;
        String::from_utf8(plain).map_err(|_| OpenFailure::Malformed)
    }

    fn configured_ids(&self) -> String {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether a stored value is in the sealed format (of any version), as opposed to a plaintext
/// secret written before encryption at rest.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// The id of the key a sealed value names, when it is well-formed.
pub fn sealed_by(value: &str) -> Option<&str> {
    Envelope::parse(value).ok().map(|e| e.key_id)
}

/// The parts of a sealed value.
struct Envelope<'a> {
    /// `sealed:v1:<key id>:`, authenticated as part of the associated data.
    header: &'a str,
    key_id: &'a str,
    body: &'a str,
}

impl<'a> Envelope<'a> {
    fn parse(value: &'a str) -> Result<Self, OpenFailure> {
        let rest = value.strip_prefix(PREFIX).ok_or(OpenFailure::Plaintext)?;
        let (version, rest) = rest.split_once(':').ok_or(OpenFailure::Malformed)?;
        if version != VERSION {
            return Err(OpenFailure::UnknownVersion(version.to_string()));
        }
        let (key_id, body) = rest.split_once(':').ok_or(OpenFailure::Malformed)?;
        if key_id.len() != 8 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpenFailure::Malformed);
        }
        let header = &value[..value.len() - body.len()];
        Ok(Self {
            header,
            key_id,
            body,
        })
    }
}

/// Header, field and row, each on its own line: what a sealed value is bound to.
fn associated_data(header: &str, field: Field, row: &str) -> Vec<u8> {
    format!("{header}\n{field}\n{row}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: Field = Field {
        table: "apps",
        column: "callback_secret",
    };
    const OTHER: Field = Field {
        table: "apps",
        column: "user_auth_secret",
    };

    fn ring(current: &MasterKey, previous: &[MasterKey]) -> Keyring {
        Keyring::new(current.clone(), previous.to_vec(), KeySource::Ephemeral)
    }

    #[test]
    fn sealed_value_opens_and_hides_the_plaintext() {
        let key = MasterKey::generate();
        let ring = ring(&key, &[]);
        let sealed = ring.seal(FIELD, "app_1", "whsec_topsecret").expect("seal");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("topsecret"));
        assert!(sealed.starts_with(&format!("sealed:v1:{}:", key.id())));
        assert_eq!(sealed_by(&sealed), Some(key.id().to_string().as_str()));
        assert_eq!(
            ring.open(FIELD, "app_1", &sealed).expect("open"),
            "whsec_topsecret"
        );
    }

    #[test]
    fn each_value_gets_its_own_nonce() {
        let ring = ring(&MasterKey::generate(), &[]);
        let a = ring.seal(FIELD, "app_1", "same").expect("seal");
        let b = ring.seal(FIELD, "app_1", "same").expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn a_value_moved_to_another_row_or_field_does_not_open() {
        let ring = ring(&MasterKey::generate(), &[]);
        let sealed = ring.seal(FIELD, "app_1", "s").expect("seal");
        let moved_row = ring.open(FIELD, "app_2", &sealed).expect_err("other row");
        assert!(matches!(moved_row.reason, OpenFailure::Rejected(_)));
        let moved_field = ring.open(OTHER, "app_1", &sealed).expect_err("other field");
        assert!(matches!(moved_field.reason, OpenFailure::Rejected(_)));
        assert!(moved_field
            .to_string()
            .contains("apps.user_auth_secret of row app_1"));
    }

    #[test]
    fn an_altered_value_does_not_open() {
        let ring = ring(&MasterKey::generate(), &[]);
        let sealed = ring.seal(FIELD, "app_1", "secret value").expect("seal");
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("ascii");
        assert!(ring.open(FIELD, "app_1", &altered).is_err());
    }

    #[test]
    fn previous_keys_open_but_do_not_seal() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let sealed = ring(&old, &[]).seal(FIELD, "r", "v").expect("seal");
        let rotated = ring(&new, std::slice::from_ref(&old));
        assert_eq!(rotated.open(FIELD, "r", &sealed).expect("open"), "v");
        let resealed = rotated.seal(FIELD, "r", "v").expect("seal");
        assert_eq!(sealed_by(&resealed), Some(new.id().to_string().as_str()));
    }

    #[test]
    fn an_unknown_key_is_named_and_the_value_is_not() {
        let sealed = ring(&MasterKey::generate(), &[])
            .seal(FIELD, "app_1", "hunter2")
            .expect("seal");
        let other = MasterKey::generate();
        let err = ring(&other, &[])
            .open(FIELD, "app_1", &sealed)
            .expect_err("wrong key");
        let text = err.to_string();
        assert!(text.contains("secrets.master_key"), "{text}");
        assert!(text.contains(&other.id().to_string()), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn plaintext_and_garbage_are_refused() {
        let ring = ring(&MasterKey::generate(), &[]);
        let plain = ring.open(FIELD, "r", "whsec_abc").expect_err("plaintext");
        assert_eq!(plain.reason, OpenFailure::Plaintext);
        for bad in [
            "sealed:",
            "sealed:v1:zz:abc",
            "sealed:v1:0011aabb:!!",
            "sealed:v1:0011aabb",
        ] {
            assert!(ring.open(FIELD, "r", bad).is_err(), "{bad}");
        }
        let future = ring
            .open(FIELD, "r", "sealed:v9:0011aabb:AAAA")
            .expect_err("v9");
        assert_eq!(future.reason, OpenFailure::UnknownVersion("v9".into()));
    }

    #[test]
    fn base64_keys_must_hold_32_bytes() {
        let key = MasterKey::generate();
        let parsed = MasterKey::from_base64(&key.to_base64()).expect("round trip");
        assert_eq!(parsed, key);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let err = MasterKey::from_base64(&short).expect_err("16 bytes");
        assert!(err.contains("32 bytes, not 16"), "{err}");
        assert!(MasterKey::from_base64("not base64 at all!").is_err());
        assert_eq!(format!("{key:?}"), format!("MasterKey({})", key.id()));
    }
}
