//! The connector role: terminates users' tunnels in user space and reaches
//! each service's target with ordinary sockets.
//!
//! One `Pair` per (user, service): its own smoltcp stack (AnyIP, so the
//! inner destination address does not matter), its end-to-end sessions,
//! and its connections. Whatever destination an inner packet claims, the
//! only place its bytes can go is the target of the service the frame's
//! header names: the connector dials `service.target` from its own copy of
//! the policy and nothing else.
//!
//! Defence in depth: every end-to-end handshake is checked here against
//! the user's certificate (by the Noise handshake) and the connector's own
//! policy (the user may reach the service, and this connector serves it),
//! whatever the relay decided. When the policy file changes, pairs no
//! longer allowed are closed at once, their connections reset.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Token};
use proto::handshake::{E2eResponder, LocalIdentity, Trust};
use proto::identity::Certificate;
use proto::identity::Role;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::policy::{CompiledPolicy, PeerVerdict, Protocol};
use proto::wire::{Frame, Kind};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::IpEndpoint;

use crate::e2e::{record_receiver, E2eSession};
use crate::flow::{FlowStatus, TcpFlow};
use crate::inner::{classify, Inner};
use crate::netstack::{smol_now, Stack};
use crate::policy_watch::PolicyWatch;
use crate::pool::{Packet, HEADROOM};
use crate::runtime::{header, unix_nanos, Ctx, Role as RuntimeRole};
use crate::status::{set_text, ErrorLog, ServiceStatus, Status, StatusBoard};

/// How often the policy file is checked for new content.
pub const POLICY_CHECK: Duration = Duration::from_millis(250);
/// TCP connections and UDP flows per pair at most.
pub const MAX_FLOWS_PER_PAIR: usize = 256;
/// A UDP flow without traffic this long is closed.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// A pair with no flows and no traffic this long is removed.
pub const PAIR_IDLE: Duration = Duration::from_secs(300);
/// UDP buffer per socket in the user-space stack (datagrams).
const UDP_PACKETS: usize = 256;

/// A UDP flow: one client endpoint to the target.
#[derive(Debug)]
struct UdpFlow {
    socket: UdpSocket,
    token: Token,
    client: IpEndpoint,
    /// The address the client sent to: replies must come from it (a
    /// connected UDP socket at the client drops anything else).
    local: Option<smoltcp::wire::IpAddress>,
    stack_socket: SocketHandle,
    last_used: Instant,
}

/// One (user, service) pair.
struct Pair {
    user: UserId,
    service: ServiceId,
    target: String,
    /// The service's transport: the other one is dropped.
    protocol: Protocol,
    stack: Stack,
    current: Option<E2eSession>,
    previous: Option<E2eSession>,
    /// Listening TCP sockets, by port.
    listening: Vec<SocketHandle>,
    /// Sockets of finished connections, removed after the next poll has
    /// sent what they still had to say (a FIN's ACK, a RST).
    closing: Vec<SocketHandle>,
    tcp: HashMap<Token, TcpFlow>,
    /// Bound UDP sockets in the stack, by port.
    udp_ports: HashMap<u16, SocketHandle>,
    udp: HashMap<Token, UdpFlow>,
    last_active: Instant,
    bytes_in: u64,
    bytes_out: u64,
    /// Sessions established with the user so far.
    established: u64,
}

impl Pair {
    fn flows(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    fn session_for(&mut self, index: ReceiverIndex) -> Option<&mut E2eSession> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.local_index() == index)
        {
            return self.current.as_mut();
        }
        self.previous.as_mut().filter(|s| s.local_index() == index)
    }
}

/// The connector.
pub struct Connector {
    id: u32,
    name: String,
    responder: E2eResponder,
    policy: PolicyWatch,
    pairs: HashMap<(UserId, ServiceId), Pair>,
    by_index: HashMap<ReceiverIndex, (UserId, ServiceId)>,
    by_token: HashMap<Token, (UserId, ServiceId)>,
    next_index: u32,
    mtu: usize,
    tcp_buffer: usize,
    last_policy_check: Instant,
    errors: ErrorLog,
    denied: u64,
    /// Packets of the transport the service does not have.
    wrong_protocol: u64,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("id", &self.id)
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `identity` (role connector), checking sessions
    /// against `policy`.
    pub fn new(
        identity: LocalIdentity,
        ca: proto::identity::CaPublicKey,
        policy: PolicyWatch,
        mtu: usize,
        tcp_buffer: usize,
        now: Instant,
    ) -> Connector {
        let cert = identity.certificate().clone();
        Connector {
            id: cert.body.id,
            name: cert.body.name.clone(),
            responder: E2eResponder::new(identity, Trust::new(ca, &[Role::User])),
            policy,
            pairs: HashMap::new(),
            by_index: HashMap::new(),
            by_token: HashMap::new(),
            next_index: rand::random::<u32>() | 1,
            mtu,
            tcp_buffer,
            last_policy_check: now,
            errors: ErrorLog::default(),
            denied: 0,
            wrong_protocol: 0,
        }
    }

