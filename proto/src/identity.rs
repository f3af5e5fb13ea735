//! Identity: a small offline certificate authority (Ed25519) and the node
//! certificates it issues.
//!
//! A [`Certificate`] binds a node's id, name, [`Role`], groups and its X25519
//! Noise static public key to a validity window, under the CA's Ed25519
//! signature. Relays and connectors verify certificates inside the handshake
//! (see [`crate::handshake`]) with no call home, as Nebula does: the CA's
//! public key is the only trust anchor a node needs.
//!
//! # Encoding
//!
//! [`Certificate::to_bytes`] is compact, deterministic and versioned; the
//! signature covers every byte before it, prefixed with a domain-separation
//! string so a certificate signature can never be confused with any other
//! use of the CA key. All integers are big-endian.
//!
//! ```text
//!  0  u8        encoding version (1)
//!  1  u8        role: 1 user, 2 connector, 3 relay
//!  2  u32       id (the user id for a user; node id otherwise)
//!  6  [u8;32]   X25519 static public key
//! 38  u64       not_before, unix seconds
//! 46  u64       not_after, unix seconds
//! 54  u8        name length n (1..=MAX_NAME_LEN), then n bytes UTF-8
//!     u8        group count g (0..=MAX_GROUPS), then per group:
//!               u8 length m (1..=MAX_GROUP_LEN), m bytes UTF-8
//!     [u8;64]   Ed25519 signature over "ztna-cert-v1\0" || all bytes above
//! ```
//!
//! The caps keep the largest certificate small enough that a hop handshake
//! initiation carrying it fits in one IPv6 minimum-MTU datagram.
//!
//! The text form (for files) is the hex of [`Certificate::to_bytes`] between
//! PEM-like armor lines; see [`Certificate::to_text`].
//!
//! # No panics
//! [`Certificate::from_bytes`] and the `from_text` functions return an error
//! on any malformed input, including trailing bytes; they never panic.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};

/// Current certificate encoding version (byte 0 of the encoding).
pub const CERT_VERSION: u8 = 1;
/// Longest node name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most groups one certificate may name.
pub const MAX_GROUPS: usize = 16;
/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 48;
/// Length of the Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the fixed part before the name.
const FIXED_LEN: usize = 54;
/// The largest encoding [`Certificate::to_bytes`] can produce.
pub const MAX_CERT_LEN: usize =
    FIXED_LEN + 1 + MAX_NAME_LEN + 1 + MAX_GROUPS * (1 + MAX_GROUP_LEN) + SIGNATURE_LEN;
/// Domain separation for certificate signatures.
const SIGNING_CONTEXT: &[u8] = b"ztna-cert-v1\0";

const CERT_LABEL: &str = "ZTNA CERTIFICATE";
const CA_SECRET_LABEL: &str = "ZTNA CA SECRET KEY";
const CA_PUBLIC_LABEL: &str = "ZTNA CA PUBLIC KEY";

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A person's agent: initiates end-to-end sessions to services.
    User,
    /// An agent that serves services to their targets.
    Connector,
    /// A relay of the mesh.
    Relay,
}

impl Role {
    /// The role's byte in the encoding.
    pub const fn to_byte(self) -> u8 {
        match self {
            Role::User => 1,
            Role::Connector => 2,
            Role::Relay => 3,
        }
    }

    /// Decodes a role byte.
    pub const fn from_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::User),
            2 => Some(Role::Connector),
            3 => Some(Role::Relay),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::User => "user",
            Role::Connector => "connector",
            Role::Relay => "relay",
        })
    }
}

