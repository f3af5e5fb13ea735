//! Arbitrary answers to an agent's initiations: hop responses and cookie
//! replies to a `HopInitiator`, end-to-end responses to an
//! `E2eInitiator`.
//!
//! The first byte picks how the rest is used:
//!
//! * bit 0: "deep": the rest is the *payload* of a real Noise response
//!   (index and certificate as the fuzzer likes) from a responder that
//!   read the initiation, so the payload parser, the certificate parser
//!   and the trust checks are reached;
//! * bit 1: deep responses come from a key no certificate binds (the
//!   initiator then pinned the wrong key: Noise itself fails);
//! * bit 2: raw frames get the initiator's receiver index and a correct
//!   mac1;
//! * bit 3: the end-to-end initiator instead of the hop one;
//! * bit 4: (hop, raw) the frame goes to `handle_cookie_reply` as well.
//!
//! A session the initiator returns must be with the node it initiated to:
//! a certificate that verifies under the CA, with a trusted role, binding
//! the static key it pinned.
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use proto::handshake::frames::MACS_LEN;
use proto::handshake::{CookieJar, E2eInitiator, HopInitiator};
use proto::identity::Certificate;
use proto::ids::ReceiverIndex;
use proto::testkit::handshake::{
    e2e_prologue, hop_response_frame, restamp, static_keypair, Nodes, RawNoise, HOP_PROLOGUE,
    NOW_NS, NOW_UNIX, SERVICE, USER,
};

const LOCAL: ReceiverIndex = ReceiverIndex(0x0a0b_0c0d);

static NODES: LazyLock<Nodes> = LazyLock::new(Nodes::new);

fn check_peer(peer: &Certificate, pinned: &[u8; 32], nodes: &Nodes, e2e: bool) {
    let trust = if e2e {
        nodes.e2e_trust()
    } else {
        nodes.agent_trust()
    };
    assert!(
        peer.verify(&trust.ca, NOW_UNIX).is_ok(),
        "session with a certificate that does not verify: {peer:?}"
    );
    assert!(trust.allowed_roles.contains(&peer.body.role));
    assert_eq!(&peer.body.static_key, pinned, "certificate of another key");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let n = &*NODES;
    let deep = mode & 1 != 0;
    let stranger = mode & 2 != 0;
    let fix = mode & 4 != 0;
    let responder_private = if stranger {
        static_keypair(9).private
    } else {
        *n.relay.private_key()
    };
    let now = Instant::now();

    if mode & 8 != 0 {
        let connector_private = if stranger {
            static_keypair(9).private
        } else {
            *n.connector.private_key()
        };
        let Ok((mut init, body)) = E2eInitiator::new(
            &n.agent,
            n.connector.public_key(),
            n.e2e_trust(),
            USER,
            SERVICE,
            LOCAL,
            NOW_NS,
        ) else {
            return;
        };
        let down = if deep {
            let prologue = e2e_prologue(USER, SERVICE);
            let Some(raw) = RawNoise::respond_to(&connector_private, &prologue, &body[4..]) else {
                return;
            };
            let Some(msg) = raw.reply(rest) else {
                return;
            };
            let sender = rest.get(..4).map_or([0; 4], |b| [b[0], b[1], b[2], b[3]]);
            let mut down = sender.to_vec();
            down.extend_from_slice(&LOCAL.0.to_be_bytes());
            down.extend_from_slice(&msg);
            down
        } else {
            let mut down = rest.to_vec();
            if fix && down.len() >= 8 {
                down[4..8].copy_from_slice(&LOCAL.0.to_be_bytes());
            }
            down
        };
        if let Ok(keys) = init.handle_response(&down, USER, SERVICE, NOW_NS) {
            check_peer(&keys.peer, n.connector.public_key(), n, true);
            assert_eq!(keys.local_index, LOCAL);
        }
        // Finished either way: a second answer is refused.
        assert!(init.handle_response(&down, USER, SERVICE, NOW_NS).is_err());
        return;
    }

    let mut jar = CookieJar::new(n.relay.public_key());
    let Ok((mut init, frame)) = HopInitiator::new(
        &n.agent,
        n.relay.public_key(),
        n.agent_trust(),
        LOCAL,
        &jar,
        now,
        NOW_NS,
    ) else {
        return;
    };
    let resp = if deep {
        let noise = &frame[10..frame.len() - MACS_LEN];
        let Some(raw) = RawNoise::respond_to(&responder_private, HOP_PROLOGUE, noise) else {
            return;
        };
        let Some(msg) = raw.reply(rest) else {
            return;
        };
        let sender = rest.get(..4).map_or([0; 4], |b| [b[0], b[1], b[2], b[3]]);
        let Some(f) = hop_response_frame(
            ReceiverIndex(u32::from_be_bytes(sender)),
            LOCAL,
            &msg,
            n.agent.public_key(),
        ) else {
            return;
        };
        f
    } else {
        let mut f = rest.to_vec();
        if fix {
            if f.len() >= 12 {
                // The receiver index of a response (bytes 8..12) and of a
                // cookie reply (bytes 4..8).
                let at = if mode & 16 == 0 { 8 } else { 4 };
                f[at..at + 4].copy_from_slice(&LOCAL.0.to_be_bytes());
            }
            restamp(&mut f, n.agent.public_key(), None, now);
        }
        f
    };
    if !deep && mode & 16 != 0 {
        // Forging a cookie reply needs the relay's key and our mac1.
        assert!(init.handle_cookie_reply(&resp, &mut jar, now).is_err());
        assert!(jar.fresh_cookie(now).is_none());
    }
    if let Ok(keys) = init.handle_response(&resp, now, NOW_NS) {
        check_peer(&keys.peer, n.relay.public_key(), n, false);
        assert_eq!(keys.local_index, LOCAL);
        assert!(init.handle_response(&resp, now, NOW_NS).is_err());
    }
});
