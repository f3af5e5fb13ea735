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
use proto::handshake::LocalIdentity;
use proto::ids::{ServiceId, UserId};
use proto::wire::{Frame, Kind};
use relay::renewal::{IdentityFiles, Renewal};

use crate::e2e::E2eSession;
use crate::hop::Hop;
use crate::pool::{Packet, Pool};
use crate::status::StatusBoard;

/// The relay socket's token.
pub const RELAY: Token = Token(0);
/// First token the roles may hand out.
pub const FIRST_ROLE_TOKEN: usize = 16;
/// Datagrams taken from the relay socket per batch before the role moves
/// bytes again.
pub const RECV_BATCH: usize = 256;
/// Datagrams one `Io::poll` can hand over at most: the batch is a soft
/// cap (the GRO run being split when it is reached is finished), and a run
/// of 64 KiB holds at most this many of the smallest frames (a bare hop
/// header). Sized once, so the inbox never grows on the packet path.
pub const INBOX_CAPACITY: usize = RECV_BATCH + crate::pool::BUF_LEN / proto::wire::HEADER_LEN;
/// Receive buffers of the relay socket (each holds one GRO run, 64 KiB).
pub const RECV_BUFFERS: usize = 32;
/// Longest wait for readiness: the loop also checks its stop flag.
pub const MAX_WAIT: Duration = Duration::from_millis(100);

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
    /// End-to-end keepalives sent: empty records answering a one-way flow
    /// (`e2e::PASSIVE_KEEPALIVE`).
    pub keepalives_out: u64,
    /// End-to-end keepalives received (opened, nothing delivered).
    pub keepalives_in: u64,
}

/// What the roles share: the relay socket, the hop, buffers, counters.
#[derive(Debug)]
pub struct Ctx {
    /// Batched I/O on the socket to the relay: `recvmmsg` with `UDP_GRO`,
    /// sends staged and grouped into `UDP_SEGMENT` trains, flushed once
    /// per turn (the relay's own `mmsg` backend).
    io: relay::io::Io,
    /// The relay's address.
    relay: SocketAddr,
    /// A second handle on the same socket, registered with `mio` only to
    /// wake the loop when datagrams arrive.
    _wake: UdpSocket,
    /// Datagrams received and not yet handled: (pooled buffer, length).
    inbox: Vec<(Vec<u8>, usize)>,
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
    /// A datagram-sized scratch buffer for the roles' UDP relaying: taken
    /// with `std::mem::take` and put back, so no turn zeroes 64 KiB.
    pub scratch: Vec<u8>,
    /// The answer to a relay's keepalive probe, built once.
    pong: Vec<u8>,
    /// This agent's key and certificate files, watched for a renewal.
    pub renewal: Option<IdentityFiles>,
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

    /// Stages a frame for the relay (sent by [`Ctx::flush`], grouped with
    /// the frames around it).
    fn send_bytes(&mut self, len: usize, buf: &[u8]) {
        match self.io.send_to(self.relay, &buf[..len]) {
            Ok(()) => {
                self.stats.frames_out += 1;
                self.stats.bytes_out += len as u64;
            }
            Err(e) => {
                self.stats.send_dropped += 1;
                tracing::debug!(error = %e, "send to relay failed");
            }
        }
    }

    /// Writes what every role reports of the hop and the frames.
    pub fn fill_link_status(&self, st: &mut crate::status::LinkStatus) {
        crate::status::set_text(&mut st.relay, self.hop.relay());
        st.hop_up = self.hop.is_up();
        st.last_handshake_unix = self.hop.stats.last_handshake_unix;
        st.handshakes = self.hop.stats.handshakes;
        st.hop_lost = self.hop.stats.lost;
        st.frames_out = self.stats.frames_out;
        st.frames_in = self.stats.frames_in;
        st.bytes_out = self.stats.bytes_out;
        st.bytes_in = self.stats.bytes_in;
        st.send_dropped = self.stats.send_dropped;
        st.open_dropped = self.stats.open_dropped;
        st.keepalives_out = self.stats.keepalives_out;
        st.keepalives_in = self.stats.keepalives_in;
        st.cert_not_after = self.hop.certificate().body.not_after;
        st.cert_renewals = self.hop.stats.renewals;
    }

