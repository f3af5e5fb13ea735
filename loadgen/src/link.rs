//! The blocking hop handshake of a synthetic agent with a relay, over a UDP
//! socket. What it gives, [`HopLink`], is `proto`'s sans-IO agent side of
//! the session: tagging frames to send, checking frames received.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use proto::handshake::{CookieJar, HopInitiator, LocalIdentity, Trust};
use proto::identity::{CaPublicKey, Role};
use proto::ids::ReceiverIndex;
use proto::link::HopLink;
use proto::wire::{self, Kind};

/// How long to wait for a handshake answer before resending.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Initiations sent before giving up.
pub const HANDSHAKE_ATTEMPTS: u32 = 4;

/// Runs the hop handshake with the relay at `relay` (static key
/// `relay_static`) from `socket`, as `me`, naming our side `local_index`.
/// Blocking; resends up to [`HANDSHAKE_ATTEMPTS`] times and answers a cookie
/// reply. Datagrams that are not the answer are ignored. The link's first
/// frame, a keepalive, is sent before it is returned (key confirmation: the
/// relay routes to the session only after it).
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
                    // Confirm the keys at once: the relay routes nothing
                    // to the session before a frame on it passed the tag.
                    let mut link = HopLink::from_keys(keys);
                    socket.send_to(&link.keepalive(), relay)?;
                    return Ok(link);
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

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A hop link with fixed keys, as a handshake with a relay would give it
/// (receiver index 7 here, 9 at the relay), for unit tests of what sends
/// and receives on one.
#[cfg(test)]
pub(crate) fn test_link(send_key: [u8; 32], recv_key: [u8; 32]) -> HopLink {
    test_link_at(proto::ids::ReceiverIndex(7), send_key, recv_key)
}

/// [`test_link`] with receiver index `local_index` on this side.
#[cfg(test)]
pub(crate) fn test_link_at(
    local_index: proto::ids::ReceiverIndex,
    send_key: [u8; 32],
    recv_key: [u8; 32],
) -> HopLink {
    use proto::ids::ReceiverIndex;
    let pki = crate::pki::Pki::new(1_800_000_000);
    let relay = pki
        .node(1000, "relay-1", proto::identity::Role::Relay, &[])
        .expect("a relay certificate");
    HopLink::from_keys(proto::handshake::HopSessionKeys {
        local_index,
        remote_index: ReceiverIndex(9),
        send_key,
        recv_key,
        peer: relay.certificate().clone(),
        established_at: std::time::Instant::now(),
    })
}
