//! A connector's own copy of the access policy, reloaded when the file's
//! *content* changes (a rewrite within the same second as the last load,
//! which an mtime check can miss, is still seen). A bad file is reported
//! and the last good policy stays.

use std::path::{Path, PathBuf};

use proto::policy::{CompiledPolicy, PolicyFile};

/// Why the policy file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyWatchError {
    /// Unreadable.
    #[error("cannot read policy {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Invalid.
    #[error("policy {path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the entry).
        error: proto::policy::PolicyError,
    },
}

/// The watched file and the policy last loaded from it.
#[derive(Debug)]
pub struct PolicyWatch {
    path: PathBuf,
    digest: blake3::Hash,
    policy: CompiledPolicy,
    /// The file's bytes, read again on every check into the same buffer:
    /// a check of an unchanged file allocates nothing.
    text: Vec<u8>,
}

impl PolicyWatch {
    /// Loads `path`; fails if it cannot be used.
    pub fn load(path: &Path) -> Result<PolicyWatch, PolicyWatchError> {
        let mut text = Vec::new();
        let policy = compile(path, read(path, &mut text)?)?;
        Ok(PolicyWatch {
            path: path.to_owned(),
            digest: blake3::hash(&text),
            policy,
            text,
        })
    }

    /// The live policy.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// Re-reads the file; `Ok(true)` when a changed, valid policy is now
    /// live, `Ok(false)` when the content is unchanged, `Err` (old policy
    /// kept) when the new content is unreadable or invalid. A bad content is
    /// reported once, not on every check.
    pub fn refresh(&mut self) -> Result<bool, PolicyWatchError> {
        let text = read(&self.path, &mut self.text)?;
        let digest = blake3::hash(text.as_bytes());
        if digest == self.digest {
            return Ok(false);
        }
        self.digest = digest;
        self.policy = compile(&self.path, text)?;
        Ok(true)
    }
}

/// Reads `path` into `buf` (replacing its content, keeping its
/// allocation); fails as `std::fs::read_to_string` does, on unreadable
/// files and on text that is not UTF-8.
fn read<'a>(path: &Path, buf: &'a mut Vec<u8>) -> Result<&'a str, PolicyWatchError> {
    use std::io::Read;
    let failed = |error| PolicyWatchError::Read {
        path: path.to_owned(),
        error,
    };
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .map_err(failed)?;
    std::str::from_utf8(buf).map_err(|e| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is not UTF-8 text: {e}"),
        ))
    })
}

fn compile(path: &Path, text: &str) -> Result<CompiledPolicy, PolicyWatchError> {
    let invalid = |error| PolicyWatchError::Invalid {
        path: path.to_owned(),
        error,
    };
    let file = PolicyFile::from_toml_str(text).map_err(invalid)?;
    CompiledPolicy::compile(&file).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ids::{ServiceId, UserId};

    #[test]
    fn reloads_on_content_not_time_and_keeps_the_last_good() {
        let dir = std::env::temp_dir().join(format!("ztna-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        let open = proto::testkit::policy_file(4, 8).to_toml_string();
        std::fs::write(&path, &open).unwrap();
        let mut w = PolicyWatch::load(&path).unwrap();
        assert!(w.policy().allowed(UserId(1), ServiceId(1)));
        assert!(!w.refresh().unwrap(), "same content is no change");
        // Same length, same second, different content: seen.
        let fewer = proto::testkit::policy_file(4, 4).to_toml_string();
        std::fs::write(&path, &fewer).unwrap();
        assert!(w.refresh().unwrap());
        assert!(w.policy().service(ServiceId(5)).is_none());
        // A broken file is an error and the last good policy stays.
        std::fs::write(&path, "not = [valid").unwrap();
        assert!(w.refresh().is_err());
        assert!(w.policy().allowed(UserId(1), ServiceId(1)));
        assert!(!w.refresh().unwrap(), "reported once, not on every check");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
