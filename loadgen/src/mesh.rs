//! What a two-relay world needs from the mesh: an etcd to register in, the
//! relays' mesh options, and a bounded wait until the two relays hold a
//! hop link.
//!
//! Every [`relay::MeshOptions`] the load generator builds comes from
//! [`mesh_options`]: when the relay's options gain a field, this is the one
//! place to fill it in.

use std::time::{Duration, Instant};

use relay::mesh::etcd_server::{EtcdServer, EtcdServerError};
use relay::mesh::registry::{BadRelayId, RelayId, DEFAULT_TTL};
use relay::{MeshOptions, Relay};

/// How long two relays may take to find each other in etcd and finish
/// their hop handshake (the initiator retries every second).
pub const LINK_WITHIN: Duration = Duration::from_secs(15);

/// Why two relays could not be put in a mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The `etcd` binary is not installed.
    #[error("two relays need etcd, and the etcd binary was not found; install it (Debian: `apt-get install etcd-server`, which scripts/setup.sh does), or pass --etcd with the client URL of a scratch etcd")]
    EtcdMissing(#[source] std::io::Error),
    /// etcd is installed but did not start or answer.
    #[error("two relays need etcd, which could not start")]
    Etcd(#[source] EtcdServerError),
    /// A relay id the load generator made is not a valid one.
    #[error("bad relay id: {0}")]
    RelayId(#[from] BadRelayId),
    /// The relays did not establish their link in time.
    #[error("relays {a} and {b} did not establish a mesh link within {waited:?}; is etcd at {etcd} reachable and used by nothing else?")]
    NotLinked {
        /// The first relay's id.
        a: String,
        /// The second relay's id.
        b: String,
        /// The etcd both registered in.
        etcd: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// Starts a throwaway etcd on free loopback ports (killed, its data
/// removed, when the server is dropped).
pub fn start_etcd() -> Result<EtcdServer, MeshError> {
    EtcdServer::start().map_err(|e| match e {
        EtcdServerError::Missing(io) => MeshError::EtcdMissing(io),
        other => MeshError::Etcd(other),
    })
}

/// The mesh options of relay `relay_id` registering in the etcd at `etcd`
/// (client URL): the bound address advertised, the default lease TTL,
/// links with every relay in etcd.
pub fn mesh_options(etcd: &str, relay_id: &str) -> Result<MeshOptions, MeshError> {
    Ok(MeshOptions {
        etcd: etcd.to_owned(),
        relay_id: RelayId::new(relay_id)?,
        region: "loadgen".into(),
        advertise: None,
        ttl: DEFAULT_TTL,
        peers: None,
    })
}

/// Waits (bounded by [`LINK_WITHIN`]) until `a` and `b` each hold a hop
/// session with the other.
pub fn await_link(a: (&str, &Relay), b: (&str, &Relay), etcd: &str) -> Result<(), MeshError> {
    let linked = |from: &Relay, to: &Relay| {
        from.mesh_links()
            .iter()
            .any(|l| l.static_key == *to.public_key() && l.sessions > 0)
    };
    let start = Instant::now();
    while !(linked(a.1, b.1) && linked(b.1, a.1)) {
        if start.elapsed() > LINK_WITHIN {
            return Err(MeshError::NotLinked {
                a: a.0.to_owned(),
                b: b.0.to_owned(),
                etcd: etcd.to_owned(),
                waited: LINK_WITHIN,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
