//! The `relay` binary: run a relay, and the offline tooling around it
//! (keys, the CA, policy checks).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use proto::datapath::{DropReason, Mode};
use proto::handshake::StaticKeypair;
use proto::identity::{to_hex, CaKeypair, CertificateBody, Role};
use relay::config::Config;
use relay::control::HandshakeReject;
use relay::io::{Backend, IoConfig};
use relay::{keys, Relay, RelayOptions, RelayReport};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ZTNA relay: forwards end-to-end encrypted frames between users and the
/// connectors of services, checking every frame's (user, service) pair
/// against the access policy.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log lines on stderr as text, or as one JSON object per line (for
    /// log shippers); audit lines are those of target "audit". Default:
    /// the config's log_format, else text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<relay::logs::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (until SIGINT/SIGTERM; SIGHUP reloads the policy).
    Run(Box<RunArgs>),
    /// Generate a node's X25519 static key; prints the public key (hex),
    /// which goes into the node's certificate.
    Keygen {
        /// Where to write the private key (created with mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace `--out` if it exists (the old key is lost).
        #[arg(long)]
        force: bool,
    },
    /// The offline certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Parse, validate and compile a policy file; print its size.
    CheckPolicy {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA: writes DIR/ca.key (secret, keep offline) and DIR/ca.pub
    /// (give to every node).
    Init {
        /// Directory for the two files.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA in DIR (every certificate it issued stops
        /// verifying).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for a node's static key.
    Issue {
        /// The CA's secret key file (from `ca init`).
        #[arg(long)]
        ca_key: PathBuf,
        /// The node's private key file (from `keygen`); its public key is
        /// what gets certified.
        #[arg(long)]
        key: PathBuf,
        /// user, connector or relay.
        #[arg(long)]
        role: String,
        /// Node id: the user id for users (must match the policy), else the
        /// connector or relay id.
        #[arg(long)]
        id: u32,
        /// Name used in logs.
        #[arg(long)]
        name: String,
        /// Policy groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Validity in days from now. Short by default, so that lost
        /// devices age out even when nobody revokes them (`ca revoke` ends
        /// one at once). Renew before expiry by issuing again for the same
        /// key with `--force`: a running relay or agent takes the new
        /// certificate within a second, without a restart.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Where to write the certificate.
        #[arg(long)]
        out: PathBuf,
        /// Replace `--out` if it exists (renewal).
        #[arg(long)]
        force: bool,
    },
    /// List the certificates this CA issued (from DIR/issued.log, which
    /// `ca issue` appends to), marking those a policy file revokes.
    List {
        /// The CA's directory (where `ca init` wrote ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// A policy file whose [[revoked]] entries to mark.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Revoke a certificate: append a [[revoked]] entry with its static key
    /// to the policy file (checked, then written atomically; comments and
    /// layout kept). Relays and connectors reloading the file refuse its
    /// handshakes and close its sessions.
    Revoke {
        /// The policy file relays and connectors load.
        #[arg(long)]
        policy: PathBuf,
        /// The certificate to revoke.
        #[arg(long)]
        cert: PathBuf,
        /// Why, kept in the entry.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print a certificate's fields and check it against a CA.
    Show {
        /// The certificate file.
        cert: PathBuf,
        /// The CA's public key file to verify against.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Config file (TOML); flags below override it. Without it, --policy,
    /// --ca, --cert and --key are required.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:51820.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Worker threads, one per core (0: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// I/O backend: uring (falls back to mmsg if io_uring cannot start),
    /// mmsg, or glommio (a comparison; needs a build with the `glommio`
    /// feature, else falls back to uring).
    #[arg(long)]
    io: Option<Backend>,
    /// What each frame is checked for: ztna (tag, replay, identity, policy),
    /// vpn (tag, replay) or forward (nothing; for measurement only).
    #[arg(long)]
    mode: Option<Mode>,
    /// The access policy file.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The CA's public key file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This relay's certificate file.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This relay's private key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// Datagrams a worker handles per poll, at most (default 1024; batch
    /// in the config file).
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Busy polling: a worker spins this many microseconds looking for
    /// datagrams before it sleeps in the kernel (at most 10000), trading a
    /// core's idle time for the wake-up latency. 0: off (the default;
    /// busy_poll_us in the config file).
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll: Option<u64>,
    /// Register this relay and the services of its connectors in the
    /// mesh's etcd at this client URL (e.g. http://127.0.0.1:2379) and
    /// link with the other relays there; see docs/design.md "Routing
    /// through the mesh". Needs --relay-id. Each worker k then also
    /// listens on the link port --listen + 1 + k: open those between
    /// relays.
    #[arg(long)]
    etcd: Option<String>,
    /// This relay's unique id in the mesh (1-64 of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    relay_id: Option<String>,
    /// This relay's region, published in its etcd record.
    #[arg(long)]
    region: Option<String>,
    /// The address peers reach this relay at (default: --listen, which
    /// must then not be 0.0.0.0).
    #[arg(long)]
    advertise: Option<std::net::SocketAddr>,
    /// Hold direct mesh links only with this relay (by id; repeat for
    /// several); the rest of the mesh is reached through them. Default: a
    /// link with every relay registered in etcd.
    #[arg(long = "peer", value_name = "RELAY_ID")]
    peers: Vec<String>,
    /// Write the audit log's aggregates every this many milliseconds
    /// (default 1000; [audit] interval_ms).
    #[arg(long, value_name = "MS")]
    audit_interval_ms: Option<u64>,
    /// Audit lines (one per active user, service and verdict) per interval
    /// at most; the rest are counted in one summary line (default 1000;
    /// [audit] max_lines).
    #[arg(long, value_name = "N")]
    audit_max_lines: Option<usize>,
    /// Do not count or log access decisions ([audit] enabled = false).
    #[arg(long)]
    no_audit: bool,
}

fn main() -> Result<()> {
    proto::hoptag::lanes::check_cpu()?;
    let cli = Cli::parse();
    let log_format = cli.log_format;
    // `run` starts logging once it has read the config (which may choose
    // the format); everything else logs as the flag says.
    if !matches!(cli.command, Command::Run(_)) {
        relay::logs::init(log_format.unwrap_or_default());
    }
    match cli.command {
        Command::Run(args) => run(*args, log_format),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Ca(cmd) => ca(cmd),
        Command::CheckPolicy { file } => check_policy(&file),
    }
}

fn run(args: RunArgs, log_format: Option<relay::logs::LogFormat>) -> Result<()> {
    let loaded = args.config.as_deref().map(Config::load);
    relay::logs::init(log_format.unwrap_or_else(|| {
        loaded
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map_or_else(Default::default, |c| c.log_format)
    }));
    let mut config = match loaded {
        Some(config) => config?,
        None => Config {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], relay::config::DEFAULT_PORT)),
            workers: 0,
            first_core: 0,
            pin: true,
            io: Backend::Uring,
            mode: Mode::Ztna,
            policy: args
                .policy
                .clone()
                .context("--policy is required without --config")?,
            ca: args
                .ca
                .clone()
                .context("--ca is required without --config")?,
            certificate: args
                .cert
                .clone()
                .context("--cert is required without --config")?,
            key: args
                .key
                .clone()
                .context("--key is required without --config")?,
            metrics: None,
            buffers: 64,
            buffer_size: 65536,
            batch: IoConfig::default().batch,
            busy_poll_us: 0,
            mesh: None,
            log_format: Default::default(),
            audit: Default::default(),
        },
    };
    if let Some(etcd) = &args.etcd {
        let relay_id = args
            .relay_id
            .clone()
            .context("--relay-id is required with --etcd (this relay's unique id in the mesh)")?;
        config.mesh = Some(relay::config::MeshConfig {
            etcd: etcd.clone(),
            relay_id,
            region: args.region.clone().unwrap_or_default(),
            advertise: args.advertise,
            peers: (!args.peers.is_empty()).then(|| args.peers.clone()),
        });
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.workers {
        config.workers = v;
    }
    if let Some(v) = args.io {
        config.io = v;
    }
    if let Some(v) = args.mode {
        config.mode = v;
    }
    for (flag, field) in [
        (&args.policy, &mut config.policy),
        (&args.ca, &mut config.ca),
        (&args.cert, &mut config.certificate),
        (&args.key, &mut config.key),
    ] {
        if let Some(v) = flag {
            *field = v.clone();
        }
    }
    if args.metrics.is_some() {
        config.metrics = args.metrics;
    }
    if args.no_pin {
        config.pin = false;
    }
    if let Some(v) = args.batch {
        config.batch = v;
    }
    if let Some(v) = args.busy_poll {
        config.busy_poll_us = v;
    }
    if let Some(v) = args.audit_interval_ms {
        config.audit.interval_ms = v;
    }
    if let Some(v) = args.audit_max_lines {
        config.audit.max_lines = v;
    }
    if args.no_audit {
        config.audit.enabled = false;
    }
    config.validate()?;

    if config.mode != Mode::Ztna {
        tracing::warn!(
            mode = config.mode.name(),
            "this mode does NOT check user->service policy or the ids' owner: for measurement only, never in production"
        );
    }
    let ca = keys::load_ca(&config.ca)?;
    let identity = keys::load_identity(&config.key, &config.certificate, &ca, unix_secs())?;
    if identity.certificate().body.role != Role::Relay {
        bail!(
            "{} is a {} certificate; a relay needs one issued with --role relay",
            config.certificate.display(),
            identity.certificate().body.role
        );
    }
    let renewal =
        relay::renewal::IdentityFiles::new(&config.key, &config.certificate, ca, &identity);
    let relay = Relay::start(RelayOptions {
        listen: config.listen,
        workers: config.workers,
        first_core: config.first_core,
        pin: config.pin,
        io: config.io,
        io_config: config.io_config(),
        mode: config.mode,
        identity,
        renewal: Some(renewal),
        ca,
        policy: config.policy.clone(),
        mesh: match &config.mesh {
            None => None,
            Some(m) => Some(relay::MeshOptions {
                etcd: m.etcd.clone(),
                relay_id: relay::mesh::registry::RelayId::new(m.relay_id.clone())
                    .map_err(|e| anyhow::anyhow!("[mesh] relay_id: {e}"))?,
                region: m.region.clone(),
                advertise: m.advertise,
                ttl: relay::mesh::registry::DEFAULT_TTL,
                peers: m
                    .peers
                    .as_ref()
                    .map(|p| {
                        p.iter()
                            .map(|id| {
                                relay::mesh::registry::RelayId::new(id.clone())
                                    .map_err(|e| anyhow::anyhow!("[mesh] peers: {e}"))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?,
            }),
        },
        audit: config.audit.to_config(),
    })?;
    // Handlers before the "listening" line: whoever waits for that line
    // may signal at once (a SIGHUP before them would kill the relay).
    let shared = Arc::clone(relay.shared());
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shared.stop))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&shared.reload))
        .context("cannot install the SIGHUP handler")?;
    if let Some(addr) = config.metrics {
        relay
            .serve_metrics(addr)
            .with_context(|| format!("cannot serve metrics on {addr}: is the port free?"))?;
    }
    println!(
        "relay listening on {} ({} workers, io {}, mode {}, batch {}, busy poll {}), public key {}",
        relay.local_addr(),
        config.workers,
        relay.backend(),
        config.mode.name(),
        config.batch,
        match config.busy_poll_us {
            0 => "off".to_owned(),
            us => format!("{us} us"),
        },
        to_hex(relay.public_key())
    );
    // Waiting, and watching: a thread that ends on its own (a panic, a
    // worker whose I/O failed) stops the whole relay, which then exits
    // with an error for its supervisor to restart it (relay::threads).
    let mut died = None;
    while !relay.stopping() {
        if let Some(thread) = relay.ended_early() {
            tracing::error!(
                thread,
                "a relay thread ended on its own: stopping the relay"
            );
            died = Some(thread.to_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping: draining workers");
    let report = relay.stop();
    print_report(&report);
    for failure in &report.failures {
        eprintln!("relay: {failure}");
    }
    if let Some(thread) = died {
        anyhow::bail!(
            "relay thread {thread} ended before the relay was stopped (see the log above); \
             the relay stopped so that it can be restarted whole"
        );
    }
    if !report.failures.is_empty() {
        anyhow::bail!(
            "{} relay thread(s) panicked while stopping (see above)",
            report.failures.len()
        );
    }
    Ok(())
}

fn print_report(report: &RelayReport) {
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>10}  drops",
        "worker", "frames", "forwarded", "bytes out", "handshakes"
    );
    for (i, w) in report.workers.iter().enumerate() {
        let d = &w.datapath;
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| d.dropped(**r) > 0)
            .map(|r| format!("{}={}", r.name(), d.dropped(*r)))
            .collect();
        println!(
            "{:>6} {:>12} {:>12} {:>12} {:>10}  {}",
            i,
            d.frames,
            d.forwarded,
            d.forwarded_bytes,
            d.handshakes,
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
    }
    let t = &report.total;
    println!(
        "local: {} keepalives, {} control frames; shed: {} handshakes, {} control frames; io drops: {} send, {} no buffer, {} truncated, {} receive errors",
        t.keepalives,
        t.control_frames,
        t.handshakes_shed,
        t.control_shed,
        t.io.send_dropped,
        t.io.recv_no_buffers,
        t.io.recv_truncated,
        t.io.recv_errors
    );
    if t.io.busy_poll_served + t.io.busy_poll_missed > 0 {
        println!(
            "busy poll: {} polls served while spinning, {} slept after the budget, {:.3} s spun",
            t.io.busy_poll_served,
            t.io.busy_poll_missed,
            t.io.busy_poll_time_ns as f64 / 1e9
        );
    }
    let c = &report.control;
    let rejected: Vec<String> = HandshakeReject::ALL
        .iter()
        .filter(|r| c.handshakes_rejected.get(**r) > 0)
        .map(|r| format!("{}={}", r.name(), c.handshakes_rejected.get(*r)))
        .collect();
    println!(
        "control: {} hop sessions established, {} handshakes rejected ({}), {} cookie replies, policy epoch {} ({} reloads rejected)",
        c.handshakes_ok,
        c.handshakes_failed,
        if rejected.is_empty() {
            "none".into()
        } else {
            rejected.join(" ")
        },
        c.cookie_replies,
        c.policy_epoch,
        c.policy_rejected
    );
    println!(
        "control messages: {} received ({} rejected), {} pongs, {} directories sent ({} pushed, {} parts)",
        c.control_received,
        c.control_rejected,
        c.pongs_sent,
        c.directories_sent,
        c.directories_pushed,
        c.directory_parts_sent
    );
    println!(
        "sessions closed by policy reloads: {} revoked, {} no longer listed, {} key no longer pinned",
        c.revoked_closed, c.unlisted_closed, c.pinned_closed
    );
}

fn keygen(out: &Path, force: bool) -> Result<()> {
    let kp = StaticKeypair::generate()?;
    write_secret(out, &keys::static_key_to_text(&kp.private), force)?;
    println!("{}", to_hex(&kp.public));
    Ok(())
}

fn ca(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init { dir, force } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let ca = CaKeypair::generate(&mut rand::rngs::OsRng);
            write_secret(&dir.join("ca.key"), &ca.to_text(), force)?;
            std::fs::write(dir.join("ca.pub"), ca.public().to_text())
                .with_context(|| format!("cannot write {}", dir.join("ca.pub").display()))?;
            println!(
                "wrote {} (keep offline) and {}",
                dir.join("ca.key").display(),
                dir.join("ca.pub").display()
            );
            Ok(())
        }
        CaCommand::Issue {
            ca_key,
            key,
            role,
            id,
            name,
            groups,
            days,
            out,
            force,
        } => {
            refuse_overwrite(&out, force)?;
            let text = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("cannot read {}", ca_key.display()))?;
            let ca = CaKeypair::from_text(&text)
                .with_context(|| format!("{} is not a CA secret key", ca_key.display()))?;
            let role = match role.as_str() {
                "user" => Role::User,
                "connector" => Role::Connector,
                "relay" => Role::Relay,
                other => bail!("unknown role `{other}`: use user, connector or relay"),
            };
            let private = keys::load_static_key(&key)?;
            let now = unix_secs();
            let cert = ca.issue(CertificateBody {
                id,
                name,
                role,
                groups,
                static_key: keys::public_key(&private),
                not_before: now.saturating_sub(300),
                not_after: now + days.saturating_mul(86_400),
            })?;
            // Replaced whole (a rename), never rewritten in place: a
            // running node watching the file for a renewal must not read
            // half of it.
            write_replacing(&out, &cert.to_text())?;
            // The CA's record of what it issued, for `ca list`.
            let log = ca_key.with_file_name("issued.log");
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                cert.body.not_before,
                cert.body.not_after,
                cert.body.role,
                cert.body.id,
                to_hex(&cert.body.static_key),
                cert.body.name
            );
            {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| f.write_all(line.as_bytes()))
                    .with_context(|| format!("cannot append to {}", log.display()))?;
            }
            println!("wrote {}", out.display());
            Ok(())
        }
        CaCommand::List { dir, policy } => ca_list(&dir, policy.as_deref()),
        CaCommand::Revoke {
            policy,
            cert,
            reason,
        } => ca_revoke(&policy, &cert, &reason),
        CaCommand::Show { cert, ca } => {
            let c = keys::load_certificate(&cert)?;
            println!("id:         {}", c.body.id);
            println!("name:       {}", c.body.name);
            println!("role:       {}", c.body.role);
            println!("groups:     {}", c.body.groups.join(", "));
            println!("static key: {}", to_hex(&c.body.static_key));
            println!(
                "valid:      {} .. {} (unix seconds)",
                c.body.not_before, c.body.not_after
            );
            if let Some(ca) = ca {
                let ca = keys::load_ca(&ca)?;
                c.verify(&ca, unix_secs())?;
                println!("verified:   yes");
            }
            Ok(())
        }
    }
}

