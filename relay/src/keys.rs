//! Key and certificate files: reading them with errors that name the file
//! and say what is wrong, and writing them for `relay ca`.
//!
//! The static private key file holds the X25519 key as 64 hex characters
//! between `-----BEGIN ZTNA STATIC KEY-----` and `-----END ZTNA STATIC
//! KEY-----` lines: the same armour (`proto::identity::armour`) as the
//! certificates and CA keys.

use std::path::{Path, PathBuf};

use proto::handshake::LocalIdentity;
use proto::identity::{armour, CaPublicKey, CertError, Certificate};

const STATIC_KEY_LABEL: &str = "ZTNA STATIC KEY";

/// Why a key or certificate file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file's content is not what it should be.
    #[error("{path}: {error}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: CertError,
    },
    /// The static key file is malformed.
    #[error("{path}: not a static key file: expected `-----BEGIN {STATIC_KEY_LABEL}-----`, 64 hex characters, `-----END {STATIC_KEY_LABEL}-----` (make one with `relay keygen`)")]
    StaticKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate does not match the private key.
    #[error("certificate {cert} binds a different static key than the private key in {key}; reissue the certificate for this key (`relay ca issue --public-key ...`)")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|error| KeyFileError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Reads a CA public key file.
pub fn load_ca(path: &Path) -> Result<CaPublicKey, KeyFileError> {
    CaPublicKey::from_text(&read(path)?).map_err(|error| KeyFileError::Cert {
        path: path.to_owned(),
        error,
    })
}

/// Reads a certificate file.
pub fn load_certificate(path: &Path) -> Result<Certificate, KeyFileError> {
    Certificate::from_text(&read(path)?).map_err(|error| KeyFileError::Cert {
        path: path.to_owned(),
        error,
    })
}

/// Reads a static private key file.
pub fn load_static_key(path: &Path) -> Result<[u8; 32], KeyFileError> {
    parse_static_key(&read(path)?).ok_or_else(|| KeyFileError::StaticKey {
        path: path.to_owned(),
    })
}

/// Loads a node identity: private key and certificate, checked to belong
/// together and to chain to `ca` at `now_unix`.
pub fn load_identity(
    key: &Path,
    cert: &Path,
    ca: &CaPublicKey,
    now_unix: u64,
) -> Result<LocalIdentity, KeyFileError> {
    let private = load_static_key(key)?;
    let certificate = load_certificate(cert)?;
    certificate
        .verify(ca, now_unix)
        .map_err(|error| KeyFileError::Cert {
            path: cert.to_owned(),
            error,
        })?;
    if certificate.body.static_key != public_key(&private) {
        return Err(KeyFileError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(LocalIdentity::new(private, certificate))
}

/// The X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

/// The text form of a static private key.
pub fn static_key_to_text(private: &[u8; 32]) -> String {
    armour::encode(STATIC_KEY_LABEL, private)
}

/// Parses [`static_key_to_text`]'s output.
pub fn parse_static_key(text: &str) -> Option<[u8; 32]> {
    armour::decode_key(STATIC_KEY_LABEL, text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_key_text_round_trips_and_rejects_garbage() {
        let k = [0x5au8; 32];
        assert_eq!(parse_static_key(&static_key_to_text(&k)), Some(k));
        assert_eq!(parse_static_key("nope"), None);
        let short = static_key_to_text(&k).replace("5a5a", "");
        assert_eq!(parse_static_key(&short), None);
        let bad = static_key_to_text(&k).replacen("5a", "zz", 1);
        assert_eq!(parse_static_key(&bad), None);
    }

    #[test]
    fn public_key_matches_snow() {
        let kp = proto::handshake::StaticKeypair::generate().unwrap();
        assert_eq!(public_key(&kp.private), kp.public);
    }
}
