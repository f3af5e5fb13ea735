//! Integration tests live in `tests/`; this library holds their shared
//! plumbing: a user and a connector attached to a relay world, and bounded
//! receive helpers (no sleeps: every wait is a socket timeout with a
//! deadline).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use loadgen::world::{World, WorldConfig};
use proto::control::{ControlMessage, Directory, DirectoryAssembler};
use proto::ids::{ServiceId, UserId};
use proto::link::HopLink;
use proto::wire::{Frame, Kind, DATA_OVERHEAD, HEADER_LEN};
use relay::io::Backend;

/// The backends every test runs on. `ZTNA_SKIP_URING=1` leaves io_uring out
/// (for hosts whose seccomp profile blocks it); otherwise a relay that
/// cannot start io_uring fails the uring case rather than skipping it.
pub fn backends() -> Vec<Backend> {
    if std::env::var_os("ZTNA_SKIP_URING").is_some_and(|v| v == "1") {
        eprintln!("ZTNA_SKIP_URING=1: the uring backend is NOT tested");
        vec![Backend::Mmsg]
    } else {
        vec![Backend::Uring, Backend::Mmsg]
    }
}

/// A relay with one user (user 1) and the connector attached.
#[derive(Debug)]
pub struct Rig {
    /// The relay and its policy.
    pub world: World,
    /// The user's socket.
    pub user_socket: UdpSocket,
    /// The user's hop link.
    pub user: HopLink,
    /// The connector's socket.
    pub connector_socket: UdpSocket,
    /// The connector's hop link.
    pub connector: HopLink,
    /// The connector's X25519 static key (in its certificate).
    pub connector_key: [u8; 32],
}

/// The user attached by [`Rig::start`].
pub const USER: UserId = UserId(1);
/// A service the policy allows `USER` to reach.
pub const ALLOWED: ServiceId = ServiceId(1);
/// A service the policy denies (ids divisible by 4 are denied).
pub const DENIED: ServiceId = ServiceId(4);

impl Rig {
    /// Starts a relay on `io` and attaches user 1 and the connector.
    pub fn start(io: Backend) -> anyhow::Result<Rig> {
        Rig::start_with(&WorldConfig {
            io,
            ..WorldConfig::default()
        })
    }

    /// [`Rig::start`] with a relay set up as `cfg` says (one relay).
    pub fn start_with(cfg: &WorldConfig) -> anyhow::Result<Rig> {
        let io = cfg.io;
        let world = World::start(cfg)?;
        assert_eq!(world.relay.backend(), io, "relay fell back from {io}");
        let user_socket = UdpSocket::bind("127.0.0.1:0")?;
        let connector_socket = UdpSocket::bind("127.0.0.1:0")?;
        let user = world.connect(&user_socket, &world.user_identity(USER.0)?)?;
        let connector_identity = world.connector_identity()?;
        let connector = world.connect(&connector_socket, &connector_identity)?;
        world.await_routes(ALLOWED, &[USER])?;
        for s in [&user_socket, &connector_socket] {
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        Ok(Rig {
            world,
            user_socket,
            user,
            connector_socket,
            connector,
            connector_key: *connector_identity.public_key(),
        })
    }

    /// A data frame from the user to `service` with `payload` as its
    /// end-to-end part (opaque to the relay), tagged with the next counter.
    pub fn user_frame(&mut self, service: ServiceId, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; proto::wire::HEADER_LEN + payload.len()];
        f[proto::wire::HEADER_LEN..].copy_from_slice(payload);
        self.user.write_header(&mut f, Kind::DataUp, USER, service);
        f
    }

    /// Sends a frame from the user's socket to the relay.
    pub fn send_from_user(&self, frame: &[u8]) {
        self.user_socket
            .send_to(frame, self.world.relay_addr())
            .expect("loopback send");
    }

    /// Receives frames at the connector until `want` arrived or `within`
    /// passed; each is checked by the connector's hop link.
    pub fn connector_receive(&mut self, want: usize, within: Duration) -> Vec<Vec<u8>> {
        receive(&self.connector_socket, &mut self.connector, want, within)
    }

    /// The same at the user.
    pub fn user_receive(&mut self, want: usize, within: Duration) -> Vec<Vec<u8>> {
        receive(&self.user_socket, &mut self.user, want, within)
    }

    /// The relay's datapath counters (summed over workers), as last
    /// published (workers publish every 100 ms).
    pub fn counters(&self) -> proto::datapath::Counters {
        self.world.relay.totals().datapath
    }

