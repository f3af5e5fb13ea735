//! A world for agent tests: a throwaway CA, a policy file, an in-process
//! relay on loopback, real `agent` processes (client and connector) with
//! config files, and real target services (threads with kernel sockets).
#![allow(dead_code)]

pub mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::status::Status;
use loadgen::pki::Pki;
use loadgen::world::ScratchDir;
use proto::datapath::Mode;
use proto::handshake::LocalIdentity;
use proto::identity::Role;
use relay::io::{Backend, IoConfig};
use relay::{Relay, RelayOptions};

pub const ALICE: u32 = 1001;
pub const BOB: u32 = 1002;
pub const CONNECTOR: u32 = 501;
/// The twin connector (`conn-b`) that serves every service too when
/// [`World::twin`] is set.
pub const CONNECTOR_B: u32 = 502;

/// The test world.
pub struct World {
    pub dir: ScratchDir,
    pub pki: Pki,
    pub relay: Option<Relay>,
    pub relay_addr: SocketAddr,
    /// The relay's key and certificate (replace it before `start_relay`
    /// to test a relay the agents must refuse).
    pub relay_identity: LocalIdentity,
    pub mode: Mode,
    /// Agents run inside this namespace (`ip netns exec`) when set.
    pub netns: Option<String>,
    /// `[tunnel] ping_after_ms` of agents configured from now on (their
    /// `dead_after_ms` is five times it).
    pub ping_after_ms: u64,
    /// `[tunnel] idle_close_s` of agents configured from now on; the
    /// agent's default when `None`.
    pub idle_close_s: Option<u64>,
    /// The policy names a second connector, `conn-b`, for every service.
    pub twin: bool,
}

/// Targets the policy's services point at.
pub struct Targets {
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    pub udp_echo: SocketAddr,
    /// More services: (name, "tcp" or "udp", target), ids 20, 21, ...
    pub extra: Vec<(&'static str, &'static str, SocketAddr)>,
}

impl Targets {
    /// Echo, hash sink and UDP echo servers.
    pub fn basic() -> Targets {
        Targets {
            echo: tcp_echo(),
            sink: tcp_hash_sink(),
            udp_echo: udp_echo(),
            extra: Vec::new(),
        }
    }
}

