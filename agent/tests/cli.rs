//! The `agent` binary as a user meets it: its help, `check-config` on good
//! and bad configs, `run` refusing what it cannot start, and `status`
//! against a running agent whose relay is unreachable or untrusted, and
//! with no agent at all.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use agent::status::utc;
use common::*;
use loadgen::pki::Pki;
use proto::datapath::Mode;
use proto::identity::Role;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn now_unix() -> u64 {
    relay::control::unix_nanos() / 1_000_000_000
}

/// A world whose relay address is a UDP port nobody listens on.
fn world_without_relay() -> World {
    let mut w = World::start(Mode::Ztna);
    w.relay_addr = free_udp_port();
    w.write_policy(&Targets::basic(), true);
    w
}

const PROXY_BODY: &str =
    "[client]\nmode = \"proxy\"\n[[client.listen]]\nservice = \"echo\"\nlisten = \"127.0.0.1:15432\"\n";

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

#[test]
fn help_teaches_the_roles_the_modes_and_every_config_key() {
    let top = agent_cli(&["--help"]);
    assert!(top.status.success());
    let top = stdout(&top);
    for word in [
        "client",
        "connector",
        "proxy",
        "tun",
        "relay keygen",
        "run",
        "status",
        "check-config",
    ] {
        assert!(top.contains(word), "agent --help lacks {word:?}:\n{top}");
    }
    let run = stdout(&agent_cli(&["run", "--help"]));
    for word in [
        "[relay]",
        "address",
        "public_key",
        "relay keygen",
        "[identity]",
        "ca =",
        "cert =",
        "key =",
        "[client]",
        "mode = \"proxy\"",
        "mode = \"tun\"",
        "[[client.listen]]",
        "service =",
        "listen =",
        "protocol",
        "[client.tun]",
        "dns",
        "offload",
        "[connector]",
        "policy =",
        "[status]",
        "[tunnel]",
        "mtu",
        "ping_after_ms",
        "dead_after_ms",
        "idle_close_s",
        "tcp_buffer_kib",
        "CAP_NET_ADMIN",
    ] {
        assert!(
            run.contains(word),
            "agent run --help lacks {word:?}:\n{run}"
        );
    }
    let status = stdout(&agent_cli(&["status", "--help"]));
    for word in ["DOWN", "errors", "--json", "--config", "[status] listen"] {
        assert!(
            status.contains(word),
            "agent status --help lacks {word:?}:\n{status}"
        );
    }
    let check = stdout(&agent_cli(&["check-config", "--help"]));
    for word in ["certificate", "exit", "relay"] {
        assert!(
            check.contains(word),
            "agent check-config --help lacks {word:?}:\n{check}"
        );
    }
}