    /// Waits (bounded) until `pred` holds for the published counters.
    pub fn await_counters(
        &self,
        what: &str,
        pred: impl Fn(&proto::datapath::Counters) -> bool,
    ) -> proto::datapath::Counters {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.counters();
            if pred(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {c:?}"
            );
            std::thread::yield_now();
        }
    }
}

/// Receives frames on `link` until `want` arrived or `within` passed; each
/// must carry a valid hop tag.
pub fn receive(
    socket: &UdpSocket,
    link: &mut HopLink,
    want: usize,
    within: Duration,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < want && Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let frame = buf[..n].to_vec();
            link.accept(&frame)
                .expect("relay output carries a valid hop tag");
            got.push(frame);
        }
    }
    got
}

/// Sends `msg` in a `Control` frame on `link` from `socket` to the relay at
/// `relay`, with `id` (the user's id, or the connector's) as user id.
pub fn send_control(
    socket: &UdpSocket,
    link: &mut HopLink,
    relay: SocketAddr,
    id: u32,
    msg: &ControlMessage,
) {
    let mut frame = vec![0u8; HEADER_LEN];
    msg.emit(&mut frame);
    link.write_header(&mut frame, Kind::Control, UserId(id), ServiceId(0));
    socket.send_to(&frame, relay).expect("loopback send");
}

/// Receives frames on `link` until `want` control messages arrived or
/// `within` passed; every frame must carry a valid hop tag, be a `Control`
/// frame and parse.
pub fn receive_control(
    socket: &UdpSocket,
    link: &mut HopLink,
    want: usize,
    within: Duration,
) -> Vec<ControlMessage> {
    receive(socket, link, want, within)
        .iter()
        .map(|f| {
            let frame = Frame::new_checked(&f[..]).expect("well-formed frame");
            assert_eq!(frame.kind(), Kind::Control, "not a control frame");
            assert_eq!(frame.service(), ServiceId(0));
            ControlMessage::parse(frame.body()).expect("relay sends valid control messages")
        })
        .collect()
}

/// Receives control messages on `link` until a whole directory arrived
/// (`None` when `within` passed first). Anything but directory parts fails.
pub fn receive_directory(
    socket: &UdpSocket,
    link: &mut HopLink,
    within: Duration,
) -> Option<Directory> {
    let deadline = Instant::now() + within;
    let mut assembler = DirectoryAssembler::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        for msg in receive_control(socket, link, 1, left) {
            let ControlMessage::DirectoryPart {
                digest,
                part,
                parts,
                mode,
                services,
            } = msg
            else {
                panic!("expected a directory part, got {msg:?}");
            };
            if let Some(d) = assembler.push(digest, part, parts, mode, services) {
                return Some(d);
            }
        }
    }
}

/// A payload of `len` bytes (at least the e2e overhead) with a recognisable
/// pattern.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len.max(DATA_OVERHEAD - proto::wire::HEADER_LEN))
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The ids of a frame.
pub fn ids(frame: &[u8]) -> (UserId, ServiceId) {
    let f = Frame::new_checked(frame).expect("well-formed frame");
    (f.user(), f.service())
}

/// A relay of a mesh for tests: one worker on a free loopback port, the
/// synthetic policy (`proto::testkit::policy_file(4, 8)`) in its own file
/// under `dir`, registered in `etcd` as `relay_id` with a 2 s lease.
pub fn start_mesh_relay(
    pki: &loadgen::pki::Pki,
    dir: &loadgen::world::ScratchDir,
    etcd: &relay::mesh::etcd_server::EtcdServer,
    cert_id: u32,
    relay_id: &str,
) -> relay::Relay {
    start_mesh_relay_at(pki, dir, &etcd.endpoint(), cert_id, relay_id)
}

/// [`start_mesh_relay`] with etcd at the client URL `etcd` (e.g. through a
/// [`TcpPipe`]).
pub fn start_mesh_relay_at(
    pki: &loadgen::pki::Pki,
    dir: &loadgen::world::ScratchDir,
    etcd: &str,
    cert_id: u32,
    relay_id: &str,
) -> relay::Relay {
    MeshRelay::new(relay_id, cert_id).start(pki, dir, etcd)
}

/// A test mesh relay's settings beyond [`start_mesh_relay`]'s.
#[derive(Debug, Clone)]
pub struct MeshRelay<'a> {
    /// Its relay id (and certificate name).
    pub relay_id: &'a str,
    /// Its certificate id.
    pub cert_id: u32,
    /// Worker threads.
    pub workers: usize,
    /// The only relays it links with directly (`None`: all).
    pub peers: Option<&'a [&'a str]>,
}

