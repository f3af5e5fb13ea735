//! The load generator: synthetic users and a connector with real keys,
//! driving a relay on loopback and measuring what it delivers.
//!
//! * [`pki`], [`world`]: a throwaway CA and an in-process relay with its
//!   policy (shared with the integration tests), or two relays in a mesh.
//! * [`mesh`]: what two relays need to form one: etcd, their mesh
//!   options, the wait for their link.
//! * [`link`], [`handshakes`]: hop sessions with the relay and end-to-end
//!   sessions with the connector, established with real handshakes.
//! * [`scenario`]: which flows and frame sizes a run offers.
//! * [`payload`], [`traffic`], [`sink`]: sealed payloads, GSO trains out,
//!   checks and latency in.
//! * [`fleet`], [`run`], [`suite`]: one connected set of peers, one
//!   measurement, a whole invocation.
//! * [`report`], [`interval`]: JSON, the table, paired ratios with their
//!   bootstrap intervals, and the baseline check.

pub mod fleet;
pub mod handshakes;
pub mod interval;
pub mod link;
pub mod mesh;
pub mod payload;
pub mod pki;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sink;
pub mod suite;
pub mod traffic;
pub mod world;