    /// Whether the live policy lets `user` reach `service` through us.
    fn permits(&self, user: UserId, service: ServiceId) -> Result<(String, Protocol), String> {
        let policy = self.policy.policy();
        let Some(info) = policy.service(service) else {
            return Err(format!(
                "service {} is not in the connector's policy",
                service.0
            ));
        };
        if !info.connectors.contains(&self.id) {
            return Err(format!(
                "service '{}' is not served by this connector ({}) in its policy",
                info.name, self.name
            ));
        }
        if !policy.allowed(user, service) {
            let who = policy
                .user_name(user)
                .map_or_else(|| format!("user {}", user.0), str::to_owned);
            return Err(format!(
                "{who} may not reach '{}' by the connector's policy",
                info.name
            ));
        }
        Ok((info.target.clone(), info.protocol))
    }

    fn handshake(&mut self, ctx: &mut Ctx, frame: &[u8], now: Instant) {
        let (_, user, service) = header(frame);
        let (target, protocol) = match self.permits(user, service) {
            Ok(t) => t,
            Err(why) => {
                self.denied += 1;
                self.errors
                    .push(format!("end-to-end session refused: {why}"));
                return;
            }
        };
        self.next_index = self.next_index.wrapping_add(2) | 1;
        let index = ReceiverIndex(self.next_index);
        let body = &frame[proto::wire::HEADER_LEN..];
        let (reply, keys) =
            match self
                .responder
                .handle_init(body, user, service, index, unix_nanos())
            {
                Ok(r) => r,
                Err(e) => {
                    self.errors.push(format!(
                        "end-to-end handshake from user {} for service {} rejected: {e}",
                        user.0, service.0
                    ));
                    return;
                }
            };
        if let Some(why) = refuses_peer(self.policy.policy(), user, &keys.peer) {
            self.denied += 1;
            self.errors.push(format!(
                "end-to-end session refused: the certificate of '{}' (user {}) {why}",
                keys.peer.body.name, user.0
            ));
            return;
        }
        tracing::info!(user = user.0, peer = %keys.peer.body.name, service = service.0, %target, "end-to-end session established");
        let session = E2eSession::new(keys, now);
        self.by_index.insert(index, (user, service));
        let (mtu, pool) = (self.mtu, ctx.pool.clone());
        let pair = self.pairs.entry((user, service)).or_insert_with(|| Pair {
            user,
            service,
            target,
            protocol,
            stack: Stack::connector(pool, mtu, smol_now(ctx.epoch, now)),
            current: None,
            previous: None,
            listening: Vec::new(),
            closing: Vec::new(),
            tcp: HashMap::new(),
            udp_ports: HashMap::new(),
            udp: HashMap::new(),
            last_active: now,
            bytes_in: 0,
            bytes_out: 0,
            established: 0,
        });
        if let Some(old) = pair.previous.take() {
            self.by_index.remove(&old.local_index());
        }
        pair.previous = pair.current.replace(session);
        pair.established += 1;
        pair.last_active = now;
        ctx.send_body(Kind::E2eHandshakeDown, user, service, &reply);
    }

