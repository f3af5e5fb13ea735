//! A real relay on loopback, real handshakes, real frames: what arrives,
//! what is dropped, and that the drops are counted.

use std::time::Duration;

use proto::datapath::DropReason;
use proto::wire::{Kind, HEADER_LEN};
use tests::{backends, ids, payload, Rig, ALLOWED, DENIED, USER};

#[test]
fn allowed_traffic_arrives_byte_exact_both_ways() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        let sent: Vec<Vec<u8>> = (0..20u8)
            .map(|i| payload(28 + usize::from(i) * 70, i))
            .collect();
        for p in &sent {
            let f = rig.user_frame(ALLOWED, p);
            rig.send_from_user(&f);
        }
        let got = rig.connector_receive(sent.len(), Duration::from_secs(5));
        assert_eq!(got.len(), sent.len(), "{io}: frames lost");
        for (g, p) in got.iter().zip(&sent) {
            assert_eq!(ids(g), (USER, ALLOWED));
            assert_eq!(&g[HEADER_LEN..], &p[..], "{io}: payload changed");
        }

        // And back: the connector answers, the relay routes it to the user.
        let mut reply = vec![0u8; HEADER_LEN + 100];
        reply[HEADER_LEN..].copy_from_slice(&payload(100, 9));
        rig.connector
            .write_header(&mut reply, Kind::DataDown, USER, ALLOWED);
        rig.connector_socket
            .send_to(&reply, rig.world.relay_addr())
            .unwrap();
        let back = rig.user_receive(1, Duration::from_secs(5));
        assert_eq!(back.len(), 1, "{io}: reply lost");
        assert_eq!(&back[0][HEADER_LEN..], &payload(100, 9)[..]);
    }
}

#[test]
fn denied_pairs_are_dropped_and_counted() {
    for io in backends() {
        let mut rig = Rig::start(io).unwrap();
        for _ in 0..10 {
            let f = rig.user_frame(DENIED, &payload(100, 1));
            rig.send_from_user(&f);
        }
        let marker = rig.user_frame(ALLOWED, &payload(64, 2));
        rig.send_from_user(&marker);
        let got = rig.connector_receive(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{io}");
        assert_eq!(
            ids(&got[0]),
            (USER, ALLOWED),
            "{io}: a denied frame got through"
        );
        let c = rig.await_counters("denied drops", |c| c.dropped(DropReason::Denied) == 10);
        assert_eq!(c.forwarded, 1, "{io}: {c:?}");
    }
}