impl<'a> MeshRelay<'a> {
    /// One worker, links with every relay.
    pub fn new(relay_id: &'a str, cert_id: u32) -> MeshRelay<'a> {
        MeshRelay {
            relay_id,
            cert_id,
            workers: 1,
            peers: None,
        }
    }

    /// Starts it with etcd at the client URL `etcd`.
    pub fn start(
        &self,
        pki: &loadgen::pki::Pki,
        dir: &loadgen::world::ScratchDir,
        etcd: &str,
    ) -> relay::Relay {
        let id = |s: &str| relay::mesh::registry::RelayId::new(s).unwrap();
        let policy = dir.path().join(format!("{}.toml", self.relay_id));
        std::fs::write(&policy, proto::testkit::policy_file(4, 8).to_toml_string()).unwrap();
        relay::Relay::start(relay::RelayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: self.workers,
            first_core: 0,
            pin: false,
            io: Backend::Mmsg,
            io_config: relay::io::IoConfig::default(),
            mode: proto::datapath::Mode::Ztna,
            identity: pki
                .node(
                    self.cert_id,
                    self.relay_id,
                    proto::identity::Role::Relay,
                    &[],
                )
                .unwrap(),
            renewal: None,
            ca: pki.ca(),
            policy,
            mesh: Some(relay::MeshOptions {
                etcd: etcd.to_owned(),
                relay_id: id(self.relay_id),
                region: "test".into(),
                advertise: None,
                ttl: Duration::from_secs(2),
                peers: self.peers.map(|p| p.iter().map(|s| id(s)).collect()),
            }),
            audit: relay::audit::AuditConfig::default(),
        })
        .unwrap()
    }
}

/// A TCP forwarder on a loopback port to `target` that the test can cut
/// (every connection closed, new ones refused) and mend: a network
/// partition between one process and a server.
#[derive(Debug)]
pub struct TcpPipe {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpPipe {
    /// Starts forwarding connections to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<TcpPipe> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, st) = (Arc::clone(&open), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut live: Vec<std::net::TcpStream> = Vec::new();
            while !st.load(Ordering::Relaxed) {
                if !o.load(Ordering::Relaxed) {
                    for c in live.drain(..) {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                }
                match listener.accept() {
                    Ok((client, _)) if o.load(Ordering::Relaxed) => {
                        let Ok(server) = std::net::TcpStream::connect(target) else {
                            continue;
                        };
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (mut from, mut to) =
                                (from.try_clone().unwrap(), to.try_clone().unwrap());
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                        live.push(client);
                        live.push(server);
                    }
                    Ok((refused, _)) => drop(refused),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(TcpPipe {
            addr,
            open,
            stop,
            thread: Some(thread),
        })
    }

    /// The `http://` URL of the pipe's end.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones (`false`), or lets them
    /// through again (`true`).
    pub fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for TcpPipe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A synthetic node attached to `relay`: its identity (a certificate from
/// `pki`: id, name, role, groups), a loopback socket and a completed hop
/// handshake.
pub fn attach(
    pki: &loadgen::pki::Pki,
    relay: &relay::Relay,
    (id, name, role, groups): (u32, &str, proto::identity::Role, &[&str]),
) -> (proto::handshake::LocalIdentity, UdpSocket, HopLink) {
    let identity = pki.node(id, name, role, groups).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let link = loadgen::link::handshake(
        &socket,
        relay.local_addr(),
        relay.public_key(),
        &identity,
        pki.ca(),
        proto::ids::ReceiverIndex(1),
    )
    .unwrap();
    (identity, socket, link)
}

/// Polls `cond` (every 5 ms) until it holds; fails naming `what` after
/// `within`. Returns how long it took.
pub fn await_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// A one-relay load-generator world sized for `plan`, in `ztna` mode on the
/// `mmsg` backend.
pub fn plan_world(plan: &loadgen::scenario::Plan) -> World {
    World::start(&WorldConfig {
        users: plan.users,
        services: plan.services,
        mode: proto::datapath::Mode::Ztna,
        io: Backend::Mmsg,
        ..WorldConfig::default()
    })
    .unwrap()
}

/// The sum over every sample of the metric `name` (its full name, e.g.
/// `ztna_frames_total`) in the OpenMetrics text `text` whose labels contain
/// `with` (`""`: all). A sample that does not parse fails the test.
pub fn metric_sum(text: &str, name: &str, with: &str) -> u64 {
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && l.contains(with)
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not a sample: {l}"))
        })
        .sum()
}

/// `GET /metrics` from `addr`: the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> String {
    let page = relay::http::get(addr, "/metrics").expect("metrics endpoint answers");
    assert_eq!(page.code, 200, "{page:?}");
    page.body
}
