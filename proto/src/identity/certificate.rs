//! A node certificate and its binary encoding.
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
//! PEM-like armour lines (see [`super::armour`] and [`Certificate::to_text`]).

use super::armour;
use super::{CaPublicKey, CertError, Role};

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
        if ca.verifies(&signed_message(body), &self.signature) {
            Ok(())
        } else {
            Err(CertError::BadSignature(body.name.clone()))
        }
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
        armour::encode(CERT_LABEL, &self.to_bytes())
    }

    /// Parses [`Certificate::to_text`] output (surrounding whitespace and
    /// blank lines are ignored).
    pub fn from_text(text: &str) -> Result<Certificate, CertError> {
        Certificate::from_bytes(&armour::decode(CERT_LABEL, text)?)
    }
}

/// The caps on names and groups, checked before issuing and verifying.
pub(super) fn check_fields(name: &str, groups: &[String]) -> Result<(), CertError> {
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

/// What the CA signs: [`SIGNING_CONTEXT`] and the encoding of `body`.
pub(super) fn signed_message(body: &CertificateBody) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + MAX_CERT_LEN);
    msg.extend_from_slice(SIGNING_CONTEXT);
    encode_body(body, &mut msg);
    msg
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fixture::{body, ca, NOW};
    use crate::identity::CaKeypair;

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

    /// The reader refuses a name or group of 0 bytes or longer than its
    /// cap and parses the longest legal ones: `from_bytes` checks the
    /// lengths itself, not only `issue` and `verify` (which check a body,
    /// never bytes). (Killed the cargo-mutants survivors in
    /// `Reader::string`: `len == 0 || len > max` -> `&&`, and `>` -> `==`
    /// and `>=`.)
    #[test]
    fn parsed_names_and_groups_are_one_byte_to_their_caps() {
        // Encoded directly: `issue` refuses the out-of-range fields.
        let parse = |name: String, groups: Vec<String>| {
            let mut body = body();
            body.name = name;
            body.groups = groups;
            let cert = Certificate {
                body,
                signature: [3; SIGNATURE_LEN],
            };
            (Certificate::from_bytes(&cert.to_bytes()), cert)
        };
        let longest = parse(
            "n".repeat(MAX_NAME_LEN),
            vec!["g".repeat(MAX_GROUP_LEN); MAX_GROUPS],
        );
        assert_eq!(longest.0, Ok(longest.1));
        let shortest = parse("n".into(), vec!["g".into()]);
        assert_eq!(shortest.0, Ok(shortest.1));
        let out_of_range = |field| {
            Err(CertError::BadField {
                field,
                why: "length out of range",
            })
        };
        let g = || vec!["g".to_string()];
        assert_eq!(parse(String::new(), g()).0, out_of_range("name"));
        assert_eq!(
            parse("n".repeat(MAX_NAME_LEN + 1), g()).0,
            out_of_range("name")
        );
        assert_eq!(
            parse("n".into(), vec![String::new()]).0,
            out_of_range("groups")
        );
        assert_eq!(
            parse("n".into(), vec!["g".repeat(MAX_GROUP_LEN + 1)]).0,
            out_of_range("groups")
        );
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