fn check_policy(file: &Path) -> Result<()> {
    let mut source = relay::policy_source::PolicySource::new(file);
    let loaded = source.load()?;
    let s = loaded.policy.stats();
    println!(
        "ok: {} users, {} groups, {} services, {} access classes, {} grant entries, {:.1} MiB of lookup tables, compiled in {} ms",
        s.users,
        s.groups,
        s.services,
        s.classes,
        s.grant_entries,
        s.lookup_bytes as f64 / (1024.0 * 1024.0),
        loaded.took.as_millis()
    );
    Ok(())
}

/// `ca list`: what `ca issue` logged, newest last, with expiry and
/// revocation.
fn ca_list(dir: &Path, policy: Option<&Path>) -> Result<()> {
    let log = dir.join("issued.log");
    let text = std::fs::read_to_string(&log).with_context(|| {
        format!(
            "cannot read {} (certificates issued with `relay ca issue` are logged there)",
            log.display()
        )
    })?;
    let revoked = match policy {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let file = proto::policy::PolicyFile::from_toml_str(&text)
                .with_context(|| format!("{} is not a policy file", p.display()))?;
            Some(
                file.revoked
                    .into_iter()
                    .map(|r| r.key.to_ascii_lowercase())
                    .collect::<std::collections::HashSet<_>>(),
            )
        }
    };
    let now = unix_secs();
    println!(
        "{:<10} {:<8} {:<24} {:<20} {:<9} static key",
        "role", "id", "name", "expires (UTC)", "state"
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(6, '\t').collect();
        let [_, not_after, role, id, key, name] = f[..] else {
            bail!("{}: malformed line: {line:?}", log.display());
        };
        let not_after: u64 = not_after
            .parse()
            .with_context(|| format!("{}: malformed line: {line:?}", log.display()))?;
        let state = if revoked.as_ref().is_some_and(|r| r.contains(key)) {
            "revoked"
        } else if not_after < now {
            "expired"
        } else if not_after < now + 7 * 86_400 {
            "renew"
        } else {
            "valid"
        };
        println!(
            "{role:<10} {id:<8} {name:<24} {:<20} {state:<9} {key}",
            utc(not_after)
        );
    }
    Ok(())
}

