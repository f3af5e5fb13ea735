//! Network namespaces for tests that need a TUN device or their own
//! network: created with `ip netns add`, entered per thread with `setns`,
//! deleted on drop. A test that cannot make one fails with the reason,
//! unless `ZTNA_SKIP_NETNS=1` asks to skip it (and it says so).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;

/// A network namespace that lives as long as this value.
pub struct Netns {
    pub name: String,
}

/// `ip netns add` of two namespaces at once can race on the first mount of
/// /run/netns; one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

impl Netns {
    /// Creates `ztna-<tag>-<pid>` with its loopback up.
    pub fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("ztna-{tag}-{}", std::process::id());
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip netns add`: {e} (install iproute2)"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}; these tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Netns { name };
        let up = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])
            .status()
            .map_err(|e| format!("cannot bring lo up: {e}"))?;
        if !up.success() {
            return Err(format!("cannot bring lo up in {}", ns.name));
        }
        Ok(ns)
    }

    /// The namespace, or `None` (after saying so) when it cannot be made
    /// and `ZTNA_SKIP_NETNS=1`; otherwise a panic that says why.
    pub fn for_test(tag: &str) -> Option<Netns> {
        match Netns::create(tag) {
            Ok(ns) => Some(ns),
            Err(reason) if std::env::var("ZTNA_SKIP_NETNS").as_deref() == Ok("1") => {
                eprintln!("SKIPPED {tag}: {reason} (ZTNA_SKIP_NETNS=1)");
                None
            }
            Err(reason) => panic!("{reason}; set ZTNA_SKIP_NETNS=1 to skip the namespace tests"),
        }
    }

    /// Runs `f` on a thread inside the namespace: every socket, device
    /// and thread it makes belongs to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                let path = format!("/var/run/netns/{}", self.name);
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns(2) with an fd we hold open; it moves only
                // this thread (and threads it spawns) into the namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            });
            match thread.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
        {
            Ok(s) if s.success() => {}
            other => eprintln!("could not delete netns {}: {other:?}", self.name),
        }
    }
}
