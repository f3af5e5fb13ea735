//! Certificate renewal without a restart: a node's key and certificate
//! files, watched for a new certificate of the same identity.
//!
//! A certificate is renewed by issuing a new one for the same static key
//! (`relay ca issue --force` over the old file) before the old one ends.
//! The running relay or agent notices the new content within a poll,
//! checks it as it checks a certificate at start (signed by its CA, valid
//! now, bound to its private key) and, further, that it is the *same*
//! identity: the same id, role and static key. Only the certificate's
//! other fields (name, groups, validity) may change. The node then answers
//! or starts new handshakes with it; sessions already up carry on, so
//! traffic never waits for a restart or a handshake.
//!
//! A changed id, role or key is a different node, which peers pin and
//! routes name: that needs a restart, and the watch refuses it, saying so.
//! A file caught half-written fails to parse and is tried again once its
//! content changes; a certificate whose validity has not started yet is
//! tried again at every poll until it starts.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use proto::handshake::LocalIdentity;
use proto::identity::{CaPublicKey, CertError, Role};

use crate::keys::{load_identity, KeyFileError};

/// Why a changed key or certificate file was not taken. The node keeps the
/// identity it has.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The files cannot be used at all (unreadable, malformed, another CA,
    /// expired, or a key that does not match the certificate).
    #[error("certificate renewal: {0}; keeping the current certificate")]
    Files(#[from] KeyFileError),
    /// The new certificate names another node.
    #[error("certificate renewal: {path} now holds {what} ({new}, was {old}), which makes it another node; a renewal must keep the id, role and static key (`relay ca issue` with the same --id, --role and key file); restart to change identity; keeping the current certificate")]
    OtherIdentity {
        /// The certificate file.
        path: PathBuf,
        /// Which field changed.
        what: &'static str,
        /// Its value before.
        old: String,
        /// Its value in the file.
        new: String,
    },
}

impl RenewError {
    /// Whether the same files may become acceptable without changing: a
    /// certificate issued ahead of its validity.
    fn may_become_valid(&self) -> bool {
        matches!(
            self,
            RenewError::Files(KeyFileError::Cert {
                error: CertError::NotYetValid { .. },
                ..
            })
        )
    }
}

/// What [`IdentityFiles::poll`] found.
#[derive(Debug)]
#[must_use]
pub enum Renewal {
    /// Nothing new: the files hold the certificate in use, or content
    /// already refused.
    Unchanged,
    /// A renewed certificate for the same identity: use it from now on.
    Renewed(LocalIdentity),
    /// The files changed but cannot be used. `first` is set the first time
    /// given contents are refused, so callers log each once.
    Refused {
        /// What is wrong.
        error: RenewError,
        /// First report of this problem.
        first: bool,
    },
}

/// A node's key and certificate files and the identity last taken from
/// them.
#[derive(Debug)]
pub struct IdentityFiles {
    key: PathBuf,
    cert: PathBuf,
    ca: CaPublicKey,
    id: u32,
    role: Role,
    static_key: [u8; 32],
    cert_bytes: Vec<u8>,
    /// Hash of the files' contents last looked at; `None` forces a look.
    seen: Option<u64>,
    /// Hash of the contents last refused (`Some(None)`: unreadable), so
    /// each is reported once.
    reported: Option<Option<u64>>,
    /// Reused by every poll, so looking at unchanged files allocates
    /// nothing (the poll runs in the agent's packet loop).
    scratch: Vec<u8>,
}