impl World {
    pub fn start(mode: Mode) -> World {
        let dir = ScratchDir::new("agent-test").unwrap();
        let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
        let relay_identity = pki.node(1, "relay-1", Role::Relay, &[]).unwrap();
        let w = World {
            dir,
            pki,
            relay: None,
            relay_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay_identity,
            mode,
            netns: None,
            ping_after_ms: 300,
            idle_close_s: None,
            twin: false,
        };
        std::fs::write(w.dir.path().join("ca.pub"), w.pki.ca().to_text()).unwrap();
        w
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the policy: alice (group eng) may reach every service; bob
    /// is in no group and has no grant.
    pub fn write_policy(&self, t: &Targets, alice_allowed: bool) {
        self.write_policy_mode(t, alice_allowed, None);
    }

    /// [`World::write_policy`] with group eng's connection `mode` (`"off"`,
    /// `"on-demand"`, `"always-on"`, `"lockdown"`), unset when `None`.
    pub fn write_policy_mode(&self, t: &Targets, alice_allowed: bool, mode: Option<&str>) {
        let mode = mode
            .map(|m| format!("mode = \"{m}\"\n"))
            .unwrap_or_default();
        let rules = if alice_allowed {
            "[[rules]]\nname = \"eng-all\"\ngroups = [\"eng\"]\nservices = [\"*\"]\n"
        } else {
            "[[rules]]\nname = \"nobody\"\nusers = [\"bob\"]\nservices = [\"unused\"]\n"
        };
        let (conns, twin) = if self.twin {
            (
                "[\"conn-a\", \"conn-b\"]",
                format!("[[connectors]]\nid = {CONNECTOR_B}\nname = \"conn-b\"\n\n"),
            )
        } else {
            ("[\"conn-a\"]", String::new())
        };
        let http: String = t
            .extra
            .iter()
            .enumerate()
            .map(|(i, (name, proto, a))| format!("[[services]]\nid = {}\nname = \"{name}\"\nprotocol = \"{proto}\"\ntarget = \"{a}\"\nconnectors = {conns}\n\n", 20 + i))
            .collect();
        let text = format!(
            "[[groups]]\nname = \"eng\"\n{mode}\n\
             [[users]]\nid = {ALICE}\nname = \"alice\"\ngroups = [\"eng\"]\n\n\
             [[users]]\nid = {BOB}\nname = \"bob\"\n\n\
             [[connectors]]\nid = {CONNECTOR}\nname = \"conn-a\"\n\n{twin}\
             [[services]]\nid = 10\nname = \"echo\"\nprotocol = \"tcp\"\ntarget = \"{}\"\nconnectors = {conns}\n\n\
             [[services]]\nid = 11\nname = \"bulk\"\nprotocol = \"tcp\"\ntarget = \"{}\"\nconnectors = {conns}\n\n\
             [[services]]\nid = 12\nname = \"uecho\"\nprotocol = \"udp\"\ntarget = \"{}\"\nconnectors = {conns}\n\n\
             [[services]]\nid = 14\nname = \"unused\"\nprotocol = \"tcp\"\ntarget = \"127.0.0.1:9\"\nconnectors = {conns}\n\n\
             {http}\n{rules}",
            t.echo, t.sink, t.udp_echo
        );
        // Write then rename, so a reader never sees half a file.
        let tmp = self.path("policy.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path("policy.toml")).unwrap();
    }

    /// Starts (or restarts) the relay on `relay_addr` (port 0 the first
    /// time).
    pub fn start_relay(&mut self) {
        let options = self.relay_options(self.relay_addr, self.relay_identity.clone(), None);
        let relay = Relay::start(options).expect("relay starts");
        self.relay_addr = relay.local_addr();
        self.relay = Some(relay);
    }

    /// Starts another relay in the mesh at `etcd` (its own key, id
    /// `relay_id`, on a free loopback port) and returns it with its
    /// identity; `start_relay` relays join the same mesh when
    /// `self.mesh_etcd` is set.
    pub fn start_mesh_relay(
        &self,
        relay_id: &str,
        cert_id: u32,
        etcd: &str,
    ) -> (Relay, LocalIdentity) {
        self.start_mesh_relay_linked(relay_id, cert_id, etcd, None)
    }

    /// A mesh relay holding direct links only with `peers` (`None`: with
    /// every relay in etcd).
    pub fn start_mesh_relay_linked(
        &self,
        relay_id: &str,
        cert_id: u32,
        etcd: &str,
        peers: Option<&[&str]>,
    ) -> (Relay, LocalIdentity) {
        let identity = self.pki.node(cert_id, relay_id, Role::Relay, &[]).unwrap();
        let relay = Relay::start(self.relay_options(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity.clone(),
            Some(relay::MeshOptions {
                etcd: etcd.to_owned(),
                relay_id: relay::mesh::registry::RelayId::new(relay_id).unwrap(),
                region: "test".into(),
                advertise: None,
                ttl: Duration::from_secs(2),
                peers: peers.map(|p| {
                    p.iter()
                        .map(|id| relay::mesh::registry::RelayId::new(*id).unwrap())
                        .collect()
                }),
            }),
        ))
        .expect("mesh relay starts");
        (relay, identity)
    }

    /// What every test relay runs with: one unpinned `mmsg` worker, this
    /// world's mode, CA and policy file.
    pub fn relay_options(
        &self,
        listen: SocketAddr,
        identity: LocalIdentity,
        mesh: Option<relay::MeshOptions>,
    ) -> RelayOptions {
        RelayOptions {
            listen,
            workers: 1,
            first_core: 0,
            pin: false,
            io: Backend::Mmsg,
            io_config: IoConfig::default(),
            mode: self.mode,
            identity,
            renewal: None,
            ca: self.pki.ca(),
            policy: self.path("policy.toml"),
            mesh,
            audit: relay::audit::AuditConfig::default(),
        }
    }

    /// Points the agents configured from now on at `relay`.
    pub fn use_relay(&mut self, relay: &Relay, identity: &LocalIdentity) {
        self.relay_addr = relay.local_addr();
        self.relay_identity = identity.clone();
    }

    pub fn stop_relay(&mut self) {
        if let Some(r) = self.relay.take() {
            let report = r.stop();
            // A relay thread that panicked fails the test (unless it is
            // failing already: a second panic would abort).
            if !std::thread::panicking() {
                assert_eq!(report.failures, [], "relay threads panicked");
            }
        }
    }

    pub fn reload_relay_policy(&self) {
        if let Some(r) = &self.relay {
            r.reload_policy();
        }
    }

    fn relay_key_hex(&self) -> String {
        proto::identity::to_hex(self.relay_identity.public_key())
    }

    /// Writes identity files and a config for an agent; returns the
    /// config path and the status address.
    pub fn agent_config(
        &self,
        name: &str,
        id: u32,
        role: Role,
        groups: &[&str],
        body: &str,
    ) -> (PathBuf, SocketAddr) {
        let node = self.pki.node(id, name, role, groups).unwrap();
        self.write_agent_config(name, &node, body)
    }

    /// A node under the world's CA, valid from `not_before` to `not_after`
    /// (unix seconds).
    pub fn node_valid(
        &self,
        id: u32,
        name: &str,
        role: Role,
        not_before: u64,
        not_after: u64,
    ) -> LocalIdentity {
        let kp = proto::handshake::StaticKeypair::generate().unwrap();
        let cert = self
            .pki
            .ca_keypair()
            .issue(proto::identity::CertificateBody {
                id,
                name: name.to_owned(),
                role,
                groups: vec!["eng".to_owned()],
                static_key: kp.public,
                not_before,
                not_after,
            })
            .unwrap();
        LocalIdentity::new(kp.private, cert)
    }

    /// Writes `node`'s key and certificate files and a config for it
    /// (`body` after the common tables); returns the config path and the
    /// status address.
    pub fn write_agent_config(
        &self,
        name: &str,
        node: &LocalIdentity,
        body: &str,
    ) -> (PathBuf, SocketAddr) {
        // Not `Pki::write_node`: it rewrites ca.pub, which a running agent
        // may be reading.
        std::fs::write(
            self.path(&format!("{name}.cert")),
            node.certificate().to_text(),
        )
        .unwrap();
        std::fs::write(
            self.path(&format!("{name}.key")),
            relay::keys::static_key_to_text(node.private_key()),
        )
        .unwrap();
        let status = free_tcp_port();
        let idle = self
            .idle_close_s
            .map(|s| format!("idle_close_s = {s}\n"))
            .unwrap_or_default();
        let text = format!(
            "[relay]\naddress = \"{}\"\npublic_key = \"{}\"\n\n\
             [identity]\nca = \"ca.pub\"\ncert = \"{name}.cert\"\nkey = \"{name}.key\"\n\n\
             [status]\nlisten = \"{status}\"\n\n\
             [tunnel]\nping_after_ms = {}\ndead_after_ms = {}\n{idle}\n{body}",
            self.relay_addr,
            self.relay_key_hex(),
            self.ping_after_ms,
            self.ping_after_ms * 5,
        );
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        (path, status)
    }

    pub fn connector(&self) -> AgentProcess {
        let (cfg, status) = self.connector_config();
        self.spawn(&cfg, status, "conn-a")
    }

    /// The twin connector `conn-b` (see [`World::twin`]).
    pub fn twin_connector(&self) -> AgentProcess {
        let (cfg, status) = self.agent_config(
            "conn-b",
            CONNECTOR_B,
            Role::Connector,
            &[],
            "[connector]\npolicy = \"policy.toml\"\n",
        );
        self.spawn(&cfg, status, "conn-b")
    }

    /// The connector's identity files and config (config path, status
    /// address).
    pub fn connector_config(&self) -> (PathBuf, SocketAddr) {
        self.agent_config(
            "conn-a",
            CONNECTOR,
            Role::Connector,
            &[],
            "[connector]\npolicy = \"policy.toml\"\n",
        )
    }

    fn spawn(&self, cfg: &Path, status: SocketAddr, name: &str) -> AgentProcess {
        AgentProcess::spawn(cfg, status, self.dir.path(), name, self.netns.as_deref())
    }

    /// A tun-mode client (run it in a namespace).
    pub fn tun_client(&self, name: &str, id: u32, groups: &[&str], offload: bool) -> AgentProcess {
        let body = format!(
            "[client]\nmode = \"tun\"\n[client.tun]\nname = \"ztna0\"\noffload = {offload}\n"
        );
        let (cfg, status) = self.agent_config(name, id, Role::User, groups, &body);
        self.spawn(&cfg, status, name)
    }

    /// A proxy-mode client for user `id` with listeners `(service, addr,
    /// proto)`.
    pub fn client(
        &self,
        name: &str,
        id: u32,
        groups: &[&str],
        listen: &[(&str, SocketAddr, &str)],
    ) -> AgentProcess {
        let (cfg, status) = self.client_config(name, id, groups, listen);
        self.spawn(&cfg, status, name)
    }

    /// A proxy-mode client's identity files and config (config path,
    /// status address).
    pub fn client_config(
        &self,
        name: &str,
        id: u32,
        groups: &[&str],
        listen: &[(&str, SocketAddr, &str)],
    ) -> (PathBuf, SocketAddr) {
        let mut body = String::from("[client]\nmode = \"proxy\"\n");
        for (svc, addr, proto) in listen {
            body.push_str(&format!(
                "[[client.listen]]\nservice = \"{svc}\"\nlisten = \"{addr}\"\nprotocol = \"{proto}\"\n"
            ));
        }
        self.agent_config(name, id, Role::User, groups, &body)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_relay();
    }
}

/// A running `agent` process, killed on drop; its log is kept in a file
/// and printed when a test fails.
pub struct AgentProcess {
    pub child: Child,
    pub status: SocketAddr,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn spawn(
        config: &Path,
        status: SocketAddr,
        dir: &Path,
        name: &str,
        netns: Option<&str>,
    ) -> AgentProcess {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_agent")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_agent")),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,agent=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("agent binary runs");
        AgentProcess { child, status, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Option<Status> {
        agent::status::fetch(self.status).ok()
    }

    /// Polls the status endpoint until `pred` holds (bounded).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        await_status(
            self.status,
            what,
            timeout,
            pred,
            || None,
            || format!("log:\n{}", self.log_text()),
        )
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Runs the `agent` binary with `args` to completion (bounded: a run
/// that does not end within 20 s is killed and fails the test).
pub fn agent_cli(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "agent {args:?} did not end within 20 s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// An agent running in this process: `agent::start::run` on its own
/// thread, stopped and joined on drop.
pub struct InProcessAgent {
    pub name: String,
    pub status: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessAgent {
    /// Loads `config` and runs the agent on a thread named `name`, which
    /// first calls `on_thread` (e.g. to mark itself for an allocation
    /// counter).
    pub fn start(
        config: &Path,
        status: SocketAddr,
        name: &str,
        on_thread: impl FnOnce() + Send + 'static,
    ) -> InProcessAgent {
        let cfg = agent::config::AgentConfig::load(config).expect("agent config loads");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn({
                let stop = stop.clone();
                move || {
                    on_thread();
                    agent::start::run(cfg, stop)
                }
            })
            .expect("agent thread starts");
        InProcessAgent {
            name: name.to_owned(),
            status,
            stop,
            thread: Some(thread),
        }
    }

    pub fn status(&self) -> Option<Status> {
        agent::status::fetch(self.status).ok()
    }

    /// Polls the status endpoint until `pred` holds (bounded); fails at
    /// once if the agent's thread ended.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let gone = || {
            self.thread
                .as_ref()
                .is_some_and(|t| t.is_finished())
                .then(|| format!("{} stopped", self.name))
        };
        await_status(self.status, what, timeout, pred, gone, || self.name.clone())
    }
}

/// Polls the status endpoint at `addr` until `pred` holds, at most
/// `timeout`. `gone` says why waiting is pointless (the agent ended);
/// `context` is added to a timeout's message (e.g. the agent's log).
pub fn await_status(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Status) -> bool,
    gone: impl Fn() -> Option<String>,
    context: impl Fn() -> String,
) -> Status {
    let deadline = Instant::now() + timeout;
    loop {
        let status = agent::status::fetch(addr).ok();
        if let Some(s) = &status {
            if pred(s) {
                return status.unwrap_or_default();
            }
        }
        if let Some(why) = gone() {
            panic!("waiting for {what}: {why}");
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last status: {status:#?}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("{}: {e:#}", self.name),
                Err(_) => eprintln!("{}: thread panicked", self.name),
            }
        }
    }
}

pub fn free_tcp_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn free_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// A TCP echo server; runs until the process ends.
pub fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A TCP sink: reads each connection to EOF and answers with the
/// BLAKE3 hash of what it read (32 bytes) and its length (u64 BE).
pub fn tcp_hash_sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut h = blake3::Hasher::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => {
                            h.update(&buf[..k]);
                            n += k as u64;
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(h.finalize().as_bytes());
                let _ = s.write_all(&n.to_be_bytes());
            });
        }
    });
    addr
}

