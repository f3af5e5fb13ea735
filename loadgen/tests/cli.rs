//! The `loadgen` binary end to end, kept short: a real relay, real
//! handshakes and real traffic on loopback for a fraction of a second per
//! run, then the JSON it writes and its exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use loadgen::report::Report;
use loadgen::world::ScratchDir;
use relay::mesh::etcd_server;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("loadgen runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `both`, unless the environment opts out of io_uring (and says so).
fn io_arg() -> &'static str {
    if std::env::var_os("ZTNA_SKIP_URING").is_some_and(|v| v == "1") {
        eprintln!("ZTNA_SKIP_URING=1: the uring backend is NOT tested");
        "mmsg"
    } else {
        "both"
    }
}

/// The backend results are labelled with first, for an `--io` argument.
fn backend_of(io: &str) -> &str {
    if io == "both" {
        "uring"
    } else {
        io
    }
}

/// A short run writing its JSON to `json`; `extra` may set `--secs` and
/// `--latency-secs` itself (0.2 and 0.1 otherwise).
fn short_run(json: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--warmup",
        "0.05",
        "--json",
        json.to_str().expect("utf-8 temp path"),
    ];
    for (flag, default) in [("--secs", "0.2"), ("--latency-secs", "0.1")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    loadgen(&args)
}

fn read_report(path: &PathBuf) -> Report {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json written"))
        .expect("json parses as a report")
}