/// Why a certificate (or a CA key) was rejected. Every message says what to
/// fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes end before the encoding does.
    #[error("certificate is truncated: the file or message was cut short; re-export it")]
    Truncated,
    /// Bytes follow a complete encoding.
    #[error("certificate has {0} trailing bytes after its signature; re-export it")]
    TrailingBytes(usize),
    /// The version byte is not [`CERT_VERSION`].
    #[error("certificate encoding version {0} is not supported (expected {CERT_VERSION}); reissue it with this version of the CA tool")]
    UnsupportedVersion(u8),
    /// The role byte names no role.
    #[error("certificate names unknown role {0}; reissue it as user, connector or relay")]
    UnknownRole(u8),
    /// A name or group is empty, too long or not UTF-8, or there are too
    /// many groups.
    #[error("certificate field `{field}` is invalid: {why}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The validity window ends before it starts.
    #[error("certificate for `{name}` has not_after {not_after} before not_before {not_before}; reissue it")]
    EmptyWindow {
        /// Certificate name.
        name: String,
        /// Start of validity, unix seconds.
        not_before: u64,
        /// End of validity, unix seconds.
        not_after: u64,
    },
    /// The static key is all zeros (an unusable X25519 key).
    #[error("certificate for `{0}` carries an all-zero static key; reissue it with the node's real public key")]
    ZeroStaticKey(String),
    /// The signature does not verify under the given CA key.
    #[error("certificate for `{0}` was not signed by this CA (or was altered after signing); check the CA public key configured here")]
    BadSignature(String),
    /// `now` is past `not_after`.
    #[error(
        "certificate for `{name}` expired at unix time {not_after} (now {now}); issue a new one"
    )]
    Expired {
        /// Certificate name.
        name: String,
        /// End of validity, unix seconds.
        not_after: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// `now` is before `not_before`.
    #[error("certificate for `{name}` is not valid before unix time {not_before} (now {now}); check this machine's clock")]
    NotYetValid {
        /// Certificate name.
        name: String,
        /// Start of validity, unix seconds.
        not_before: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The CA public key bytes are not a valid Ed25519 point.
    #[error("CA public key is not a valid Ed25519 key; copy it again from the CA")]
    BadCaKey,
    /// Text form without the expected armor lines or with non-hex content.
    #[error(
        "{0} text is malformed: expected `-----BEGIN {0}-----`, hex lines, `-----END {0}-----`"
    )]
    BadText(&'static str),
}

/// The fields a CA signs: everything in a [`Certificate`] but the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateBody {
    /// Node id: the user id for [`Role::User`], otherwise the connector's or
    /// relay's id.
    pub id: u32,
    /// Human-readable name, used in logs and error messages.
    pub name: String,
    /// What the holder may act as.
    pub role: Role,
    /// Policy groups the holder is a member of.
    pub groups: Vec<String>,
    /// The node's X25519 Noise static public key.
    pub static_key: [u8; 32],
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity (inclusive), unix seconds.
    pub not_after: u64,
}

/// A signed node certificate: the [`CertificateBody`] a CA signed and the
/// signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The signed fields.
    pub body: CertificateBody,
    /// The CA's Ed25519 signature over the encoding of `body`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The CA's signing key. Keep it offline; its `Debug` hides the secret.
pub struct CaKeypair {
    signing: SigningKey,
}

/// The CA's public key: the trust anchor every node is configured with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPublicKey(VerifyingKey);

impl CaKeypair {
    /// Draws a fresh CA key from a cryptographic RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> CaKeypair {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        CaKeypair::from_seed(&seed)
    }

    /// Rebuilds the CA key from its 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> CaKeypair {
        CaKeypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed, to store the CA key offline.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half, to distribute to every node.
    pub fn public(&self) -> CaPublicKey {
        CaPublicKey(self.signing.verifying_key())
    }

    /// Signs `body` into a certificate. Fails when a field breaks the
    /// encoding's caps (empty or long name, too many groups, ...) or the
    /// validity window is empty, so a CA never issues a certificate no node
    /// could parse.
    pub fn issue(&self, body: CertificateBody) -> Result<Certificate, CertError> {
        check_fields(&body.name, &body.groups)?;
        if body.not_after < body.not_before {
            return Err(CertError::EmptyWindow {
                name: body.name,
                not_before: body.not_before,
                not_after: body.not_after,
            });
        }
        let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + MAX_CERT_LEN);
        msg.extend_from_slice(SIGNING_CONTEXT);
        encode_body(&body, &mut msg);
        let signature = self.signing.sign(&msg).to_bytes();
        Ok(Certificate { body, signature })
    }

    /// The secret seed in armored hex text, for the CA's offline file.
    pub fn to_text(&self) -> String {
        armor(CA_SECRET_LABEL, &self.secret_bytes())
    }

    /// Parses [`CaKeypair::to_text`] output.
    pub fn from_text(text: &str) -> Result<CaKeypair, CertError> {
        let bytes = dearmor(CA_SECRET_LABEL, text)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CertError::BadText(CA_SECRET_LABEL))?;
        Ok(CaKeypair::from_seed(&seed))
    }
}

