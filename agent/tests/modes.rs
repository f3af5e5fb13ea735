//! Connection modes end to end: the policy sets group eng's mode, the
//! relay (in process) sends it in alice's directory, and the client agent
//! (a real process) applies it. Proxy mode for `off`, `on-demand`,
//! `always-on` and a change of mode while running; tun mode, in a network
//! namespace, for `lockdown`.
//!
//! Every wait polls the agents' status with a deadline; the few fixed
//! spans (`holds`) are observation windows in which a state must not
//! change, never waits for one to happen.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::status::Status;
use agent::tun::{PacketBatch, TunConfig, TunDevice};
use common::netns::Netns;
use common::*;
use proto::datapath::Mode;

/// Services in the directory of `write_policy_mode`: echo, bulk, uecho,
/// unused.
const SERVICES: usize = 4;
/// Bound on any one wait for the agents.
const PATIENCE: Duration = Duration::from_secs(10);

fn world(mode: &str) -> (World, Targets) {
    let mut w = World::start(Mode::Ztna);
    w.idle_close_s = Some(1);
    let t = Targets::basic();
    w.write_policy_mode(&t, true, Some(mode));
    w.start_relay();
    (w, t)
}

/// Waits until the connector is up and the client holds a directory in
/// `mode`.
fn ready(client: &AgentProcess, connector: &AgentProcess, mode: &str) -> Status {
    connector.wait_for("connector hop session", PATIENCE, |s| s.link.hop_up);
    client.wait_for(&format!("a directory in mode {mode}"), PATIENCE, |s| {
        s.link.hop_up && s.connection_mode == mode && s.services.len() >= SERVICES
    })
}

fn session(s: &Status, service: &str) -> bool {
    s.services.iter().any(|v| v.name == service && v.session)
}

fn all_sessions(s: &Status) -> bool {
    s.services.len() >= SERVICES && s.services.iter().all(|v| v.session)
}

fn no_session(s: &Status) -> bool {
    s.services.iter().all(|v| !v.session)
}

/// Asserts that `pred` holds on every status snapshot for `span`.
fn holds(agent: &AgentProcess, what: &str, span: Duration, pred: impl Fn(&Status) -> bool) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        let s = agent.status().expect("status answers");
        assert!(pred(&s), "{what} no longer holds; status: {s:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection through the listener at `addr` must end (EOF or reset)
/// without a byte.
fn refused(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("the listener accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"let me in");
    match s.read(&mut [0u8; 64]) {
        Ok(0) => {}
        Ok(n) => panic!("a refused connection received {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("a refused connection neither ended nor answered within 5 s")
        }
        Err(_) => {}
    }
}

/// Reads until `s` ends (EOF or reset); fails if it is still open after
/// `bound`. Echoes of what was in flight may still arrive.
fn ends_within(s: &mut TcpStream, bound: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    while start.elapsed() < bound {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return start.elapsed(),
        }
    }
    panic!("connection still open {bound:?} later");
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

#[test]
fn off_refuses_every_connection_with_a_clear_error() {
    let (w, _t) = world("off");
    let connector = w.connector();
    let echo = free_tcp_port();
    let uecho = free_udp_port();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[("echo", echo, "tcp"), ("uecho", uecho, "udp")],
    );
    ready(&client, &connector, "off");

    refused(echo);
    let st = client.wait_for("an error naming the mode", PATIENCE, |s| {
        s.errors
            .iter()
            .any(|e| e.contains("connection refused") && e.contains("mode") && e.contains("'off'"))
    });
    assert!(no_session(&st), "{st:#?}");

    // A datagram is dropped: no answer.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    u.send_to(b"anyone?", uecho).unwrap();
    assert!(
        u.recv_from(&mut [0u8; 64]).is_err(),
        "a datagram was answered in mode off"
    );

    let st = client.status().unwrap();
    assert!(
        no_session(&st) && st.services.iter().all(|v| v.flows == 0),
        "{st:#?}"
    );
    // The connector never saw an end-to-end session.
    let cs = connector.status().unwrap();
    assert!(cs.services.is_empty(), "{cs:#?}");
}

#[test]
fn on_demand_opens_at_first_use_and_closes_when_idle() {
    let (w, _t) = world("on-demand");
    let connector = w.connector();
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    let st = ready(&client, &connector, "on-demand");
    assert!(no_session(&st), "a session before any use: {st:#?}");

    let mut s = connect(echo);
    roundtrip(&mut s, b"first use");
    let st = client.wait_for("echo's session", PATIENCE, |s| session(s, "echo"));
    // Only the service in use: the others' handshakes would have been
    // as quick as echo's.
    assert!(
        st.services.iter().all(|v| v.session == (v.name == "echo")),
        "{st:#?}"
    );
    let cs = connector.status().unwrap();
    assert!(
        cs.services.iter().all(|p| p.name == "echo"),
        "the connector has sessions for unused services: {cs:#?}"
    );

    // An open connection keeps the session past idle_close_s.
    holds(
        &client,
        "echo's session while a connection is open",
        Duration::from_millis(1500),
        |s| session(s, "echo"),
    );
    roundtrip(&mut s, b"still here");

    drop(s);
    let closed_at = Instant::now();
    client.wait_for("echo's session closed for idleness", PATIENCE, |s| {
        !session(s, "echo") && s.services.iter().all(|v| v.flows == 0)
    });
    let took = closed_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed {took:?} after the last use, before idle_close_s = 1"
    );

    // And opened again at the next use.
    let mut s = connect(echo);
    roundtrip(&mut s, b"second use");
    client.wait_for("echo's session again", PATIENCE, |s| session(s, "echo"));
}

