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

/// ZTNA agent: reach services through the relay mesh (user certificate),
/// or expose them (connector certificate).
///
/// The role comes from the certificate in the config file. A user's agent
/// ("client") lets applications reach services in one of two ways:
/// `proxy` mode (no privileges: local listeners such as 127.0.0.1:15432
/// for the service "db") or `tun` mode (a TUN device; every service gets a
/// virtual address and a DNS name). A connector's agent terminates users'
/// tunnels and connects to each service's target from its own copy of the
/// policy. Everything in between is end-to-end encrypted: relays see only
/// user and service ids.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM.
    ///
    /// Example client config (proxy mode):
    ///
    ///   [relay]
    ///   address = "relay.example.net:51820"
    ///   public_key = "<relay's public key, 64 hex chars>"
    ///   [identity]
    ///   ca = "ca.pub"
    ///   cert = "alice.cert"
    ///   key = "alice.key"
    ///   [client]
    ///   mode = "proxy"
    ///   [[client.listen]]
    ///   service = "postgres-prod"
    ///   listen = "127.0.0.1:15432"
    ///
    /// A connector has `[connector] policy = "policy.toml"` instead of
    /// `[client]`. See the README for every key.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a running agent's sessions, services, bytes and errors.
    Status {
        /// Read the status address from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Or give the address directly.
        #[arg(long, default_value = DEFAULT_STATUS)]
        addr: std::net::SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Parse and check a config file, its key files and certificate.
    CheckConfig {
        /// The config file.
        config: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
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
        cert.role,
        cert.name,
        cert.id,
        agent::status::utc(cert.not_after),
        agent::status::span(cert.not_after.saturating_sub(now)),
        cfg.relay.address,
        checked.relay,
        cfg.status.listen,
    );
    if let Some(problem) = agent::hop::certificate_problem(cert, now) {
        eprintln!("warning: {problem}");
    }
    Ok(())
}