/// A UDP echo server.
pub fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Deterministic pseudo-random bytes (xorshift), for bulk transfers.
pub fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Sends `total` bytes through `addr` to the hash sink; returns (sent
/// hash, received hash, received length).
pub fn bulk_transfer(
    addr: SocketAddr,
    total: u64,
    seed: u64,
    abort: Option<Arc<AtomicBool>>,
) -> std::io::Result<([u8; 32], [u8; 32], u64)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut h = blake3::Hasher::new();
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = total;
    while left > 0 {
        if abort.as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) {
            break;
        }
        let k = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..k], &mut state);
        s.write_all(&buf[..k])?;
        h.update(&buf[..k]);
        left -= k as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = [0u8; 40];
    s.read_exact(&mut answer)?;
    let mut got = [0u8; 32];
    got.copy_from_slice(&answer[..32]);
    let n = u64::from_be_bytes(answer[32..].try_into().unwrap());
    Ok((*h.finalize().as_bytes(), got, n))
}

/// Connects and retries while the listener refuses or resets early (the
/// agent's session may still be coming up), bounded.
pub fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// A child process killed on drop (servers such as iperf3 or python's
/// http.server).
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `tool` is installed; if not, the test fails with how to get it
/// (scripts/setup.sh installs it), unless `ZTNA_SKIP_TOOLS=1`.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("ZTNA_SKIP_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {tool} is not installed (ZTNA_SKIP_TOOLS=1)");
        return false;
    }
    panic!("{tool} is not installed; run scripts/setup.sh (or set ZTNA_SKIP_TOOLS=1 to skip)");
}