#[test]
fn a_short_run_delivers_intact_frames_in_every_mode_and_backend() {
    let dir = ScratchDir::new("loadgen-cli").unwrap();
    let json = dir.path().join("out.json");
    let io = io_arg();
    let out = short_run(
        &json,
        &[
            "--io",
            io,
            "--scenario",
            "bulk,small,deny-mix,fan-out",
            "--fan-out",
            "3",
            "--loads",
            "50",
            "--verify-every",
            "4",
            // The bare hop has its own test.
            "--modes",
            "ztna,vpn,forward",
            // 0.4 s per mode (0.2 paced) in 100 ms slices: 4 rounds to
            // pair (2 paced).
            "--secs",
            "0.4",
            "--latency-secs",
            "0.2",
            "--slice-ms",
            "100",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ratios of median delivered rates"),
        "{stdout}"
    );
    assert!(stdout.contains("paired comparisons"), "{stdout}");
    // The paired tables: the steps at full rate, latency over the floor
    // (forward: no bare hop in this run) when paced.
    for (pair, run) in [
        ("ztna/vpn ", "bulk 1400B max"),
        ("vpn/forward ", "small 64B max"),
        ("ztna/forward ", "deny-mix-10 1400B @50%"),
    ] {
        let run = format!("{} {run}", backend_of(io));
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(pair) && l.contains(&run)),
            "no {pair}line for {run}:\n{stdout}"
        );
    }

    let report = read_report(&json);
    let backends: &[&str] = if io == "both" {
        &["uring", "mmsg"]
    } else {
        &["mmsg"]
    };
    for backend in backends {
        for mode in ["ztna", "vpn", "forward"] {
            for (scenario, size) in [
                ("bulk", 1400),
                ("small", 64),
                ("deny-mix-10", 1400),
                ("fan-out-3", 1400),
            ] {
                let runs: Vec<_> = report
                    .results
                    .iter()
                    .filter(|r| {
                        r.mode == mode
                            && r.backend == *backend
                            && r.scenario == scenario
                            && r.size == size
                    })
                    .collect();
                assert_eq!(
                    runs.len(),
                    2,
                    "{mode} {backend} {scenario}: one full-rate and one paced run\n{}",
                    text(&out)
                );
                for r in runs {
                    // Every rig of a plan took turns: 4 rounds at full
                    // rate, 2 paced, each slice kept. (A 100 ms slice may
                    // deliver nothing on a loaded machine; the run did.)
                    let rounds = if r.load.is_some() { 2 } else { 4 };
                    assert_eq!(r.slices.len(), rounds, "{r:?}");
                    assert!(r.slices.iter().any(|s| s.recv_pps > 0.0), "{r:?}");
                    assert!(r.recv_pps > 0.0, "{r:?}");
                    assert!(r.verified > 0, "nothing opened end to end: {r:?}");
                    assert_eq!(r.corrupt, 0, "{r:?}");
                    assert!(r.lat_us.p50 > 0.0 && r.lat_us.max >= r.lat_us.p99, "{r:?}");
                    if scenario == "deny-mix-10" && mode == "ztna" {
                        assert!(r.relay_denied > 0, "policy dropped nothing: {r:?}");
                        assert_eq!(r.denied_delivered, 0, "{r:?}");
                    }
                    if scenario == "deny-mix-10" && mode != "ztna" {
                        assert!(
                            r.denied_delivered > 0,
                            "{mode} does not check policy: {r:?}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(report.direct.len(), 4, "one no-relay run per scenario");
    assert!(report
        .direct
        .iter()
        .all(|r| r.recv_pps > 0.0 && r.corrupt == 0));
}

/// The relay's glommio backend (a build with loadgen's `glommio`
/// feature): frames delivered intact, verified end to end.
#[cfg(feature = "glommio")]
#[test]
fn a_short_glommio_run_delivers_intact_frames() {
    let dir = ScratchDir::new("loadgen-cli").unwrap();
    let json = dir.path().join("out.json");
    let out = short_run(
        &json,
        &[
            "--io",
            "glommio",
            "--modes",
            "ztna",
            "--scenario",
            "bulk,small",
            "--loads",
            "none",
            "--no-direct",
            "--verify-every",
            "4",
            "--slice-ms",
            "100",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = read_report(&json);
    for (scenario, size) in [("bulk", 1400), ("small", 64)] {
        let r = report
            .results
            .iter()
            .find(|r| r.backend == "glommio" && r.scenario == scenario && r.size == size)
            .unwrap_or_else(|| panic!("no glommio {scenario} result\n{}", text(&out)));
        assert!(r.recv_pps > 0.0, "{r:?}");
        assert!(r.verified > 0, "nothing opened end to end: {r:?}");
        assert_eq!(r.corrupt, 0, "{r:?}");
    }
}

/// Without the feature, `--io glommio` fails rather than measure the
/// backend the relay fell back to under glommio's name.
#[cfg(not(feature = "glommio"))]
#[test]
fn glommio_without_the_feature_fails_and_says_why() {
    let dir = ScratchDir::new("loadgen-cli").unwrap();
    let json = dir.path().join("out.json");
    let out = short_run(
        &json,
        &[
            "--io",
            "glommio",
            "--modes",
            "ztna",
            "--scenario",
            "bulk",
            "--loads",
            "none",
            "--no-direct",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not glommio as asked") && stderr.contains("--features glommio"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_worse_ratio_than_the_baseline_fails_with_a_diff() {
    let dir = ScratchDir::new("loadgen-baseline").unwrap();
    let first = dir.path().join("first.json");
    let args = [
        "--io",
        "mmsg",
        "--scenario",
        "bulk",
        "--modes",
        "ztna,vpn",
        "--loads",
        "none",
    ];
    let out = short_run(&first, &args);
    assert!(out.status.success(), "{}", text(&out));

    // A baseline in which ztna was ten times faster relative to vpn.
    let mut base = read_report(&first);
    for r in base.results.iter_mut().filter(|r| r.mode == "ztna") {
        r.recv_pps *= 10.0;
    }
    let base_path = dir.path().join("baseline.json");
    std::fs::write(&base_path, serde_json::to_string(&base).unwrap()).unwrap();

    let second = dir.path().join("second.json");
    let mut with_baseline = args.to_vec();
    with_baseline.extend([
        "--baseline",
        base_path.to_str().unwrap(),
        "--max-regression",
        "20",
    ]);
    let out = short_run(&second, &with_baseline);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REGRESSED"), "{stdout}");
    assert!(
        stdout.contains("ztna mmsg bulk 1400B max / vpn"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_say_what_to_fix_before_running() {
    let out = loadgen(&["--scenario", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("many-flows"), "{}", text(&out));

    let out = loadgen(&["--baseline", "/nonexistent/base.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot read baseline"),
        "{}",
        text(&out)
    );

    let out = loadgen(&["--loads", "150"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--loads"), "{}", text(&out));

    // Slices shorter than the relays' statistics period would pair
    // counters that never moved.
    let out = loadgen(&["--slice-ms", "50"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("every 100 ms"), "{}", text(&out));
    assert!(!text(&out).contains("starting a relay"), "{}", text(&out));

    let out = loadgen(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--json",
        "--baseline",
        "--io",
        "deny-mix",
        "fan-out",
        "Exit status",
        "--relays",
        "etcd",
        "--slice-ms",
        "bootstrap",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

#[test]
fn the_bare_hop_runs_beside_a_relay_with_the_batch_and_busy_poll_given() {
    let dir = ScratchDir::new("loadgen-bare").unwrap();
    let json = dir.path().join("out.json");
    let io = io_arg();
    let out = short_run(
        &json,
        &[
            "--io",
            io,
            "--modes",
            "forward,bare",
            "--scenario",
            "bulk",
            "--loads",
            "50",
            "--no-direct",
            "--batch",
            "8",
            "--busy-poll",
            "20",
            "--verify-every",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = read_report(&json);
    let backends: &[&str] = if io == "both" {
        &["uring", "mmsg"]
    } else {
        &["mmsg"]
    };
    for backend in backends {
        for mode in ["forward", "bare"] {
            let runs: Vec<_> = report
                .results
                .iter()
                .filter(|r| r.mode == mode && r.backend == *backend)
                .collect();
            assert_eq!(
                runs.len(),
                2,
                "{mode} {backend}: one full-rate and one paced run\n{}",
                text(&out)
            );
            for r in runs {
                assert!(r.recv_pps > 0.0, "{r:?}");
                // The bare hop leaves the frames as the users sent them:
                // opened end to end at the connector, and timed.
                assert!(r.verified > 0, "nothing opened end to end: {r:?}");
                assert_eq!(r.corrupt, 0, "{r:?}");
                assert!(r.lat_us.p50 > 0.0, "{r:?}");
                // The forwarder's own statistics, as a relay's.
                assert_eq!(r.per_relay.len(), 1, "{r:?}");
                assert!(r.per_relay[0].forwarded > 0, "{r:?}");
                assert!(r.relay_busy.is_some_and(|b| b > 0.0), "{r:?}");
                // Busy polling was on: some of that was spinning.
                assert!(r.relay_spin.is_some_and(|s| s > 0.0), "{r:?}");
            }
        }
    }

    for (args, says) in [
        (
            &["--modes", "bare,nope"][..],
            "expected ztna, vpn, forward or bare",
        ),
        (&["--busy-poll", "20000"][..], "busy poll of 20000 us"),
        (&["--batch", "0"][..], "--batch must be between 1"),
    ] {
        let out = loadgen(args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}

#[test]
fn one_and_two_relays_run_side_by_side_and_give_the_hop_cost() {
    let Some(etcd) = etcd_server::for_test() else {
        return;
    };
    let dir = ScratchDir::new("loadgen-relays").unwrap();
    let json = dir.path().join("out.json");
    let out = short_run(
        &json,
        &[
            "--io",
            "mmsg",
            "--modes",
            "ztna",
            "--scenario",
            "bulk",
            "--loads",
            "50",
            "--no-direct",
            "--relays",
            "1,2",
            "--etcd",
            &etcd.endpoint(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("per-hop cost"), "{stdout}");
    assert!(
        stdout.contains("ztna mmsg bulk 1400B max via 2 relays / 1 relay"),
        "{stdout}"
    );

    let report = read_report(&json);
    for relays in [1, 2] {
        let runs: Vec<_> = report
            .results
            .iter()
            .filter(|r| r.relays == relays)
            .collect();
        assert_eq!(
            runs.len(),
            2,
            "{relays} relays: one full-rate and one paced run\n{}",
            text(&out)
        );
        for r in runs {
            assert!(r.recv_pps > 0.0 && r.verified > 0, "{r:?}");
            assert_eq!(r.corrupt, 0, "{r:?}");
            assert_eq!(r.per_relay.len(), relays, "{r:?}");
            for (k, relay) in r.per_relay.iter().enumerate() {
                assert!(relay.forwarded > 0, "relay {k} forwarded nothing: {r:?}");
            }
        }
    }
}

#[test]
fn two_relays_without_etcd_say_what_to_install() {
    // No etcd on this PATH: the run must stop before measuring anything,
    // non-zero, naming the package.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--relays", "1,2", "--scenario", "bulk", "--modes", "ztna"])
        .env("PATH", "/nonexistent")
        .env("RUST_LOG", "warn")
        .output()
        .expect("loadgen runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etcd-server"), "{}", text(&out));
    assert!(!stderr.contains("Mpps delivered"), "{}", text(&out));

    let out = loadgen(&["--relays", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("use 1 or 2"), "{}", text(&out));
}

#[test]
fn an_interrupted_two_relay_run_stops_its_etcd() {
    if etcd_server::skip_requested() {
        eprintln!("ZTNA_SKIP_ETCD=1: this etcd test is NOT run");
        return;
    }
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    // A run far longer than the test: only the signal can end it soon.
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--relays",
            "2",
            "--modes",
            "ztna",
            "--scenario",
            "bulk",
            "--io",
            "mmsg",
            "--secs",
            "60",
            "--loads",
            "none",
            "--no-direct",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let pid = child.id();
    // Its stderr, line by line, read on a thread (reads block).
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.iter().any(|l: &String| l.contains("sessions up")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the two relays never came up:\n{}", log.join("\n"));
            }
        }
    }
    // etcd is loadgen's child: note it before the signal.
    let children = children_of(pid);
    assert!(!children.is_empty(), "no etcd child of loadgen");

    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for loadgen") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen did not stop within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    log.extend(rx.try_iter());
    assert_eq!(status.code(), Some(130), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("interrupted")),
        "{}",
        log.join("\n")
    );
    for etcd in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{etcd}")).exists(),
            "etcd (pid {etcd}) outlived loadgen"
        );
    }
}

/// Processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/P/stat: "P (comm) S PPID ..."; comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The in-memory options every cost test runs with: one short `ztna` run.
const COST_RUN: [&str; 14] = [
    "--io",
    "mmsg",
    "--scenario",
    "small",
    "--modes",
    "ztna",
    "--loads",
    "none",
    "--no-direct",
    "--secs",
    "0.1",
    "--warmup",
    "0.05",
    "--relay-core=none",
];

/// The policy's cost in memory (`bench::cost`) follows the table: every
/// rig case with its ns per frame and recorded callgrind instructions per
/// frame, the mode differences, and what the hardware counters gave or why
/// they gave nothing; then the three ways side by side.
#[test]
fn the_policy_cost_follows_the_table() {
    let mut args = COST_RUN.to_vec();
    args.extend(["--cost-secs", "0.02"]);
    let out = loadgen(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table = stdout.find("recv Mpps").expect("the table");
    let cost = stdout
        .find("The policy's cost in memory")
        .unwrap_or_else(|| panic!("no cost section:\n{}", text(&out)));
    assert!(table < cost, "{stdout}");
    let recorded = bench::instructions::recorded().expect("recorded figures");
    assert!(
        stdout.contains(&format!(
            "callgrind, recorded {} at {}",
            recorded.date, recorded.commit
        )),
        "{stdout}"
    );
    assert!(stdout.contains("hardware counters: "), "{stdout}");
    for case in bench::rig::Case::ALL {
        assert!(
            stdout.contains(&case.label()),
            "{} missing:\n{stdout}",
            case.label()
        );
    }
    assert!(stdout.contains("ztna − vpn 64B"), "{stdout}");
    // The relay worker's own counters, opened on its thread (one worker:
    // loadgen knows which): counted, or the kernel's reason, never that
    // the thread was unknown.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("relay worker hardware counters"))
        .unwrap_or_else(|| panic!("no relay counters line:\n{stdout}"));
    assert!(
        line.contains("(perf_event_open"),
        "neither counted nor the kernel's reason: {line}"
    );
    // Then the three ways side by side (no vpn relay ran: the whole-relay
    // columns say so with dashes).
    let three = stdout
        .find("the policy's cost, ztna over vpn, three ways")
        .unwrap_or_else(|| panic!("no three-way summary:\n{stdout}"));
    assert!(cost < three, "{stdout}");
    let row = stdout[three..]
        .lines()
        .find(|l| l.trim_start().starts_with("64B"))
        .unwrap_or_else(|| panic!("no 64 B row:\n{stdout}"));
    assert!(row.contains("(+") && row.contains(" - "), "{row}");

    // --cost-secs 0 leaves it out; a bad value is refused before any run.
    let mut args = COST_RUN.to_vec();
    args.extend(["--cost-secs", "0"]);
    let out = loadgen(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("policy's cost"),
        "{}",
        text(&out)
    );
    let out = loadgen(&["--cost-secs=-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--cost-secs"), "{}", text(&out));
    assert!(!text(&out).contains("starting a relay"), "{}", text(&out));
}
