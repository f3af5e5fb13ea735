//! The agent's event loop: one thread, one `mio` poll over the relay
//! socket, the listeners and every pumped connection.
//!
//! Each turn: fire timers (hop handshakes and pings, end-to-end sessions,
//! idle flows), wait for readiness (bounded by the next timer), drain the
//! relay socket in batches, then let the role (client or connector) move
//! bytes between its kernel sockets and its user-space stacks and send the
//! packets they produced.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use proto::ids::{ServiceId, UserId};
use proto::wire::{Frame, Kind};

use crate::e2e::E2eSession;
use crate::hop::Hop;
use crate::pool::{Packet, Pool};
use crate::status::StatusBoard;

/// The relay socket's token.
pub const RELAY: Token = Token(0);
/// First token the roles may hand out.
pub const FIRST_ROLE_TOKEN: usize = 16;
/// Datagrams taken from the relay socket per turn before other work runs.
pub const RECV_BATCH: usize = 256;
/// Longest wait for readiness: the loop also checks its stop flag.
pub const MAX_WAIT: Duration = Duration::from_millis(100);
/// Socket buffer asked for on the relay socket (the kernel may cap it).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Data-path counters.
#[derive(Debug, Clone, Default)]
pub struct DataStats {
    /// Frames sent to the relay.
    pub frames_out: u64,
    /// Bytes of those frames.
    pub bytes_out: u64,
    /// Frames received and accepted by the hop check.
    pub frames_in: u64,
    /// Bytes of those frames.
    pub bytes_in: u64,
    /// Frames not sent: no hop session, or the socket buffer was full.
    pub send_dropped: u64,
    /// Frames received that failed the end-to-end open or named no session.
    pub open_dropped: u64,
}

/// What the roles share: the relay socket, the hop, buffers, counters.
#[derive(Debug)]
pub struct Ctx {
    /// The socket to the relay (connected).
    pub socket: UdpSocket,
    /// The hop session manager.
    pub hop: Hop,
    /// Packet buffers.
    pub pool: Pool,
    /// The registry, for roles' sockets.
    pub registry: mio::Registry,
    /// Origin of smoltcp's clock.
    pub epoch: Instant,
    /// Counters.
    pub stats: DataStats,
    /// Control frames waiting to go out.
    pub out: Vec<Vec<u8>>,
    next_token: usize,
}

impl Ctx {
    /// A fresh token for a role's socket.
    pub fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    /// Seals `packet` (at `HEADROOM` in its buffer) on `session`, adds the
    /// hop header and sends it; the buffer goes back to the pool.
    pub fn send_packet(
        &mut self,
        session: &mut E2eSession,
        kind: Kind,
        user: UserId,
        service: ServiceId,
        mut packet: Packet,
    ) {
        let packet_len = packet.len();
        let len = session.seal(kind, user, service, &mut packet.buf, packet_len);
        if len > 0
            && self
                .hop
                .seal_header(&mut packet.buf[..len], kind, user, service)
        {
            self.send_bytes(len, &packet.buf);
        } else {
            self.stats.send_dropped += 1;
        }
        self.pool.put(packet.buf);
    }

    /// Sends a small frame with a hop header around `body` (handshakes
    /// carried end to end).
    pub fn send_body(&mut self, kind: Kind, user: UserId, service: ServiceId, body: &[u8]) {
        let len = proto::wire::HEADER_LEN + body.len();
        let mut buf = self.pool.get();
        if len <= buf.len() {
            buf[proto::wire::HEADER_LEN..len].copy_from_slice(body);
            if self.hop.seal_header(&mut buf[..len], kind, user, service) {
                self.send_bytes(len, &buf);
            } else {
                self.stats.send_dropped += 1;
            }
        }
        self.pool.put(buf);
    }

    fn send_bytes(&mut self, len: usize, buf: &[u8]) {
        match self.socket.send(&buf[..len]) {
            Ok(_) => {
                self.stats.frames_out += 1;
                self.stats.bytes_out += len as u64;
            }
            Err(e) => {
                self.stats.send_dropped += 1;
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "send to relay failed");
                }
            }
        }
    }

    fn flush_out(&mut self) {
        for frame in std::mem::take(&mut self.out) {
            if let Err(e) = self.socket.send(&frame) {
                tracing::debug!(error = %e, "send to relay failed");
            }
        }
    }
}

/// Wall-clock nanoseconds for handshakes.
pub fn unix_nanos() -> u64 {
    relay::control::unix_nanos()
}

