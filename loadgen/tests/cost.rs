//! The policy's cost in memory that `loadgen` prints after its table
//! (`bench::cost`): every rig case with its ns per frame and recorded
//! callgrind instructions per frame, the mode differences, and what the
//! hardware counters gave or why they gave nothing.

use std::process::{Command, Output};

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

const SHORT: [&str; 14] = [
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

#[test]
fn the_policy_cost_follows_the_table() {
    let mut args = SHORT.to_vec();
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

    // --cost-secs 0 leaves it out; a bad value is refused before any run.
    let mut args = SHORT.to_vec();
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
