//! `/metrics` scraped over HTTP around a load generator run agrees with
//! what the load generator sent and saw: every frame judged, every allowed
//! frame forwarded and delivered, every denied frame dropped as `denied`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::fleet::Fleet;
use loadgen::run::{run, RunSpec};
use loadgen::scenario::{Plan, Scenario};

fn scrape(addr: SocketAddr) -> String {
    let page = relay::http::get(addr, "/metrics").unwrap();
    assert_eq!(page.code, 200, "{page:?}");
    page.body
}

/// The sum over every series of `name` whose labels contain `with`.
fn sum(text: &str, name: &str, with: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not a sample: {l}"))
        })
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures {
    judged: u64,
    forwarded: u64,
    denied: u64,
    dropped: u64,
}

fn figures(addr: SocketAddr) -> Figures {
    let text = scrape(addr);
    Figures {
        judged: sum(&text, "ztna_frames_total", ""),
        forwarded: sum(&text, "ztna_forwarded_frames_total", ""),
        denied: sum(&text, "ztna_dropped_frames_total", "reason=\"denied\""),
        dropped: sum(&text, "ztna_dropped_frames_total", ""),
    }
}

#[test]
fn metrics_match_what_the_load_generator_sent_and_saw() {
    let plan = Plan::new(Scenario::DenyMix, 1400, 0.1);
    let world = tests::plan_world(&plan);
    let metrics = world
        .relay
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let mut fleet = Fleet::connect(&world, &plan, 1, Instant::now()).unwrap();
    // The handshakes' frames are published before the run starts.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut before = figures(metrics);
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = figures(metrics);
        if now == before {
            break;
        }
        assert!(Instant::now() < settle, "the counters never settled");
        before = now;
    }
    // Paced and short: a bounded number of frames (about 4 000), no warmup
    // (so everything sent is counted by the load generator too).
    let spec = RunSpec {
        secs: Duration::from_millis(200),
        warmup: Duration::ZERO,
        rate: Some(20_000.0),
        train: 8,
        window: None,
        denied_arrive: false,
    };
    let relays = world.relays();
    let m = run(&mut fleet, world.relay_addr(), &spec, &relays, &mut |_| {
        true
    })
    .unwrap();
    // (The measurement's Debug holds a whole histogram: report the counts.)
    let seen = format!(
        "sent {}, allowed {}, delivered {} (sink)",
        m.sent, m.sent_allowed, m.sink.frames
    );
    assert!(m.sent > 1000, "{seen}");
    let denied_sent = m.sent - m.sent_allowed;
    assert!(denied_sent > 0, "deny-mix sent nothing denied: {seen}");
    assert_eq!(m.sink.frames, m.sent_allowed, "loss on loopback: {seen}");

    // Workers publish every 100 ms: wait for the run's frames to show.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = figures(metrics);
    while after.judged - before.judged < m.sent {
        assert!(
            Instant::now() < deadline,
            "{before:?} -> {after:?} for {seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
        after = figures(metrics);
    }
    assert_eq!(
        after.judged - before.judged,
        m.sent,
        "judged: {after:?} for {seen}"
    );
    assert_eq!(
        after.forwarded - before.forwarded,
        m.sent_allowed,
        "forwarded: {after:?} for {seen}"
    );
    assert_eq!(
        after.denied - before.denied,
        denied_sent,
        "denied: {after:?} for {seen}"
    );
    assert_eq!(
        after.dropped - before.dropped,
        denied_sent,
        "no drop but denied: {after:?} for {seen}"
    );
}