    fn data(
        &mut self,
        ctx: &mut Ctx,
        mut buf: Vec<u8>,
        len: usize,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (_, user, service) = header(&buf[..len]);
        let Some(index) = record_receiver(&buf[..len]) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        let Some(key) = self.by_index.get(&index).copied() else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        if key != (user, service) {
            // A record of one pair under another pair's header.
            ctx.stats.open_dropped += 1;
            return Some(buf);
        }
        let Some(pair) = self.pairs.get_mut(&key) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        let Some(session) = pair.session_for(index) else {
            ctx.stats.open_dropped += 1;
            return Some(buf);
        };
        let range = match session.open(&mut buf[..len], now) {
            Ok(r) => r,
            Err(_) => {
                ctx.stats.open_dropped += 1;
                return Some(buf);
            }
        };
        pair.last_active = now;
        if range.is_empty() {
            // The user's keepalive: it has done its work (the session
            // heard from the user); nothing to deliver.
            ctx.stats.keepalives_in += 1;
            return Some(buf);
        }
        match classify(&buf[range.clone()]) {
            Inner::Tcp { port, syn } if pair.protocol.tcp() => {
                if syn {
                    ensure_listener(pair, port, self.tcp_buffer);
                }
            }
            Inner::Udp { port } if pair.protocol.udp() => ensure_udp_port(pair, port),
            // ICMP and the like go to the stack (it answers pings).
            Inner::Other => {}
            // TCP to a UDP service or the reverse: not what the policy
            // grants.
            _ => {
                self.wrong_protocol += 1;
                if self.wrong_protocol == 1 {
                    self.errors.push(format!(
                        "user {} sent the wrong transport to service {} (it is {:?}); such packets are dropped",
                        user.0, service.0, pair.protocol
                    ));
                }
                return Some(buf);
            }
        }
        pair.stack.dev.push_rx(Packet {
            buf,
            start: range.start,
            end: range.end,
        });
        None
    }

    fn check_policy(&mut self, now: Instant) {
        if now.duration_since(self.last_policy_check) < POLICY_CHECK {
            return;
        }
        self.last_policy_check = now;
        match self.policy.refresh() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("connector policy reloaded");
                let policy = self.policy.policy();
                let revoked: Vec<_> =
                    self.pairs
                        .iter()
                        .filter(|((u, s), pair)| {
                            self.permits(*u, *s).is_err()
                                || [&pair.current, &pair.previous].into_iter().flatten().any(
                                    |session| refuses_peer(policy, *u, session.peer()).is_some(),
                                )
                        })
                        .map(|(key, _)| *key)
                        .collect();
                for key in revoked {
                    if let Some(mut pair) = self.pairs.remove(&key) {
                        tracing::warn!(
                            user = key.0 .0,
                            service = key.1 .0,
                            flows = pair.flows(),
                            "access revoked: closing the pair's connections"
                        );
                        close_pair(&mut pair, &mut self.by_index, &mut self.by_token);
                    }
                }
            }
            Err(e) => self
                .errors
                .push(format!("{e}; the previous policy stays in force")),
        }
    }
}

/// Why the connector's own policy refuses `cert` as the end-to-end peer of
/// `user` (its id, which the handshake checked against the certificate):
/// the certificate is revoked, or the user's entry pins other static keys
/// (`[[users]] static_keys`, docs/security.md §7b). `None`: accepted. The
/// relay checks the same at the hop handshake; the connector checks again
/// with its own copy, so a relay with an older policy does not decide.
fn refuses_peer(policy: &CompiledPolicy, user: UserId, cert: &Certificate) -> Option<&'static str> {
    let key = &cert.body.static_key;
    if policy.is_revoked(key) {
        return Some("is revoked");
    }
    match policy.admits_peer(Role::User, user.0, key) {
        PeerVerdict::Allow => None,
        PeerVerdict::NotListed => Some("is not a user in the connector's policy"),
        PeerVerdict::KeyNotPinned => {
            Some("certifies a key the connector's policy does not pin for that user")
        }
    }
}

/// Forgets a pair that is going away: its sessions' indices, its flows'
/// tokens; its target connections are reset.
fn close_pair(
    pair: &mut Pair,
    by_index: &mut HashMap<ReceiverIndex, (UserId, ServiceId)>,
    by_token: &mut HashMap<Token, (UserId, ServiceId)>,
) {
    for s in [pair.current.take(), pair.previous.take()]
        .into_iter()
        .flatten()
    {
        by_index.remove(&s.local_index());
    }
    for (token, mut flow) in pair.tcp.drain() {
        flow.reset_stream();
        by_token.remove(&token);
    }
    for (token, _) in pair.udp.drain() {
        by_token.remove(&token);
    }
}

