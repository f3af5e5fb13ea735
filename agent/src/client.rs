//! The client role: a user's applications reach services through it.
//!
//! The relay tells the client, after the hop handshake, which services it
//! may reach, the static key of the connector serving each, and the
//! connection mode of the user's groups (its *directory*, see
//! `proto::control`). Per service the client keeps a `ServiceTunnel`: the
//! end-to-end sessions with that service's connector and a user-space
//! TCP/IP stack whose packets are the tunnel's payload.
//!
//! In `proxy` mode each `[[client.listen]]` entry is a local listener: a
//! TCP connection accepted there becomes a smoltcp connection to the
//! service's virtual address, a UDP datagram becomes a smoltcp datagram.
//! (`tun` mode, where the kernel makes the packets, is in
//! [`Client::new_tun`].)
//!
//! Connection modes: `off` refuses every connection; `on-demand` opens a
//! service's session at first use and closes it after `idle_close_s`
//! without connections; `always-on` and `lockdown` keep a session to
//! every service of the directory up.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Token};
use proto::control::{ConnectionMode, ControlMessage, Directory, DirectoryAssembler, ServiceEntry};
use proto::handshake::{E2eInitiator, LocalIdentity, Trust};
use proto::identity::{CaPublicKey, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::wire::{Frame, Kind};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::config::{ClientMode, ListenConfig, Transport, TunnelConfig};
use crate::e2e::{record_receiver, E2eSession, UNANSWERED_REKEY};
use crate::flow::{FlowStatus, TcpFlow};
use crate::netstack::{smol_now, Stack};
use crate::pool::Packet;
use crate::runtime::{header, unix_nanos, Ctx, Role as RuntimeRole};
use crate::status::{set_text, ErrorLog, ServiceStatus, Status, StatusBoard};

/// Unanswered end-to-end initiation: a new one after this long.
pub const E2E_RETRY: Duration = Duration::from_millis(1000);
/// Packets held for a service while its session is being set up.
pub const WAITING_MAX: usize = 256;
/// Packets gathered for one batched write into the TUN device.
pub const TUN_WRITE_BATCH: usize = 64;
/// A UDP flow through a listener without traffic this long is closed.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
const UDP_PACKETS: usize = 256;

/// The end-to-end sessions of one service, initiator side.
#[derive(Debug, Default)]
pub struct ClientSessions {
    pending: Option<(E2eInitiator, Instant)>,
    /// The session frames are sealed on.
    pub current: Option<E2eSession>,
    previous: Option<E2eSession>,
    /// Sessions established so far (the first and every new handshake).
    pub established: u64,
}

impl ClientSessions {
    /// The session owning receiver `index`.
    pub fn session_for(&mut self, index: ReceiverIndex) -> Option<&mut E2eSession> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.local_index() == index)
        {
            return self.current.as_mut();
        }
        self.previous.as_mut().filter(|s| s.local_index() == index)
    }

    /// Starts, retries or renews the handshake as the timers say; expired
    /// sessions are dropped. `index` hands out receiver indices.
    #[allow(clippy::too_many_arguments)]
    pub fn maintain(
        &mut self,
        ctx: &mut Ctx,
        identity: &LocalIdentity,
        ca: CaPublicKey,
        user: UserId,
        entry: &ServiceEntry,
        next_index: &mut u32,
        by_index: &mut HashMap<ReceiverIndex, ServiceId>,
        now: Instant,
    ) {
        if self.current.as_ref().is_some_and(|s| s.expired(now)) {
            if let Some(s) = self.current.take() {
                by_index.remove(&s.local_index());
            }
        }
        if self.previous.as_ref().is_some_and(|s| s.expired(now)) {
            if let Some(s) = self.previous.take() {
                by_index.remove(&s.local_index());
            }
        }
        let wanted = self
            .current
            .as_mut()
            .is_none_or(|s| s.should_rekey(now) || s.unanswered_for(now) >= UNANSWERED_REKEY);
        let due = self
            .pending
            .as_ref()
            .is_none_or(|(_, sent)| now.duration_since(*sent) >= E2E_RETRY);
        if !wanted || !due || !ctx.hop.is_up() {
            return;
        }
        *next_index = next_index.wrapping_add(2) | 1;
        let index = ReceiverIndex(*next_index);
        match E2eInitiator::new(
            identity,
            &entry.connector_key,
            Trust::new(ca, &[Role::Connector]),
            user,
            entry.id,
            index,
            unix_nanos(),
        ) {
            Ok((initiator, body)) => {
                ctx.send_body(Kind::E2eHandshakeUp, user, entry.id, &body);
                self.pending = Some((initiator, now));
            }
            Err(e) => {
                tracing::error!(service = entry.id.0, error = %e, "cannot start an end-to-end handshake")
            }
        }
    }

    /// Handles an `E2eHandshakeDown`; true when a new session is up.
    pub fn on_response(
        &mut self,
        frame: &[u8],
        by_index: &mut HashMap<ReceiverIndex, ServiceId>,
        now: Instant,
    ) -> Result<bool, proto::handshake::HandshakeError> {
        let (_, user, service) = header(frame);
        let Some((initiator, _)) = self.pending.as_mut() else {
            return Ok(false);
        };
        let body = &frame[proto::wire::HEADER_LEN..];
        let keys = initiator.handle_response(body, user, service, unix_nanos())?;
        self.pending = None;
        by_index.insert(keys.local_index, service);
        if let Some(old) = self.previous.take() {
            by_index.remove(&old.local_index());
        }
        self.previous = self.current.replace(E2eSession::new(keys, now));
        self.established += 1;
        Ok(true)
    }

    /// Forgets every session.
    pub fn clear(&mut self, by_index: &mut HashMap<ReceiverIndex, ServiceId>) {
        for s in [self.current.take(), self.previous.take()]
            .into_iter()
            .flatten()
        {
            by_index.remove(&s.local_index());
        }
        self.pending = None;
    }
}