/// Waits until something accepts TCP connections on `addr` (bounded).
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An iperf3 server on `addr`.
pub fn iperf3_server(addr: SocketAddr) -> Server {
    let child = Command::new("iperf3")
        .args([
            "-s",
            "-B",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 runs");
    let s = Server(child);
    wait_listening(addr, "iperf3 -s");
    s
}

/// Runs an iperf3 client; returns its JSON report.
pub fn iperf3_client(host: &str, port: u16, args: &[&str]) -> serde_json::Value {
    // The server takes one test at a time and notices the end of the last
    // one only when its control connection closes, which through the
    // tunnel can trail the client's exit: "busy" is retried, boundedly.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = Command::new("iperf3")
            .args(["-c", host, "-p", &port.to_string(), "-J"])
            .args(args)
            .output()
            .expect("iperf3 runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {text}"));
        let error = v.get("error").map(|e| e.to_string()).unwrap_or_default();
        if error.contains("busy") && attempt < 50 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert!(
            out.status.success() && error.is_empty(),
            "iperf3 {args:?} failed: {error}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return v;
    }
}

/// `python3 -m http.server` on `addr` serving `dir`.
pub fn http_server(addr: SocketAddr, dir: &Path) -> Server {
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &addr.port().to_string(),
            "--bind",
            &addr.ip().to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let s = Server(child);
    wait_listening(addr, "python3 -m http.server");
    s
}

/// `curl -s URL` → body.
pub fn curl(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-s", "-f", "--max-time", "20", url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asks the agent's DNS responder for `name`'s A record.
pub fn resolve(name: &str) -> Option<std::net::Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    for _ in 0..10 {
        s.send_to(&q, "100.80.0.2:53").unwrap();
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let r = &buf[..n];
            let answers = u16::from_be_bytes([r[6], r[7]]);
            if answers == 0 {
                return None;
            }
            let a = &r[n - 4..];
            return Some(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        }
    }
    None
}
