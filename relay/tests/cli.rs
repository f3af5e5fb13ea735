//! The `relay` binary as an operator uses it: CA and key tooling, a policy
//! check, then a real relay process that reloads on SIGHUP and exits 0 on
//! SIGTERM after printing its counters.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "relay failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("relay-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn example_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")
}

#[test]
fn help_explains_every_command() {
    let help = ok(relay().arg("--help").output().unwrap());
    for cmd in ["run", "keygen", "ca", "check-policy"] {
        assert!(help.contains(cmd), "{help}");
    }
    let run = ok(relay().args(["run", "--help"]).output().unwrap());
    for flag in [
        "--config",
        "--listen",
        "--io",
        "--mode",
        "--policy",
        "--metrics",
        "--log-format",
        "--audit-interval-ms",
        "--audit-max-lines",
        "--no-audit",
        "--batch",
        "--busy-poll",
    ] {
        assert!(run.contains(flag), "{run}");
    }
}

#[test]
fn a_busy_poll_budget_beyond_the_bound_is_refused_before_anything_starts() {
    // Refused while checking the settings: the files are never read.
    let out = relay()
        .args([
            "run",
            "--policy",
            "p",
            "--ca",
            "c",
            "--cert",
            "r",
            "--key",
            "k",
            "--busy-poll",
            "20000",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("busy poll of 20000 us is more than 10000 us"),
        "{stderr}"
    );
}

#[test]
fn tooling_then_a_relay_process_that_reloads_and_stops_cleanly() {
    let d = scratch("run");
    ok(relay()
        .args(["ca", "init", "--dir"])
        .arg(&d)
        .output()
        .unwrap());
    let public = ok(relay()
        .args(["keygen", "--out"])
        .arg(d.join("relay.key"))
        .output()
        .unwrap());
    assert_eq!(public.trim().len(), 64, "{public}");
    // keygen never overwrites a key.
    assert!(!relay()
        .args(["keygen", "--out"])
        .arg(d.join("relay.key"))
        .output()
        .unwrap()
        .status
        .success());
    ok(relay()
        .args([
            "ca", "issue", "--role", "relay", "--id", "1000", "--name", "relay-1", "--ca-key",
        ])
        .arg(d.join("ca.key"))
        .arg("--key")
        .arg(d.join("relay.key"))
        .arg("--out")
        .arg(d.join("relay.cert"))
        .output()
        .unwrap());
    let shown = ok(relay()
        .args(["ca", "show"])
        .arg(d.join("relay.cert"))
        .arg("--ca")
        .arg(d.join("ca.pub"))
        .output()
        .unwrap());
    assert!(
        shown.contains("verified:   yes") && shown.contains(public.trim()),
        "{shown}"
    );
    let policy = d.join("policy.toml");
    std::fs::copy(example_policy(), &policy).unwrap();
    let checked = ok(relay().arg("check-policy").arg(&policy).output().unwrap());
    assert!(checked.starts_with("ok:"), "{checked}");

    let mut child = relay()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--io",
            "mmsg",
            "--no-pin",
            "--batch",
            "64",
            "--busy-poll",
            "20",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--ca")
        .arg(d.join("ca.pub"))
        .arg("--cert")
        .arg(d.join("relay.cert"))
        .arg("--key")
        .arg(d.join("relay.key"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("relay listening on 127.0.0.1:"), "{line}");
    assert!(line.contains("batch 64, busy poll 20 us"), "{line}");

    // A broken policy on SIGHUP is rejected, loudly, and the relay goes on.
    std::fs::write(&policy, "[[users]]\nid = 1\n").unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while !log.contains("policy reload rejected") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{log}");
        let mut l = String::new();
        if stderr.read_line(&mut l).unwrap() == 0 {
            panic!("relay exited:\n{log}");
        }
        log.push_str(&l);
    }
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut report = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut report).unwrap();
    assert!(
        report.contains("worker") && report.contains("policy epoch 1 (1 reloads rejected)"),
        "{report}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn startup_errors_say_what_to_fix() {
    let d = scratch("errors");
    let out = relay()
        .args(["run", "--policy", "/nonexistent/policy.toml", "--ca"])
        .arg(d.join("ca.pub"))
        .args(["--cert", "x", "--key", "y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("ca.pub"),
        "{err}"
    );
    let out = relay()
        .arg("check-policy")
        .arg(d.join("missing.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read policy file"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_ca_lifecycle_refuses_overwrites_lists_renews_and_revokes() {
    let d = scratch("ca-life");
    let ca = d.join("ca");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    ok(relay()
        .args(["ca", "init", "--dir", &s(&ca)])
        .output()
        .unwrap());
    // Nothing is replaced without --force: not the CA, not a key, not a
    // certificate.
    let again = relay()
        .args(["ca", "init", "--dir", &s(&ca)])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let key = d.join("alice.key");
    ok(relay()
        .args(["keygen", "--out", &s(&key)])
        .output()
        .unwrap());
    let before = std::fs::read(&key).unwrap();
    assert!(!relay()
        .args(["keygen", "--out", &s(&key)])
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key was replaced");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cert = d.join("alice.cert");
    let issue = |force: bool| {
        let mut c = relay();
        c.args([
            "ca",
            "issue",
            "--ca-key",
            &s(&ca.join("ca.key")),
            "--key",
            &s(&key),
        ])
        .args([
            "--role", "user", "--id", "1001", "--name", "alice", "--group", "eng",
        ])
        .args(["--out", &s(&cert)]);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    ok(issue(false));
    assert!(
        !issue(false).status.success(),
        "a certificate was replaced without --force"
    );
    ok(issue(true)); // renewal: same key, new validity
    let listed = ok(relay()
        .args(["ca", "list", "--dir", &s(&ca)])
        .output()
        .unwrap());
    assert_eq!(
        listed.lines().filter(|l| l.contains("alice")).count(),
        2,
        "{listed}"
    );
    assert!(
        listed.lines().skip(1).all(|l| l.contains(" valid ")),
        "{listed}"
    );

    // Revoke it in a copy of the example policy: the entry is appended
    // (comments kept), the policy still checks, and the list says so.
    let policy = d.join("policy.toml");
    std::fs::copy(example_policy(), &policy).unwrap();
    let original = std::fs::read_to_string(&policy).unwrap();
    let out = ok(relay()
        .args([
            "ca",
            "revoke",
            "--policy",
            &s(&policy),
            "--cert",
            &s(&cert),
            "--reason",
            "laptop stolen",
        ])
        .output()
        .unwrap());
    assert!(out.contains("revoked alice"), "{out}");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.starts_with(original.trim_end()),
        "the file was rewritten, not appended to"
    );
    assert!(
        text.contains("[[revoked]]") && text.contains("laptop stolen"),
        "{text}"
    );
    ok(relay()
        .args(["check-policy", &s(&policy)])
        .output()
        .unwrap());
    let listed = ok(relay()
        .args(["ca", "list", "--dir", &s(&ca), "--policy", &s(&policy)])
        .output()
        .unwrap());
    assert!(
        listed.lines().skip(1).all(|l| l.contains(" revoked ")),
        "{listed}"
    );
    // Revoking twice changes nothing.
    ok(relay()
        .args(["ca", "revoke", "--policy", &s(&policy), "--cert", &s(&cert)])
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), text);
    let _ = std::fs::remove_dir_all(&d);
}

/// A CA in `d` and a relay key and certificate from it (`relay.key`,
/// `relay.cert`, id 1000), made with the CLI.
fn relay_identity(d: &Path) {
    ok(relay()
        .args(["ca", "init", "--dir"])
        .arg(d)
        .output()
        .unwrap());
    ok(relay()
        .args(["keygen", "--out"])
        .arg(d.join("relay.key"))
        .output()
        .unwrap());
    ok(relay()
        .args([
            "ca", "issue", "--role", "relay", "--id", "1000", "--name", "relay-1", "--ca-key",
        ])
        .arg(d.join("ca.key"))
        .arg("--key")
        .arg(d.join("relay.key"))
        .arg("--out")
        .arg(d.join("relay.cert"))
        .output()
        .unwrap());
}

/// Lines of `reader`, read on a thread of their own, so a test can wait
/// for one with a deadline.
fn lines(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; fails on EOF or after `within`.
fn await_line(rx: &std::sync::mpsc::Receiver<String>, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(e) => panic!("no line with {what:?} ({e}); before it:\n{seen}"),
        }
    }
}

#[test]
fn a_sighup_right_after_the_ready_line_reloads_even_under_load() {
    let d = scratch("hup");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    relay_identity(&d);
    let policy = d.join("policy.toml");
    std::fs::copy(example_policy(), &policy).unwrap();

    // Every core busy while the relays start: the window between the
    // ready line and the handlers, were there one, is widest then.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load: Vec<_> = (0..cores)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for round in 0..20 {
        let mut child = relay()
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--io",
                "mmsg",
            ])
            .args([
                "--no-pin",
                "--policy",
                &s(&policy),
                "--ca",
                &s(&d.join("ca.pub")),
            ])
            .args([
                "--cert",
                &s(&d.join("relay.cert")),
                "--key",
                &s(&d.join("relay.key")),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("relay listening on"), "{ready}");
        // At once: no wait between the line and the signal.
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, with a valid signal.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        let reloaded = std::panic::catch_unwind(|| {
            await_line(&stderr, "policy reloaded", Duration::from_secs(10))
        });
        match (reloaded, child.try_wait().unwrap()) {
            (Ok(_), None) => {}
            (r, status) => failures.push(format!(
                "round {round}: reloaded {}, exit status {status:?}",
                r.is_ok()
            )),
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = child.wait();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    let d = scratch("json");
    relay_identity(&d);
    let mut child = relay()
        .args([
            "run",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--io",
            "mmsg",
            "--no-pin",
            "--audit-interval-ms",
            "100",
        ])
        .arg("--policy")
        .arg(example_policy())
        .arg("--ca")
        .arg(d.join("ca.pub"))
        .arg("--cert")
        .arg(d.join("relay.cert"))
        .arg("--key")
        .arg(d.join("relay.key"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("relay listening on 127.0.0.1:"), "{line}");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "relay serving")
        .unwrap_or_else(|| panic!("no 'relay serving' line in:\n{stderr}"));
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(serving["target"], "relay", "{serving}");
    assert_eq!(serving["mode"], "ztna", "{serving}");
    assert!(serving["timestamp"].is_string(), "{serving}");
    // Nobody sent anything: no audit line.
    assert!(lines.iter().all(|l| l["target"] != "audit"), "{stderr}");
    // Bad audit settings are refused with what to fix.
    let out = relay()
        .args(["run", "--audit-max-lines", "0", "--policy"])
        .arg(example_policy())
        .arg("--ca")
        .arg(d.join("ca.pub"))
        .arg("--cert")
        .arg(d.join("relay.cert"))
        .arg("--key")
        .arg(d.join("relay.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_lines must be at least 1"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