/// A UDP flow: one application address on one listener.
#[derive(Debug)]
struct UdpApp {
    listener: Token,
    app: SocketAddr,
    handle: SocketHandle,
    last_used: Instant,
}

/// One service in use.
struct ServiceTunnel {
    entry: ServiceEntry,
    sessions: ClientSessions,
    /// The user-space stack (proxy mode); `None` in tun mode, where the
    /// kernel's stack makes the packets.
    stack: Option<Stack>,
    tcp: HashMap<Token, TcpFlow>,
    udp: Vec<UdpApp>,
    closing: Vec<SocketHandle>,
    waiting: VecDeque<Packet>,
    last_used: Instant,
    next_port: u16,
    bytes_in: u64,
    bytes_out: u64,
}

impl ServiceTunnel {
    fn flows(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    /// One turn of the loop for this service: runs the stack, pumps every
    /// flow, sends what the stack emitted (or holds it for the session).
    /// Returns how soon the stack wants another turn. Nothing here
    /// allocates per packet: the loop runs it for every service on every
    /// turn.
    fn poll(
        &mut self,
        ctx: &mut Ctx,
        user: UserId,
        listeners: &HashMap<Token, Listener>,
        by_token: &mut HashMap<Token, ServiceId>,
        now: Instant,
    ) -> Option<Duration> {
        if self.stack.is_none() {
            // tun mode: packets go out as they are read.
            flush_waiting(ctx, self, user);
            return None;
        }
        let smol = smol_now(ctx.epoch, now);
        // Sockets that finished before this turn; those finishing now
        // stay until the next one.
        let closing = self.closing.len();
        if let Some(stack) = self.stack.as_mut() {
            stack.poll(smol);
        }
        pump_tcp(ctx, self, by_token);
        let mut buf = std::mem::take(&mut ctx.scratch);
        pump_udp(self, listeners, now, &mut buf);
        ctx.scratch = buf;
        let stack = self.stack.as_mut()?;
        stack.poll(smol);
        for h in self.closing.drain(..closing) {
            stack.sockets.remove(h);
        }
        let id = self.entry.id;
        while let Some(p) = stack.dev.tx.pop_front() {
            match self.sessions.current.as_mut() {
                Some(s) => ctx.send_packet(s, Kind::DataUp, user, id, p),
                None if self.waiting.len() < WAITING_MAX => self.waiting.push_back(p),
                None => {
                    ctx.stats.send_dropped += 1;
                    ctx.pool.put(p.buf);
                }
            }
        }
        stack.poll_delay(smol)
    }

    fn port(&mut self) -> u16 {
        self.next_port = if self.next_port >= 65_000 {
            20_000
        } else {
            self.next_port + 1
        };
        self.next_port
    }
}

/// A local listener.
struct Listener {
    service: String,
    addr: SocketAddr,
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
}

/// tun mode: the device, the DNS responder's address, and which virtual
/// address is which service.
#[derive(Debug)]
pub struct TunPath {
    dev: crate::tun::TunDevice,
    batch: crate::tun::PacketBatch,
    dns: std::net::SocketAddrV4,
    by_ip: HashMap<std::net::Ipv4Addr, ServiceId>,
    /// Packets to addresses that are no service (or while `off`).
    pub unroutable: u64,
    /// Packets dropped in lockdown while the tunnel was down.
    pub blackholed: u64,
    /// Opened packets whose addresses do not fit their service.
    pub rejected: u64,
    /// Failed writes into the device.
    pub write_errors: u64,
    dns_out: Vec<u8>,
    /// Opened packets waiting to be written into the device.
    out: crate::tun::PacketBatch,
}

impl TunPath {
    /// Writes the packets waiting in `out`.
    fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        match self.dev.write_packets(&self.out) {
            Ok(n) if n == self.out.len() => {}
            Ok(n) => self.write_errors += (self.out.len() - n) as u64,
            Err(_) => self.write_errors += self.out.len() as u64,
        }
        self.out.clear();
    }
}

