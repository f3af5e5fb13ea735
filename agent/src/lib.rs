//! The ZTNA agent: what users and service owners run.
//!
//! An agent holding a user certificate is a *client*: applications reach
//! services through it, either over a TUN device (`tun` mode, needs
//! `CAP_NET_ADMIN`) or through per-service local listeners backed by a
//! user-space TCP/IP stack (`proxy` mode, no privileges). An agent holding
//! a connector certificate is a *connector*: it terminates the tunnel in a
//! user-space stack and dials each service's target with ordinary sockets.
//!
//! Both carry IP packets end to end, sealed with the end-to-end AEAD in
//! `DataUp`/`DataDown` frames through the relay.

pub mod dns;
#[cfg(target_os = "linux")]
pub mod tun;
