//! Proxy mode end to end: a relay (in process, real UDP on loopback), a
//! connector agent and client agents (real `agent` processes), real target
//! services. No privileges needed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proto::datapath::Mode;

fn world() -> (World, Targets) {
    let mut w = World::start(Mode::Ztna);
    let t = Targets::basic();
    w.write_policy(&t, true);
    w.start_relay();
    (w, t)
}

/// Waits until the client's directory is in and the connector is up.
fn ready(client: &AgentProcess, connector: &AgentProcess, services: usize) {
    connector.wait_for("connector hop session", Duration::from_secs(10), |s| {
        s.link.hop_up
    });
    client.wait_for("client directory", Duration::from_secs(10), |s| {
        s.link.hop_up && s.services.len() >= services
    });
}

#[test]
fn tcp_echo_udp_echo_and_bulk_arrive_byte_exact() {
    let (w, _t) = world();
    let connector = w.connector();
    let echo = free_tcp_port();
    let bulk = free_tcp_port();
    let uecho = free_udp_port();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[
            ("echo", echo, "tcp"),
            ("bulk", bulk, "tcp"),
            ("uecho", uecho, "udp"),
        ],
    );
    ready(&client, &connector, 3);

    // TCP echo, several messages on one connection.
    let mut s = TcpStream::connect(echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..20u32 {
        let msg = format!("hello through the relay #{i}").into_bytes();
        s.write_all(&msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    drop(s);

    // UDP echo.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ok = 0;
    for i in 0..20u32 {
        let msg = format!("datagram {i}");
        u.send_to(msg.as_bytes(), uecho).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = u.recv_from(&mut buf) {
            assert_eq!(&buf[..n], msg.as_bytes());
            ok += 1;
        }
    }
    // The first datagram may be held while the session comes up; on
    // loopback nothing should be lost after that.
    assert!(ok >= 19, "only {ok} of 20 UDP echoes came back");

    // Bulk: 100 MiB, hashed at both ends.
    let total = 100 << 20;
    let start = Instant::now();
    let (sent, got, n) = bulk_transfer(bulk, total, 42, None).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "bulk: {} MiB in {secs:.2} s = {:.0} Mb/s (debug build)",
        total >> 20,
        total as f64 * 8.0 / secs / 1e6
    );
    assert_eq!(n, total);
    assert_eq!(sent, got, "bulk transfer corrupted");

    // The status is a snapshot published every 200 ms: it may not have
    // caught up with the last bytes yet.
    let caught_up = |s: &agent::status::Status| {
        s.services
            .iter()
            .any(|v| v.name == "bulk" && v.bytes_in >= total)
    };
    client.wait_for("all bulk bytes counted", Duration::from_secs(5), caught_up);
}

#[test]
fn denied_user_gets_no_byte_and_a_clear_message() {
    let (w, _t) = world();
    let connector = w.connector();
    let echo = free_tcp_port();
    let bob = w.client("bob", BOB, &[], &[("echo", echo, "tcp")]);
    connector.wait_for("connector hop session", Duration::from_secs(10), |s| {
        s.link.hop_up
    });
    bob.wait_for("bob's (empty) directory", Duration::from_secs(10), |s| {
        s.link.hop_up && s.connection_mode == "on-demand"
    });
    let mut s = TcpStream::connect(echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"let me in");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("denied user received {n} bytes"),
    }
    let st = bob.wait_for("an error naming the service", Duration::from_secs(5), |s| {
        s.errors
            .iter()
            .any(|e| e.contains("'echo' is not available"))
    });
    assert!(st.services.is_empty());
    // The connector never saw a session for bob.
    let cs = connector.status().unwrap();
    assert!(
        cs.services.iter().all(|p| !p.detail.contains("bob")),
        "{cs:?}"
    );
}

#[test]
fn revoking_the_grant_cuts_an_open_connection_within_a_second() {
    let (w, t) = world();
    let connector = w.connector();
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    ready(&client, &connector, 1);
    let mut s = TcpStream::connect(echo).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();

    w.write_policy(&t, false);
    let revoked_at = Instant::now();
    w.reload_relay_policy();
    // The connection must end (EOF or reset) within 1 s; echoes of what
    // was in flight before the cut may still arrive.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let _ = s.write_all(b"more");
    let mut ended = false;
    while revoked_at.elapsed() < Duration::from_millis(1500) {
        match s.read(&mut buf) {
            Ok(0) => ended = true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => ended = true,
        }
        break;
    }
    let took = revoked_at.elapsed();
    assert!(ended, "connection still open {took:?} after revocation");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // And a new connection is refused.
    assert!(echo_roundtrip(echo, b"again").is_err());
}

