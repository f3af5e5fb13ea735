//! Arbitrary initiations at the responders: the relay's hop responder
//! (with and without load, so through the cookie and rate-limit paths) and
//! the connector's end-to-end responder.
//!
//! The first byte picks how the rest is used:
//!
//! * bit 0: the hop responder is under load (mac2 required);
//! * bit 1: raw bytes get a correct mac1 (and, under load, the source's
//!   real cookie in mac2), so they reach the Noise decryption;
//! * bit 2: "deep": the rest is the *payload* of a real Noise initiation
//!   (timestamp, index, certificate as the fuzzer likes), so the payload
//!   parser, certificate parser and every trust check are reached;
//! * bit 3: deep initiations come from a key no certificate binds;
//! * bit 4: the end-to-end responder instead of the hop one (the next byte
//!   is then the user id in the hop header).
//!
//! Whatever the input, a responder that returns a session must have
//! checked the certificate: it verifies under the CA at the handshake's
//! time, has a role the responder trusts, binds the static key the
//! initiator used, and (end to end) is the `User` certificate of the
//! header's user id.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use proto::handshake::{
    CookieJar, E2eResponder, HopInitiator, HopResponder, InitOutcome, LocalIdentity, Trust,
};
use proto::identity::{Certificate, Role};
use proto::ids::{ReceiverIndex, UserId};
use proto::testkit::handshake::{
    e2e_prologue, hop_init_frame, restamp, static_keypair, Nodes, RawNoise, HOP_PROLOGUE, NOW_NS,
    NOW_UNIX, SERVICE,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

const COOKIE_SECRET: [u8; 32] = [0xc0; 32];
const STRANGER_SEED: u8 = 9;

struct State {
    nodes: Nodes,
    now: Instant,
    source: SocketAddr,
    /// The cookie the hop responder gives `source` (cookies depend only on
    /// the secret, the source and the epoch, and `now` never moves).
    jar: CookieJar,
}

static STATE: LazyLock<State> = LazyLock::new(|| {
    let nodes = Nodes::new();
    let now = Instant::now();
    let source: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut jar = CookieJar::new(nodes.relay.public_key());
    let (init, frame) = HopInitiator::new(
        &nodes.agent,
        nodes.relay.public_key(),
        nodes.agent_trust(),
        ReceiverIndex(77),
        &jar,
        now,
        NOW_NS,
    )
    .unwrap();
    let mut responder = hop_responder(&nodes, now);
    let mut rng = StdRng::seed_from_u64(0);
    let Ok(InitOutcome::CookieReply(reply)) = responder.handle_init(
        &frame,
        source,
        true,
        ReceiverIndex(1),
        now,
        NOW_NS,
        &mut rng,
    ) else {
        panic!("no cookie reply under load");
    };
    init.handle_cookie_reply(&reply, &mut jar, now).unwrap();
    State {
        nodes,
        now,
        source,
        jar,
    }
});

fn hop_responder(nodes: &Nodes, now: Instant) -> HopResponder {
    HopResponder::new(nodes.relay.clone(), nodes.relay_trust(), COOKIE_SECRET, now)
}

/// What every session a responder returns must satisfy.
fn check_peer(peer: &Certificate, trust: &Trust, initiator_static: Option<&[u8; 32]>) {
    assert!(
        peer.verify(&trust.ca, NOW_UNIX).is_ok(),
        "session with a certificate that does not verify: {peer:?}"
    );
    assert!(trust.allowed_roles.contains(&peer.body.role));
    if let Some(key) = initiator_static {
        assert_eq!(&peer.body.static_key, key, "certificate of another key");
    }
}

fn initiator_key(st: &State, stranger: bool) -> ([u8; 32], [u8; 32]) {
    if stranger {
        let kp = static_keypair(STRANGER_SEED);
        (kp.private, kp.public)
    } else {
        let a: &LocalIdentity = &st.nodes.agent;
        (*a.private_key(), *a.public_key())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let st = &*STATE;
    let under_load = mode & 1 != 0;
    let fix_macs = mode & 2 != 0;
    let deep = mode & 4 != 0;
    let stranger = mode & 8 != 0;
    let mut rng = StdRng::seed_from_u64(1);
    let (private, public) = initiator_key(st, stranger);

    if mode & 16 != 0 {
        let Some((&user, rest)) = rest.split_first() else {
            return;
        };
        // Users 40..=43 around the agent's 42, so both the match and the
        // mismatch are common.
        let user = UserId(40 + u32::from(user & 3));
        let mut responder =
            E2eResponder::new(st.nodes.connector.clone(), st.nodes.connector_trust());
        let body = if deep {
            let sender = rest.get(8..12).map_or([0; 4], |b| [b[0], b[1], b[2], b[3]]);
            let Some((_, noise)) = RawNoise::initiate(
                &private,
                st.nodes.connector.public_key(),
                &e2e_prologue(user, SERVICE),
                rest,
            ) else {
                return;
            };
            let mut body = sender.to_vec();
            body.extend_from_slice(&noise);
            body
        } else {
            rest.to_vec()
        };
        if let Ok((_, keys)) = responder.handle_init(&body, user, SERVICE, ReceiverIndex(3), NOW_NS)
        {
            check_peer(&keys.peer, &st.nodes.connector_trust(), Some(&public));
            assert_eq!(keys.peer.body.role, Role::User);
            assert_eq!(keys.peer.body.id, user.0);
        }
        return;
    }

    let mut responder = hop_responder(&st.nodes, st.now);
    let frame = if deep {
        let sender = rest.get(8..12).map_or([0; 4], |b| [b[0], b[1], b[2], b[3]]);
        let Some((_, noise)) =
            RawNoise::initiate(&private, st.nodes.relay.public_key(), HOP_PROLOGUE, rest)
        else {
            return;
        };
        let Some(mut f) = hop_init_frame(
            ReceiverIndex(u32::from_be_bytes(sender)),
            &noise,
            st.nodes.relay.public_key(),
        ) else {
            return;
        };
        restamp(&mut f, st.nodes.relay.public_key(), Some(&st.jar), st.now);
        f
    } else {
        let mut f = rest.to_vec();
        if fix_macs {
            restamp(&mut f, st.nodes.relay.public_key(), Some(&st.jar), st.now);
        }
        f
    };
    let out = responder.handle_init(
        &frame,
        st.source,
        under_load,
        ReceiverIndex(1),
        st.now,
        NOW_NS,
        &mut rng,
    );
    match out {
        Ok(InitOutcome::Established { response, keys }) => {
            let key = deep.then_some(&public);
            check_peer(&keys.peer, &st.nodes.relay_trust(), key);
            assert_eq!(keys.local_index, ReceiverIndex(1));
            assert!(proto::handshake::parse(&response).is_ok());
        }
        Ok(InitOutcome::CookieReply(reply)) => {
            // Only under load, and never larger than what it answers.
            assert!(under_load);
            assert!(reply.len() <= frame.len());
        }
        Err(_) => {}
    }
});
