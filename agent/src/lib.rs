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
//! `DataUp`/`DataDown` frames through the relay. The modules, from the
//! wire inwards:
//!
//! * [`runtime`]: the event loop, the relay socket, sending frames.
//! * [`hop`]: the hop session with the relay (handshake, rekey, liveness).
//! * [`e2e`]: end-to-end sessions, sealing and opening packets in place.
//! * [`netstack`]: the smoltcp stacks behind the tunnel.
//! * [`flow`]: pumping bytes between kernel sockets and smoltcp sockets.
//! * [`client`] and [`connector`]: the two roles.
//! * [`tun`] and [`dns`]: the TUN device and the service-name responder
//!   of `tun` mode.
//! * [`config`], [`status`], [`policy_watch`], [`pool`], [`inner`].

pub mod client;
pub mod config;
pub mod connector;
pub mod dns;
pub mod e2e;
pub mod flow;
pub mod hop;
pub mod inner;
pub mod metrics;
pub mod netstack;
pub mod policy_watch;
pub mod pool;
pub mod runtime;
pub mod start;
pub mod status;
#[cfg(target_os = "linux")]
pub mod tun;
