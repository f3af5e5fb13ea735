//! Certificate renewal without a gap: the relay's, a connector's and a
//! user's certificates, all about to expire, are renewed on disk while a
//! UDP flow runs through them. Each node takes its new certificate within
//! a poll, without a restart; the flow loses nothing; and once the old
//! certificates have expired, new sessions (a new client's hop and
//! end-to-end handshakes, which check every certificate on the way) work.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use proto::datapath::Mode;
use proto::handshake::LocalIdentity;
use proto::identity::Role;
use relay::Relay;

/// How long the first certificates live from the test's start. Long
/// enough for the agents to come up on a loaded 2-core machine.
const SHORT: u64 = 12;

fn unix_now() -> u64 {
    relay::control::unix_nanos() / 1_000_000_000
}

/// `node`'s certificate again, for the same key, valid for a day, named
/// `name`.
fn renewed(w: &World, node: &LocalIdentity, name: &str) -> LocalIdentity {
    let mut body = node.certificate().body.clone();
    body.name = name.to_owned();
    body.not_after = unix_now() + 86_400;
    let cert = w.pki.ca_keypair().issue(body).unwrap();
    LocalIdentity::new(*node.private_key(), cert)
}

fn write_cert(w: &World, file: &str, node: &LocalIdentity) {
    // Written in place, not renamed: the watch must cope with a reader
    // racing the writer (a torn read is refused and read again).
    std::fs::write(w.path(file), node.certificate().to_text()).unwrap();
}

/// One UDP echo through the agents; the reply must come within `within`.
fn echo(u: &UdpSocket, to: std::net::SocketAddr, i: u32) -> bool {
    let msg = format!("renewal datagram {i}");
    u.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 1500];
    matches!(u.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == msg.as_bytes())
}

#[test]
fn relay_connector_and_user_certificates_renew_without_a_gap() {
    let mut w = World::start(Mode::Ztna);
    let t = Targets::basic();
    w.write_policy(&t, true);
    let start = unix_now();
    let expires = start + SHORT;

    // The relay, from key and certificate files it watches.
    let relay_node = w.node_valid(1, "relay-1", Role::Relay, start - 60, expires);
    write_cert(&w, "relay-1.cert", &relay_node);
    std::fs::write(
        w.path("relay-1.key"),
        relay::keys::static_key_to_text(relay_node.private_key()),
    )
    .unwrap();
    let mut opts = w.relay_options(w.relay_addr, relay_node.clone(), None);
    opts.renewal = Some(relay::renewal::IdentityFiles::new(
        &w.path("relay-1.key"),
        &w.path("relay-1.cert"),
        w.pki.ca(),
        &relay_node,
    ));
    let relay = Relay::start(opts).expect("relay starts");
    w.relay_addr = relay.local_addr();
    w.relay_identity = relay_node.clone();
    let relay_stats = || relay.shared().control_stats();
    // Published by the control thread's first pass.
    let up = Instant::now() + Duration::from_secs(5);
    while relay_stats().cert_not_after != expires {
        assert!(Instant::now() < up, "relay stats: {:?}", relay_stats());
        std::thread::yield_now();
    }

    // A connector and a user, both expiring with the relay.
    let conn_node = w.node_valid(CONNECTOR, "conn-a", Role::Connector, start - 60, expires);
    let (conn_cfg, conn_status) = w.write_agent_config(
        "conn-a",
        &conn_node,
        "[connector]\npolicy = \"policy.toml\"\n",
    );
    let connector = AgentProcess::spawn(&conn_cfg, conn_status, w.dir.path(), "conn-a", None);
    let alice_node = w.node_valid(ALICE, "alice", Role::User, start - 60, expires);
    let uecho = free_udp_port();
    let (alice_cfg, alice_status) = w.write_agent_config(
        "alice",
        &alice_node,
        &format!(
            "[client]\nmode = \"proxy\"\n[[client.listen]]\nservice = \"uecho\"\nlisten = \"{uecho}\"\nprotocol = \"udp\"\n"
        ),
    );
    let alice = AgentProcess::spawn(&alice_cfg, alice_status, w.dir.path(), "alice", None);
    connector.wait_for("connector up", Duration::from_secs(10), |s| s.link.hop_up);
    alice.wait_for("alice's directory", Duration::from_secs(10), |s| {
        s.link.hop_up && !s.services.is_empty() && s.link.cert_not_after == expires
    });

    // The flow: one echo at a time, each answered within a second, from
    // now until well after the old certificates ended.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let first = (0..20).find(|&i| echo(&u, uecho, i));
    assert!(first.is_some(), "the flow never came up");
    let handshakes_before = relay_stats().handshakes_ok;

    write_cert(
        &w,
        "relay-1.cert",
        &renewed(&w, &relay_node, "relay-1 (renewed)"),
    );
    write_cert(
        &w,
        "conn-a.cert",
        &renewed(&w, &conn_node, "conn-a (renewed)"),
    );
    write_cert(
        &w,
        "alice.cert",
        &renewed(&w, &alice_node, "alice (renewed)"),
    );

    let renewed_at = Instant::now();
    let mut sent = 0u32;
    let mut lost = Vec::new();
    let mut renewed_seen = false;
    let deadline = Instant::now() + Duration::from_secs(SHORT + 30);
    while unix_now() <= expires + 2 {
        assert!(
            Instant::now() < deadline,
            "the old certificates never expired?"
        );
        sent += 1;
        if !echo(&u, uecho, 100 + sent) {
            lost.push((sent, renewed_at.elapsed().as_millis()));
        }
        // Paced (a flow, not a flood): about 200 echoes a second.
        std::thread::sleep(Duration::from_millis(5));
        if !renewed_seen {
            let r = relay_stats();
            let a = alice.status();
            let c = connector.status();
            renewed_seen = r.cert_renewals == 1
                && a.is_some_and(|s| s.link.cert_renewals == 1 && s.name == "alice (renewed)")
                && c.is_some_and(|s| s.link.cert_renewals == 1);
        }
    }
    assert!(
        lost.is_empty(),
        "echoes (number, ms after the renewal) {lost:?} of {sent} lost across the renewal"
    );
    assert!(renewed_seen, "not every node took its renewed certificate in time:\nrelay {:?}\nalice {:?}\nconnector {:?}", relay_stats(), alice.status(), connector.status());
    assert!(relay_stats().cert_not_after > expires + 3600);
    // Both agents handshook again at once, presenting the new certificate
    // (the relay would refuse the old one by now).
    assert!(
        relay_stats().handshakes_ok >= handshakes_before + 2,
        "{:?}",
        relay_stats()
    );
    assert_eq!(relay_stats().cert_renewals_refused, 0);

    // The old certificates are over: a new client's hop handshake checks
    // the relay's certificate, its end-to-end handshake the connector's;
    // the relay and the connector check hers. (A second device of alice's:
    // the relay routes a user's downstream to her newest session, so from
    // here on the replies go to this one.)
    let carol_echo = free_udp_port();
    let carol = w.client("carol", ALICE, &["eng"], &[("uecho", carol_echo, "udp")]);
    carol.wait_for("carol's directory", Duration::from_secs(10), |s| {
        s.link.hop_up && !s.services.is_empty()
    });
    let u2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    u2.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(
        (0..10).any(|i| echo(&u2, carol_echo, i)),
        "a new session after the old certificates expired failed:\n{}",
        carol.log_text()
    );
    drop(relay);
}
