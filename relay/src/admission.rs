//! A worker's admission of hop initiations into the control thread's
//! queue: `proto`'s [`HandshakeGate`] (mac1; under load mac2 and a fair
//! share per source), the cookie replies it makes, sent after the batch,
//! and the counts of what it kept out of the queue.
//!
//! The worker asks [`Admission::judge`] for each handshake frame its
//! datapath accepted, before it copies the frame; nothing here allocates
//! per frame (cookie replies wait in a fixed array, the source table is
//! sized once). See `docs/security.md` §3 and §7.

use std::net::SocketAddr;
use std::time::Instant;

use proto::handshake::frames::COOKIE_REPLY_LEN;
use proto::handshake::{Gate, GateDrop, HandshakeGate};
use rand::SeedableRng;

use crate::io::Io;

/// Cookie replies a worker sends per batch at most; more under-load
/// initiations without mac2 in one batch are dropped and counted
/// (`cookie_backlog`): their initiators retry.
pub const COOKIE_REPLIES_PER_BATCH: usize = 64;

/// What a worker's gate kept out of the control queue, by what it did
/// instead (exported as `ztna_handshakes_gated_total{reason}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounts {
    /// Dropped: mac1 does not match this relay's key.
    pub bad_mac1: u64,
    /// Dropped under load: the source had its fair share of the queue.
    pub fair_shed: u64,
    /// Answered with a cookie reply by the worker (under load, no valid
    /// mac2).
    pub cookie_reply: u64,
    /// Dropped under load without a valid mac2 because the batch's cookie
    /// replies were used up.
    pub cookie_backlog: u64,
}

impl GateCounts {
    /// The counters with their metric label, in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            (GateDrop::BadMac1.name(), self.bad_mac1),
            (GateDrop::Shed.name(), self.fair_shed),
            ("cookie_reply", self.cookie_reply),
            ("cookie_backlog", self.cookie_backlog),
        ]
    }

    /// All of them: initiations the worker did not queue.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &GateCounts) {
        self.bad_mac1 += other.bad_mac1;
        self.fair_shed += other.fair_shed;
        self.cookie_reply += other.cookie_reply;
        self.cookie_backlog += other.cookie_backlog;
    }
}

/// One worker's gate, cookie replies in waiting and counts.
#[derive(Debug)]
pub struct Admission {
    gate: HandshakeGate,
    rng: rand::rngs::StdRng,
    cookies: [(SocketAddr, [u8; COOKIE_REPLY_LEN]); COOKIE_REPLIES_PER_BATCH],
    pending: usize,
    counts: GateCounts,
}

impl Admission {
    /// Admission through `gate`.
    pub fn new(gate: HandshakeGate) -> Admission {
        Admission {
            gate,
            rng: rand::rngs::StdRng::from_entropy(),
            cookies: [(SocketAddr::from(([0, 0, 0, 0], 0)), [0; COOKIE_REPLY_LEN]);
                COOKIE_REPLIES_PER_BATCH],
            pending: 0,
            counts: GateCounts::default(),
        }
    }

    /// Whether to queue the handshake `frame` from `from` while `depth`
    /// frames wait in the control queue. A cookie reply is kept for
    /// [`Admission::send_cookie_replies`].
    pub fn judge(&mut self, frame: &[u8], from: SocketAddr, depth: usize, now: Instant) -> bool {
        match self.gate.check(frame, from, depth, now, &mut self.rng) {
            Gate::Admit => true,
            Gate::CookieReply(reply) => {
                if let Some(slot) = self.cookies.get_mut(self.pending) {
                    *slot = (from, reply);
                    self.pending += 1;
                    self.counts.cookie_reply += 1;
                } else {
                    self.counts.cookie_backlog += 1;
                }
                false
            }
            Gate::Drop(GateDrop::BadMac1) => {
                self.counts.bad_mac1 += 1;
                false
            }
            Gate::Drop(GateDrop::Shed) => {
                self.counts.fair_shed += 1;
                false
            }
        }
    }

    /// Sends the cookie replies of the batch from `io`'s socket.
    pub fn send_cookie_replies(&mut self, worker: usize, io: &mut Io) {
        for (to, reply) in &self.cookies[..self.pending] {
            if let Err(e) = io.send_to(*to, reply) {
                tracing::debug!(worker, %to, error = %e, "cookie reply not sent");
            }
        }
        self.pending = 0;
    }

    /// What was kept out of the queue so far.
    pub fn counts(&self) -> GateCounts {
        self.counts
    }
}
