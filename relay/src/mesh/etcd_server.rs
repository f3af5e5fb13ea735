//! A throwaway single-node etcd for tests: spawned on free loopback ports
//! with a data directory of its own, killed (and the directory removed) on
//! drop. It can be stopped and started again on the same ports and data,
//! to test what the mesh does while etcd is away.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::etcd::Etcd;

/// Why a test etcd could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdServerError {
    /// The `etcd` binary is not installed.
    #[error("the etcd binary was not found ({0}); run scripts/setup.sh (installs Debian's etcd-server), or set ZTNA_SKIP_ETCD=1 to skip the etcd tests")]
    Missing(std::io::Error),
    /// Something else went wrong starting it.
    #[error("cannot start etcd: {0}")]
    Io(#[from] std::io::Error),
    /// It did not answer in time.
    #[error("etcd did not answer on {endpoint} within {waited:?}; its log is {log}")]
    NotReady {
        /// The client URL.
        endpoint: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: String,
    },
}

/// A running (or stopped) test etcd.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Whether `ZTNA_SKIP_ETCD=1` asks tests to skip etcd.
pub fn skip_requested() -> bool {
    std::env::var_os("ZTNA_SKIP_ETCD").is_some_and(|v| v == "1")
}

/// A server for a test: `None` (after saying so) when `ZTNA_SKIP_ETCD=1`
/// asks to skip; a server that cannot start fails the test with the reason
/// (e.g. run scripts/setup.sh).
pub fn for_test() -> Option<EtcdServer> {
    if skip_requested() {
        eprintln!("ZTNA_SKIP_ETCD=1: this etcd test is NOT run");
        return None;
    }
    Some(EtcdServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// How long a start may take before it is called failed.
const READY: Duration = Duration::from_secs(20);

impl EtcdServer {
    /// Starts etcd on two free loopback ports and waits until it answers.
    pub fn start() -> Result<EtcdServer, EtcdServerError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ztna-etcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut server = EtcdServer {
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (data kept).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data and waits until it
    /// answers (a no-op if it runs).
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        if self.child.is_some() {
            return Ok(());
        }
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => EtcdServerError::Missing(e),
                _ => EtcdServerError::Io(e),
            })?;
        self.child = Some(child);
        let probe = Etcd::new(&client)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .with_timeout(Duration::from_millis(500));
        let start = Instant::now();
        while start.elapsed() < READY {
            if probe.range_prefix("/").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(EtcdServerError::NotReady {
            endpoint: client,
            waited: READY,
            log: log_path.display().to_string(),
        })
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