impl fmt::Debug for CaKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKeypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl CaPublicKey {
    /// Parses a CA public key; fails when the bytes are not an Ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<CaPublicKey, CertError> {
        VerifyingKey::from_bytes(bytes)
            .map(CaPublicKey)
            .map_err(|_| CertError::BadCaKey)
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Armored hex text, for node configuration files.
    pub fn to_text(&self) -> String {
        armor(CA_PUBLIC_LABEL, &self.to_bytes())
    }

    /// Parses [`CaPublicKey::to_text`] output.
    pub fn from_text(text: &str) -> Result<CaPublicKey, CertError> {
        let bytes = dearmor(CA_PUBLIC_LABEL, text)?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CertError::BadText(CA_PUBLIC_LABEL))?;
        CaPublicKey::from_bytes(&key)
    }
}

impl fmt::Debug for CaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPublicKey({})", to_hex(&self.to_bytes()))
    }
}

impl Certificate {
    /// Checks the signature against `ca`, the validity window against
    /// `now_unix` (seconds), and the cheap structural rules (field caps, a
    /// non-zero static key). Roles are the caller's business.
    pub fn verify(&self, ca: &CaPublicKey, now_unix: u64) -> Result<(), CertError> {
        let body = &self.body;
        check_fields(&body.name, &body.groups)?;
        if body.static_key == [0; 32] {
            return Err(CertError::ZeroStaticKey(body.name.clone()));
        }
        if now_unix > body.not_after {
            return Err(CertError::Expired {
                name: body.name.clone(),
                not_after: body.not_after,
                now: now_unix,
            });
        }
        if now_unix < body.not_before {
            return Err(CertError::NotYetValid {
                name: body.name.clone(),
                not_before: body.not_before,
                now: now_unix,
            });
        }
        let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + MAX_CERT_LEN);
        msg.extend_from_slice(SIGNING_CONTEXT);
        encode_body(body, &mut msg);
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        // Strict verification rejects malleable signatures and small-order
        // keys, so one certificate has exactly one valid encoding.
        ca.0.verify_strict(&msg, &sig)
            .map_err(|_| CertError::BadSignature(body.name.clone()))
    }

    /// The compact binary encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_CERT_LEN);
        encode_body(&self.body, &mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses [`Certificate::to_bytes`] output. Structural errors only: the
    /// signature is checked by [`Certificate::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Certificate, CertError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != CERT_VERSION {
            return Err(CertError::UnsupportedVersion(version));
        }
        let role_byte = r.u8()?;
        let role = Role::from_byte(role_byte).ok_or(CertError::UnknownRole(role_byte))?;
        let id = u32::from_be_bytes(r.array()?);
        let static_key = r.array()?;
        let not_before = u64::from_be_bytes(r.array()?);
        let not_after = u64::from_be_bytes(r.array()?);
        let name = r.string("name", MAX_NAME_LEN)?;
        let count = usize::from(r.u8()?);
        if count > MAX_GROUPS {
            return Err(CertError::BadField {
                field: "groups",
                why: "more than MAX_GROUPS (16) groups",
            });
        }
        let mut groups = Vec::with_capacity(count);
        for _ in 0..count {
            groups.push(r.string("groups", MAX_GROUP_LEN)?);
        }
        let signature = r.array()?;
        if !r.0.is_empty() {
            return Err(CertError::TrailingBytes(r.0.len()));
        }
        Ok(Certificate {
            body: CertificateBody {
                id,
                name,
                role,
                groups,
                static_key,
                not_before,
                not_after,
            },
            signature,
        })
    }

    /// Armored hex text for files:
    /// `-----BEGIN ZTNA CERTIFICATE-----`, hex lines of 64 characters,
    /// `-----END ZTNA CERTIFICATE-----`.
    pub fn to_text(&self) -> String {
        armor(CERT_LABEL, &self.to_bytes())
    }

    /// Parses [`Certificate::to_text`] output (surrounding whitespace and
    /// blank lines are ignored).
    pub fn from_text(text: &str) -> Result<Certificate, CertError> {
        Certificate::from_bytes(&dearmor(CERT_LABEL, text)?)
    }
}

