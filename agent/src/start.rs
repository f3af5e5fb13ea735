//! Starting an agent from its configuration: load and check the identity,
//! pick the role from the certificate, open the relay socket, serve the
//! status endpoint, run the loop until asked to stop.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use mio::Poll;
use proto::handshake::LocalIdentity;
use proto::identity::{CaPublicKey, CertError, Role};
use relay::keys::KeyFileError;

use crate::client::Client;
use crate::config::{AgentConfig, ClientMode, DNS_ADDRESS};
use crate::connector::Connector;
use crate::hop::Hop;
use crate::policy_watch::PolicyWatch;
use crate::runtime::{self, Role as RuntimeRole};
use crate::status::{self, utc, StatusBoard};

/// The TUN device's own address in tun mode (the inner source address of
/// every client).
pub const TUN_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 80, 0, 1);
/// Where the DNS responder for service names answers in tun mode.
pub const DEFAULT_DNS: std::net::SocketAddrV4 = std::net::SocketAddrV4::new(DNS_ADDRESS, 53);

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

/// What the start-up checks found: everything that can be known about a
/// config before a socket is opened.
#[derive(Debug)]
pub struct Checked {
    /// The CA every peer must chain to.
    pub ca: CaPublicKey,
    /// This agent's key and certificate, checked to belong together and
    /// to chain to `ca` now.
    pub identity: LocalIdentity,
    /// The relay's resolved address.
    pub relay: SocketAddr,
    /// A connector's policy, loaded.
    pub policy: Option<PolicyWatch>,
}

/// Checks `cfg` as `agent run` would start it at `now_unix`: the identity
/// files, the certificate's role against the config's tables, the
/// connector's policy, the relay's address. `agent check-config` runs the
/// same checks.
pub fn check(cfg: &AgentConfig, now_unix: u64) -> Result<Checked> {
    let ids = &cfg.identity;
    let ca = relay::keys::load_ca(&ids.ca).context("[identity] ca")?;
    let identity = relay::keys::load_identity(&ids.key, &ids.cert, &ca, now_unix)
        .map_err(|e| identity_error(e, &ids.cert))?;
    let cert = identity.certificate();
    let policy = match (cert.body.role, &cfg.client, &cfg.connector) {
        (Role::Relay, _, _) => bail!(
            "[identity] cert: {} is a relay's certificate ('{}'); an agent needs a user certificate (a client) or a connector certificate (a connector): issue one with `relay ca issue --role user` or `--role connector`",
            ids.cert.display(),
            cert.body.name
        ),
        (Role::User, _, Some(_)) => bail!(
            "[connector]: {} is a user's certificate ('{}'), which makes this agent a client: replace [connector] with a [client] table, or use a connector certificate",
            ids.cert.display(),
            cert.body.name
        ),
        (Role::Connector, Some(_), _) => bail!(
            "[client]: {} is a connector's certificate ('{}'), which makes this agent a connector: replace [client] with [connector] policy = \"path to the policy file\", or use a user certificate",
            ids.cert.display(),
            cert.body.name
        ),
        (Role::Connector, None, None) => bail!(
            "{} is a connector's certificate ('{}'): the config needs a [connector] table with policy = \"path to the policy file\"",
            ids.cert.display(),
            cert.body.name
        ),
        (Role::Connector, None, Some(c)) => {
            Some(PolicyWatch::load(&c.policy).context("[connector] policy")?)
        }
        (Role::User, _, None) => None,
    };
    let relay = resolve_relay(&cfg.relay.address).context("[relay] address")?;
    Ok(Checked {
        ca,
        identity,
        relay,
        policy,
    })
}

