//! The `agent` binary: run a client or a connector, ask a running one for
//! its status, check a config.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};

use agent::config::{AgentConfig, DEFAULT_STATUS};

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
            agent::start::run(cfg, stop)
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
        Command::CheckConfig { config } => {
            let cfg = AgentConfig::load(&config)?;
            let now = agent::runtime::unix_nanos() / 1_000_000_000;
            let ca = relay::keys::load_ca(&cfg.identity.ca)?;
            let id = relay::keys::load_identity(&cfg.identity.key, &cfg.identity.cert, &ca, now)?;
            let cert = id.certificate();
            agent::start::resolve_relay(&cfg.relay.address)?;
            println!(
                "ok: {} '{}' (id {}), certificate valid for {} more days, relay {}",
                cert.role,
                cert.name,
                cert.id,
                cert.not_after.saturating_sub(now) / 86_400,
                cfg.relay.address
            );
            Ok(())
        }
    }
}
