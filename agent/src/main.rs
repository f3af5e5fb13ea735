//! The `agent` binary: run a client or a connector, ask a running one for
//! its status, check a config.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use agent::config::{AgentConfig, ClientMode, DEFAULT_STATUS};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ZTNA agent: reach services through the relay mesh, or expose them.
#[derive(Debug, Parser)]
#[command(version, long_about = ABOUT)]
struct Cli {
    /// Log lines on stderr as text, or as one JSON object per line (for
    /// log shippers).
    #[arg(long, global = true, value_enum, default_value_t = relay::logs::LogFormat::Text)]
    log_format: relay::logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

const ABOUT: &str = "\
ZTNA agent: reach services through the relay mesh, or expose them.

The certificate named in the config file decides what this agent is:

  client     with a user certificate: lets this machine's applications reach
             the services the policy grants its user, in one of two modes:
               proxy  a local listener per service (e.g. 127.0.0.1:15432 for
                      \"postgres-prod\"); no privileges needed
               tun    a TUN device: every service gets a virtual address in
                      100.80.0.0/16 and a DNS name (\"postgres-prod.ztna\");
                      needs root or CAP_NET_ADMIN
  connector  with a connector certificate: takes users' sessions from the
             relay and connects to each service's target, checking every
             session against its own copy of the policy

Everything between client and connector is end-to-end encrypted; relays
see only user and service ids.

Getting started (the relay's operator runs the CA):
  relay keygen --out alice.key        a key for this agent (prints its public half)
  relay ca issue --ca-key ca.key --key alice.key --role user --id 1001 \\
      --name alice --group eng --out alice.cert
  write alice.toml                    see `agent run --help` for every key
  agent check-config alice.toml       checks files, certificate and role
  agent run --config alice.toml
  agent status --config alice.toml    is the relay up? which services? errors?

The relay's public key for [relay] public_key is what `relay keygen`
printed when the relay's key was made (`relay ca show relay.cert` shows it
again as \"static key\").";

const RUN_ABOUT: &str = "\
Run the agent until SIGINT or SIGTERM.

The config file is TOML; relative paths are relative to its directory.

[relay]                           the relay to connect to (required)
  address = \"relay.example.net:51820\"   host:port
  public_key = \"<64 hex characters>\"    the relay's static public key: printed
                                  by `relay keygen` when the relay's key was
                                  made; `relay ca show relay.cert` shows it too

[identity]                        this agent's files (required)
  ca = \"ca.pub\"                   the CA's public key (`relay ca init`)
  cert = \"alice.cert\"             this agent's certificate (`relay ca issue`):
                                  --role user makes a client, --role connector
                                  a connector
  key = \"alice.key\"               this agent's private key (`relay keygen`)

[client]                          user certificates only; may be left out
  mode = \"proxy\"                  \"proxy\" (default) or \"tun\"
[[client.listen]]                 proxy mode: one table per service
  service = \"postgres-prod\"       the service's name in the policy
  listen = \"127.0.0.1:15432\"      where applications connect
  protocol = \"tcp\"                \"tcp\" or \"udp\"; default: the service's
[client.tun]                      tun mode (needs root or CAP_NET_ADMIN)
  name = \"ztna0\"                  device name (default ztna0)
  dns = \"100.80.0.2:53\"           the service-name DNS responder; only the
                                  port may change (default 100.80.0.2:53)
  offload = true                  segmentation offload when the kernel has it

[connector]                       connector certificates only (required)
  policy = \"policy.toml\"          its own copy of the access policy, reloaded
                                  when its content changes

[status]
  listen = \"127.0.0.1:7070\"       loopback address `agent status` asks (default);
                                  it also serves GET /metrics for Prometheus

[tunnel]                          tuning; the defaults suit real networks
  mtu = 1380                      inner packet MTU, 1280..=65000
  ping_after_ms = 2000            ping the relay after this much silence,
                                  1..=60000
  dead_after_ms = 6000            silence (after a ping) before handshaking
                                  again; above ping_after_ms, at most 600000
  idle_close_s = 300              seconds before an idle on-demand session
                                  closes, 1..=604800
  tcp_buffer_kib = 1024           TCP buffer per direction and connection,
                                  16..=65536

Example: a client in proxy mode
  [relay]
  address = \"relay.example.net:51820\"
  public_key = \"<the relay's key: 64 hex characters>\"
  [identity]
  ca = \"ca.pub\"
  cert = \"alice.cert\"
  key = \"alice.key\"
  [client]
  mode = \"proxy\"
  [[client.listen]]
  service = \"postgres-prod\"
  listen = \"127.0.0.1:15432\"
  [[client.listen]]
  service = \"syslog\"
  listen = \"127.0.0.1:1514\"
  protocol = \"udp\"

Example: a client in tun mode (same [relay] and [identity])
  [client]
  mode = \"tun\"
  [client.tun]
  name = \"ztna0\"
Then point the resolver at the agent for .ztna names, e.g.
  resolvectl dns ztna0 100.80.0.2 && resolvectl domain ztna0 '~ztna'
and connect to postgres-prod.ztna (the connector dials the service's
target, whatever port the application used).

Example: a connector (same [relay]; its own [identity])
  [connector]
  policy = \"/etc/ztna/policy.toml\"

A config, certificate or key that cannot be used stops the agent at once:
exit status 1 and one message naming the file and the key. Problems found
while running (the relay not answering, its certificate refused, this
agent's certificate near its end) are logged once and shown by
`agent status`; the agent keeps retrying. More log: RUST_LOG=debug.";

const STATUS_ABOUT: &str = "\
Print a running agent's state.

Shows the certificate's role, name and id; for a client its mode and the
connection mode its groups have in the policy; the relay: up or DOWN, the
last handshake, handshakes and sessions lost; frames and bytes to and from
the relay and those dropped; per service: whether an end-to-end session is
up, open flows, bytes each way, the local listener (client) or user
(connector); and recent errors with what to check, for instance
\"no answer from relay ... after 3 attempts; is it running, ...\".

It asks the agent's status endpoint, plain HTTP on a loopback address:
[status] listen in the agent's config (default 127.0.0.1:7070). Give the
config with --config, or the address with --addr. Exits 1 when no agent
answers there.";

const CHECK_ABOUT: &str = "\
Check a config file without running the agent.

Parses the file (unknown keys, bad values and ranges are named with their
line), reads the CA, the certificate and the key, checks that the
certificate is signed by the CA, valid now and for this key, that its role
fits the config ([client] for a user certificate, [connector] for a
connector's; a relay's is refused), loads a connector's policy and resolves
the relay's address. Prints one \"ok: ...\" line saying what the agent would
be and until when its certificate is valid, with a warning when it ends
within a day. On the first problem prints one \"error: ...\" line naming the
file and the key, and exits 1.

It does not contact the relay: run the agent, then `agent status` shows
whether the relay answers.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (a client or a connector) until SIGINT or SIGTERM.
    #[command(long_about = RUN_ABOUT)]
    Run {
        /// The config file (TOML); `agent run --help` lists its keys.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a running agent's relay, services, traffic and errors.
    #[command(long_about = STATUS_ABOUT)]
    Status {
        /// Read the status address ([status] listen) from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The status address, when not given by --config.
        #[arg(long, default_value = DEFAULT_STATUS)]
        addr: std::net::SocketAddr,
        /// Print the raw JSON (GET /status), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file, its key files and certificate, without running.
    #[command(long_about = CHECK_ABOUT)]
    CheckConfig {
        /// The config file (TOML).
        config: PathBuf,
    },
}

fn main() {
    if let Err(e) = proto::hoptag::lanes::check_cpu() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    relay::logs::init(cli.log_format);
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config } => {
            let cfg = AgentConfig::load(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            agent::start::run(cfg, stop).with_context(|| format!("config {}", config.display()))
        }
        Command::Status { config, addr, json } => {
            let addr = match config {
                Some(c) => AgentConfig::load(&c)?.status.listen,
                None => addr,
            };
            let s = agent::status::fetch(addr)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", agent::status::render(&s));
            }
            Ok(())
        }
        Command::CheckConfig { config } => check_config(&config),
    }
}

/// `agent check-config`: the checks `agent run` does before it opens a
/// socket, and a summary of what the agent would be.
fn check_config(config: &Path) -> Result<()> {
    let cfg = AgentConfig::load(config)?;
    let now = agent::runtime::unix_nanos() / 1_000_000_000;
    let checked =
        agent::start::check(&cfg, now).with_context(|| format!("config {}", config.display()))?;
    let cert = checked.identity.certificate();
    let what = match (&cfg.client, &checked.policy) {
        (_, Some(_)) => "a connector".to_owned(),
        (Some(c), None) if c.mode == ClientMode::Tun => {
            format!("a client in tun mode (device {})", c.tun.name)
        }
        (c, None) => format!(
            "a client in proxy mode with {} listener(s)",
            c.as_ref().map_or(0, |c| c.listen.len())
        ),
    };
    println!(
        "ok: {} '{}' (id {}) runs as {what}; certificate valid until {} ({} left); relay {} ({}); status on {}",
        cert.body.role,
        cert.body.name,
        cert.body.id,
        agent::status::utc(cert.body.not_after),
        agent::status::span(cert.body.not_after.saturating_sub(now)),
        cfg.relay.address,
        checked.relay,
        cfg.status.listen,
    );
    if let Some(problem) = agent::hop::certificate_problem(cert, now) {
        eprintln!("warning: {problem}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The lines of `RUN_ABOUT` after `heading`, up to a line that is not
    /// indented, without their indent.
    fn example(heading: &str) -> String {
        RUN_ABOUT
            .lines()
            .skip_while(|l| !l.starts_with(heading))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect()
    }

    #[test]
    fn the_help_examples_are_valid_configs() {
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let proxy = example("Example: a client in proxy mode")
            .replace("<the relay's key: 64 hex characters>", key);
        let cfg = AgentConfig::parse(&proxy, Path::new("proxy.toml")).unwrap();
        let client = cfg.client.unwrap();
        assert_eq!(client.listen.len(), 2);
        let common = proxy.split("[client]").next().unwrap();
        for (heading, name) in [
            ("Example: a client in tun mode", "tun.toml"),
            ("Example: a connector", "connector.toml"),
        ] {
            let text = format!("{common}{}", example(heading));
            let cfg = AgentConfig::parse(&text, Path::new(name))
                .unwrap_or_else(|e| panic!("{heading}: {e}\n{text}"));
            assert!(cfg.client.is_some() || cfg.connector.is_some());
        }
        let tun = format!("{common}{}", example("Example: a client in tun mode"));
        let cfg = AgentConfig::parse(&tun, Path::new("tun.toml")).unwrap();
        assert_eq!(cfg.client.unwrap().mode, ClientMode::Tun);
    }
}