    /// Sends the hop's control frames and everything staged.
    pub fn flush(&mut self) {
        for i in 0..self.out.len() {
            if let Err(e) = self.io.send_to(self.relay, &self.out[i]) {
                tracing::debug!(error = %e, "send to relay failed");
            }
        }
        self.out.clear();
        if let Err(e) = self.io.flush() {
            tracing::debug!(error = %e, "send to relay failed");
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
    /// This agent's certificate was renewed (same id, role and key): new
    /// end-to-end handshakes present `identity`.
    fn renew(&mut self, identity: &LocalIdentity);
    /// Move bytes, run stacks and timers, send what is queued. Returns
    /// when it next needs a turn without events.
    fn poll(&mut self, ctx: &mut Ctx, now: Instant) -> Option<Instant>;
    /// Publishes its state.
    fn publish(&self, ctx: &Ctx, board: &StatusBoard);
}

/// The relay socket's I/O settings: GRO on receive, GSO on send.
pub fn relay_io_config() -> relay::io::IoConfig {
    relay::io::IoConfig {
        batch: RECV_BATCH,
        buffers: RECV_BUFFERS,
        buffer_size: 65_536,
        gro: true,
        gso: true,
        ..relay::io::IoConfig::default()
    }
}

/// Opens the socket to the relay (an ephemeral port of the relay's
/// family, large buffers, `UDP_GRO`) with batched I/O on it, and a second
/// handle for readiness.
pub fn relay_socket(relay: SocketAddr) -> Result<(relay::io::Io, UdpSocket), relay::io::IoError> {
    let any: SocketAddr = if relay.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let cfg = relay_io_config();
    let socket = relay::io::bind_socket(any, &cfg)?;
    let wake = socket
        .try_clone()
        .map_err(|source| relay::io::IoError::Sys { op: "dup", source })?;
    let io = relay::io::Io::new(relay::io::Backend::Mmsg, socket, cfg)?;
    Ok((io, UdpSocket::from_std(wake)))
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
    let mut last_renewal_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now.duration_since(last_renewal_check) >= RENEWAL_POLL {
            last_renewal_check = now;
            renew(&mut ctx, role);
        }
        let hop_at = ctx.hop.poll(now, unix_nanos(), &mut ctx.out);
        let role_at = role.poll(&mut ctx, now);
        ctx.flush();
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
        ctx.flush();
    }
    publish(role, &ctx, board);
    Ok(())
}

/// How often the key and certificate files are looked at for a renewal.
pub const RENEWAL_POLL: Duration = Duration::from_secs(1);

/// Takes a renewed certificate from the identity files, if one is there:
/// the hop handshakes with it at once, the role's next end-to-end
/// handshakes present it. Sessions up carry on meanwhile.
fn renew(ctx: &mut Ctx, role: &mut dyn Role) {
    let Some(files) = &mut ctx.renewal else {
        return;
    };
    match files.poll(unix_nanos() / 1_000_000_000) {
        Renewal::Unchanged => {}
        Renewal::Renewed(identity) => {
            let body = &identity.certificate().body;
            tracing::info!(cert = %files.cert_path().display(), name = %body.name, not_after = body.not_after, "certificate renewed; handshaking with it");
            role.renew(&identity);
            ctx.hop.renew(identity);
        }
        Renewal::Refused { error, first } => {
            if first {
                ctx.hop.report(error.to_string());
            }
        }
    }
}

/// The role's snapshot, with the hop's problems the role does not see.
fn publish(role: &dyn Role, ctx: &Ctx, board: &StatusBoard) {
    role.publish(ctx, board);
    board.add_errors(ctx.hop.problems());
}

/// Takes datagrams from the relay socket until it would block, a batch at
/// a time (mio's readiness is edge-triggered: everything queued must be
/// taken now). Between batches the role moves bytes, so a long burst
/// cannot starve the kernel sockets on the other side.
fn drain_relay(ctx: &mut Ctx, role: &mut dyn Role, now: Instant) {
    loop {
        let Ctx {
            io,
            pool,
            inbox,
            relay,
            ..
        } = ctx;
        let relay = *relay;
        let polled = io.poll(Duration::ZERO, &mut |from, bytes: &mut [u8]| {
            if from == relay {
                let mut buf = pool.get();
                if let Some(dst) = buf.get_mut(..bytes.len()) {
                    dst.copy_from_slice(bytes);
                    inbox.push((buf, bytes.len()));
                } else {
                    pool.put(buf);
                }
            }
            relay::io::Action::Consume
        });
        let received = match polled {
            Ok(stats) => stats.received,
            Err(e) => {
                tracing::debug!(error = %e, "receive from relay failed");
                0
            }
        };
        for i in 0..ctx.inbox.len() {
            let (buf, n) = std::mem::take(&mut ctx.inbox[i]);
            handle_datagram(ctx, role, buf, n, now);
        }
        ctx.inbox.clear();
        if received < RECV_BATCH {
            return;
        }
        // A full batch: let the role move bytes before taking more.
        role.poll(ctx, now);
        ctx.flush();
    }
}

fn handle_datagram(ctx: &mut Ctx, role: &mut dyn Role, buf: Vec<u8>, n: usize, now: Instant) {
    let frame = &buf[..n];
    match proto::wire::classify(frame) {
        Ok(Kind::HandshakeResponse | Kind::CookieReply) => {
            let ev = ctx.hop.on_handshake(frame, now, unix_nanos(), &mut ctx.out);
            ctx.pool.put(buf);
            if ev == crate::hop::HopEvent::Established {
                role.on_hop_established(ctx, now);
            }
        }
        Ok(kind) if kind.has_hop_header() => {
            if ctx.hop.accept(frame, now).is_ok() {
                ctx.stats.frames_in += 1;
                ctx.stats.bytes_in += n as u64;
                if kind == Kind::Control && Hop::is_probe(frame) {
                    // Answered at once, without allocating.
                    ctx.pool.put(buf);
                    ctx.hop.stats.probes_answered += 1;
                    let pong = std::mem::take(&mut ctx.pong);
                    let id = ctx.hop.self_id();
                    ctx.send_body(Kind::Control, UserId(id), ServiceId(0), &pong);
                    ctx.pong = pong;
                    return;
                }
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

/// Builds the shared context.
pub fn context(
    poll: &Poll,
    (io, mut wake): (relay::io::Io, UdpSocket),
    hop: Hop,
) -> io::Result<Ctx> {
    poll.registry()
        .register(&mut wake, RELAY, Interest::READABLE)?;
    Ok(Ctx {
        relay: hop.relay(),
        io,
        _wake: wake,
        inbox: Vec::with_capacity(INBOX_CAPACITY),
        hop,
        pool: Pool::new(),
        registry: poll.registry().try_clone()?,
        epoch: Instant::now(),
        stats: DataStats::default(),
        out: Vec::new(),
        scratch: vec![0; crate::pool::BUF_LEN],
        pong: crate::hop::pong_body(),
        renewal: None,
        next_token: FIRST_ROLE_TOKEN,
    })
}

/// The header fields of an accepted frame.
pub fn header(frame: &[u8]) -> (Kind, UserId, ServiceId) {
    let f = Frame::new_unchecked(frame);
    (f.kind(), f.user(), f.service())
}