#[test]
fn relay_restart_mid_transfer_completes_byte_exact() {
    let (mut w, _t) = world();
    let connector = w.connector();
    let bulk = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("bulk", bulk, "tcp")]);
    ready(&client, &connector, 1);
    let total: u64 = 30 << 20;
    let abort = Arc::new(AtomicBool::new(false));
    let t = std::thread::spawn(move || bulk_transfer(bulk, total, 7, Some(abort)));
    // Let some bytes flow, then restart the relay.
    client.wait_for("bytes flowing", Duration::from_secs(20), |s| {
        s.services.iter().any(|v| v.bytes_in > 2 << 20)
    });
    let before = client.status().unwrap().link.handshakes;
    w.stop_relay();
    std::thread::sleep(Duration::from_millis(300)); // the outage itself, not synchronisation
    w.start_relay();
    client.wait_for("a new hop session", Duration::from_secs(20), |s| {
        s.link.handshakes > before && s.link.hop_up
    });
    let (sent, got, n) = t.join().unwrap().expect("transfer survives the restart");
    assert_eq!(n, total);
    assert_eq!(sent, got);
}

#[test]
fn a_connector_refuses_and_closes_a_certificate_its_own_policy_revokes() {
    let _rig = connector_policy_cuts_alice_off(|alice, text| {
        text.push_str(&format!(
            "\n[[revoked]]\nkey = \"{}\"\nreason = \"test\"\n",
            proto::identity::to_hex(&alice.body.static_key)
        ));
    });
}

#[test]
fn a_connector_refuses_and_closes_a_user_key_its_own_policy_does_not_pin() {
    let (w, connector) = connector_policy_cuts_alice_off(|alice, text| {
        // Pin alice to another device's key.
        let other = [0x11u8; 32];
        assert_ne!(alice.body.static_key, other);
        let entry = "name = \"alice\"\n";
        assert!(text.contains(entry), "{text}");
        *text = text.replace(
            entry,
            &format!(
                "{entry}static_keys = [\"{}\"]\n",
                proto::identity::to_hex(&other)
            ),
        );
    });
    // Another of alice's devices (a new key, not the pinned one), which
    // the relay still admits: the connector refuses its end-to-end
    // handshake.
    let echo = free_tcp_port();
    let _laptop = w.client("alice-laptop", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            echo_roundtrip(echo, b"laptop").is_err(),
            "the unpinned key got through"
        );
        let st = connector.status();
        let refused = st.as_ref().is_some_and(|s| {
            s.errors.iter().any(|e| {
                e.contains("the certificate of 'alice-laptop' (user 1001) certifies a key the connector's policy does not pin")
            })
        });
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal: {st:?}");
    }
}

/// Alice reaches the echo service through a connector that reads its own
/// copy of the policy; `edit` then changes that copy only (given alice's
/// certificate), so the relay (which would close her hop session first)
/// keeps forwarding and only the connector's check can stop her. It must
/// close her open pair at the reload and refuse her new handshakes.
fn connector_policy_cuts_alice_off(
    edit: impl FnOnce(&proto::identity::Certificate, &mut String),
) -> (World, AgentProcess) {
    let (w, _t) = world();
    std::fs::copy(w.path("policy.toml"), w.path("connector-policy.toml")).unwrap();
    let (cfg, status) = w.agent_config(
        "conn-a",
        CONNECTOR,
        proto::identity::Role::Connector,
        &[],
        "[connector]\npolicy = \"connector-policy.toml\"\n",
    );
    let connector = AgentProcess::spawn(&cfg, status, w.dir.path(), "conn-a", None);
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    ready(&client, &connector, 1);
    assert_eq!(echo_roundtrip(echo, b"before").unwrap(), b"before");

    let cert = std::fs::read_to_string(w.path("alice.cert")).unwrap();
    let cert = proto::identity::Certificate::from_text(&cert).unwrap();
    let mut text = std::fs::read_to_string(w.path("connector-policy.toml")).unwrap();
    edit(&cert, &mut text);
    // Write then rename, as an operator's tooling does.
    std::fs::write(w.path("connector-policy.tmp"), text).unwrap();
    std::fs::rename(
        w.path("connector-policy.tmp"),
        w.path("connector-policy.toml"),
    )
    .unwrap();
    // The connector closes her sessions and refuses new ones.
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo_roundtrip(echo, b"after").is_ok() {
        assert!(Instant::now() < deadline, "alice still reaches the service");
    }
    // Because of the policy, not by accident: the connector closed her
    // pair at the reload, holds nothing for her, and refused her again.
    let st = connector.wait_for("alice's pair closed", Duration::from_secs(5), |s| {
        s.services.iter().all(|p| !p.detail.contains("alice"))
    });
    assert!(
        connector
            .log_text()
            .contains("access revoked: closing the pair's connections"),
        "{st:?}"
    );
    (w, connector)
}