impl IdentityFiles {
    /// Watches `key` and `cert` for renewals of `current` (the identity
    /// loaded from them at start) under `ca`.
    pub fn new(key: &Path, cert: &Path, ca: CaPublicKey, current: &LocalIdentity) -> Self {
        let body = &current.certificate().body;
        let mut files = IdentityFiles {
            key: key.to_owned(),
            cert: cert.to_owned(),
            ca,
            id: body.id,
            role: body.role,
            static_key: body.static_key,
            cert_bytes: current.certificate().to_bytes(),
            seen: None,
            reported: None,
            scratch: Vec::with_capacity(SCRATCH),
        };
        files.seen = contents_hash(&files.key, &files.cert, &mut files.scratch);
        files
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// Looks at the files: two small reads and a hash when nothing
    /// changed, so it can run every second.
    pub fn poll(&mut self, now_unix: u64) -> Renewal {
        let hash = contents_hash(&self.key, &self.cert, &mut self.scratch);
        if hash.is_some() && hash == self.seen {
            return Renewal::Unchanged;
        }
        match self.check(now_unix) {
            Ok(None) => {
                self.seen = hash;
                self.reported = None;
                Renewal::Unchanged
            }
            Ok(Some(identity)) => {
                self.seen = hash;
                self.reported = None;
                self.cert_bytes = identity.certificate().to_bytes();
                Renewal::Renewed(identity)
            }
            Err(error) => {
                // Content that cannot change its verdict is not looked at
                // again; a certificate not valid *yet* is.
                if !error.may_become_valid() {
                    self.seen = hash;
                }
                let first = self.reported != Some(hash);
                self.reported = Some(hash);
                Renewal::Refused { error, first }
            }
        }
    }

    fn check(&self, now_unix: u64) -> Result<Option<LocalIdentity>, RenewError> {
        let identity = load_identity(&self.key, &self.cert, &self.ca, now_unix)?;
        let body = &identity.certificate().body;
        let other = |what, old: String, new: String| RenewError::OtherIdentity {
            path: self.cert.clone(),
            what,
            old,
            new,
        };
        if body.id != self.id {
            return Err(other("id", self.id.to_string(), body.id.to_string()));
        }
        if body.role != self.role {
            return Err(other(
                "role",
                format!("{:?}", self.role),
                format!("{:?}", body.role),
            ));
        }
        if body.static_key != self.static_key {
            return Err(other(
                "static key",
                proto::identity::to_hex(&self.static_key),
                proto::identity::to_hex(&body.static_key),
            ));
        }
        if identity.certificate().to_bytes() == self.cert_bytes {
            return Ok(None);
        }
        Ok(Some(identity))
    }
}

/// Room for a key or certificate file (both are well under 1 KiB); a
/// larger file grows the buffer once.
const SCRATCH: usize = 4096;

/// A hash of both files' contents; `None` when either cannot be read.
/// Reads into `scratch`, which keeps its capacity.
fn contents_hash(key: &Path, cert: &Path, scratch: &mut Vec<u8>) -> Option<u64> {
    use std::io::Read;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [key, cert] {
        scratch.clear();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(scratch))
            .ok()?;
        h.write_usize(scratch.len());
        h.write(scratch);
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::static_key_to_text;
    use proto::handshake::StaticKeypair;
    use proto::identity::{CaKeypair, Certificate, CertificateBody};

    const NOW: u64 = 1_800_000_000;

    /// A directory of its own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("relay-renewal-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Files {
        dir: Dir,
        ca: CaKeypair,
        kp: StaticKeypair,
    }

    impl Files {
        fn new() -> Files {
            let dir = Dir::new();
            let kp = StaticKeypair::generate().unwrap();
            std::fs::write(dir.path().join("node.key"), static_key_to_text(&kp.private)).unwrap();
            Files {
                dir,
                ca: CaKeypair::from_seed(&[3; 32]),
                kp,
            }
        }
        fn key(&self) -> PathBuf {
            self.dir.path().join("node.key")
        }
        fn cert(&self) -> PathBuf {
            self.dir.path().join("node.cert")
        }
        fn issue(&self, edit: impl FnOnce(&mut CertificateBody)) -> Certificate {
            let mut body = CertificateBody {
                id: 7,
                name: "alice".into(),
                role: Role::User,
                groups: vec!["eng".into()],
                static_key: self.kp.public,
                not_before: NOW - 60,
                not_after: NOW + 3600,
            };
            edit(&mut body);
            let cert = self.ca.issue(body).unwrap();
            std::fs::write(self.cert(), cert.to_text()).unwrap();
            cert
        }
        fn watch(&self) -> IdentityFiles {
            let current = load_identity(&self.key(), &self.cert(), &self.ca.public(), NOW).unwrap();
            IdentityFiles::new(&self.key(), &self.cert(), self.ca.public(), &current)
        }
    }

