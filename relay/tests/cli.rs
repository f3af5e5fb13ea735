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
    ] {
        assert!(run.contains(flag), "{run}");
    }
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
