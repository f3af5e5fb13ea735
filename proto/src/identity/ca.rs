//! The certificate authority: its keys and issuing certificates.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};

use super::armour::{self, to_hex};
use super::certificate::{check_fields, signed_message};
use super::{CertError, Certificate, CertificateBody, SIGNATURE_LEN};

const CA_SECRET_LABEL: &str = "ZTNA CA SECRET KEY";
const CA_PUBLIC_LABEL: &str = "ZTNA CA PUBLIC KEY";

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
        let signature = self.signing.sign(&signed_message(&body)).to_bytes();
        Ok(Certificate { body, signature })
    }

    /// The secret seed in armored hex text, for the CA's offline file.
    pub fn to_text(&self) -> String {
        armour::encode(CA_SECRET_LABEL, &self.secret_bytes())
    }

    /// Parses [`CaKeypair::to_text`] output.
    pub fn from_text(text: &str) -> Result<CaKeypair, CertError> {
        Ok(CaKeypair::from_seed(&armour::decode_key(
            CA_SECRET_LABEL,
            text,
        )?))
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

    /// Checks `signature` over `msg`. Strict verification rejects
    /// malleable signatures and small-order keys, so one certificate has
    /// exactly one valid encoding.
    pub(super) fn verifies(&self, msg: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(msg, &signature).is_ok()
    }

    /// Armored hex text, for node configuration files.
    pub fn to_text(&self) -> String {
        armour::encode(CA_PUBLIC_LABEL, &self.to_bytes())
    }

    /// Parses [`CaPublicKey::to_text`] output.
    pub fn from_text(text: &str) -> Result<CaPublicKey, CertError> {
        CaPublicKey::from_bytes(&armour::decode_key(CA_PUBLIC_LABEL, text)?)
    }
}

impl fmt::Debug for CaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPublicKey({})", to_hex(&self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fixture::{body, ca, NOW};
    use crate::identity::{MAX_CERT_LEN, MAX_GROUPS, MAX_GROUP_LEN, MAX_NAME_LEN};
    use rand::SeedableRng;

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
    fn wrong_ca_fails() {
        let cert = ca().issue(body()).unwrap();
        let other = CaKeypair::from_seed(&[8; 32]);
        let err = cert.verify(&other.public(), NOW).unwrap_err();
        assert_eq!(err, CertError::BadSignature("alice".into()));
        assert!(err.to_string().contains("not signed by this CA"));
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
}