impl Pair {
    /// One turn of the loop for this pair: runs the stack, dials targets
    /// for new connections, pumps every flow, sends what the stack
    /// emitted. Returns how soon the stack wants another turn. Nothing here
    /// allocates per packet: the loop runs it for every pair on every
    /// turn.
    fn poll(
        &mut self,
        ctx: &mut Ctx,
        by_token: &mut HashMap<Token, (UserId, ServiceId)>,
        errors: &mut ErrorLog,
        now: Instant,
    ) -> Option<Duration> {
        let smol = smol_now(ctx.epoch, now);
        self.stack.poll(smol);
        self.accept_new(ctx, by_token, errors);
        // Sockets that finished before this turn; those finishing now
        // stay until the next one.
        let closing = self.closing.len();
        pump_pair(ctx, self, by_token, now);
        self.stack.poll(smol);
        for handle in self.closing.drain(..closing) {
            self.stack.sockets.remove(handle);
        }
        flush_tx(ctx, self, now);
        send_keepalives(ctx, self, now);
        self.stack.poll_delay(smol)
    }

    /// Dials targets for connections smoltcp just accepted.
    fn accept_new(
        &mut self,
        ctx: &mut Ctx,
        by_token: &mut HashMap<Token, (UserId, ServiceId)>,
        errors: &mut ErrorLog,
    ) {
        let key = (self.user, self.service);
        let (stack, tcp, target) = (&mut self.stack, &mut self.tcp, &self.target);
        self.listening.retain(|&handle| {
            let state = stack.sockets.get::<tcp::Socket<'_>>(handle).state();
            if state == tcp::State::Listen {
                return true;
            }
            match dial(target) {
                Ok(mut stream) => {
                    let token = ctx.token();
                    if ctx
                        .registry
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        stack.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                        return false;
                    }
                    tracing::debug!(user = key.0 .0, service = key.1 .0, %target, "connection accepted, dialing target");
                    tcp.insert(token, TcpFlow::new(stream, handle, true));
                    by_token.insert(token, key);
                }
                Err(e) => {
                    errors.push(format!(
                        "cannot reach target {target} of service {}: {e}",
                        key.1 .0
                    ));
                    stack.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                }
            }
            false
        });
    }
}

fn dial(target: &str) -> std::io::Result<TcpStream> {
    let addr = resolve(target)?;
    let stream = TcpStream::connect(addr)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Resolves `host:port` (blocking: names are looked up with the system
/// resolver when a connection opens).
fn resolve(target: &str) -> std::io::Result<SocketAddr> {
    target.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{target} has no address"),
        )
    })
}

fn ensure_listener(pair: &mut Pair, port: u16, buffer: usize) {
    if pair.flows() + pair.listening.len() >= MAX_FLOWS_PER_PAIR {
        return;
    }
    // One idle listener per SYN: a second SYN in the same batch needs its own.
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    sock.set_nagle_enabled(false);
    sock.set_ack_delay(None);
    if sock.listen(port).is_ok() {
        let handle = pair.stack.sockets.add(sock);
        pair.listening.push(handle);
    }
}

fn ensure_udp_port(pair: &mut Pair, port: u16) {
    if pair.udp_ports.contains_key(&port) || pair.udp_ports.len() >= MAX_FLOWS_PER_PAIR {
        return;
    }
    let meta = || vec![udp::PacketMetadata::EMPTY; UDP_PACKETS];
    let mut sock = udp::Socket::new(
        udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]),
        udp::PacketBuffer::new(meta(), vec![0; 256 * 1024]),
    );
    if sock.bind(port).is_ok() {
        let handle = pair.stack.sockets.add(sock);
        pair.udp_ports.insert(port, handle);
    }
}

impl RuntimeRole for Connector {
    fn renew(&mut self, identity: &LocalIdentity) {
        self.responder.renew(identity.clone());
    }

    fn on_frame(
        &mut self,
        ctx: &mut Ctx,
        buf: Vec<u8>,
        len: usize,
        now: Instant,
    ) -> Option<Vec<u8>> {
        match Frame::new_unchecked(&buf[..len]).kind() {
            Kind::E2eHandshakeUp => {
                self.handshake(ctx, &buf[..len], now);
                Some(buf)
            }
            Kind::DataUp => self.data(ctx, buf, len, now),
            // Pongs and directories: a connector needs nothing from them
            // beyond the liveness the hop already noted.
            _ => Some(buf),
        }
    }

