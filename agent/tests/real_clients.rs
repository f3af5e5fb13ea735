//! Unmodified clients through the tunnel: iperf3 (TCP and UDP) and curl
//! against `python3 -m http.server` behind the connector, in proxy mode
//! (loopback) and tun mode (a namespace the test makes).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::netns::Netns;
use common::*;
use proto::datapath::Mode;

const PAGE: &[u8] = b"<html>served from behind the connector</html>\n";

struct Backends {
    _iperf: Server,
    _http: Server,
    iperf: SocketAddr,
    http: SocketAddr,
}

fn backends(w: &World) -> Backends {
    let iperf = free_tcp_port();
    let http = free_tcp_port();
    std::fs::create_dir_all(w.path("www")).unwrap();
    std::fs::write(w.path("www/index.html"), PAGE).unwrap();
    Backends {
        _iperf: iperf3_server(iperf),
        _http: http_server(http, &w.path("www")),
        iperf,
        http,
    }
}

fn mbps(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[p];
    }
    cur.as_f64().unwrap_or(0.0) / 1e6
}

fn check_iperf(host: &str, port: u16, label: &str) {
    let tcp = iperf3_client(host, port, &["-t", "2"]);
    let got = mbps(&tcp, &["end", "sum_received", "bits_per_second"]);
    eprintln!("{label}: iperf3 TCP {got:.0} Mb/s (debug build)");
    assert!(got > 1.0, "iperf3 TCP through {label}: {got} Mb/s");
    let udp = iperf3_client(host, port, &["-u", "-b", "20M", "-t", "2"]);
    let sum = &udp["end"]["sum"];
    let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
    let packets = sum["packets"].as_u64().unwrap_or(0);
    eprintln!("{label}: iperf3 UDP 20 Mb/s offered, {packets} packets, {lost:.2} % lost");
    assert!(packets > 100, "iperf3 UDP through {label}: {udp}");
    assert!(lost < 5.0, "iperf3 UDP through {label}: {lost} % lost");
}

#[test]
fn iperf3_and_curl_through_proxy_mode() {
    if !require_tool("iperf3") || !require_tool("curl") || !require_tool("python3") {
        return;
    }
    let mut w = World::start(Mode::Ztna);
    let b = backends(&w);
    let mut t = Targets::basic();
    t.extra = vec![("iperf", "tcp+udp", b.iperf), ("web", "tcp", b.http)];
    w.write_policy(&t, true);
    w.start_relay();
    let connector = w.connector();
    let iperf = free_tcp_port();
    let web = free_tcp_port();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[
            ("iperf", iperf, "tcp"),
            ("iperf", iperf, "udp"),
            ("web", web, "tcp"),
        ],
    );
    connector.wait_for("connector up", Duration::from_secs(10), |s| s.link.hop_up);
    client.wait_for("directory", Duration::from_secs(10), |s| {
        s.services.len() >= 5
    });
    assert_eq!(curl(&format!("http://{web}/index.html")), PAGE);
    check_iperf("127.0.0.1", iperf.port(), "proxy");
}

#[test]
fn iperf3_and_curl_through_tun_mode() {
    if !require_tool("iperf3") || !require_tool("curl") || !require_tool("python3") {
        return;
    }
    let Some(ns) = Netns::for_test("tun-real") else {
        return;
    };
    let name = ns.name.clone();
    ns.run(move || {
        let mut w = World::start(Mode::Ztna);
        w.netns = Some(name);
        // Processes spawned from this thread start in the namespace.
        let b = backends(&w);
        let mut t = Targets::basic();
        t.extra = vec![("iperf", "tcp+udp", b.iperf), ("web", "tcp", b.http)];
        w.write_policy(&t, true);
        w.start_relay();
        let connector = w.connector();
        let client = w.tun_client("alice", ALICE, &["eng"], true);
        connector.wait_for("connector up", Duration::from_secs(10), |s| s.link.hop_up);
        client.wait_for("directory", Duration::from_secs(10), |s| {
            s.services.len() >= 5
        });
        let iperf_ip = resolve("iperf").expect("iperf resolves");
        let web_ip = resolve("web.ztna").expect("web.ztna resolves");
        let page = curl(&format!("http://{web_ip}:{}/index.html", b.http.port()));
        assert_eq!(page, PAGE);
        check_iperf(&iperf_ip.to_string(), b.iperf.port(), "tun");
    });
}
