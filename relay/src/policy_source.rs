//! Loading the policy file: parse, validate, compile, and remember what was
//! loaded so a reload only swaps when the file really changed and a bad file
//! never replaces a good policy.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use proto::policy::{CompiledPolicy, PolicyFile};

/// Why a policy file could not be used. The relay keeps its last good
/// policy when a reload fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy file {path} rejected: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        error: proto::policy::PolicyError,
    },
}

/// A policy file on disk and what was last loaded from it.
#[derive(Debug)]
pub struct PolicySource {
    path: PathBuf,
    loaded_mtime: Option<SystemTime>,
    epoch: u64,
}

/// A freshly compiled policy with facts for the log.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled table, ready to swap in.
    pub policy: CompiledPolicy,
    /// Counts by the reload: 1 for the first load.
    pub epoch: u64,
    /// Parse + validate + compile time.
    pub took: std::time::Duration,
}

impl PolicySource {
    /// A source for `path`; nothing is read yet.
    pub fn new(path: &Path) -> PolicySource {
        PolicySource {
            path: path.to_owned(),
            loaded_mtime: None,
            epoch: 0,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and compiles the file.
    pub fn load(&mut self) -> Result<Loaded, PolicyLoadError> {
        let start = Instant::now();
        let mtime = self.mtime();
        let text = std::fs::read_to_string(&self.path).map_err(|error| PolicyLoadError::Read {
            path: self.path.clone(),
            error,
        })?;
        let invalid = |error| PolicyLoadError::Invalid {
            path: self.path.clone(),
            error,
        };
        let file = PolicyFile::from_toml_str(&text).map_err(invalid)?;
        let policy = CompiledPolicy::compile(&file).map_err(invalid)?;
        self.loaded_mtime = mtime;
        self.epoch += 1;
        Ok(Loaded {
            policy,
            epoch: self.epoch,
            took: start.elapsed(),
        })
    }

    /// Whether the file's modification time differs from the one last
    /// loaded (or last rejected: a bad file is not re-read until it changes
    /// again).
    pub fn changed(&self) -> bool {
        self.mtime() != self.loaded_mtime
    }

    /// Remembers the current modification time without loading, so a file
    /// that failed to load is not retried until it changes.
    pub fn mark_seen(&mut self) {
        self.loaded_mtime = self.mtime();
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }
}
