//! A throwaway PKI for synthetic nodes: one CA, and certificates with real
//! X25519 keys for the relay, users and connectors, valid for a day.

use std::path::Path;

use proto::handshake::{LocalIdentity, StaticKeypair};
use proto::identity::{CaKeypair, CaPublicKey, CertificateBody, Role};

/// The CA and a way to make nodes under it.
#[derive(Debug)]
pub struct Pki {
    ca: CaKeypair,
    now_unix: u64,
}

impl Pki {
    /// A fresh CA; certificates are valid from an hour ago to a day ahead of
    /// `now_unix`.
    pub fn new(now_unix: u64) -> Pki {
        Pki {
            ca: CaKeypair::generate(&mut rand::rngs::OsRng),
            now_unix,
        }
    }

    /// The trust anchor.
    pub fn ca(&self) -> CaPublicKey {
        self.ca.public()
    }

    /// The CA's signing key.
    pub fn ca_keypair(&self) -> &CaKeypair {
        &self.ca
    }

    /// A node with a new static key and a certificate for `role`.
    pub fn node(
        &self,
        id: u32,
        name: &str,
        role: Role,
        groups: &[&str],
    ) -> anyhow::Result<LocalIdentity> {
        let kp = StaticKeypair::generate()?;
        let cert = self.ca.issue(CertificateBody {
            id,
            name: name.to_owned(),
            role,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            static_key: kp.public,
            not_before: self.now_unix.saturating_sub(3600),
            not_after: self.now_unix + 86_400,
        })?;
        Ok(LocalIdentity::new(kp.private, cert))
    }

    /// Writes `ca.pub`, `NAME.cert` and `NAME.key` for `node` into `dir`,
    /// the files a relay process reads.
    pub fn write_node(&self, dir: &Path, name: &str, node: &LocalIdentity) -> std::io::Result<()> {
        std::fs::write(dir.join("ca.pub"), self.ca.public().to_text())?;
        std::fs::write(
            dir.join(format!("{name}.cert")),
            node.certificate().to_text(),
        )?;
        std::fs::write(
            dir.join(format!("{name}.key")),
            relay::keys::static_key_to_text(node.private_key()),
        )
    }
}