/// The client.
pub struct Client {
    identity: LocalIdentity,
    ca: CaPublicKey,
    user: UserId,
    name: String,
    mode: ClientMode,
    tunnel_cfg: TunnelConfig,
    conn_mode: ConnectionMode,
    directory: Option<Directory>,
    assembler: DirectoryAssembler,
    listeners: HashMap<Token, Listener>,
    tun_token: Option<Token>,
    tunnels: HashMap<ServiceId, ServiceTunnel>,
    by_index: HashMap<ReceiverIndex, ServiceId>,
    by_token: HashMap<Token, ServiceId>,
    next_index: u32,
    errors: ErrorLog,
    /// Virtual address of each service in the directory.
    ips: HashMap<ServiceId, std::net::Ipv4Addr>,
    tun: Option<TunPath>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user)
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A proxy-mode client with listeners bound from `listen`.
    pub fn new(
        identity: LocalIdentity,
        ca: CaPublicKey,
        listen: &[ListenConfig],
        tunnel_cfg: TunnelConfig,
        ctx: &mut Ctx,
    ) -> anyhow::Result<Client> {
        use anyhow::Context;
        let cert = identity.certificate().clone();
        let mut listeners = HashMap::new();
        for l in listen {
            let token = ctx.token();
            let transport = l.protocol.unwrap_or(Transport::Tcp);
            let mut listener = Listener {
                service: l.service.clone(),
                addr: l.listen,
                tcp: None,
                udp: None,
            };
            match transport {
                Transport::Tcp => {
                    let mut s = TcpListener::bind(l.listen).with_context(|| {
                        format!("cannot listen on {} for service '{}' (port taken? change [[client.listen]] listen)", l.listen, l.service)
                    })?;
                    ctx.registry.register(&mut s, token, Interest::READABLE)?;
                    listener.tcp = Some(s);
                }
                Transport::Udp => {
                    let mut s = UdpSocket::bind(l.listen).with_context(|| {
                        format!("cannot bind UDP {} for service '{}' (port taken? change [[client.listen]] listen)", l.listen, l.service)
                    })?;
                    ctx.registry.register(&mut s, token, Interest::READABLE)?;
                    listener.udp = Some(s);
                }
            }
            tracing::info!(service = %l.service, listen = %l.listen, ?transport, "listening");
            listeners.insert(token, listener);
        }
        Ok(Client {
            user: UserId(cert.body.id),
            name: cert.body.name.clone(),
            identity,
            ca,
            mode: ClientMode::Proxy,
            tunnel_cfg,
            conn_mode: ConnectionMode::default(),
            directory: None,
            assembler: DirectoryAssembler::default(),
            listeners,
            tun_token: None,
            tunnels: HashMap::new(),
            by_index: HashMap::new(),
            by_token: HashMap::new(),
            next_index: rand::random::<u32>() | 1,
            errors: ErrorLog::default(),
            ips: HashMap::new(),
            tun: None,
        })
    }

    /// A tun-mode client over an opened device; the DNS responder answers
    /// on `dns` (an address inside the device's prefix).
    pub fn new_tun(
        identity: LocalIdentity,
        ca: CaPublicKey,
        dev: crate::tun::TunDevice,
        dns: std::net::SocketAddrV4,
        tunnel_cfg: TunnelConfig,
        ctx: &mut Ctx,
    ) -> anyhow::Result<Client> {
        use std::os::fd::AsRawFd;
        let mut client = Client::new(identity, ca, &[], tunnel_cfg, ctx)?;
        let token = ctx.token();
        let fd = dev.as_raw_fd();
        ctx.registry
            .register(&mut mio::unix::SourceFd(&fd), token, Interest::READABLE)?;
        client.tun_token = Some(token);
        client.mode = ClientMode::Tun;
        client.tun = Some(TunPath {
            batch: dev.batch(256),
            out: dev.batch(TUN_WRITE_BATCH),
            dev,
            dns,
            by_ip: HashMap::new(),
            unroutable: 0,
            blackholed: 0,
            rejected: 0,
            write_errors: 0,
            dns_out: Vec::new(),
        });
        Ok(client)
    }

    /// The virtual address of a service.
    fn service_ip(&self, id: ServiceId) -> std::net::Ipv4Addr {
        self.ips
            .get(&id)
            .copied()
            .unwrap_or_else(|| crate::dns::service_address(id.0))
    }

    /// Reads what the TUN device has and sends each packet to its
    /// service's connector; answers DNS queries for service names.
    fn read_tun(&mut self, ctx: &mut Ctx, now: Instant) {
        loop {
            let Some(tun) = self.tun.as_mut() else { return };
            tun.batch.clear();
            match tun.dev.read_packets(&mut tun.batch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.errors
                        .push(format!("reading the TUN device failed: {e}"));
                    return;
                }
            }
            // Lent out while its packets are handled (which needs `self`);
            // the stand-in allocates nothing.
            let mut batch = std::mem::replace(&mut tun.batch, crate::tun::PacketBatch::empty());
            for packet in batch.iter() {
                self.tun_packet(ctx, packet, now);
            }
            batch.clear();
            if let Some(tun) = self.tun.as_mut() {
                tun.batch = batch;
            }
        }
    }

    fn tun_packet(&mut self, ctx: &mut Ctx, packet: &[u8], now: Instant) {
        let Some(dst) = crate::inner::ipv4_destination(packet) else {
            if let Some(t) = self.tun.as_mut() {
                t.unroutable += 1;
            }
            return;
        };
        let Some(tun) = self.tun.as_mut() else { return };
        if dst == *tun.dns.ip() {
            answer_dns(tun, packet, &self.ips, self.directory.as_ref());
            return;
        }
        let Some(id) = tun.by_ip.get(&dst).copied() else {
            tun.unroutable += 1;
            return;
        };
        if self.conn_mode == ConnectionMode::Off {
            tun.unroutable += 1;
            return;
        }
        if self.conn_mode == ConnectionMode::Lockdown && !ctx.hop.is_up() {
            // Lockdown: with the tunnel down, service traffic is dropped
            // here, never sent any other way (the route stays on the device).
            tun.blackholed += 1;
            return;
        }
        let user = self.user;
        let Some(t) = self.tunnel_by_id(id, ctx, now) else {
            return;
        };
        t.last_used = now;
        t.bytes_in += packet.len() as u64;
        let mut buf = ctx.pool.get();
        let end = crate::pool::HEADROOM + packet.len();
        if end + crate::pool::TAILROOM > buf.len() {
            ctx.pool.put(buf);
            return;
        }
        buf[crate::pool::HEADROOM..end].copy_from_slice(packet);
        let p = Packet {
            buf,
            start: crate::pool::HEADROOM,
            end,
        };
        match t.sessions.current.as_mut() {
            Some(s) if t.waiting.is_empty() => ctx.send_packet(s, Kind::DataUp, user, id, p),
            _ if t.waiting.len() < WAITING_MAX => t.waiting.push_back(p),
            _ => {
                ctx.stats.send_dropped += 1;
                ctx.pool.put(p.buf);
            }
        }
    }

    fn entry(&self, name: &str) -> Result<ServiceEntry, String> {
        let Some(dir) = &self.directory else {
            return Err(format!(
                "service '{name}': no directory from the relay yet (is the relay reachable?)"
            ));
        };
        dir.services
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| {
                format!("service '{name}' is not available to {}: the policy does not allow it, the name is wrong, or no connector serving it is online", self.name)
            })
    }

    fn tunnel(&mut self, entry: &ServiceEntry, ctx: &Ctx, now: Instant) -> &mut ServiceTunnel {
        let mtu = usize::from(self.tunnel_cfg.mtu);
        let tun = self.tun.is_some();
        self.tunnels
            .entry(entry.id)
            .or_insert_with(|| ServiceTunnel {
                entry: entry.clone(),
                sessions: ClientSessions::default(),
                stack: (!tun)
                    .then(|| Stack::client(ctx.pool.clone(), mtu, smol_now(ctx.epoch, now))),
                tcp: HashMap::new(),
                udp: Vec::new(),
                closing: Vec::new(),
                waiting: VecDeque::new(),
                last_used: now,
                next_port: 20_000 + rand::random::<u16>() % 40_000,
                bytes_in: 0,
                bytes_out: 0,
            })
    }

    /// The tunnel to service `id` of the directory, opened at first use;
    /// `None` when the directory has no such service. Looks the entry up
    /// without copying it unless the tunnel is new (the packet path calls
    /// this per packet).
    fn tunnel_by_id(
        &mut self,
        id: ServiceId,
        ctx: &Ctx,
        now: Instant,
    ) -> Option<&mut ServiceTunnel> {
        let entry = self.directory.as_ref()?.service(id)?;
        if !self.tunnels.contains_key(&id) {
            let entry = entry.clone();
            self.tunnel(&entry, ctx, now);
        }
        self.tunnels.get_mut(&id)
    }

    /// The id and port of the directory's service named `name`, or why it
    /// cannot be reached (the first of `entry`'s answers, without copying
    /// the entry: the packet path calls this per datagram).
    fn service_named(&self, name: &str) -> Result<(ServiceId, u16), String> {
        if self.conn_mode == ConnectionMode::Off {
            return Err(String::new());
        }
        let found = self
            .directory
            .as_ref()
            .and_then(|d| d.services.iter().find(|e| e.name == name));
        match found {
            Some(e) => Ok((e.id, e.port)),
            None => self.entry(name).map(|e| (e.id, e.port)),
        }
    }

    fn refuse(&mut self, why: String) -> bool {
        if self.conn_mode == ConnectionMode::Off {
            self.errors.push(format!(
                "connection refused: the connection mode of {}'s groups is 'off'",
                self.name
            ));
            return true;
        }
        self.errors.push(format!("connection refused: {why}"));
        true
    }

    fn accept_tcp(&mut self, ctx: &mut Ctx, token: Token, now: Instant) {
        loop {
            let Some(listener) = self.listeners.get(&token) else {
                return;
            };
            let Some(l) = listener.tcp.as_ref() else {
                return;
            };
            let (stream, peer) = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    return;
                }
            };
            let service = listener.service.clone();
            let entry = match (self.conn_mode, self.entry(&service)) {
                (ConnectionMode::Off, _) => Err(String::new()),
                (_, r) => r,
            };
            let entry = match entry {
                Ok(e) => e,
                Err(why) => {
                    self.refuse(why);
                    let mut flow_stream = stream;
                    let _ = socket2::SockRef::from(&flow_stream).set_linger(Some(Duration::ZERO));
                    let _ = flow_stream.flush_reset();
                    continue;
                }
            };
            let mut stream = stream;
            let _ = stream.set_nodelay(true);
            let flow_token = ctx.token();
            if ctx
                .registry
                .register(
                    &mut stream,
                    flow_token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            let remote = IpEndpoint::new(IpAddress::Ipv4(self.service_ip(entry.id)), entry.port);
            let buffer = self.tunnel_cfg.tcp_buffer_kib * 1024;
            let tunnel = self.tunnel(&entry, ctx, now);
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; buffer]),
                tcp::SocketBuffer::new(vec![0; buffer]),
            );
            sock.set_nagle_enabled(false);
            sock.set_ack_delay(None);
            let local_port = tunnel.port();
            let Some(stack) = tunnel.stack.as_mut() else {
                continue;
            };
            if let Err(e) = sock.connect(stack.iface.context(), remote, local_port) {
                tracing::warn!(error = %e, "cannot open a tunnel connection");
                continue;
            }
            let handle = stack.sockets.add(sock);
            tunnel
                .tcp
                .insert(flow_token, TcpFlow::new(stream, handle, false));
            tunnel.last_used = now;
            self.by_token.insert(flow_token, entry.id);
            tracing::debug!(service = %service, %peer, "connection accepted");
        }
    }

    fn recv_udp(&mut self, ctx: &mut Ctx, token: Token, now: Instant) {
        let mut buf = std::mem::take(&mut ctx.scratch);
        self.recv_udp_into(ctx, token, now, &mut buf);
        ctx.scratch = buf;
    }

    fn recv_udp_into(&mut self, ctx: &mut Ctx, token: Token, now: Instant, buf: &mut [u8]) {
        loop {
            let Some(listener) = self.listeners.get(&token) else {
                return;
            };
            let Some(sock) = listener.udp.as_ref() else {
                return;
            };
            let (n, app) = match sock.recv_from(buf) {
                Ok(r) => r,
                Err(_) => return,
            };
            let (id, port) = match self.service_named(&listener.service) {
                Ok(found) => found,
                Err(why) => {
                    self.refuse(why);
                    continue;
                }
            };
            let remote = IpEndpoint::new(IpAddress::Ipv4(self.service_ip(id)), port);
            let Some(tunnel) = self.tunnel_by_id(id, ctx, now) else {
                continue;
            };
            tunnel.last_used = now;
            let port = tunnel.port();
            let Some(stack) = tunnel.stack.as_mut() else {
                continue;
            };
            let pos = tunnel
                .udp
                .iter()
                .position(|u| u.listener == token && u.app == app);
            let handle = match pos {
                Some(i) => {
                    tunnel.udp[i].last_used = now;
                    tunnel.udp[i].handle
                }
                None => {
                    let meta = || vec![udp::PacketMetadata::EMPTY; UDP_PACKETS];
                    let mut s = udp::Socket::new(
                        udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]),
                        udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]),
                    );
                    if s.bind(port).is_err() {
                        continue;
                    }
                    let handle = stack.sockets.add(s);
                    tunnel.udp.push(UdpApp {
                        listener: token,
                        app,
                        handle,
                        last_used: now,
                    });
                    handle
                }
            };
            let s = stack.sockets.get_mut::<udp::Socket<'_>>(handle);
            if s.send_slice(&buf[..n], remote).is_ok() {
                tunnel.bytes_in += n as u64;
            }
        }
    }

    fn on_directory(&mut self, ctx: &mut Ctx, dir: Directory) {
        tracing::info!(services = dir.services.len(), mode = %dir.mode, digest = dir.digest, "directory from the relay");
        ctx.hop.digest = dir.digest;
        self.conn_mode = dir.mode;
        let ids: Vec<u32> = dir.services.iter().map(|e| e.id.0).collect();
        self.ips = crate::dns::service_addresses(&ids)
            .into_iter()
            .map(|(id, ip)| (ServiceId(id), ip))
            .collect();
        if let Some(tun) = self.tun.as_mut() {
            tun.by_ip = self.ips.iter().map(|(id, ip)| (*ip, *id)).collect();
        }
        let gone: Vec<ServiceId> = self
            .tunnels
            .iter()
            .filter(|(id, t)| {
                dir.mode == ConnectionMode::Off
                    || !dir
                        .services
                        .iter()
                        .any(|e| e.id == **id && e.connector_key == t.entry.connector_key)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(mut t) = self.tunnels.remove(&id) {
                self.errors.push(format!(
                    "service '{}' is no longer reachable (access revoked or its connector changed); {} connection(s) closed",
                    t.entry.name,
                    t.flows()
                ));
                close_tunnel(ctx, &mut t, &mut self.by_index, &mut self.by_token);
            }
        }
        self.directory = Some(dir);
    }

    fn data(
        &mut self,
        ctx: &mut Ctx,
        mut buf: Vec<u8>,
        len: usize,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (_, _, service) = header(&buf[..len]);
        let Some(index) = record_receiver(&buf[..len]) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        if self.by_index.get(&index) != Some(&service) {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        }
        let Some(tunnel) = self.tunnels.get_mut(&service) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        let Some(session) = tunnel.sessions.session_for(index) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        match session.open(&mut buf[..len], now) {
            Ok(range) if range.is_empty() => {
                // The connector's keepalive: the session heard from it
                // (`E2eSession::unanswered_for`); nothing to deliver.
                ctx.stats.keepalives_in += 1;
                Some(buf)
            }
            Ok(range) => match (tunnel.stack.as_mut(), self.tun.as_mut()) {
                (Some(stack), _) => {
                    stack.dev.push_rx(Packet {
                        buf,
                        start: range.start,
                        end: range.end,
                    });
                    None
                }
                (None, Some(tun)) => {
                    // Only what the service may say: from its own virtual
                    // address to ours. A connector cannot inject packets
                    // for other addresses into the user's host.
                    let packet = &buf[range];
                    let fits = self.ips.get(&service).is_some_and(|ip| {
                        crate::inner::comes_from(packet, *ip, crate::start::TUN_ADDRESS)
                    });
                    if !fits {
                        tun.rejected += 1;
                    } else {
                        // Batched: written (TCP runs coalesced into one
                        // super-packet with offload) at the end of the
                        // receive batch.
                        if tun.out.push(packet).is_err() {
                            tun.write_out();
                            if tun.out.push(packet).is_err() {
                                tun.write_errors += 1;
                            }
                        }
                        tunnel.bytes_out += packet.len() as u64;
                    }
                    Some(buf)
                }
                (None, None) => Some(buf),
            },
            Err(_) => {
                ctx.stats.open_dropped += 1;
                Some(buf)
            }
        }
    }

    fn wanted_always(&self) -> bool {
        matches!(
            self.conn_mode,
            ConnectionMode::AlwaysOn | ConnectionMode::Lockdown
        )
    }
}

