//! The load generator's building blocks, shared with the integration
//! tests: a throwaway PKI, agent-side hop links, and a "world" (an
//! in-process relay on loopback with its policy and synthetic peers).

pub mod link;
pub mod pki;
pub mod world;
