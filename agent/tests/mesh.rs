//! Relays in a mesh (one etcd) with real agents: a client on relay A and a
//! connector on relay C exchange TCP bytes byte-exact through A→C and,
//! when A and C hold no link, through A→B→C (B holding no agent session);
//! a UDP flow moves to a twin connector on another relay within 3 s of its
//! connector's death. Every relay checks the policy on every frame. Needs
//! `etcd` (scripts/setup.sh); `ZTNA_SKIP_ETCD=1` skips.

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

/// Sum of the workers' datapath counters and sessions of `relay`.
fn totals(relay: &relay::Relay) -> (proto::datapath::Counters, usize) {
    let t = relay.totals();
    (t.datapath, t.sessions)
}

/// Polls `cond` until it holds (bounded).
fn await_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_through_a_transit_relay_arrives_byte_exact_and_the_transit_holds_no_agent_keys() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let mut w = World::start(Mode::Ztna);
    let t = Targets::basic();
    w.write_policy(&t, true);
    let e = etcd.endpoint();
    // A chain: A links only with B, C only with B.
    let (relay_a, id_a) = w.start_mesh_relay_linked("relay-a", 2, &e, Some(&["relay-b"]));
    let (relay_b, _) = w.start_mesh_relay("relay-b", 4, &e);
    let (relay_c, id_c) = w.start_mesh_relay_linked("relay-c", 3, &e, Some(&["relay-b"]));

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
    client.wait_for("directory through A->B->C", Duration::from_secs(20), |s| {
        s.link.hop_up
            && s.services
                .iter()
                .any(|v| v.name == "bulk" && v.connector == CONNECTOR)
    });
    let names = |r: &relay::Relay| -> Vec<String> {
        r.mesh_links().iter().map(|l| l.name.clone()).collect()
    };
    assert_eq!(names(&relay_a), ["relay-b"], "A has no direct link to C");
    assert_eq!(names(&relay_c), ["relay-b"]);
    assert_eq!(names(&relay_b), ["relay-a", "relay-c"]);

    let got = echo_roundtrip(echo, b"across three relays").unwrap();
    assert_eq!(got, b"across three relays");
    let total = 8 << 20;
    let (sent, received, n) = bulk_transfer(bulk, total, 12, None).unwrap();
    assert_eq!(n, total);
    assert_eq!(sent, received, "bulk through A->B->C corrupted");

    // Everything crossed B: at least a frame per 1500 bytes each way...
    await_until("B's counters", Duration::from_secs(5), || {
        totals(&relay_b).0.forwarded > total / 1500
    });
    // ...and every hop session B holds is a mesh link: it never ran a
    // handshake with an agent, so no agent's key, hop or end-to-end, was
    // ever derived there. The end-to-end handshake crossed it as opaque
    // frames between alice and the connector on C.
    let links: usize = relay_b.mesh_links().iter().map(|l| l.sessions).sum();
    await_until(
        "B's session count published",
        Duration::from_secs(5),
        || totals(&relay_b).1 == links,
    );
    assert!(links >= 2);
    relay_a.stop();
    relay_b.stop();
    relay_c.stop();
}

#[test]
fn a_udp_flow_moves_to_the_twin_connector_within_3_s_when_its_connector_dies() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let mut w = World::start(Mode::Ztna);
    w.twin = true;
    let t = Targets::basic();
    w.write_policy(&t, true);
    let e = etcd.endpoint();
    let (relay_a, id_a) = w.start_mesh_relay("relay-a", 2, &e);
    let (relay_b, id_b) = w.start_mesh_relay("relay-b", 4, &e);
    let (relay_c, id_c) = w.start_mesh_relay("relay-c", 3, &e);

    // conn-a on C, its twin conn-b on B, alice on A.
    w.use_relay(&relay_c, &id_c);
    let mut conn_a = Some(w.connector());
    w.use_relay(&relay_b, &id_b);
    let mut conn_b = Some(w.twin_connector());
    await_until(
        "both connectors in A's routes",
        Duration::from_secs(20),
        || {
            relay_a
                .shared()
                .routes
                .load()
                .service(proto::ids::ServiceId(12))
                .is_some_and(|r| r.mesh.len() == 2)
        },
    );
    w.use_relay(&relay_a, &id_a);
    let uecho = free_udp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("uecho", uecho, "udp")]);
    let connector_of = |client: &AgentProcess| {
        client.status().and_then(|s| {
            s.services
                .iter()
                .find(|v| v.name == "uecho")
                .map(|v| v.connector)
        })
    };
    client.wait_for("uecho in the directory", Duration::from_secs(20), |s| {
        s.link.hop_up && s.services.iter().any(|v| v.name == "uecho")
    });
    let first = connector_of(&client).unwrap();

    // One UDP flow, a datagram every 10 ms, each echoed.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(uecho).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut seq = 0u64;
    let mut ping = |sock: &std::net::UdpSocket| -> bool {
        seq += 1;
        let _ = sock.send(&seq.to_be_bytes());
        let mut buf = [0u8; 64];
        let mut echoed = false;
        // Take every echo queued; the flow is up if this one came back.
        while let Ok(n) = sock.recv(&mut buf) {
            echoed |= n == 8 && buf[..8] == seq.to_be_bytes();
        }
        echoed
    };
    await_until("the flow echoes", Duration::from_secs(10), || ping(&sock));

    // Kill the connector the flow goes to.
    let killed_at = std::time::Instant::now();
    if first == CONNECTOR {
        conn_a.take();
    } else {
        conn_b.take();
    }
    let mut moved = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        if ping(&sock) && connector_of(&client).is_some_and(|c| c != first) {
            moved = Some(killed_at.elapsed());
            break;
        }
    }
    let moved = moved.expect("the flow never moved to the twin connector");
    println!(
        "connector {first} killed: the UDP flow echoed through its twin after {} ms",
        moved.as_millis()
    );
    assert!(moved < Duration::from_secs(3), "took {moved:?}");
    drop((conn_a, conn_b));
    relay_a.stop();
    relay_b.stop();
    relay_c.stop();
}
