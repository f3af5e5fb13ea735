//! 1000 consecutive policy reloads under load-generator traffic: no allowed
//! frame is lost across any of them and the relay's memory stays flat.
//! Each reload is a real one (the file's content changes; the relay
//! notices it by itself, compiles and swaps the policy) with the same
//! grants, so every frame that was allowed stays allowed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::fleet::Fleet;
use loadgen::run::{run, RunSpec};
use loadgen::scenario::{Plan, Scenario};

const RELOADS: u64 = 1000;

/// The process's resident memory, in KiB (the relay runs in-process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn a_thousand_reloads_under_traffic_lose_nothing_and_keep_memory_flat() {
    let plan = Plan::new(Scenario::Bulk, 512, 0.0);
    let world = tests::plan_world(&plan);
    let mut fleet = Fleet::connect(&world, &plan, 1, Instant::now()).unwrap();
    let text = world.policy.to_toml_string();
    let shared = Arc::clone(world.relay.shared());
    let path = world.policy_path();
    let done = Arc::new(AtomicBool::new(false));
    let rss_after_warmup = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The reloads: the same policy with a changing comment, each written
    // atomically; the next waits until the relay took the previous.
    let reloader = {
        let (done, rss) = (Arc::clone(&done), Arc::clone(&rss_after_warmup));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(240);
            for n in 1..=RELOADS {
                let epoch = shared.policy_epoch.load(Ordering::Relaxed);
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("{text}\n# reload {n}\n")).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                while shared.policy_epoch.load(Ordering::Relaxed) == epoch {
                    assert!(Instant::now() < deadline, "reload {n} never happened");
                    std::thread::sleep(Duration::from_millis(1));
                }
                if n == 100 {
                    rss.store(rss_kib(), Ordering::Relaxed);
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    // Traffic in one-second paced runs until the reloads are over.
    let spec = RunSpec {
        secs: Duration::from_secs(1),
        warmup: Duration::ZERO,
        rate: Some(5_000.0),
        train: 8,
        window: None,
        denied_arrive: false,
    };
    let relays = world.relays();
    let (mut sent, mut delivered, mut runs) = (0u64, 0u64, 0u32);
    while !done.load(Ordering::Relaxed) {
        let m = run(&mut fleet, world.relay_addr(), &spec, &relays, &mut |_| {
            true
        })
        .unwrap();
        assert_eq!(
            m.sink.frames, m.sent_allowed,
            "run {runs}: {} allowed frames sent, {} delivered",
            m.sent_allowed, m.sink.frames
        );
        sent += m.sent_allowed;
        delivered += m.sink.frames;
        runs += 1;
        assert!(runs < 300, "the reloads took too long");
    }
    reloader.join().unwrap();
    let epoch = world.relay.shared().policy_epoch.load(Ordering::Relaxed);
    let (before, after) = (rss_after_warmup.load(Ordering::Relaxed), rss_kib());
    println!(
        "{RELOADS} reloads (policy epoch {epoch}) in {runs} s of traffic: {delivered}/{sent} allowed frames delivered; RSS {before} KiB after 100 reloads, {after} KiB after {RELOADS}"
    );
    assert!(epoch > RELOADS, "epoch {epoch}");
    assert!(sent > 1000 && delivered == sent);
    assert!(
        after < before + before / 10,
        "memory grew from {before} KiB to {after} KiB over {} reloads",
        RELOADS - 100
    );
}