#[test]
fn always_on_keeps_a_session_to_every_service_without_use() {
    let (w, _t) = world("always-on");
    let connector = w.connector();
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    ready(&client, &connector, "always-on");
    let st = client.wait_for("a session to every service", PATIENCE, all_sessions);
    assert!(st.services.iter().all(|v| v.flows == 0), "{st:#?}");
    connector.wait_for("the connector's session for each service", PATIENCE, |s| {
        s.services.iter().filter(|p| p.session).count() >= SERVICES
    });
    // Never closed for idleness (idle_close_s is 1).
    holds(
        &client,
        "every session, idle",
        Duration::from_millis(2500),
        all_sessions,
    );
    assert!(
        !client.log_text().contains("idle: closing"),
        "an always-on session was closed for idleness:\n{}",
        client.log_text()
    );
    assert_eq!(echo_roundtrip(echo, b"in use").unwrap(), b"in use");
}

#[test]
fn mode_changes_pushed_by_the_relay_take_effect() {
    let (w, t) = world("on-demand");
    let connector = w.connector();
    let echo = free_tcp_port();
    let client = w.client("alice", ALICE, &["eng"], &[("echo", echo, "tcp")]);
    ready(&client, &connector, "on-demand");
    let mut s = connect(echo);
    roundtrip(&mut s, b"on demand");

    // on-demand -> off: the open connection ends, new ones are refused.
    w.write_policy_mode(&t, true, Some("off"));
    w.reload_relay_policy();
    let _ = s.write_all(b"more");
    let took = ends_within(&mut s, Duration::from_secs(3));
    eprintln!("connection ended {took:?} after the switch to off");
    let st = client.wait_for("mode off", PATIENCE, |s| s.connection_mode == "off");
    assert!(no_session(&st), "{st:#?}");
    refused(echo);
    client.wait_for("an error naming the mode", PATIENCE, |s| {
        s.errors.iter().any(|e| e.contains("'off'"))
    });

    // off -> always-on: every session comes up without use.
    w.write_policy_mode(&t, true, Some("always-on"));
    w.reload_relay_policy();
    client.wait_for("always-on with every session", PATIENCE, |s| {
        s.connection_mode == "always-on" && all_sessions(s)
    });
    let mut s = connect(echo);
    roundtrip(&mut s, b"always on");
    drop(s);

    // always-on -> on-demand: idle sessions close.
    w.write_policy_mode(&t, true, Some("on-demand"));
    w.reload_relay_policy();
    client.wait_for("on-demand, idle sessions closed", PATIENCE, |s| {
        s.connection_mode == "on-demand" && no_session(s)
    });
}