/// What a role does with the loop's events.
pub trait Role {
    /// A data-plane frame accepted by the hop check (`buf[..len]`). The
    /// role may keep the buffer (returning `None`) or give it back.
    fn on_frame(
        &mut self,
        ctx: &mut Ctx,
        buf: Vec<u8>,
        len: usize,
        now: Instant,
    ) -> Option<Vec<u8>>;
    /// Readiness on one of the role's tokens.
    fn on_event(&mut self, ctx: &mut Ctx, event: &mio::event::Event, now: Instant);
    /// A new hop session is up.
    fn on_hop_established(&mut self, _ctx: &mut Ctx, _now: Instant) {}
    /// Move bytes, run stacks and timers, send what is queued. Returns
    /// when it next needs a turn without events.
    fn poll(&mut self, ctx: &mut Ctx, now: Instant) -> Option<Instant>;
    /// Publishes its state.
    fn publish(&self, ctx: &Ctx, board: &StatusBoard);
}

/// Opens the socket to the relay: bound to an ephemeral port of the right
/// family, connected, large buffers.
pub fn relay_socket(relay: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(relay);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let any: SocketAddr = if relay.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    sock.bind(&any.into())?;
    sock.connect(&relay.into())?;
    sock.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(sock.into()))
}

/// Runs the loop until `stop` is set.
pub fn run(
    mut poll: Poll,
    mut ctx: Ctx,
    role: &mut dyn Role,
    board: &StatusBoard,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let hop_at = ctx.hop.poll(now, unix_nanos(), &mut ctx.out);
        ctx.flush_out();
        let role_at = role.poll(&mut ctx, now);
        let mut wake = hop_at.min(now + MAX_WAIT);
        if let Some(at) = role_at {
            wake = wake.min(at);
        }
        if now.duration_since(last_publish) >= Duration::from_millis(200) {
            publish(role, &ctx, board);
            last_publish = now;
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for event in events.iter() {
            if event.token() == RELAY {
                drain_relay(&mut ctx, role, now);
            } else {
                role.on_event(&mut ctx, event, now);
            }
        }
    }
    publish(role, &ctx, board);
    Ok(())
}

/// The role's snapshot, with the hop's problems the role does not see.
fn publish(role: &dyn Role, ctx: &Ctx, board: &StatusBoard) {
    role.publish(ctx, board);
    board.add_errors(ctx.hop.problems());
}

/// Takes datagrams from the relay socket until it would block (at most
/// [`RECV_BATCH`] per call; the socket stays readable and the next turn
/// continues, since mio's readiness is edge-triggered we loop here).
fn drain_relay(ctx: &mut Ctx, role: &mut dyn Role, now: Instant) {
    loop {
        for _ in 0..RECV_BATCH {
            let mut buf = ctx.pool.get();
            let n = match ctx.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    ctx.pool.put(buf);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "receive from relay failed");
                    }
                    return;
                }
            };
            let frame = &buf[..n];
            match proto::wire::classify(frame) {
                Ok(Kind::HandshakeResponse | Kind::CookieReply) => {
                    let ev = ctx.hop.on_handshake(frame, now, unix_nanos(), &mut ctx.out);
                    ctx.flush_out();
                    ctx.pool.put(buf);
                    if ev == crate::hop::HopEvent::Established {
                        role.on_hop_established(ctx, now);
                    }
                }
                Ok(kind) if kind.has_hop_header() => {
                    if ctx.hop.accept(frame, now).is_ok() {
                        ctx.stats.frames_in += 1;
                        ctx.stats.bytes_in += n as u64;
                        if let Some(buf) = role.on_frame(ctx, buf, n, now) {
                            ctx.pool.put(buf);
                        }
                    } else {
                        ctx.pool.put(buf);
                    }
                }
                _ => ctx.pool.put(buf),
            }
        }
        // A full batch: let the role move bytes before taking more.
        role.poll(ctx, now);
    }
}

/// Builds the shared context.
pub fn context(poll: &Poll, socket: UdpSocket, hop: Hop) -> io::Result<Ctx> {
    let mut socket = socket;
    poll.registry()
        .register(&mut socket, RELAY, Interest::READABLE)?;
    Ok(Ctx {
        socket,
        hop,
        pool: Pool::new(),
        registry: poll.registry().try_clone()?,
        epoch: Instant::now(),
        stats: DataStats::default(),
        out: Vec::new(),
        next_token: FIRST_ROLE_TOKEN,
    })
}

/// The header fields of an accepted frame.
pub fn header(frame: &[u8]) -> (Kind, UserId, ServiceId) {
    let f = Frame::new_unchecked(frame);
    (f.kind(), f.user(), f.service())
}
