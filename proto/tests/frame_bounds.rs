//! The hop tag covers the whole body of a keepalive, control or end-to-end
//! handshake frame, so a forged one with a known receiver index would cost
//! a relay a MAC over up to a whole datagram before it fails, and count
//! towards the session's `TAG_FAILURE_LIMIT`. Each of those kinds has a
//! largest body (`proto::wire::Kind::max_body_len`): a longer frame is
//! `malformed` before the session look-up, so it costs neither the MAC nor
//! a tag failure, and a genuine frame of the largest size still passes
//! (docs/security.md §7, docs/wire.md "Body bounds").

use proto::datapath::{DropReason, Mode, Verdict};
use proto::hoptag::HopKey;
use proto::ids::{ServiceId, UserId};
use proto::testkit::{user_index, user_key, write_frame, Fixture};
use proto::wire::{Kind, HEADER_LEN, MAX_BODY_LEN};

/// A service the fixture allows user 0 (ids not a multiple of 4).
const ALLOWED: ServiceId = ServiceId(1);

/// A frame of `kind` with a `body`-byte body on user 0's session, tagged
/// with `key`.
fn frame(kind: Kind, body: usize, counter: u64, key: &[u8; 32]) -> Vec<u8> {
    let mut buf = vec![0x5a; HEADER_LEN + body];
    let service = if kind.direction().is_some() {
        ALLOWED
    } else {
        ServiceId(0)
    };
    write_frame(
        &mut buf,
        kind,
        user_index(0),
        counter,
        UserId(0),
        service,
        &HopKey::new(key),
    );
    buf
}

fn tag_failures(fx: &Fixture) -> u32 {
    fx.sessions
        .get(user_index(0))
        .expect("user 0's session")
        .tag_failures()
}

/// What a genuine frame of `kind` gets: handled here, or forwarded.
fn accepted(kind: Kind, v: Verdict) -> bool {
    match kind.direction() {
        None => v == Verdict::Local,
        Some(_) => matches!(v, Verdict::Forward { .. }),
    }
}

const KINDS: [Kind; 4] = [
    Kind::Keepalive,
    Kind::Control,
    Kind::E2eHandshakeUp,
    Kind::E2eHandshakeDown,
];

#[test]
fn an_oversized_forged_frame_is_malformed_and_costs_the_session_nothing() {
    const FORGER: [u8; 32] = [0x66; 32];
    for mode in [Mode::Vpn, Mode::Ztna] {
        for kind in [Kind::Keepalive, Kind::Control, Kind::E2eHandshakeUp] {
            let mut fx = Fixture::new(1, 8);
            let max = kind.max_body_len();
            // Forged, one byte over, and as long as a datagram gets: no
            // session look-up, no MAC, no tag failure.
            for (counter, len) in [(1, max + 1), (2, MAX_BODY_LEN)] {
                let mut forged = frame(kind, len, counter, &FORGER);
                assert_eq!(
                    fx.datapath(mode).process(&mut forged),
                    Verdict::Drop(DropReason::Malformed),
                    "{mode} {kind:?}, body of {len}"
                );
            }
            assert_eq!(tag_failures(&fx), 0, "{mode} {kind:?}: counted");
            assert_eq!(fx.counters.dropped(DropReason::Malformed), 2);
            // The same forgery within the bound reaches the MAC, fails it
            // and counts: what the bound spares the session.
            let mut within = frame(kind, max, 3, &FORGER);
            assert_eq!(
                fx.datapath(mode).process(&mut within),
                Verdict::Drop(DropReason::BadTag),
                "{mode} {kind:?}"
            );
            assert_eq!(tag_failures(&fx), 1, "{mode} {kind:?}");
        }
    }
}

#[test]
fn a_genuine_frame_of_the_largest_size_passes_and_one_byte_more_does_not() {
    let key = user_key(0);
    for kind in KINDS {
        let mut fx = Fixture::new(1, 8);
        if kind == Kind::E2eHandshakeDown {
            // Only a connector sends downstream; user 0's session would
            // call it spoofed. The bound applies before that, to anyone.
            let mut over = frame(kind, kind.max_body_len() + 1, 1, &key);
            assert_eq!(
                fx.datapath(Mode::Ztna).process(&mut over),
                Verdict::Drop(DropReason::Malformed)
            );
            continue;
        }
        let max = kind.max_body_len();
        let mut largest = frame(kind, max, 1, &key);
        let v = fx.datapath(Mode::Ztna).process(&mut largest);
        assert!(accepted(kind, v), "{kind:?}, body of {max}: {v:?}");
        // Correctly tagged, one byte over: still refused, before the MAC.
        let mut over = frame(kind, max + 1, 2, &key);
        assert_eq!(
            fx.datapath(Mode::Ztna).process(&mut over),
            Verdict::Drop(DropReason::Malformed),
            "{kind:?}"
        );
        // The refused frame's counter was never marked: a genuine frame
        // with it passes.
        let mut next = frame(kind, max, 2, &key);
        let v = fx.datapath(Mode::Ztna).process(&mut next);
        assert!(accepted(kind, v), "{kind:?}: {v:?}");
        assert_eq!(tag_failures(&fx), 0);
    }
}

/// In `forward` mode nothing is authenticated, but the bound is a shape
/// rule: an oversized control frame is refused there too.
#[test]
fn the_bound_holds_in_forward_mode() {
    let mut fx = Fixture::new(1, 8);
    let mut over = frame(Kind::Control, Kind::Control.max_body_len() + 1, 1, &[0; 32]);
    assert_eq!(
        fx.datapath(Mode::Forward).process(&mut over),
        Verdict::Drop(DropReason::Malformed)
    );
}