    fn refused(r: Renewal) -> (String, bool) {
        match r {
            Renewal::Refused { error, first } => (error.to_string(), first),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_renewed_certificate_is_taken_once() {
        let f = Files::new();
        f.issue(|_| {});
        let mut w = f.watch();
        assert!(matches!(w.poll(NOW), Renewal::Unchanged));
        // Same id, role and key; new validity, name and groups.
        let new = f.issue(|b| {
            b.not_after = NOW + 90 * 86_400;
            b.name = "alice (renewed)".into();
            b.groups.push("ops".into());
        });
        match w.poll(NOW) {
            Renewal::Renewed(id) => assert_eq!(id.certificate(), &new),
            other => panic!("expected the renewal, got {other:?}"),
        }
        assert!(matches!(w.poll(NOW), Renewal::Unchanged));
    }

    #[test]
    fn rewriting_the_same_certificate_is_no_renewal() {
        let f = Files::new();
        let cert = f.issue(|_| {});
        let mut w = f.watch();
        // Same certificate, other bytes on disk (a trailing newline).
        std::fs::write(f.cert(), format!("{}\n\n", cert.to_text())).unwrap();
        assert!(matches!(w.poll(NOW), Renewal::Unchanged));
    }

    #[test]
    fn another_identity_is_refused_and_reported_once() {
        for (what, edit) in [
            (
                "id",
                Box::new(|b: &mut CertificateBody| b.id = 8) as Box<dyn Fn(&mut _)>,
            ),
            (
                "role",
                Box::new(|b: &mut CertificateBody| b.role = Role::Connector),
            ),
        ] {
            let f = Files::new();
            f.issue(|_| {});
            let mut w = f.watch();
            f.issue(|b| edit(b));
            let (msg, first) = refused(w.poll(NOW));
            assert!(first);
            assert!(msg.contains(&format!("holds {what}")), "{msg}");
            assert!(msg.contains("restart to change identity"), "{msg}");
            // The same content is not looked at (or reported) again.
            assert!(matches!(w.poll(NOW), Renewal::Unchanged));
        }
    }

    #[test]
    fn a_new_key_is_refused() {
        let f = Files::new();
        f.issue(|_| {});
        let mut w = f.watch();
        let kp = StaticKeypair::generate().unwrap();
        std::fs::write(f.key(), static_key_to_text(&kp.private)).unwrap();
        f.issue(|b| b.static_key = kp.public);
        let (msg, _) = refused(w.poll(NOW));
        assert!(msg.contains("holds static key"), "{msg}");
    }

    #[test]
    fn bad_files_are_refused_until_fixed() {
        let f = Files::new();
        let good = f.issue(|_| {});
        let mut w = f.watch();
        // Half-written.
        let text = good.to_text();
        std::fs::write(f.cert(), &text[..text.len() / 2]).unwrap();
        let (msg, first) = refused(w.poll(NOW));
        assert!(
            first && msg.contains("keeping the current certificate"),
            "{msg}"
        );
        // Another CA.
        let other = CaKeypair::from_seed(&[4; 32]);
        let mut body = good.body.clone();
        body.name = "forged".into();
        std::fs::write(f.cert(), other.issue(body).unwrap().to_text()).unwrap();
        let (_, first) = refused(w.poll(NOW));
        assert!(first);
        // Expired.
        f.issue(|b| b.not_after = NOW - 1);
        refused(w.poll(NOW));
        // Gone (e.g. between an unlink and a rename): reported once.
        std::fs::remove_file(f.cert()).unwrap();
        assert!(refused(w.poll(NOW)).1);
        assert!(!refused(w.poll(NOW)).1);
        // Fixed.
        f.issue(|b| b.not_after = NOW + 7200);
        assert!(matches!(w.poll(NOW), Renewal::Renewed(_)));
    }

    #[test]
    fn a_certificate_issued_ahead_is_taken_when_it_starts() {
        let f = Files::new();
        f.issue(|_| {});
        let mut w = f.watch();
        f.issue(|b| {
            b.not_before = NOW + 100;
            b.not_after = NOW + 7200;
        });
        let (_, first) = refused(w.poll(NOW));
        assert!(first);
        // Reported once, looked at again each poll.
        let (_, first) = refused(w.poll(NOW + 50));
        assert!(!first);
        assert!(matches!(w.poll(NOW + 100), Renewal::Renewed(_)));
    }
}
