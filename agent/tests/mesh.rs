//! Two relays in a mesh (one etcd), a client agent on relay A and a
//! connector agent on relay C: TCP bytes arrive byte-exact through A→C,
//! every relay checking the policy. Needs `etcd` (scripts/setup.sh);
//! `ZTNA_SKIP_ETCD=1` skips.

mod common;

use std::time::Duration;

use common::*;
use proto::datapath::Mode;
use relay::mesh::etcd_server;

#[test]
fn tcp_through_two_relays_arrives_byte_exact() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let mut w = World::start(Mode::Ztna);
    let t = Targets::basic();
    w.write_policy(&t, true);
    let (relay_a, id_a) = w.start_mesh_relay("relay-a", 2, &etcd.endpoint());
    let (relay_c, id_c) = w.start_mesh_relay("relay-c", 3, &etcd.endpoint());

    w.use_relay(&relay_c, &id_c);
    let connector = w.connector();
    connector.wait_for("connector on relay C", Duration::from_secs(10), |s| {
        s.link.hop_up
    });

    w.use_relay(&relay_a, &id_a);
    let echo = free_tcp_port();
    let bulk = free_tcp_port();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[("echo", echo, "tcp"), ("bulk", bulk, "tcp")],
    );
    // The directory from A names C's connector once A has learned it from
    // etcd and linked to C.
    client.wait_for("directory through the mesh", Duration::from_secs(15), |s| {
        s.link.hop_up && s.services.iter().any(|v| v.name == "bulk")
    });
    assert!(!relay_a.mesh_links().is_empty(), "A holds a link to C");

    let got = echo_roundtrip(echo, b"across two relays").unwrap();
    assert_eq!(got, b"across two relays");
    let total = 8 << 20;
    let (sent, received, n) = bulk_transfer(bulk, total, 11, None).unwrap();
    assert_eq!(n, total);
    assert_eq!(sent, received, "bulk through A->C corrupted");
    relay_a.stop();
    relay_c.stop();
}