#[test]
fn check_config_accepts_good_configs_and_says_what_the_agent_is() {
    let w = world_without_relay();
    let (client, _) = w.agent_config("alice", ALICE, Role::User, &["eng"], PROXY_BODY);
    let out = agent_cli(&["check-config", path_arg(&client)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("ok: user 'alice' (id 1001) runs as a client in proxy mode with 1 listener(s); certificate valid until "),
        "{text}"
    );
    assert!(text.contains(&format!("relay {}", w.relay_addr)), "{text}");

    let (conn, _) = w.agent_config(
        "conn-a",
        CONNECTOR,
        Role::Connector,
        &[],
        "[connector]\npolicy = \"policy.toml\"\n",
    );
    let out = agent_cli(&["check-config", path_arg(&conn)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: connector 'conn-a' (id 501) runs as a connector"));
}

/// A bad config: what `check-config` (and, for what only shows at start,
/// `run`) must say about it.
struct Bad {
    what: &'static str,
    config: std::path::PathBuf,
    expect: Vec<String>,
}

#[test]
fn bad_configs_exit_1_with_one_message_naming_file_key_and_fix() {
    let w = world_without_relay();
    let now = now_unix();
    let mut cases = Vec::new();

    let expired = w.node_valid(ALICE, "alice", Role::User, now - 10 * 86_400, now - 86_400);
    let (config, _) = w.write_agent_config("alice", &expired, PROXY_BODY);
    let cert = w.path("alice.cert");
    cases.push(Bad {
        what: "an expired certificate",
        config,
        expect: vec![
            format!(
                "[identity] cert: certificate {} ('alice') expired at {}",
                cert.display(),
                utc(now - 86_400)
            ),
            "issue a new one".into(),
        ],
    });

    let early = w.node_valid(BOB, "bob", Role::User, now + 86_400, now + 10 * 86_400);
    let (config, _) = w.write_agent_config("bob", &early, PROXY_BODY);
    cases.push(Bad {
        what: "a certificate not yet valid",
        config,
        expect: vec![
            format!("('bob') is not valid before {}", utc(now + 86_400)),
            "check the clock".into(),
        ],
    });

    let (config, _) = w.agent_config("relay-2", 2, Role::Relay, &[], PROXY_BODY);
    cases.push(Bad {
        what: "a relay's certificate",
        config,
        expect: vec![
            "[identity] cert: ".into(),
            "relay-2.cert is a relay's certificate ('relay-2'); an agent needs a user certificate (a client) or a connector certificate (a connector)".into(),
        ],
    });

    let foreign = Pki::new(now)
        .node(1003, "carol", Role::User, &["eng"])
        .unwrap();
    let (config, _) = w.write_agent_config("carol", &foreign, PROXY_BODY);
    cases.push(Bad {
        what: "a certificate from another CA",
        config,
        expect: vec![
            "[identity] cert: certificate".into(),
            "('carol') was not signed by the CA in [identity] ca".into(),
        ],
    });

    let (config, _) = w.agent_config(
        "dave",
        1004,
        Role::User,
        &[],
        "[connector]\npolicy = \"policy.toml\"\n",
    );
    cases.push(Bad {
        what: "a user certificate with [connector]",
        config,
        expect: vec![
            "[connector]: ".into(),
            "is a user's certificate ('dave')".into(),
        ],
    });

    let (config, _) = w.agent_config("erin", 1005, Role::User, &[], PROXY_BODY);
    std::fs::remove_file(w.path("erin.key")).unwrap();
    cases.push(Bad {
        what: "a missing key file",
        config,
        expect: vec!["[identity] key: cannot read".into(), "erin.key".into()],
    });

    let (config, _) = w.agent_config("fay", 1006, Role::User, &[], "[client]\nmoed = \"tun\"\n");
    cases.push(Bad {
        what: "an unknown key",
        config,
        expect: vec![
            "fay.toml: line ".into(),
            ", client.moed: unknown field `moed`, expected one of `mode`, `listen`, `tun`".into(),
        ],
    });

    let (config, _) = w.agent_config(
        "gus",
        1007,
        Role::User,
        &[],
        "[client]\nmode = \"tunnel\"\n",
    );
    cases.push(Bad {
        what: "a bad value",
        config,
        expect: vec![
            "gus.toml: line ".into(),
            ", client.mode: unknown variant `tunnel`".into(),
        ],
    });

    cases.push(Bad {
        what: "a missing config file",
        config: w.path("nowhere.toml"),
        expect: vec![format!(
            "cannot read config {}",
            w.path("nowhere.toml").display()
        )],
    });

    for case in &cases {
        let config = path_arg(&case.config);
        for args in [
            vec!["check-config", config],
            vec!["run", "--config", config],
        ] {
            let out = agent_cli(&args);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: agent {args:?}: {err}",
                case.what
            );
            assert!(err.starts_with("error: "), "{}: {err}", case.what);
            assert_eq!(err.lines().count(), 1, "{}: one message: {err}", case.what);
            for e in &case.expect {
                assert!(
                    err.contains(e.as_str()),
                    "{}: expected {e:?} in: {err}",
                    case.what
                );
            }
            if args[0] == "run" {
                assert!(
                    err.contains(&format!("config {config}")) || err.contains("cannot read config"),
                    "{err}"
                );
            }
        }
    }
}

/// Runs `agent status --config CONFIG` until its output has every one of
/// `want` (bounded); returns the output.
fn status_until(config: &Path, agent: &AgentProcess, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent_cli(&["status", "--config", path_arg(config)]);
        let text = stdout(&out);
        if out.status.success() && want.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "agent status never showed {want:?}; last:\n{text}{}\nlog:\n{}",
            stderr(&out),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_an_unreachable_relay_down_with_what_to_check() {
    let w = world_without_relay();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[("echo", free_tcp_port(), "tcp")],
    );
    let expected = format!(
        "no answer from relay {} after 3 attempts; is it running, is [relay] address right, and is public_key the relay's?",
        w.relay_addr
    );
    let text = status_until(&w.path("alice.toml"), &client, &["DOWN", &expected]);
    assert!(
        text.contains(&format!(
            "relay:       {} (DOWN; last handshake never",
            w.relay_addr
        )),
        "{text}"
    );
    // Logged once, although the agent keeps trying.
    let log = client.log_text();
    assert_eq!(log.matches("no answer from relay").count(), 1, "{log}");
    assert!(client.status().is_some_and(|s| !s.link.hop_up));
}

#[test]
fn status_shows_a_relay_certificate_the_ca_did_not_sign() {
    let mut w = World::start(Mode::Ztna);
    // The relay's certificate comes from another CA; it still trusts the
    // agents' CA, so it answers, and the agent must refuse the answer.
    w.relay_identity = Pki::new(now_unix())
        .node(1, "relay-1", Role::Relay, &[])
        .unwrap();
    w.write_policy(&Targets::basic(), true);
    w.start_relay();
    let client = w.client(
        "alice",
        ALICE,
        &["eng"],
        &[("echo", free_tcp_port(), "tcp")],
    );
    let text = status_until(
        &w.path("alice.toml"),
        &client,
        &[
            "DOWN",
            "answered, but its handshake failed this agent's checks: peer certificate rejected: certificate for `relay-1` was not signed by this CA",
            "([identity] ca must be the CA that issued the relay's certificate",
        ],
    );
    assert!(!text.contains("no answer from relay"), "{text}");
}

#[test]
fn status_without_an_agent_says_so_and_exits_1() {
    let addr = free_tcp_port();
    let out = agent_cli(&["status", "--addr", &addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: no agent answers on {addr}; is it running, and is [status] listen the same in its config?")),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}