/// `ip ARGS` inside namespace `ns`; its stdout.
fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip"])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A second TUN device, held by the test, with the namespace's default
/// route: whatever is not routed into `ztna0` would leave here.
struct OtherWay {
    dev: TunDevice,
    batch: PacketBatch,
}

impl OtherWay {
    fn open(ns: &str) -> OtherWay {
        let dev = TunDevice::open(&TunConfig {
            name: "leak0".into(),
            mtu: 1400,
            address: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 24,
            offload: false,
        })
        .expect("a second TUN device");
        ip(ns, &["route", "add", "default", "dev", "leak0"]);
        let batch = dev.batch(64);
        OtherWay { dev, batch }
    }

    /// The IPv4 destinations of what left by this way since the last call.
    fn drain(&mut self) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        loop {
            self.batch.clear();
            match self.dev.read_packets(&mut self.batch) {
                Ok(_) => out.extend(self.batch.iter().filter_map(agent::inner::ipv4_destination)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    out.extend(self.batch.iter().filter_map(agent::inner::ipv4_destination));
                    return out;
                }
                Err(e) => panic!("reading leak0: {e}"),
            }
        }
    }
}

#[test]
fn lockdown_blackholes_service_traffic_while_the_relay_is_down() {
    let Some(ns) = Netns::for_test("lockdown") else {
        return;
    };
    let name = ns.name.clone();
    ns.run(move || {
        let mut w = World::start(Mode::Ztna);
        w.netns = Some(name.clone());
        let t = Targets::basic();
        w.write_policy_mode(&t, true, Some("lockdown"));
        w.start_relay();
        let connector = w.connector();
        let client = w.tun_client("alice", ALICE, &["eng"], false);
        ready(&client, &connector, "lockdown");
        client.wait_for("a session to every service", PATIENCE, all_sessions);
        let echo_ip = resolve("echo").expect("DNS answers");
        let uecho_ip = resolve("uecho").expect("DNS answers");
        let echo = SocketAddr::from((echo_ip, t.echo.port()));

        // Another way out, which must see none of the service traffic.
        let mut other = OtherWay::open(&name);
        // It works: a packet to elsewhere leaves by it.
        let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.send_to(b"probe", "192.0.2.1:9").unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !other.drain().contains(&Ipv4Addr::new(192, 0, 2, 1)) {
            assert!(
                Instant::now() < deadline,
                "the probe did not leave by leak0"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        w.stop_relay();
        let st = client.wait_for("the hop down", PATIENCE, |s| !s.link.hop_up);
        let blackholed = st.tun.blackholed;

        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..5 {
            u.send_to(format!("while down {i}").as_bytes(), (uecho_ip, 7))
                .unwrap();
        }
        assert!(
            TcpStream::connect_timeout(&echo, Duration::from_millis(1500)).is_err(),
            "a TCP connection opened with the relay down"
        );
        let st = client.wait_for("the packets counted as blackholed", PATIENCE, |s| {
            s.tun.blackholed >= blackholed + 6
        });
        assert!(!st.link.hop_up);
        let route = ip(&name, &["route", "get", &echo_ip.to_string()]);
        assert!(route.contains("dev ztna0"), "route: {route}");
        // The kernel routes a packet as it is sent: had any gone the
        // other way, it would be queued on leak0 by now.
        let leaked: Vec<_> = other
            .drain()
            .into_iter()
            .filter(|a| a.octets()[..2] == [100, 80])
            .collect();
        assert!(
            leaked.is_empty(),
            "service traffic left by leak0: {leaked:?}"
        );

        // The relay is back: the same agent carries traffic again.
        let handshakes = st.link.handshakes;
        w.start_relay();
        client.wait_for("the hop back up", PATIENCE, |s| {
            s.link.hop_up && s.link.handshakes > handshakes
        });
        let mut s = connect(echo);
        roundtrip(&mut s, b"after the outage");
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.connect((uecho_ip, 7)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let answered = (0..10).any(|_| {
            u.send(b"after the outage").unwrap();
            u.recv(&mut [0u8; 64]).is_ok()
        });
        assert!(answered, "no UDP echo after the outage");
    });
}