    fn on_event(&mut self, _ctx: &mut Ctx, event: &mio::event::Event, now: Instant) {
        // Readiness is acted on in `poll`, which pumps every flow; mark
        // the pair active so idle cleanup leaves it alone.
        if let Some(key) = self.by_token.get(&event.token()) {
            if let Some(pair) = self.pairs.get_mut(key) {
                pair.last_active = now;
            }
        }
    }

    fn poll(&mut self, ctx: &mut Ctx, now: Instant) -> Option<Instant> {
        self.check_policy(now);
        let mut next = now + POLICY_CHECK;
        let Connector {
            pairs,
            by_index,
            by_token,
            errors,
            ..
        } = self;
        // `retain` visits every pair and drops idle ones without collecting
        // keys first.
        pairs.retain(|_, pair| {
            if let Some(delay) = pair.poll(ctx, by_token, errors, now) {
                next = next.min(now + delay);
            }
            let expired = pair.current.as_ref().is_none_or(|s| s.expired(now));
            let idle =
                expired && pair.flows() == 0 && now.duration_since(pair.last_active) >= PAIR_IDLE;
            if idle {
                close_pair(pair, by_index, by_token);
            }
            !idle
        });
        Some(next)
    }

    fn publish(&self, ctx: &Ctx, board: &StatusBoard) {
        let policy = self.policy.policy();
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
            *tun = Default::default();
            set_text(role, "connector");
            set_text(name, &self.name);
            *id = self.id;
            client_mode.clear();
            connection_mode.clear();
            ctx.fill_link_status(link);
            services.resize_with(self.pairs.len(), ServiceStatus::default);
            for (p, v) in self.pairs.values().zip(services.iter_mut()) {
                v.id = p.service.0;
                set_text(
                    &mut v.name,
                    policy.service(p.service).map_or("", |s| &s.name),
                );
                match policy.user_name(p.user) {
                    Some(n) => set_text(&mut v.detail, format_args!("user {n}")),
                    None => set_text(&mut v.detail, format_args!("user {}", p.user.0)),
                }
                v.session = p.current.is_some();
                v.sessions = p.established;
                v.flows = p.flows();
                v.bytes_in = p.bytes_in + p.tcp.values().map(|f| f.bytes_in).sum::<u64>();
                v.bytes_out = p.bytes_out + p.tcp.values().map(|f| f.bytes_out).sum::<u64>();
            }
            // Unstable: a stable sort allocates; (id, detail) names a pair.
            services.sort_unstable_by(|a, b| (a.id, &a.detail).cmp(&(b.id, &b.detail)));
            self.errors.copy_into(errors);
        });
    }
}

/// Pumps every connection of a pair; removes finished ones.
fn pump_pair(
    ctx: &mut Ctx,
    pair: &mut Pair,
    by_token: &mut HashMap<Token, (UserId, ServiceId)>,
    now: Instant,
) {
    let mut done = Vec::new();
    for (token, flow) in pair.tcp.iter_mut() {
        let sock = pair.stack.sockets.get_mut::<tcp::Socket<'_>>(flow.handle);
        if flow.pump(sock) == FlowStatus::Done {
            done.push(*token);
        }
    }
    for token in done {
        if let Some(mut flow) = pair.tcp.remove(&token) {
            let _ = ctx.registry.deregister(&mut flow.stream);
            pair.bytes_in += flow.bytes_in;
            pair.bytes_out += flow.bytes_out;
            by_token.remove(&token);
            pair.closing.push(flow.handle);
        }
    }
    if pair.udp_ports.is_empty() && pair.udp.is_empty() {
        return;
    }
    let mut buf = std::mem::take(&mut ctx.scratch);
    pump_udp(ctx, pair, by_token, now, &mut buf);
    ctx.scratch = buf;
}

