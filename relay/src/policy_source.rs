//! Loading the policy file: parse, validate, compile, and remember what was
//! loaded so a reload only swaps when the file really changed and a bad file
//! never replaces a good policy.
//!
//! "Changed" is decided by content, cheaply: the file's modification time,
//! size and inode first; when those match but the modification time is
//! recent enough that a rewrite in the same clock tick could hide behind
//! it ([`RACY`], as git treats "racily clean" files), the content's hash
//! too. A same-second rewrite of the same length is therefore never
//! missed, and an old, unchanged file is never re-read.
//!
//! A change is reported only once the file has held still for [`SETTLE`]:
//! a writer that is not atomic (an editor saving in place truncates the
//! file, then writes it in pieces) would otherwise be read half-way, and a
//! truncated policy that still parses is a valid policy that closes the
//! sessions of everyone past the cut (docs/security.md §8). Writing a new
//! file and renaming it over the old one stays the safe way; this makes
//! the common unsafe way very unlikely to hurt.

use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A file modified less than this long ago has its content hashed by
/// [`PolicySource::changed_at`]: its modification time alone cannot show a
/// rewrite within the same timestamp granularity.
pub const RACY: Duration = Duration::from_secs(3);

/// How long a changed file must keep the same size, modification time and
/// inode before [`PolicySource::changed_at`] reports the change. Adds this
/// much (plus up to one control-loop turn) to revocation latency.
pub const SETTLE: Duration = Duration::from_millis(10);

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
    seen: Option<Seen>,
    /// A change seen and not yet reported: the stamp it had and since
    /// when ([`SETTLE`]).
    pending: Option<(Option<Stamp>, Instant)>,
    epoch: u64,
    /// Reused for the content checks of [`PolicySource::changed_at`], so a
    /// poll allocates nothing once it has held the file.
    scratch: Vec<u8>,
}

/// What identifies the content last loaded (or rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    stamp: Stamp,
    digest: u64,
}

