//! Relays that see each other in the mesh's etcd hold one authenticated
//! hop session with each other; a relay certificate whose key is in no
//! etcd record is refused; a relay that leaves takes its link with it.
//!
//! Needs the `etcd` binary (`scripts/setup.sh`); `ZTNA_SKIP_ETCD=1` skips.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loadgen::pki::Pki;
use loadgen::world::ScratchDir;
use proto::handshake::{CookieJar, HopInitiator, Trust};
use proto::identity::Role;
use proto::ids::ReceiverIndex;
use relay::mesh::etcd_server;
use relay::Relay;

const DEADLINE: Duration = Duration::from_secs(10);

use tests::{await_until, start_mesh_relay as start_relay};

fn one_link_to(relay: &Relay, peer: &Relay, peer_cert: u32) -> bool {
    let links = relay.mesh_links();
    links.len() == 1
        && links[0].id == peer_cert
        && links[0].static_key == *peer.public_key()
        && links[0].sessions == 1
}

#[test]
fn relays_in_etcd_link_refuse_strangers_and_drop_leavers() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let dir = ScratchDir::new("mesh-links").unwrap();
    let pki = Pki::new(relay::control::unix_nanos() / 1_000_000_000);
    let a = start_relay(&pki, &dir, &etcd, 1001, "relay-a");
    let b = start_relay(&pki, &dir, &etcd, 1002, "relay-b");

    // Both ends hold exactly one session with the other (A initiated).
    let took = await_until("A and B linked", DEADLINE, || {
        one_link_to(&a, &b, 1002) && one_link_to(&b, &a, 1001)
    });
    eprintln!("linked after {took:?}");

    // A relay certificate from the same CA whose key no relay registered in
    // etcd is refused: no response, no session, counted.
    let stranger = pki.node(1003, "relay-x", Role::Relay, &[]).unwrap();
    let (_initiator, init) = HopInitiator::new(
        &stranger,
        a.public_key(),
        Trust::new(pki.ca(), &[Role::Relay]),
        ReceiverIndex(7),
        &CookieJar::new(a.public_key()),
        Instant::now(),
        relay::control::unix_nanos(),
    )
    .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&init, a.local_addr()).unwrap();
    await_until("stranger refused", DEADLINE, || {
        a.shared().relay_refused.load(Ordering::Relaxed) == 1
    });
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "the refused relay got an answer"
    );
    assert!(one_link_to(&a, &b, 1002), "links: {:?}", a.mesh_links());

    // B stops (its lease is revoked): A drops its link.
    let stopped = Instant::now();
    b.stop();
    await_until("A dropped its link to B", DEADLINE, || {
        a.mesh_links().is_empty()
    });
    eprintln!("link dropped {:?} after B stopped", stopped.elapsed());
    let report = a.stop();
    assert_eq!(report.control.relay_refused, 1);
    assert_eq!(report.control.relay_links, 0);
}
