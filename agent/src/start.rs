//! Starting an agent from its configuration: load and check the identity,
//! pick the role from the certificate, open the relay socket, serve the
//! status endpoint, run the loop until asked to stop.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mio::Poll;
use proto::identity::Role;

use crate::client::Client;
use crate::config::{AgentConfig, ClientMode};
use crate::connector::Connector;
use crate::hop::Hop;
use crate::policy_watch::PolicyWatch;
use crate::runtime::{self, Role as RuntimeRole};
use crate::status::{self, StatusBoard};

/// The TUN device's own address in tun mode (the inner source address of
/// every client).
pub const TUN_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 80, 0, 1);
/// Where the DNS responder for service names answers in tun mode.
pub const DEFAULT_DNS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(100, 80, 0, 2), 53);

/// Resolves the relay's `host:port`.
pub fn resolve_relay(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "cannot resolve relay address '{address}' (expected host:port in [relay] address)"
            )
        })?
        .next()
        .with_context(|| format!("relay address '{address}' resolves to no address"))
}

/// Runs the agent described by `cfg` until `stop` is set.
pub fn run(cfg: AgentConfig, stop: Arc<AtomicBool>) -> Result<()> {
    let now_unix = runtime::unix_nanos() / 1_000_000_000;
    let ca = relay::keys::load_ca(&cfg.identity.ca)?;
    let identity =
        relay::keys::load_identity(&cfg.identity.key, &cfg.identity.cert, &ca, now_unix)?;
    let cert = identity.certificate().clone();
    let relay_addr = resolve_relay(&cfg.relay.address)?;
    let poll = Poll::new().context("cannot create the event poll")?;
    let socket = runtime::relay_socket(relay_addr)
        .with_context(|| format!("cannot open a UDP socket towards the relay {relay_addr}"))?;
    let now = Instant::now();
    let hop = Hop::new(
        relay_addr,
        cfg.relay_key(),
        identity.clone(),
        ca,
        cfg.tunnel.ping_after(),
        cfg.tunnel.dead_after(),
        now,
    );
    let mut ctx = runtime::context(&poll, socket, hop)?;
    let board = StatusBoard::new();
    let status_thread = status::serve(cfg.status.listen, board.clone(), stop.clone())
        .with_context(|| {
            format!(
                "cannot serve status on {} (another agent running? set [status] listen)",
                cfg.status.listen
            )
        })?;
    let mtu = usize::from(cfg.tunnel.mtu);
    let mut role: Box<dyn RuntimeRole> = match cert.role {
        Role::User => {
            let client = cfg.client.clone().unwrap_or_default();
            if client.mode == ClientMode::Tun {
                let tun_cfg = crate::tun::TunConfig {
                    name: client.tun.name.clone(),
                    mtu: cfg.tunnel.mtu,
                    address: TUN_ADDRESS,
                    prefix_len: 16,
                    offload: client.tun.offload,
                };
                let dev = crate::tun::TunDevice::open(&tun_cfg)?;
                let dns = match client.tun.dns {
                    Some(SocketAddr::V4(a)) => a,
                    Some(SocketAddr::V6(_)) => {
                        bail!("[client.tun] dns must be an IPv4 address inside 100.80.0.0/16")
                    }
                    None => DEFAULT_DNS,
                };
                tracing::info!(user = %cert.name, id = cert.id, relay = %relay_addr, mode = "tun", device = dev.name(), offload = dev.offload_enabled(), %dns, "client starting");
                Box::new(Client::new_tun(identity, ca, dev, dns, cfg.tunnel.clone(), &mut ctx)?)
            } else {
                if client.listen.is_empty() {
                    tracing::warn!("no [[client.listen]] entries: nothing to proxy");
                }
                tracing::info!(user = %cert.name, id = cert.id, relay = %relay_addr, mode = "proxy", "client starting");
                Box::new(Client::new(identity, ca, &client.listen, cfg.tunnel.clone(), &mut ctx)?)
            }
        }
        Role::Connector => {
            let Some(c) = &cfg.connector else {
                bail!("certificate '{}' is a connector's: the config needs a [connector] table with policy = \"path to the policy file\"", cert.name);
            };
            let policy = PolicyWatch::load(&c.policy)?;
            tracing::info!(connector = %cert.name, id = cert.id, relay = %relay_addr, policy = %c.policy.display(), "connector starting");
            Box::new(Connector::new(
                identity,
                ca,
                policy,
                mtu,
                cfg.tunnel.tcp_buffer_kib * 1024,
                now,
            ))
        }
        Role::Relay => bail!(
            "certificate '{}' is a relay's; an agent needs a user or connector certificate",
            cert.name
        ),
    };
    tracing::info!(status = %cfg.status.listen, "status endpoint up");
    let result = runtime::run(poll, ctx, role.as_mut(), &board, &stop);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = status_thread.join();
    result.context("event loop failed")
}
