//! The kernel's limits on one UDP send.

/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP): the cap on one
/// datagram and on the total of one GSO send.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Most segments the kernel accepts in one `UDP_SEGMENT` send
/// (`UDP_MAX_SEGMENTS` was 64 before Linux 6.10; 64 works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;
