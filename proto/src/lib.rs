//! Sans-IO core of the ZTNA relay mesh.
//!
//! Everything a relay or an agent does to a packet lives here as a pure
//! function over bytes: no sockets, no threads, no clocks. Time is passed in
//! as [`Instant`](std::time::Instant) values by the caller, so timers are
//! tested with a hand-advanced clock.
//!
//! The modules, in the order a frame meets them:
//!
//! * [`wire`]: zero-copy views over frames and owned `Repr`s to build them.
//! * [`ids`]: user, service and receiver-index newtypes.
//! * [`hoptag`]: the per-hop MAC over the header and what it binds of the body.
//! * [`replay`]: the anti-replay bitmap window.
//! * [`session`]: hop sessions (keys, counters, replay state) and their table.
//! * [`route`]: the routing snapshot: next hop by service or by user.
//! * [`policy`]: the access-policy model and its compiled O(1) lookup table.
//! * [`datapath`]: the verdict on one frame (`Datapath::process`), which a
//!   relay worker asks for each frame it receives.
//! * [`audit`]: a worker's fixed-size counters of policy decisions per
//!   (user, service, verdict), for the relay's audit log.
//! * [`aead`]: end-to-end AES-256-GCM between agent and connector.
//! * [`identity`]: the offline Ed25519 CA and node certificates.
//! * [`handshake`]: Noise IK state machines for hop and end-to-end sessions,
//!   cookies and timers.
//! * [`control`]: control messages on a hop session: the relay's directory
//!   of reachable services and the user's connection mode.
//! * [`link`]: the agent side of a hop session: tag what it sends, check
//!   what it receives.
//!
//! With the `testkit` feature, `testkit` builds a relay's datapath state in
//! memory and synthetic policies for tests, benches, fuzzing and loadgen.
#![forbid(unsafe_code)]

pub mod aead;
pub mod audit;
pub mod control;
pub mod datapath;
pub mod handshake;
mod hash;
pub mod hoptag;
pub mod identity;
pub mod ids;
pub mod link;
pub mod policy;
pub mod replay;
pub mod route;
pub mod session;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wire;
