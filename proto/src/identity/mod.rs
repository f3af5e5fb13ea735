//! Identity: a small offline certificate authority (Ed25519) and the node
//! certificates it issues.
//!
//! A [`Certificate`] binds a node's id, name, [`Role`], groups and its X25519
//! Noise static public key to a validity window, under the CA's Ed25519
//! signature. Relays and connectors verify certificates inside the handshake
//! (see [`crate::handshake`]) with no call home, as Nebula does: the CA's
//! public key is the only trust anchor a node needs.
//!
//! * `ca`: the CA's keys ([`CaKeypair`], [`CaPublicKey`]) and issuing.
//! * `certificate`: [`Certificate`], its binary encoding (specified there)
//!   and its verification.
//! * [`armour`]: hex, and the PEM-like text form of keys and certificates
//!   in files.
//!
//! # No panics
//! [`Certificate::from_bytes`] and the `from_text` functions return an error
//! on any malformed input, including trailing bytes; they never panic.

pub mod armour;
mod ca;
mod certificate;

use core::fmt;

pub use armour::{key_from_hex, to_hex};
pub use ca::{CaKeypair, CaPublicKey};
pub use certificate::{
    Certificate, CertificateBody, CERT_VERSION, MAX_CERT_LEN, MAX_GROUPS, MAX_GROUP_LEN,
    MAX_NAME_LEN, SIGNATURE_LEN,
};

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

/// A CA and a certificate body for the tests of the submodules.
#[cfg(test)]
mod fixture {
    use super::{CaKeypair, CertificateBody, Role};

    /// The time the tests verify at, unix seconds.
    pub(super) const NOW: u64 = 1_800_000_000;

    pub(super) fn ca() -> CaKeypair {
        CaKeypair::from_seed(&[7; 32])
    }

    pub(super) fn body() -> CertificateBody {
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
}