fn check_fields(name: &str, groups: &[String]) -> Result<(), CertError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(CertError::BadField {
            field: "name",
            why: "must be 1 to 64 bytes",
        });
    }
    // Names end up in logs and error messages: no control characters, so a
    // certificate cannot forge log lines.
    if name
        .chars()
        .chain(groups.iter().flat_map(|g| g.chars()))
        .any(char::is_control)
    {
        return Err(CertError::BadField {
            field: "name",
            why: "names and groups must not contain control characters",
        });
    }
    if groups.len() > MAX_GROUPS {
        return Err(CertError::BadField {
            field: "groups",
            why: "more than MAX_GROUPS (16) groups",
        });
    }
    if groups
        .iter()
        .any(|g| g.is_empty() || g.len() > MAX_GROUP_LEN)
    {
        return Err(CertError::BadField {
            field: "groups",
            why: "each group name must be 1 to 48 bytes",
        });
    }
    Ok(())
}

/// Writes the signed part of the encoding. Lengths saturate rather than
/// wrap: an over-long field (only possible in a hand-built `Certificate`;
/// [`CaKeypair::issue`] checks the caps first) then fails to parse or verify
/// instead of silently re-framing the following bytes.
fn encode_body(b: &CertificateBody, out: &mut Vec<u8>) {
    out.push(CERT_VERSION);
    out.push(b.role.to_byte());
    out.extend_from_slice(&b.id.to_be_bytes());
    out.extend_from_slice(&b.static_key);
    out.extend_from_slice(&b.not_before.to_be_bytes());
    out.extend_from_slice(&b.not_after.to_be_bytes());
    let name = b.name.as_bytes();
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.push(u8::try_from(b.groups.len()).unwrap_or(u8::MAX));
    for g in &b.groups {
        out.push(u8::try_from(g.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(g.as_bytes());
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CertError> {
        if self.0.len() < n {
            return Err(CertError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CertError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CertError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, CertError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > max {
            return Err(CertError::BadField {
                field,
                why: "length out of range",
            });
        }
        let bytes = self.take(len)?;
        let s = core::str::from_utf8(bytes).map_err(|_| CertError::BadField {
            field,
            why: "not valid UTF-8",
        })?;
        if s.chars().any(char::is_control) {
            return Err(CertError::BadField {
                field,
                why: "contains control characters",
            });
        }
        Ok(s.to_owned())
    }
}

/// `bytes` as lowercase hex: the one encoder of keys as text (armour,
/// configs, etcd records, logs).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn armor(label: &str, bytes: &[u8]) -> String {
    let h = to_hex(bytes);
    let mut s = format!("-----BEGIN {label}-----\n");
    // Hex is ASCII, so splitting on byte boundaries is splitting on chars.
    for line in h.as_bytes().chunks(64) {
        s.push_str(core::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn dearmor(label: &'static str, text: &str) -> Result<Vec<u8>, CertError> {
    let bad = || CertError::BadText(label);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(format!("-----BEGIN {label}-----").as_str()) {
        return Err(bad());
    }
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        let digits = line.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(bad());
        }
        for pair in digits.chunks_exact(2) {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            out.push(hi << 4 | lo);
        }
    }
    if !ended || lines.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// A 32-byte key from exactly 64 hex digits (either case); `None` for
/// anything else. Never panics, whatever the text.
pub fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (b, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        *b = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(key)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn keys_round_trip_through_hex_and_junk_is_refused() {
        let key: [u8; 32] = core::array::from_fn(|i| (i * 7) as u8);
        let text = to_hex(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(key_from_hex(&text), Some(key));
        assert_eq!(key_from_hex(&text.to_uppercase()), Some(key));
        assert_eq!(key_from_hex(&text[..62]), None);
        assert_eq!(key_from_hex(&format!("{}zz", &text[..62])), None);
        // Multi-byte characters of the right byte length must not panic.
        assert_eq!(key_from_hex(&"é".repeat(32)), None);
    }

    fn ca() -> CaKeypair {
        CaKeypair::from_seed(&[7; 32])
    }

    fn body() -> CertificateBody {
        CertificateBody {
            id: 42,
            name: "alice".into(),
            role: Role::User,
            groups: vec!["eng".into(), "oncall".into()],
            static_key: [9; 32],
            not_before: NOW - 10,
            not_after: NOW + 3600,
        }
    }

    #[test]
    fn issue_then_verify() {
        let ca = ca();
        let cert = ca.issue(body()).unwrap();
        cert.verify(&ca.public(), NOW).unwrap();
        assert_eq!(cert.body, body());
    }

    #[test]
    fn generated_ca_round_trips_its_secret() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ca = CaKeypair::generate(&mut rng);
        let again = CaKeypair::from_seed(&ca.secret_bytes());
        assert_eq!(ca.public(), again.public());
        let again = CaKeypair::from_text(&ca.to_text()).unwrap();
        assert_eq!(ca.public(), again.public());
        let public = CaPublicKey::from_text(&ca.public().to_text()).unwrap();
        assert_eq!(public, ca.public());
        assert!(!format!("{ca:?}").contains(&to_hex(&ca.secret_bytes())));
    }

    #[test]
    fn bytes_and_text_round_trip() {
        let cert = ca().issue(body()).unwrap();
        let bytes = cert.to_bytes();
        assert_eq!(Certificate::from_bytes(&bytes).unwrap(), cert);
        let text = cert.to_text();
        assert!(text.starts_with("-----BEGIN ZTNA CERTIFICATE-----\n"));
        assert_eq!(Certificate::from_text(&text).unwrap(), cert);
        // Deterministic: same body, same bytes (Ed25519 is deterministic).
        assert_eq!(ca().issue(body()).unwrap().to_bytes(), bytes);
    }

    #[test]
    fn tampering_any_field_fails() {
        let ca = ca();
        let cert = ca.issue(body()).unwrap();
        let mutations: [fn(&mut Certificate); 9] = [
            |c| c.body.id += 1,
            |c| c.body.name.push('x'),
            |c| c.body.role = Role::Relay,
            |c| c.body.groups.push("admin".into()),
            |c| c.body.groups.swap(0, 1),
            |c| c.body.static_key[31] ^= 1,
            |c| c.body.not_before -= 1,
            |c| c.body.not_after += 1,
            |c| c.signature[0] ^= 1,
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut c = cert.clone();
            m(&mut c);
            assert_eq!(
                c.verify(&ca.public(), NOW),
                Err(CertError::BadSignature(c.body.name.clone())),
                "mutation {i}"
            );
        }
        // Every single bit flip of the encoding fails to parse or verify.
        let bytes = cert.to_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(c) = Certificate::from_bytes(&b) {
                assert!(c.verify(&ca.public(), NOW).is_err(), "bit {i}");
            }
        }
    }

    #[test]
    fn wrong_ca_fails() {
        let cert = ca().issue(body()).unwrap();
        let other = CaKeypair::from_seed(&[8; 32]);
        let err = cert.verify(&other.public(), NOW).unwrap_err();
        assert_eq!(err, CertError::BadSignature("alice".into()));
        assert!(err.to_string().contains("not signed by this CA"));
    }

    #[test]
    fn validity_window_is_enforced() {
        let ca = ca();
        let cert = ca.issue(body()).unwrap();
        cert.verify(&ca.public(), NOW - 10).unwrap();
        cert.verify(&ca.public(), NOW + 3600).unwrap();
        let err = cert.verify(&ca.public(), NOW + 3601).unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }));
        assert!(err
            .to_string()
            .contains(&format!("`alice` expired at unix time {}", NOW + 3600)));
        assert!(matches!(
            cert.verify(&ca.public(), NOW - 11),
            Err(CertError::NotYetValid { .. })
        ));
        let mut b = body();
        b.not_after = b.not_before - 1;
        assert!(matches!(ca.issue(b), Err(CertError::EmptyWindow { .. })));
    }

    #[test]
    fn issue_rejects_fields_over_the_caps() {
        let ca = ca();
        let mut b = body();
        b.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(ca.issue(b), Err(CertError::BadField { .. })));
        let mut b = body();
        b.name.clear();
        assert!(matches!(ca.issue(b), Err(CertError::BadField { .. })));
        let mut b = body();
        b.groups = vec!["g".into(); MAX_GROUPS + 1];
        assert!(matches!(ca.issue(b), Err(CertError::BadField { .. })));
        let mut b = body();
        b.groups = vec!["g".repeat(MAX_GROUP_LEN + 1)];
        assert!(matches!(ca.issue(b), Err(CertError::BadField { .. })));
        let mut b = body();
        b.name = "alice\nFAKE LOG LINE".into();
        assert!(matches!(ca.issue(b), Err(CertError::BadField { .. })));
        // The largest legal certificate is exactly MAX_CERT_LEN long.
        let mut b = body();
        b.name = "n".repeat(MAX_NAME_LEN);
        b.groups = vec!["g".repeat(MAX_GROUP_LEN); MAX_GROUPS];
        let cert = ca.issue(b).unwrap();
        assert_eq!(cert.to_bytes().len(), MAX_CERT_LEN);
        cert.verify(&ca.public(), NOW).unwrap();
    }

    #[test]
    fn zero_static_key_is_rejected() {
        let ca = ca();
        let mut b = body();
        b.static_key = [0; 32];
        let cert = ca.issue(b).unwrap();
        assert_eq!(
            cert.verify(&ca.public(), NOW),
            Err(CertError::ZeroStaticKey("alice".into()))
        );
    }

    #[test]
    fn truncated_trailing_and_bad_bytes_error() {
        let bytes = ca().issue(body()).unwrap().to_bytes();
        for len in 0..bytes.len() {
            assert_eq!(
                Certificate::from_bytes(&bytes[..len]),
                Err(CertError::Truncated),
                "len {len}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Certificate::from_bytes(&long),
            Err(CertError::TrailingBytes(1))
        );
        let mut b = bytes.clone();
        b[0] = 2;
        assert_eq!(
            Certificate::from_bytes(&b),
            Err(CertError::UnsupportedVersion(2))
        );
        let mut b = bytes.clone();
        b[1] = 9;
        assert_eq!(Certificate::from_bytes(&b), Err(CertError::UnknownRole(9)));
        let mut b = bytes;
        b[FIXED_LEN + 1] = 0xff; // first name byte: invalid UTF-8
        assert!(matches!(
            Certificate::from_bytes(&b),
            Err(CertError::BadField { field: "name", .. })
        ));
    }

    #[test]
    fn bad_text_errors() {
        let text = ca().issue(body()).unwrap().to_text();
        assert!(Certificate::from_text("").is_err());
        assert!(Certificate::from_text(&text.replace("BEGIN", "BEGUN")).is_err());
        assert!(
            Certificate::from_text(&text.replace("-----END ZTNA CERTIFICATE-----", "")).is_err()
        );
        assert!(Certificate::from_text(&text.replacen('0', "z", 1)).is_err());
        assert!(Certificate::from_text(&format!("{text}junk\n")).is_err());
        assert!(CaPublicKey::from_text(&text).is_err());
    }

    proptest::proptest! {
        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Certificate::from_bytes(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(pos in 0usize..200, val in proptest::prelude::any::<u8>(), cut in 0usize..200) {
            let mut bytes = ca().issue(body()).unwrap().to_bytes();
            let pos = pos % bytes.len();
            bytes[pos] = val;
            bytes.truncate(bytes.len().saturating_sub(cut % 4));
            if let Ok(c) = Certificate::from_bytes(&bytes) {
                let _ = c.verify(&ca().public(), NOW);
                let _ = Certificate::from_text(&c.to_text());
            }
        }

        #[test]
        fn from_text_never_panics(s in ".{0,200}") {
            let _ = Certificate::from_text(&s);
            let _ = CaPublicKey::from_text(&s);
            let _ = CaKeypair::from_text(&s);
        }
    }
}
