//! tun mode end to end, inside a network namespace the test makes: the
//! relay, the connector and the targets on the namespace's loopback, the
//! client agent with a real TUN device (100.80.0.1/16), applications using
//! kernel sockets to the services' virtual addresses, found by DNS.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::netns::Netns;
use common::*;
use proto::datapath::Mode;

fn tun_end_to_end(offload: bool) {
    let Some(ns) = Netns::for_test(if offload { "tun-e2e-gso" } else { "tun-e2e" }) else {
        return;
    };
    let name = ns.name.clone();
    ns.run(move || {
        let mut w = World::start(Mode::Ztna);
        w.netns = Some(name);
        let t = Targets::basic();
        w.write_policy(&t, true);
        w.start_relay();
        let connector = w.connector();
        let client = w.tun_client("alice", ALICE, &["eng"], offload);
        connector.wait_for("connector hop session", Duration::from_secs(10), |s| {
            s.link.hop_up
        });
        client.wait_for("client directory", Duration::from_secs(10), |s| {
            s.link.hop_up && s.services.len() >= 3
        });

        let echo_ip = resolve("echo").expect("DNS answers for a service name");
        assert_eq!(resolve("echo.ztna"), Some(echo_ip));
        assert_eq!(resolve("no-such-service"), None);
        let bulk_ip = resolve("bulk").unwrap();
        let uecho_ip = resolve("uecho").unwrap();
        assert_ne!(echo_ip, bulk_ip);

        // TCP echo to the service's virtual address (any port reaches
        // the target: the frame's service id decides, not the address).
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((echo_ip, t.echo.port())),
            Duration::from_secs(10),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..10 {
            let msg = format!("tun echo {i}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, msg.as_bytes());
        }
        drop(s);

        // The inner destination is not where the bytes go: port 1 of the
        // echo service's address still reaches the echo target (and only
        // it), because the connector dials the target of the service the
        // frame names.
        let mut other =
            TcpStream::connect_timeout(&SocketAddr::from((echo_ip, 1)), Duration::from_secs(10))
                .unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        other.write_all(b"any port").unwrap();
        let mut got = [0u8; 8];
        other.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"any port");
        drop(other);

        // UDP echo on a connected socket: replies must come from the
        // service's address and port, or the kernel drops them.
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.connect((uecho_ip, 7)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut ok = 0;
        for i in 0..10 {
            let msg = format!("tun datagram {i}");
            u.send(msg.as_bytes()).unwrap();
            let mut buf = [0u8; 1500];
            if let Ok(n) = u.recv(&mut buf) {
                assert_eq!(&buf[..n], msg.as_bytes());
                ok += 1;
            }
        }
        assert!(ok >= 9, "only {ok} of 10 UDP echoes");

        // UDP to a TCP-only service is not what the policy grants: dropped
        // at the connector, and it says so.
        let stray = UdpSocket::bind("0.0.0.0:0").unwrap();
        stray.connect((echo_ip, t.echo.port())).unwrap();
        stray
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stray.send(b"udp to a tcp service").unwrap();
        assert!(
            stray.recv(&mut [0u8; 64]).is_err(),
            "UDP reached a TCP-only service"
        );
        connector.wait_for("the wrong-transport error", Duration::from_secs(5), |s| {
            s.errors.iter().any(|e| e.contains("wrong transport"))
        });

        // Bulk, hashed.
        let total = 32 << 20;
        let (sent, got, n) =
            bulk_transfer(SocketAddr::from((bulk_ip, 9000)), total, 3, None).unwrap();
        assert_eq!(n, total);
        assert_eq!(sent, got);
    });
}

#[test]
fn tun_mode_tcp_udp_dns_plain() {
    tun_end_to_end(false);
}

#[test]
fn tun_mode_tcp_udp_dns_offload() {
    tun_end_to_end(true);
}
