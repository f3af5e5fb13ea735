//! The agent side of a hop session with a relay: the hop handshake over a
//! UDP socket, then tagging frames to send and checking frames received.
//!
//! Several links may share one socket (one synthetic host with many users);
//! the relay tells them apart by receiver index, and so does the receiver
//! here ([`HopLink::local_index`]).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use proto::handshake::{CookieJar, HopInitiator, HopSessionKeys, LocalIdentity, Trust};
use proto::hoptag::HopKey;
use proto::identity::{CaPublicKey, Certificate, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::replay::ReplayWindow;
use proto::wire::{self, Frame, HeaderRepr, Kind, DEFAULT_TTL, HEADER_LEN};

/// How long to wait for a handshake answer before resending.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Initiations sent before giving up.
pub const HANDSHAKE_ATTEMPTS: u32 = 4;

/// Why a received frame was not accepted by a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkDrop {
    /// Not a well-formed data-plane frame.
    #[error("malformed frame")]
    Malformed,
    /// Addressed to another link.
    #[error("frame for another receiver index")]
    WrongReceiver,
    /// The hop tag did not verify.
    #[error("bad hop tag")]
    BadTag,
    /// Replayed or too old.
    #[error("replayed hop counter")]
    Replay,
}

/// An established hop session, agent side.
#[derive(Debug)]
pub struct HopLink {
    local_index: ReceiverIndex,
    remote_index: ReceiverIndex,
    send: HopKey,
    next_counter: u64,
    recv: HopKey,
    window: ReplayWindow,
    peer: Certificate,
}

impl HopLink {
    /// Runs the hop handshake with the relay at `relay` (static key
    /// `relay_static`) from `socket`, as `me`, naming our side
    /// `local_index`. Blocking; resends up to [`HANDSHAKE_ATTEMPTS`] times
    /// and answers a cookie reply. Datagrams that are not the answer are
    /// ignored.
    pub fn handshake(
        socket: &UdpSocket,
        relay: SocketAddr,
        relay_static: &[u8; 32],
        me: &LocalIdentity,
        ca: CaPublicKey,
        local_index: ReceiverIndex,
    ) -> anyhow::Result<HopLink> {
        let mut jar = CookieJar::new(relay_static);
        let (mut initiator, mut init) = HopInitiator::new(
            me,
            relay_static,
            Trust::new(ca, &[Role::Relay]),
            local_index,
            &jar,
            Instant::now(),
            relay::control::unix_nanos(),
        )?;
        let mut buf = vec![0u8; 65536];
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        for attempt in 1..=HANDSHAKE_ATTEMPTS {
            socket.send_to(&init, relay)?;
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            while Instant::now() < deadline {
                let (n, from) = match socket.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if is_timeout(&e) => break,
                    Err(e) => return Err(e.into()),
                };
                if from != relay {
                    continue;
                }
                match wire::classify(&buf[..n]) {
                    Ok(Kind::HandshakeResponse) => {
                        let keys = initiator.handle_response(
                            &buf[..n],
                            Instant::now(),
                            relay::control::unix_nanos(),
                        )?;
                        return Ok(HopLink::from_keys(keys));
                    }
                    Ok(Kind::CookieReply) => {
                        initiator.handle_cookie_reply(&buf[..n], &mut jar, Instant::now())?;
                        init = initiator.init_frame(&jar, Instant::now());
                        break;
                    }
                    _ => continue,
                }
            }
            tracing::debug!(attempt, %relay, "hop handshake: no answer yet");
        }
        anyhow::bail!(
            "no hop handshake answer from relay {relay} after {HANDSHAKE_ATTEMPTS} attempts; is it running, and is its public key the one configured?"
        )
    }

    /// The link a completed handshake gives.
    pub fn from_keys(keys: HopSessionKeys) -> HopLink {
        HopLink {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: HopKey::new(&keys.send_key),
            next_counter: 0,
            recv: HopKey::new(&keys.recv_key),
            window: ReplayWindow::default(),
            peer: keys.peer,
        }
    }

    /// The index the relay puts in frames to us.
    pub fn local_index(&self) -> ReceiverIndex {
        self.local_index
    }

    /// The index we put in frames to the relay.
    pub fn remote_index(&self) -> ReceiverIndex {
        self.remote_index
    }

    /// The relay's certificate.
    pub fn peer(&self) -> &Certificate {
        &self.peer
    }

    /// The next hop counter this link will use.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Writes a hop header for a frame filling all of `frame` (body already
    /// in place or written later: the tag covers only the header) and tags
    /// it with the next counter.
    pub fn write_header(&mut self, frame: &mut [u8], kind: Kind, user: UserId, service: ServiceId) {
        let body_len = u16::try_from(frame.len().saturating_sub(HEADER_LEN)).unwrap_or(u16::MAX);
        let repr = HeaderRepr {
            kind,
            ttl: DEFAULT_TTL,
            receiver: self.remote_index,
            counter: 0,
            user,
            service,
            body_len,
        };
        if repr.emit(frame).is_ok() {
            self.retag(frame);
        }
    }

    /// Gives an already built frame the next counter and a fresh tag: how
    /// the load generator resends pre-built frames at line rate.
    #[inline]
    pub fn retag(&mut self, frame: &mut [u8]) {
        let mut f = Frame::new_unchecked(frame);
        f.set_counter(self.next_counter);
        self.next_counter += 1;
        let tag = self.send.tag(f.tagged());
        f.set_tag(&tag);
    }

    /// Checks a frame the relay sent on this link: receiver index, tag,
    /// then replay.
    #[inline]
    pub fn accept(&mut self, frame: &[u8]) -> Result<(), LinkDrop> {
        let f = Frame::new_checked(frame).map_err(|_| LinkDrop::Malformed)?;
        if f.receiver() != self.local_index {
            return Err(LinkDrop::WrongReceiver);
        }
        if !self.window.check(f.counter()) {
            return Err(LinkDrop::Replay);
        }
        if !self.recv.verify(f.tagged(), f.tag()) {
            return Err(LinkDrop::BadTag);
        }
        if !self.window.update(f.counter()) {
            return Err(LinkDrop::Replay);
        }
        Ok(())
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