fn digest(bytes: &[u8]) -> u64 {
    // Change detection, not security: the std hasher is enough.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
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
            seen: None,
            pending: None,
            epoch: 0,
            scratch: Vec::new(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and compiles the file.
    pub fn load(&mut self) -> Result<Loaded, PolicyLoadError> {
        let start = Instant::now();
        let stamp = self.stamp();
        let bytes = std::fs::read(&self.path).map_err(|error| PolicyLoadError::Read {
            path: self.path.clone(),
            error,
        })?;
        let seen = stamp.map(|stamp| Seen {
            stamp,
            digest: digest(&bytes),
        });
        let text = String::from_utf8(bytes).map_err(|e| PolicyLoadError::Read {
            path: self.path.clone(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let invalid = |error| PolicyLoadError::Invalid {
            path: self.path.clone(),
            error,
        };
        let file = PolicyFile::from_toml_str(&text).map_err(invalid)?;
        let policy = CompiledPolicy::compile(&file).map_err(invalid)?;
        self.seen = seen;
        self.pending = None;
        self.epoch += 1;
        Ok(Loaded {
            policy,
            epoch: self.epoch,
            took: start.elapsed(),
        })
    }

    /// Whether the file's content differs from the one last loaded (or
    /// last rejected: a bad file is not re-read until it changes again),
    /// and has kept its size, modification time and inode for [`SETTLE`]
    /// up to `now`. The first call that sees a change starts that clock
    /// and says `false`; [`settling`](Self::settling) then says when to
    /// call again. See the module docs for how a change is decided
    /// cheaply.
    pub fn changed_at(&mut self, now: Instant) -> bool {
        let stamp = self.stamp();
        if !self.differs(stamp) {
            self.pending = None;
            return false;
        }
        match self.pending {
            Some((pending, since)) if pending == stamp => {
                now.saturating_duration_since(since) >= SETTLE
            }
            _ => {
                self.pending = Some((stamp, now));
                false
            }
        }
    }

    /// Whether a change was seen and waits for [`SETTLE`]: the caller
    /// should call [`changed_at`](Self::changed_at) again that soon rather
    /// than at its usual poll.
    pub fn settling(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the file at `now` (its stamp) differs from what was last
    /// loaded or rejected.
    fn differs(&mut self, now: Option<Stamp>) -> bool {
        let Some(seen) = self.seen else {
            // Never loaded: changed once the file exists.
            return now.is_some();
        };
        let Some(now) = now else {
            // The file is gone: the next load says why.
            return true;
        };
        if now != seen.stamp {
            return true;
        }
        let recent = now
            .mtime
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RACY);
        recent && self.read_scratch() && digest(&self.scratch) != seen.digest
    }

    /// Reads the file into `scratch` (keeping its allocation); `false` if
    /// it cannot be read.
    fn read_scratch(&mut self) -> bool {
        use std::io::Read;
        self.scratch.clear();
        std::fs::File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut self.scratch))
            .is_ok()
    }

    /// Remembers the current content without loading, so a file that
    /// failed to load is not retried until it changes.
    pub fn mark_seen(&mut self) {
        self.pending = None;
        let stamp = self.stamp();
        self.seen = match (stamp, std::fs::read(&self.path)) {
            (Some(stamp), Ok(bytes)) => Some(Seen {
                stamp,
                digest: digest(&bytes),
            }),
            _ => None,
        };
    }

    fn stamp(&self) -> Option<Stamp> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            mtime: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ids::ServiceId;

    fn policy(service: &str) -> String {
        format!(
            "[[users]]\nid = 1\nname = \"alice\"\n\n[[connectors]]\nid = 5\nname = \"c\"\n\n[[services]]\nid = 1\nname = \"{service}\"\nprotocol = \"tcp\"\ntarget = \"127.0.0.1:1\"\nconnectors = [\"c\"]\n\n[[rules]]\nname = \"r\"\nusers = [\"alice\"]\nservices = [\"{service}\"]\n"
        )
    }

    #[test]
    fn a_same_second_same_length_rewrite_is_seen_and_an_unchanged_file_is_not() {
        let dir = std::env::temp_dir().join(format!("policy-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy("web1")).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut source = PolicySource::new(&path);
        // A change is reported once it has held still for SETTLE.
        let mut t = Instant::now();
        let mut changed = |source: &mut PolicySource| {
            let first = source.changed_at(t);
            t += SETTLE;
            let settled = source.changed_at(t);
            assert!(!first || settled, "a change reported at once, then not");
            settled
        };
        assert!(changed(&mut source), "never loaded");
        source.load().unwrap();
        assert!(!changed(&mut source), "just loaded");
        // Rewritten in place: same length, same modification time (as
        // within one timestamp tick), same inode.
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.write_all(policy("web2").as_bytes()).unwrap();
            f.set_modified(mtime).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert!(changed(&mut source), "a same-tick rewrite was missed");
        source.load().unwrap();
        assert!(!changed(&mut source));
        // A bad file is rejected once and not retried until it changes.
        std::fs::write(&path, "not a policy").unwrap();
        assert!(changed(&mut source));
        assert!(source.load().is_err());
        source.mark_seen();
        assert!(!changed(&mut source));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_being_written_is_loaded_only_once_it_holds_still() {
        let dir = std::env::temp_dir().join(format!("policy-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy("web1")).unwrap();
        let mut source = PolicySource::new(&path);
        source.load().unwrap();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // An editor saving in place: the file is truncated (an empty
        // policy parses), then written in two pieces.
        let whole = policy("web2");
        let (head, tail) = whole.split_at(whole.len() / 2);
        std::fs::write(&path, "").unwrap();
        assert!(!source.changed_at(ms(0)), "truncated: not yet");
        assert!(source.settling());
        std::fs::write(&path, head).unwrap();
        assert!(!source.changed_at(ms(9)), "half written: not yet");
        // The first half held still for less than SETTLE when the rest
        // came: its clock starts over.
        assert!(!source.changed_at(ms(12)), "half written: not yet");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(tail.as_bytes()).unwrap();
        }
        assert!(!source.changed_at(ms(20)), "just completed: not yet");
        assert!(!source.changed_at(ms(29)));
        assert!(source.changed_at(ms(30)), "complete and still for SETTLE");
        let loaded = source.load().unwrap();
        let name = loaded.policy.service(ServiceId(1)).map(|s| s.name.as_str());
        assert_eq!(name, Some("web2"), "the whole file");
        assert!(!source.settling());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