trait FlushReset {
    fn flush_reset(&mut self) -> std::io::Result<()>;
}

impl FlushReset for mio::net::TcpStream {
    /// Closes now; with `SO_LINGER` 0 set, the peer sees a reset.
    fn flush_reset(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
}

impl RuntimeRole for Client {
    fn renew(&mut self, identity: &LocalIdentity) {
        if self.identity.same_key(identity) {
            self.name.clone_from(&identity.certificate().body.name);
            self.identity = identity.clone();
        }
    }

    fn on_frame(
        &mut self,
        ctx: &mut Ctx,
        buf: Vec<u8>,
        len: usize,
        now: Instant,
    ) -> Option<Vec<u8>> {
        match Frame::new_unchecked(&buf[..len]).kind() {
            Kind::DataDown => self.data(ctx, buf, len, now),
            Kind::E2eHandshakeDown => {
                let (_, _, service) = header(&buf[..len]);
                if let Some(t) = self.tunnels.get_mut(&service) {
                    match t.sessions.on_response(&buf[..len], &mut self.by_index, now) {
                        Ok(true) => {
                            tracing::info!(service = %t.entry.name, "end-to-end session established");
                            // Send what waited for the session.
                            while let Some(p) = t.waiting.pop_front() {
                                if let Some(s) = t.sessions.current.as_mut() {
                                    ctx.send_packet(s, Kind::DataUp, self.user, service, p);
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => self.errors.push(format!(
                            "end-to-end handshake with the connector of '{}' failed: {e}",
                            t.entry.name
                        )),
                    }
                }
                Some(buf)
            }
            Kind::Control => {
                let body = &Frame::new_unchecked(&buf[..len]).body().to_vec();
                match ControlMessage::parse(body) {
                    Ok(ControlMessage::DirectoryPart {
                        digest,
                        part,
                        parts,
                        mode,
                        services,
                    }) => {
                        if let Some(dir) = self.assembler.push(digest, part, parts, mode, services)
                        {
                            self.on_directory(ctx, dir);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed control message from the relay")
                    }
                }
                Some(buf)
            }
            _ => Some(buf),
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx, event: &mio::event::Event, now: Instant) {
        let token = event.token();
        if Some(token) == self.tun_token {
            self.read_tun(ctx, now);
        } else if let Some(l) = self.listeners.get(&token) {
            if l.tcp.is_some() {
                self.accept_tcp(ctx, token, now);
            } else {
                self.recv_udp(ctx, token, now);
            }
        } else if let Some(id) = self.by_token.get(&token) {
            if let Some(t) = self.tunnels.get_mut(id) {
                t.last_used = now;
            }
        }
    }

    fn on_hop_established(&mut self, _ctx: &mut Ctx, _now: Instant) {}

    fn poll(&mut self, ctx: &mut Ctx, now: Instant) -> Option<Instant> {
        if let Some(tun) = self.tun.as_mut() {
            tun.write_out();
        }
        if self.wanted_always() {
            // Taken out and put back rather than cloned: `tunnel` does not
            // read the directory.
            if let Some(dir) = self.directory.take() {
                for e in &dir.services {
                    self.tunnel(e, ctx, now);
                }
                self.directory = Some(dir);
            }
        }
        let mut next: Option<Instant> = None;
        let idle_close = self.tunnel_cfg.idle_close();
        let always = self.wanted_always();
        let Client {
            identity,
            ca,
            user,
            tunnels,
            listeners,
            by_index,
            by_token,
            next_index,
            ..
        } = self;
        // `retain` visits every tunnel and drops idle ones without
        // collecting ids first.
        tunnels.retain(|_, t| {
            let in_use = t.flows() > 0 || !t.waiting.is_empty();
            if !always && !in_use && now.duration_since(t.last_used) >= idle_close {
                tracing::info!(service = %t.entry.name, "idle: closing the end-to-end session");
                close_tunnel(ctx, t, by_index, by_token);
                return false;
            }
            // Every tunnel still here is wanted (idle ones were closed
            // above): keep its session fresh, rekeying on the timers.
            {
                t.sessions.maintain(
                    ctx, identity, *ca, *user, &t.entry, next_index, by_index, now,
                );
            }
            if let Some(d) = t.poll(ctx, *user, listeners, by_token, now) {
                next = Some(next.map_or(now + d, |n| n.min(now + d)));
            }
            true
        });
        if !self.tunnels.is_empty() {
            next = Some(next.map_or(now + E2E_RETRY, |n| n.min(now + E2E_RETRY)));
        }
        next
    }

    fn publish(&self, ctx: &Ctx, board: &StatusBoard) {
        // In place: every field is overwritten (the destructuring names
        // them all), reusing the last snapshot's strings.
        board.update(|st| {
            let Status {
                role,
                name,
                id,
                client_mode,
                connection_mode,
                link,
                services,
                tun,
                errors,
            } = st;
            match &self.tun {
                Some(t) => {
                    set_text(&mut tun.device, t.dev.name());
                    tun.offload = t.dev.offload_enabled();
                    tun.packets_read = t.dev.stats().packets;
                    tun.unroutable = t.unroutable;
                    tun.blackholed = t.blackholed;
                    tun.rejected = t.rejected;
                    tun.write_errors = t.write_errors;
                }
                None => *tun = Default::default(),
            }
            set_text(role, "client");
            set_text(name, &self.name);
            *id = self.user.0;
            set_text(
                client_mode,
                match self.mode {
                    ClientMode::Proxy => "proxy",
                    ClientMode::Tun => "tun",
                },
            );
            set_text(connection_mode, self.conn_mode);
            ctx.fill_link_status(link);
            let entries = self.directory.as_ref().map_or(&[][..], |d| &d.services);
            services.resize_with(entries.len(), ServiceStatus::default);
            for (e, v) in entries.iter().zip(services.iter_mut()) {
                let t = self.tunnels.get(&e.id);
                v.id = e.id.0;
                v.connector = e.connector;
                set_text(&mut v.name, &e.name);
                // The service's listeners, ", "-separated.
                v.detail.clear();
                for l in self.listeners.values().filter(|l| l.service == e.name) {
                    let sep = if v.detail.is_empty() { "" } else { ", " };
                    let _ = write!(v.detail, "{sep}{}", l.addr);
                }
                v.session = t.is_some_and(|t| t.sessions.current.is_some());
                v.sessions = t.map_or(0, |t| t.sessions.established);
                v.flows = t.map_or(0, ServiceTunnel::flows);
                v.bytes_in = t.map_or(0, |t| {
                    t.bytes_in + t.tcp.values().map(|f| f.bytes_in).sum::<u64>()
                });
                v.bytes_out = t.map_or(0, |t| {
                    t.bytes_out + t.tcp.values().map(|f| f.bytes_out).sum::<u64>()
                });
            }
            self.errors.copy_into(errors);
        });
    }
}

fn pump_tcp(ctx: &mut Ctx, t: &mut ServiceTunnel, by_token: &mut HashMap<Token, ServiceId>) {
    let Some(stack) = t.stack.as_mut() else {
        return;
    };
    let mut done = Vec::new();
    for (token, flow) in t.tcp.iter_mut() {
        let sock = stack.sockets.get_mut::<tcp::Socket<'_>>(flow.handle);
        if flow.pump(sock) == FlowStatus::Done {
            done.push(*token);
        }
    }
    for token in done {
        if let Some(mut flow) = t.tcp.remove(&token) {
            let _ = ctx.registry.deregister(&mut flow.stream);
            t.bytes_in += flow.bytes_in;
            t.bytes_out += flow.bytes_out;
            by_token.remove(&token);
            t.closing.push(flow.handle);
        }
    }
}

fn pump_udp(
    t: &mut ServiceTunnel,
    listeners: &HashMap<Token, Listener>,
    now: Instant,
    buf: &mut [u8],
) {
    if t.udp.is_empty() {
        return;
    }
    let Some(stack) = t.stack.as_mut() else {
        return;
    };
    let closing = &mut t.closing;
    t.udp.retain(|u| {
        let keep = now.duration_since(u.last_used) < UDP_IDLE;
        if !keep {
            closing.push(u.handle);
        }
        keep
    });
    for u in &mut t.udp {
        let Some(sock) = listeners.get(&u.listener).and_then(|l| l.udp.as_ref()) else {
            continue;
        };
        let s = stack.sockets.get_mut::<udp::Socket<'_>>(u.handle);
        while let Ok((n, _)) = s.recv_slice(buf) {
            if sock.send_to(&buf[..n], u.app).is_ok() {
                t.bytes_out += n as u64;
            }
            u.last_used = now;
        }
    }
}

/// Forgets a tunnel that is going away: its sessions' indices, its
/// connections (reset), the packets that waited for it.
fn close_tunnel(
    ctx: &mut Ctx,
    t: &mut ServiceTunnel,
    by_index: &mut HashMap<ReceiverIndex, ServiceId>,
    by_token: &mut HashMap<Token, ServiceId>,
) {
    t.sessions.clear(by_index);
    for (token, mut flow) in t.tcp.drain() {
        flow.reset_stream();
        let _ = ctx.registry.deregister(&mut flow.stream);
        by_token.remove(&token);
    }
    for p in t.waiting.drain(..) {
        ctx.pool.put(p.buf);
    }
}

/// Sends the packets that waited for a session (tun mode).
fn flush_waiting(ctx: &mut Ctx, t: &mut ServiceTunnel, user: UserId) {
    let id = t.entry.id;
    while let Some(s) = t.sessions.current.as_mut() {
        let Some(p) = t.waiting.pop_front() else {
            break;
        };
        ctx.send_packet(s, Kind::DataUp, user, id, p);
    }
}

/// Answers a DNS query that arrived on the TUN device: service names (and
/// `NAME.ztna`) resolve to their virtual addresses.
fn answer_dns(
    tun: &mut TunPath,
    packet: &[u8],
    ips: &HashMap<ServiceId, std::net::Ipv4Addr>,
    dir: Option<&Directory>,
) {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return;
    };
    if ip.next_header() != IpProtocol::Udp {
        return;
    }
    let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
        return;
    };
    if udp.dst_port() != tun.dns.port() {
        return;
    }
    let lookup = |name: &str| {
        let name = name.strip_suffix(".ztna").unwrap_or(name);
        let dir = dir?;
        let e = dir
            .services
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))?;
        ips.get(&e.id).copied()
    };
    if crate::dns::answer(udp.payload(), lookup, &mut tun.dns_out).is_err() {
        return;
    }
    let payload = &tun.dns_out;
    let udp_repr = UdpRepr {
        src_port: udp.dst_port(),
        dst_port: udp.src_port(),
    };
    let ip_repr = Ipv4Repr {
        src_addr: ip.dst_addr(),
        dst_addr: ip.src_addr(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut out = vec![0u8; 20 + 8 + payload.len()];
    let caps = ChecksumCapabilities::default();
    ip_repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]), &caps);
    udp_repr.emit(
        &mut UdpPacket::new_unchecked(&mut out[20..]),
        &ip_repr.src_addr.into(),
        &ip_repr.dst_addr.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    if tun.dev.write_packet(&out).is_err() {
        tun.write_errors += 1;
    }
}
