//! Cookie replies: a real one from a relay under load, with bytes flipped
//! by the fuzzer, given to the initiator that asked; and arbitrary frames
//! at the relay's mac2 check.
//!
//! Input: a mode byte (bit 0: IPv6 source), 18 bytes of source address
//! and port, then an XOR mask over the 64-byte reply (missing bytes: 0).
//!
//! Every byte of a cookie reply is checked (kind, reserved bytes, receiver
//! index, nonce, sealed cookie), so the initiator accepts it exactly when
//! the mask is zero. Once it did, its re-sent initiation passes the
//! relay's mac2 check from that source and from no other.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use proto::handshake::{CookieChecker, CookieJar, HopInitiator, HopResponder, InitOutcome};
use proto::ids::ReceiverIndex;
use proto::testkit::handshake::{Nodes, NOW_NS};
use rand::rngs::StdRng;
use rand::SeedableRng;

static NODES: LazyLock<Nodes> = LazyLock::new(Nodes::new);

fn source(mode: u8, b: &[u8; 18]) -> SocketAddr {
    let port = u16::from_be_bytes([b[16], b[17]]);
    let ip = if mode & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut addr = [0u8; 18];
    let n = rest.len().min(18);
    addr[..n].copy_from_slice(&rest[..n]);
    let mask = &rest[n..];
    let src = source(mode, &addr);
    let nodes = &*NODES;
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(u64::from(mode));

    // The relay's mac2 check takes any bytes.
    let checker = CookieChecker::new(nodes.relay.public_key(), [3; 32], now);
    let mut mac = [0u8; 16];
    let m = mask.len().min(16);
    mac[..m].copy_from_slice(&mask[..m]);
    let _ = checker.check_mac2(mask, &mac, src, now);
    let _ = checker.check_mac1(mask, &mac);

    let mut responder = HopResponder::new(nodes.relay.clone(), nodes.relay_trust(), [3; 32], now);
    let mut jar = CookieJar::new(nodes.relay.public_key());
    let (mut init, frame) = HopInitiator::new(
        &nodes.agent,
        nodes.relay.public_key(),
        nodes.agent_trust(),
        ReceiverIndex(5),
        &jar,
        now,
        NOW_NS,
    )
    .unwrap();
    let Ok(InitOutcome::CookieReply(mut reply)) =
        responder.handle_init(&frame, src, true, ReceiverIndex(1), now, NOW_NS, &mut rng)
    else {
        panic!("an initiation without mac2 under load got no cookie reply");
    };
    for (r, m) in reply.iter_mut().zip(mask) {
        *r ^= m;
    }
    let untouched = mask.iter().take(reply.len()).all(|&m| m == 0);
    let accepted = init.handle_cookie_reply(&reply, &mut jar, now).is_ok();
    assert_eq!(accepted, untouched, "mask {mask:?}");
    assert_eq!(jar.fresh_cookie(now).is_some(), accepted);
    if !accepted {
        return;
    }
    let again = init.init_frame(&jar, now);
    let other = SocketAddr::new(src.ip(), src.port().wrapping_add(1));
    assert!(matches!(
        responder.handle_init(&again, other, true, ReceiverIndex(1), now, NOW_NS, &mut rng),
        Ok(InitOutcome::CookieReply(_))
    ));
    assert!(matches!(
        responder.handle_init(&again, src, true, ReceiverIndex(1), now, NOW_NS, &mut rng),
        Ok(InitOutcome::Established { .. })
    ));
});