#[test]
fn a_restarted_connector_is_reached_again_without_waiting_for_the_rekey_timer() {
    let (w, _t) = world();
    let (cfg, status) = w.connector_config();
    let connector = AgentProcess::spawn(&cfg, status, w.dir.path(), "conn-a", None);
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    ready(&client, &connector, 1);
    assert_eq!(echo_roundtrip(echo, b"before").unwrap(), b"before");

    // The same connector (same key: the user's directory does not change)
    // comes back without the end-to-end session the client still holds.
    drop(connector);
    let connector = AgentProcess::spawn(&cfg, status, w.dir.path(), "conn-a-restarted", None);
    connector.wait_for("connector hop session", Duration::from_secs(10), |s| {
        s.link.hop_up
    });
    let restarted = Instant::now();
    let deadline = restarted + agent::e2e::UNANSWERED_REKEY + Duration::from_secs(20);
    loop {
        match echo_roundtrip(echo, b"after") {
            Ok(got) => {
                assert_eq!(got, b"after");
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the restarted connector is still not reached after {:?}: {e}",
                restarted.elapsed()
            ),
        }
    }
    // By a new end-to-end handshake on unanswered sends, not the 120 s
    // rekey timer.
    assert!(
        restarted.elapsed() < proto::handshake::timers::REKEY_AFTER_TIME / 2,
        "{:?}",
        restarted.elapsed()
    );
}

#[test]
fn a_one_way_udp_flow_keeps_its_session_on_the_connectors_keepalives() {
    // A service that takes datagrams and never answers (a metrics or log
    // collector): only the connector's keepalives come back.
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut w = World::start(Mode::Ztna);
    let mut t = Targets::basic();
    t.extra
        .push(("collector", "udp", quiet.local_addr().unwrap()));
    w.write_policy(&t, true);
    w.start_relay();
    let connector = w.connector();
    let listen = free_udp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("collector", listen, "udp")]);
    ready(&client, &connector, 1);

    // Past the client's unanswered-sends timer, with a margin: without
    // keepalives it handshakes again by 16 s.
    let run = agent::e2e::UNANSWERED_REKEY + Duration::from_secs(3);
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let (mut sent, mut arrived) = (0u32, 0u32);
    let mut buf = [0u8; 64];
    let mut next = start;
    while start.elapsed() < run {
        // About 10 datagrams a second; the service's reads wait between.
        if Instant::now() >= next {
            app.send_to(format!("reading {sent}").as_bytes(), listen)
                .unwrap();
            sent += 1;
            next += Duration::from_millis(100);
        }
        if quiet.recv(&mut buf).is_ok() {
            arrived += 1;
        }
    }
    assert!(arrived + 5 >= sent, "{arrived} of {sent} datagrams arrived");

    let sessions = |s: &agent::status::Status| {
        s.services
            .iter()
            .find(|v| v.name == "collector")
            .map_or(0, |v| v.sessions)
    };
    let c = client.status().expect("client status");
    assert!(
        c.link.keepalives_in >= 1,
        "client heard no keepalive: {c:?}"
    );
    assert_eq!(sessions(&c), 1, "the client handshook again: {c:?}");
    let k = connector.status().expect("connector status");
    assert!(k.link.keepalives_out >= 1, "{k:?}");
    assert_eq!(sessions(&k), 1, "{k:?}");
}
