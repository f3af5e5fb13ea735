//! Liveness of connectors and peer relays: keepalive probes on the hop
//! session.
//!
//! Every [`PROBE_EVERY`] the control thread sends a control `Ping` on the
//! newest session of each connector and each peer relay; the peer answers
//! with a `Pong`. A peer not heard from (no ping, no pong) for
//! [`DEAD_AFTER`] is taken out of the routes: its flows move to the other
//! connectors of its services, here or elsewhere in the mesh (this relay
//! withdraws the service from etcd if it was its last connector), and
//! users' directories are pushed with the connector that replaces it. The
//! session itself stays: the first answer puts the peer back.
//!
//! Only peers that speak the control protocol are probed: a session
//! carries nothing from the relay before the peer's first ping on it (key
//! confirmation), and a peer that never pings (a load generator's
//! synthetic connector) stays routed for as long as its session lives.
//! Users are not probed: nothing routes *through* a user.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::control::ControlMessage;
use proto::session::{HopId, Peer};

use super::Control;

/// How often a connector or peer relay is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Silence after which a probed peer is taken out of the routes: three
/// probes unanswered.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);

/// What the control thread knows of one session's liveness.
#[derive(Debug, Clone, Copy)]
pub(super) struct Health {
    /// Whether the session may carry routes.
    pub alive: bool,
    /// When an authenticated control message last arrived on it.
    pub last_heard: Instant,
    /// When it was last probed.
    pub last_probe: Option<Instant>,
}

impl Health {
    /// A session established at `now`: alive until proven silent.
    pub fn new(now: Instant) -> Health {
        Health {
            alive: true,
            last_heard: now,
            last_probe: None,
        }
    }
}

impl Control {
    /// Probes the peers due a probe and takes out those silent for
    /// [`DEAD_AFTER`]. Once per control loop.
    pub(super) fn probe(&mut self, now: Instant) {
        // Only the newest session of each peer: the others are being
        // replaced by a rekey and carry no routes.
        // (A peer relay holds one link per worker: newest per worker.)
        let mut newest: HashMap<(Peer, usize), (Instant, usize)> = HashMap::new();
        for (slot, e) in self.sessions.iter().enumerate() {
            let Some(e) = e.as_ref() else { continue };
            if matches!(e.peer, Peer::User(_)) || !e.pinged {
                continue;
            }
            let at = (
                e.peer,
                if matches!(e.peer, Peer::Relay(_)) {
                    e.worker
                } else {
                    0
                },
            );
            if newest.get(&at).is_none_or(|n| n.0 <= e.established) {
                newest.insert(at, (e.established, slot));
            }
        }
        for (_, slot) in newest.into_values() {
            let Some(e) = self.sessions[slot].as_mut() else {
                continue;
            };
            if e.health.alive && now.duration_since(e.health.last_heard) >= DEAD_AFTER {
                e.health.alive = false;
                self.routing.set_alive(HopId(slot as u32), false);
                self.stats.peers_lost += 1;
                self.routes_dirty = true;
                self.directories_dirty = true;
                tracing::warn!(
                    peer = %e.name,
                    silent_ms = now.duration_since(e.health.last_heard).as_millis() as u64,
                    "peer stopped answering keepalives; taken out of the routes"
                );
            }
            if e.health
                .last_probe
                .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY)
            {
                e.health.last_probe = Some(now);
                self.stats.probes_sent += 1;
                self.send_control(slot, &ControlMessage::Ping { digest: 0 });
            }
        }
    }

    /// An authenticated control message arrived on the session in `slot`:
    /// the peer is alive (and back in the routes if it had been taken out).
    pub(super) fn heard(&mut self, slot: usize, now: Instant) {
        let Some(e) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        e.health.last_heard = now;
        if !e.health.alive {
            e.health.alive = true;
            self.routing.set_alive(HopId(slot as u32), true);
            self.routes_dirty = true;
            self.directories_dirty = true;
            tracing::info!(peer = %e.name, "peer answers again; back in the routes");
        }
    }
}