/// `ca revoke`: appends a `[[revoked]]` entry to the policy file.
fn ca_revoke(policy: &Path, cert: &Path, reason: &str) -> Result<()> {
    let c = keys::load_certificate(cert)?;
    let key = to_hex(&c.body.static_key);
    let text = std::fs::read_to_string(policy)
        .with_context(|| format!("cannot read {}", policy.display()))?;
    let current = proto::policy::PolicyFile::from_toml_str(&text)
        .with_context(|| format!("{} is not a valid policy file", policy.display()))?;
    if current
        .revoked
        .iter()
        .any(|r| r.key.eq_ignore_ascii_case(&key))
    {
        println!(
            "{} ({}) is already revoked in {}",
            c.body.name,
            key,
            policy.display()
        );
        return Ok(());
    }
    let entry = toml::to_string(&proto::policy::Revoked {
        key: key.clone(),
        reason: format!(
            "{} (id {}, {}){}{}",
            c.body.name,
            c.body.id,
            c.body.role,
            if reason.is_empty() { "" } else { ": " },
            reason
        ),
    })
    .context("cannot encode the entry")?;
    let new = format!("{}\n[[revoked]]\n{entry}", text.trim_end());
    // The result must load exactly as a relay would load it.
    let file = proto::policy::PolicyFile::from_toml_str(&new)
        .context("the policy with the new entry does not parse (this is a bug)")?;
    proto::policy::CompiledPolicy::compile(&file)
        .with_context(|| format!("{} does not validate; fix it first", policy.display()))?;
    let tmp = policy.with_extension("toml.revoke-tmp");
    std::fs::write(&tmp, &new).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, policy)
        .with_context(|| format!("cannot replace {}", policy.display()))?;
    println!(
        "revoked {} (id {}, {}), static key {key}, in {}; relays and connectors apply it when they reload the file",
        c.body.name, c.body.id, c.body.role, policy.display()
    );
    Ok(())
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM`.
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

/// Writes `text` to `path` through a temporary file beside it and a
/// rename, so readers see the old content or the new, never a mix.
fn write_replacing(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace {}", path.display())
    })
}

/// Refuses to replace `path` unless `force`.
fn refuse_overwrite(path: &Path, force: bool) -> Result<()> {
    if !force && path.exists() {
        bail!(
            "{} exists; not replacing it (add --force to replace it)",
            path.display()
        );
    }
    Ok(())
}

fn write_secret(path: &Path, text: &str, force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    refuse_overwrite(path, force)?;
    if force {
        let _ = std::fs::remove_file(path);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn unix_secs() -> u64 {
    relay::control::unix_nanos() / 1_000_000_000
}