fn pump_udp(
    ctx: &mut Ctx,
    pair: &mut Pair,
    by_token: &mut HashMap<Token, (UserId, ServiceId)>,
    now: Instant,
    buf: &mut [u8],
) {
    // Tunnel -> target. The fields are borrowed apart, so the ports can be
    // walked while the stack and the flows change.
    let Pair {
        user,
        service,
        target,
        stack,
        tcp,
        udp_ports,
        udp,
        bytes_in,
        bytes_out,
        ..
    } = pair;
    for &handle in udp_ports.values() {
        loop {
            let sock = stack.sockets.get_mut::<udp::Socket<'_>>(handle);
            let Ok((n, meta)) = sock.recv_slice(buf) else {
                break;
            };
            let client = meta.endpoint;
            let local = meta.local_address;
            let existing = udp
                .iter_mut()
                .find(|(_, f)| f.client == client && f.stack_socket == handle)
                .map(|(t, _)| *t);
            let token = match existing {
                Some(t) => t,
                None => {
                    if tcp.len() + udp.len() >= MAX_FLOWS_PER_PAIR {
                        continue;
                    }
                    let Ok(target) = resolve(target) else {
                        continue;
                    };
                    let bind: SocketAddr = if target.is_ipv4() {
                        "0.0.0.0:0".parse().unwrap_or(target)
                    } else {
                        "[::]:0".parse().unwrap_or(target)
                    };
                    let Ok(mut socket) = UdpSocket::bind(bind) else {
                        continue;
                    };
                    if socket.connect(target).is_err() {
                        continue;
                    }
                    let token = ctx.token();
                    if ctx
                        .registry
                        .register(&mut socket, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    udp.insert(
                        token,
                        UdpFlow {
                            socket,
                            token,
                            client,
                            local,
                            stack_socket: handle,
                            last_used: now,
                        },
                    );
                    by_token.insert(token, (*user, *service));
                    token
                }
            };
            if let Some(flow) = udp.get_mut(&token) {
                if flow.socket.send(&buf[..n]).is_ok() {
                    *bytes_in += n as u64;
                }
                flow.last_used = now;
            }
        }
    }
    // Target -> tunnel, and idle flows (a timeout: collecting them
    // allocates only when one has gone idle).
    let mut idle = Vec::new();
    for (token, flow) in udp.iter_mut() {
        let sock = stack.sockets.get_mut::<udp::Socket<'_>>(flow.stack_socket);
        while sock.can_send() {
            match flow.socket.recv(buf) {
                Ok(n) => {
                    let to = udp::UdpMetadata {
                        endpoint: flow.client,
                        local_address: flow.local,
                        meta: Default::default(),
                    };
                    if sock.send_slice(&buf[..n], to).is_ok() {
                        *bytes_out += n as u64;
                    }
                    flow.last_used = now;
                }
                Err(_) => break,
            }
        }
        if now.duration_since(flow.last_used) >= UDP_IDLE {
            idle.push(*token);
        }
    }
    for token in idle {
        if let Some(mut flow) = udp.remove(&token) {
            let _ = ctx.registry.deregister(&mut flow.socket);
            by_token.remove(&flow.token);
        }
    }
}

/// Answers a one-way flow: an empty record on each of the pair's sessions
/// that opened frames and sent nothing back for
/// [`PASSIVE_KEEPALIVE`](crate::e2e::PASSIVE_KEEPALIVE), so that the user's
/// agent hears from us and keeps its session rather than handshaking
/// again (`e2e::UNANSWERED_REKEY`). A flow with replies never needs one.
fn send_keepalives(ctx: &mut Ctx, pair: &mut Pair, now: Instant) {
    for session in [pair.current.as_mut(), pair.previous.as_mut()]
        .into_iter()
        .flatten()
    {
        if session.keepalive_due(now) {
            let empty = Packet {
                buf: ctx.pool.get(),
                start: HEADROOM,
                end: HEADROOM,
            };
            ctx.send_packet(session, Kind::DataDown, pair.user, pair.service, empty);
            ctx.stats.keepalives_out += 1;
        }
    }
}

/// Seals and sends what a pair's stack emitted: on the newest session once
/// the user has sent on it (key confirmation, as in WireGuard), until then
/// on the one before it; never on an expired one.
fn flush_tx(ctx: &mut Ctx, pair: &mut Pair, now: Instant) {
    while let Some(packet) = pair.stack.dev.tx.pop_front() {
        let current_ok = pair
            .current
            .as_ref()
            .is_some_and(|s| s.confirmed() && !s.expired(now));
        let session = if current_ok {
            pair.current.as_mut()
        } else {
            pair.previous
                .as_mut()
                .filter(|s| !s.expired(now))
                .or(pair.current.as_mut().filter(|s| !s.expired(now)))
        };
        match session {
            Some(session) => {
                ctx.send_packet(session, Kind::DataDown, pair.user, pair.service, packet)
            }
            None => {
                ctx.stats.send_dropped += 1;
                ctx.pool.put(packet.buf);
            }
        }
    }
}