/// Says which key of the config an identity file error is about, and for
/// a certificate outside its validity, when that is as a date.
fn identity_error(e: KeyFileError, cert_path: &Path) -> anyhow::Error {
    let cert = cert_path.display();
    match e {
        KeyFileError::Cert {
            error: CertError::Expired { name, not_after, now },
            ..
        } => anyhow!(
            "[identity] cert: certificate {cert} ('{name}') expired at {} (now {}); issue a new one (`relay ca issue ... --out {cert}`) and start again",
            utc(not_after),
            utc(now)
        ),
        KeyFileError::Cert {
            error: CertError::NotYetValid { name, not_before, now },
            ..
        } => anyhow!(
            "[identity] cert: certificate {cert} ('{name}') is not valid before {} and this machine's clock says {}; check the clock",
            utc(not_before),
            utc(now)
        ),
        KeyFileError::Cert {
            error: CertError::BadSignature(name),
            ..
        } => anyhow!(
            "[identity] cert: certificate {cert} ('{name}') was not signed by the CA in [identity] ca (or was altered); use the ca.pub of the CA that issued it"
        ),
        e @ KeyFileError::KeyMismatch { .. } => anyhow!(e).context("[identity] key"),
        e @ KeyFileError::StaticKey { .. } => anyhow!(e).context("[identity] key"),
        KeyFileError::Read { path, error } if path == cert_path => {
            anyhow!(KeyFileError::Read { path, error }).context("[identity] cert")
        }
        e @ KeyFileError::Read { .. } => anyhow!(e).context("[identity] key"),
        e => anyhow!(e).context("[identity] cert"),
    }
}

/// Runs the agent described by `cfg` until `stop` is set.
pub fn run(cfg: AgentConfig, stop: Arc<AtomicBool>) -> Result<()> {
    let now_unix = runtime::unix_nanos() / 1_000_000_000;
    let Checked {
        ca,
        identity,
        relay: relay_addr,
        policy,
    } = check(&cfg, now_unix)?;
    let cert = identity.certificate().clone();
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
    ctx.renewal = Some(relay::renewal::IdentityFiles::new(
        &cfg.identity.key,
        &cfg.identity.cert,
        ca,
        &identity,
    ));
    let board = StatusBoard::new();
    let status_thread = status::serve(cfg.status.listen, board.clone(), stop.clone())
        .with_context(|| {
            format!(
                "cannot serve status on {} (another agent running? set [status] listen)",
                cfg.status.listen
            )
        })?;
    let mtu = usize::from(cfg.tunnel.mtu);
    let mut role: Box<dyn RuntimeRole> = match cert.body.role {
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
                // An IPv6 address was refused by the config check.
                let dns = match client.tun.dns {
                    Some(SocketAddr::V4(a)) => a,
                    _ => DEFAULT_DNS,
                };
                tracing::info!(user = %cert.body.name, id = cert.body.id, relay = %relay_addr, mode = "tun", device = dev.name(), offload = dev.offload_enabled(), %dns, "client starting");
                Box::new(Client::new_tun(
                    identity,
                    ca,
                    dev,
                    dns,
                    cfg.tunnel.clone(),
                    &mut ctx,
                )?)
            } else {
                if client.listen.is_empty() {
                    tracing::warn!("no [[client.listen]] entries: nothing to proxy");
                }
                tracing::info!(user = %cert.body.name, id = cert.body.id, relay = %relay_addr, mode = "proxy", "client starting");
                Box::new(Client::new(
                    identity,
                    ca,
                    &client.listen,
                    cfg.tunnel.clone(),
                    &mut ctx,
                )?)
            }
        }
        Role::Connector => {
            let (Some(c), Some(policy)) = (&cfg.connector, policy) else {
                bail!("a connector needs [connector] policy (checked above)");
            };
            tracing::info!(connector = %cert.body.name, id = cert.body.id, relay = %relay_addr, policy = %c.policy.display(), "connector starting");
            Box::new(Connector::new(
                identity,
                ca,
                policy,
                mtu,
                cfg.tunnel.tcp_buffer_kib * 1024,
                now,
            ))
        }
        Role::Relay => bail!("a relay's certificate (refused above)"),
    };
    tracing::info!(status = %cfg.status.listen, "status endpoint up");
    let result = runtime::run(poll, ctx, role.as_mut(), &board, &stop);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = status_thread.join();
    result.context("event loop failed")
}
