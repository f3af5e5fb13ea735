//! Control messages: what an agent and its relay say to each other on the
//! hop session itself, in the body of [`Kind::Control`] frames.
//!
//! The relay tells a user's agent which services it may reach (the
//! *directory*: id, name, protocol, port, and the connector that serves
//! each with that connector's X25519 static key, so the agent can run the
//! end-to-end handshake with it) and in which [`ConnectionMode`] to run.
//! The exchange is agent-driven and idempotent:
//!
//! ```text
//! agent                                   relay
//!   Ping { digest of what I hold, 0 = none } ->
//!                                         <- Pong { digest }        (nothing changed)
//!                                         <- DirectoryPart x parts  (else: the whole directory)
//!                                         <- DirectoryPart x parts  (pushed, unprompted, when the
//!                                                                    policy or the connectors change)
//! ```
//!
//! A directory larger than one datagram travels as several
//! [`ControlMessage::DirectoryPart`]s sharing its digest;
//! [`DirectoryAssembler`] puts them back together and checks the digest,
//! so a lost part costs one more ping, never a wrong directory. The relay
//! sends nothing on a hop session before the agent's first ping on it
//! (key confirmation, `docs/wire.md`).
//!
//! The byte layout is in `docs/wire.md` ("Control messages"). All integers
//! are big-endian.
//!
//! [`Kind::Control`]: crate::wire::Kind::Control
//!
//! # No panics
//! [`ControlMessage::parse`] returns an error for every input it does not
//! accept and never panics; it allocates at most in proportion to the input.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::ServiceId;
use crate::policy::Protocol;

/// The most parts a directory may be split into; [`DirectoryAssembler`]
/// drops a part that claims more.
pub const MAX_PARTS: u16 = 4096;
/// The most services a directory may list; [`DirectoryAssembler`] drops
/// what it is collecting when its parts add up to more. With the largest
/// names that bounds its memory to about 20 MiB, with typical ones to a few.
pub const MAX_SERVICES: usize = 65_536;
/// The longest service name on the wire, in bytes (a one-byte length).
/// [`ControlMessage::emit`] cuts a longer name at the last character
/// boundary before it.
pub const MAX_NAME_LEN: usize = 255;
/// Body length of a `Ping` or `Pong`.
pub const PING_LEN: usize = 9;
/// Bytes of a `DirectoryPart` body before its first service entry.
pub const PART_HEADER_LEN: usize = 16;
/// Bytes of a service entry besides its name.
pub const ENTRY_FIXED_LEN: usize = 44;
/// The longest service entry.
pub const MAX_ENTRY_LEN: usize = ENTRY_FIXED_LEN + MAX_NAME_LEN;
/// The body size callers split directories for ([`Directory::parts`]): with
/// the 32-byte hop header and IP/UDP headers a control frame then fits the
/// IPv6 minimum MTU (1280).
pub const DEFAULT_MAX_BODY: usize = 1200;

/// BLAKE3 `derive_key` context of the directory digest.
const DIGEST_CONTEXT: &str = "ztna-mesh 2026-11 control directory digest";

mod ty {
    pub const PING: u8 = 1;
    pub const PONG: u8 = 2;
    pub const DIRECTORY_PART: u8 = 3;
}

/// Why a control message body was not accepted. Messages arrive on an
/// authenticated hop, so these mean a bug or a version mismatch at the
/// peer, not an attack; the receiver drops the message and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The body ends before the fields its type needs.
    #[error("control message truncated: the body ends before its fields do")]
    Truncated,
    /// The first byte names no message type this version knows.
    #[error("unknown control message type {0}: the peer speaks a newer protocol version")]
    UnknownType(u8),
    /// Bytes left over after the message's last field.
    #[error("control message has {0} bytes after its last field")]
    TrailingBytes(usize),
    /// A connection mode byte this version does not know.
    #[error("unknown connection mode {0} on the wire: expected 0 (off) to 3 (lockdown)")]
    BadMode(u8),
    /// A connection mode name that is not one of the four.
    #[error("unknown connection mode {0:?}: expected \"off\", \"on-demand\", \"always-on\" or \"lockdown\"")]
    ModeName(String),
    /// A service protocol byte this version does not know.
    #[error("unknown service protocol {0}: expected 6 (tcp) or 17 (udp)")]
    BadProtocol(u8),
    /// A service name that is not UTF-8.
    #[error("service name is not valid UTF-8")]
    BadName,
    /// Part numbers that cannot describe a directory: no parts, a part
    /// beyond the count, or more than [`MAX_PARTS`].
    #[error("directory part {part} of {parts} is out of range (parts must be 1 to {MAX_PARTS}, part below parts)")]
    BadPart {
        /// The part's number (from 0).
        part: u16,
        /// The number of parts it claims.
        parts: u16,
    },
    /// A directory part with digest 0, which means "no directory".
    #[error("directory part carries digest 0, which no directory has")]
    ZeroDigest,
}

/// How the agent of a user runs, set per group in the policy
/// (`[[groups]] mode`). The relay only carries it; the agent acts on it.
///
/// Ordered by strictness (`Off < OnDemand < AlwaysOn < Lockdown`): a user
/// in several groups gets the strictest
/// ([`crate::policy::CompiledPolicy::connection_mode`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// The agent keeps no tunnel: no service is reached through it. It
    /// still pings, so that a change of mode reaches it.
    Off,
    /// Sessions come up when an application first reaches a service. The
    /// default.
    #[default]
    OnDemand,
    /// The hop session (and the end-to-end sessions of the directory's
    /// services) are kept up at all times; the user may still disconnect.
    AlwaysOn,
    /// Always on, and the user cannot disconnect: traffic for the
    /// directory's services never leaves outside the tunnel.
    Lockdown,
}

impl ConnectionMode {
    /// Every mode, least strict first.
    pub const ALL: [ConnectionMode; 4] = [
        ConnectionMode::Off,
        ConnectionMode::OnDemand,
        ConnectionMode::AlwaysOn,
        ConnectionMode::Lockdown,
    ];

    /// The mode's name in policy files, logs and command lines.
    pub const fn name(self) -> &'static str {
        match self {
            ConnectionMode::Off => "off",
            ConnectionMode::OnDemand => "on-demand",
            ConnectionMode::AlwaysOn => "always-on",
            ConnectionMode::Lockdown => "lockdown",
        }
    }

    /// The mode's byte on the wire.
    pub const fn to_byte(self) -> u8 {
        self as u8
    }

    /// The mode a wire byte names.
    pub const fn from_byte(b: u8) -> Option<ConnectionMode> {
        match b {
            0 => Some(ConnectionMode::Off),
            1 => Some(ConnectionMode::OnDemand),
            2 => Some(ConnectionMode::AlwaysOn),
            3 => Some(ConnectionMode::Lockdown),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConnectionMode {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<ConnectionMode, ControlError> {
        ConnectionMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ControlError::ModeName(s.to_owned()))
    }
}

/// One service a user may reach, as the relay lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The id frames to it carry.
    pub id: ServiceId,
    /// Its name in the policy (at most [`MAX_NAME_LEN`] bytes on the wire).
    pub name: String,
    /// Its transport protocol.
    pub protocol: Protocol,
    /// The port of its target (what the agent listens on in proxy mode).
    pub port: u16,
    /// Certificate id of the connector the relay routes this user's flows
    /// for this service to.
    pub connector: u32,
    /// That connector's X25519 static key, from its certificate: the
    /// responder key of the end-to-end handshake.
    pub connector_key: [u8; 32],
}

/// Everything a user may reach, and how its agent runs: what an agent
/// holds after the relay's directory arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Identifies the content: the first 8 bytes (big-endian) of a BLAKE3
    /// hash of the canonical encoding, never 0 (see [`Directory::new`]).
    pub digest: u64,
    /// How the agent runs.
    pub mode: ConnectionMode,
    /// The services, sorted by id, one entry per id.
    pub services: Vec<ServiceEntry>,
}

impl Directory {
    /// A directory of `services` (sorted by id here; of several entries
    /// with one id the first is kept) and its digest.
    ///
    /// The digest is BLAKE3 in `derive_key` mode (context
    /// `"ztna-mesh 2026-11 control directory digest"`) over the canonical
    /// encoding: mode byte, service count (u32), then every entry as on the
    /// wire, in id order; its first 8 bytes as a big-endian `u64`, with 0
    /// (meaning "no directory" in a ping) replaced by 1.
    pub fn new(mode: ConnectionMode, mut services: Vec<ServiceEntry>) -> Directory {
        services.sort_by_key(|s| s.id);
        services.dedup_by_key(|s| s.id);
        let digest = digest(mode, &services);
        Directory {
            digest,
            mode,
            services,
        }
    }

    /// The entry of service `id`.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceEntry> {
        let i = self.services.binary_search_by_key(&id, |s| s.id).ok()?;
        self.services.get(i)
    }

    /// The directory as [`ControlMessage::DirectoryPart`]s whose emitted
    /// bodies are at most `max_body` bytes ([`DEFAULT_MAX_BODY`] in the
    /// relay), in order. Every part holds at least one service, so a
    /// `max_body` below [`PART_HEADER_LEN`] + [`MAX_ENTRY_LEN`] may be
    /// exceeded by a part holding one long-named service. An empty
    /// directory is one part with no services.
    ///
    /// A directory of more than [`MAX_SERVICES`] services, or one that needs
    /// more than [`MAX_PARTS`] parts, gives parts that
    /// [`DirectoryAssembler`] refuses: the sender checks both limits first.
    pub fn parts(&self, max_body: usize) -> Vec<ControlMessage> {
        let mut groups: Vec<Vec<ServiceEntry>> = vec![Vec::new()];
        let mut len = PART_HEADER_LEN;
        for s in &self.services {
            let entry_len = entry_len(s);
            let Some(current) = groups.last_mut() else {
                break;
            };
            let full = len + entry_len > max_body || current.len() == usize::from(u16::MAX);
            if full && !current.is_empty() {
                groups.push(Vec::new());
                len = PART_HEADER_LEN;
            }
            len += entry_len;
            if let Some(current) = groups.last_mut() {
                current.push(s.clone());
            }
        }
        let parts = u16::try_from(groups.len()).unwrap_or(u16::MAX);
        groups
            .into_iter()
            .enumerate()
            .map(|(i, services)| ControlMessage::DirectoryPart {
                digest: self.digest,
                part: u16::try_from(i).unwrap_or(u16::MAX),
                parts,
                mode: self.mode,
                services,
            })
            .collect()
    }
}

/// One control message: the body of a [`crate::wire::Kind::Control`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Agent to relay: "I am here; the directory I hold has this digest"
    /// (0: none). The first ping on a hop session also confirms its keys:
    /// the relay sends nothing on a session before one arrived.
    Ping {
        /// Digest of the agent's directory, 0 when it has none.
        digest: u64,
    },
    /// Relay to agent: the answer to a ping whose digest is current
    /// (nothing changed). A connector's pings are answered with digest 0.
    Pong {
        /// The digest the ping carried.
        digest: u64,
    },
    /// Relay to agent: one part of a [`Directory`].
    DirectoryPart {
        /// The whole directory's digest (never 0).
        digest: u64,
        /// This part's number, from 0.
        part: u16,
        /// How many parts the directory has (1 to [`MAX_PARTS`]).
        parts: u16,
        /// The directory's connection mode (the same in every part).
        mode: ConnectionMode,
        /// This part's services, in id order.
        services: Vec<ServiceEntry>,
    },
}

impl ControlMessage {
    /// Reads a control message from a control frame's body. Never panics;
    /// the whole body must be the message.
    pub fn parse(body: &[u8]) -> Result<ControlMessage, ControlError> {
        let mut r = Reader { buf: body, at: 0 };
        let msg = match r.u8()? {
            ty::PING => ControlMessage::Ping { digest: r.u64()? },
            ty::PONG => ControlMessage::Pong { digest: r.u64()? },
            ty::DIRECTORY_PART => {
                let digest = r.u64()?;
                let part = r.u16()?;
                let parts = r.u16()?;
                let mode = r.u8()?;
                let count = r.u16()?;
                if digest == 0 {
                    return Err(ControlError::ZeroDigest);
                }
                if parts == 0 || part >= parts || parts > MAX_PARTS {
                    return Err(ControlError::BadPart { part, parts });
                }
                let mode = ConnectionMode::from_byte(mode).ok_or(ControlError::BadMode(mode))?;
                // Never reserve more than the body can hold.
                let mut services =
                    Vec::with_capacity(usize::from(count).min(r.remaining() / ENTRY_FIXED_LEN));
                for _ in 0..count {
                    services.push(r.entry()?);
                }
                ControlMessage::DirectoryPart {
                    digest,
                    part,
                    parts,
                    mode,
                    services,
                }
            }
            other => return Err(ControlError::UnknownType(other)),
        };
        match r.remaining() {
            0 => Ok(msg),
            n => Err(ControlError::TrailingBytes(n)),
        }
    }

    /// Appends the message's encoding to `out` (the caller puts the hop
    /// header in front). Names longer than [`MAX_NAME_LEN`] bytes are cut
    /// at a character boundary, and a part lists at most `u16::MAX`
    /// services; within those limits `parse` gives back an equal message.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            ControlMessage::Ping { digest } => {
                out.push(ty::PING);
                out.extend_from_slice(&digest.to_be_bytes());
            }
            ControlMessage::Pong { digest } => {
                out.push(ty::PONG);
                out.extend_from_slice(&digest.to_be_bytes());
            }
            ControlMessage::DirectoryPart {
                digest,
                part,
                parts,
                mode,
                services,
            } => {
                let count = u16::try_from(services.len()).unwrap_or(u16::MAX);
                out.push(ty::DIRECTORY_PART);
                out.extend_from_slice(&digest.to_be_bytes());
                out.extend_from_slice(&part.to_be_bytes());
                out.extend_from_slice(&parts.to_be_bytes());
                out.push(mode.to_byte());
                out.extend_from_slice(&count.to_be_bytes());
                for s in services.iter().take(usize::from(count)) {
                    emit_entry(s, out);
                }
            }
        }
    }

    /// The encoded length: what [`ControlMessage::emit`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            ControlMessage::Ping { .. } | ControlMessage::Pong { .. } => PING_LEN,
            ControlMessage::DirectoryPart { services, .. } => {
                PART_HEADER_LEN
                    + services
                        .iter()
                        .take(usize::from(u16::MAX))
                        .map(entry_len)
                        .sum::<usize>()
            }
        }
    }
}

/// Puts a directory back together from its parts.
///
/// Collects the parts of one digest at a time: a part of another digest
/// discards what was collected (the relay only sends a newer directory),
/// and so does a part that contradicts the others (part count or mode).
/// Duplicates are ignored. When every part is in, the directory is rebuilt
/// with [`Directory::new`] and returned only if its digest is the one the
/// parts carried. Memory is bounded: at most [`MAX_PARTS`] parts and
/// [`MAX_SERVICES`] services of at most [`MAX_NAME_LEN`]-byte names.
#[derive(Debug, Default)]
pub struct DirectoryAssembler {
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    digest: u64,
    mode: ConnectionMode,
    parts: Vec<Option<Vec<ServiceEntry>>>,
    missing: usize,
    services: usize,
}

impl DirectoryAssembler {
    /// An assembler holding nothing.
    pub fn new() -> DirectoryAssembler {
        DirectoryAssembler::default()
    }

    /// The digest of the directory being collected, if any.
    pub fn pending(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.digest)
    }

    /// Takes one [`ControlMessage::DirectoryPart`]'s fields. Returns the
    /// directory when this part completed it and its digest checks; `None`
    /// while parts are missing, and for a part that cannot belong to any
    /// directory (out-of-range numbers, digest 0, names too long, too many
    /// services), which is dropped.
    pub fn push(
        &mut self,
        digest: u64,
        part: u16,
        parts: u16,
        mode: ConnectionMode,
        services: Vec<ServiceEntry>,
    ) -> Option<Directory> {
        if digest == 0 || parts == 0 || part >= parts || parts > MAX_PARTS {
            return None;
        }
        if services.len() > MAX_SERVICES || services.iter().any(|s| s.name.len() > MAX_NAME_LEN) {
            return None;
        }
        let fits = |p: &Pending| {
            p.digest == digest && p.mode == mode && p.parts.len() == usize::from(parts)
        };
        if !self.pending.as_ref().is_some_and(fits) {
            self.pending = Some(Pending {
                digest,
                mode,
                parts: vec![None; usize::from(parts)],
                missing: usize::from(parts),
                services: 0,
            });
        }
        let pending = self.pending.as_mut()?;
        let slot = pending.parts.get_mut(usize::from(part))?;
        if slot.is_some() {
            return None;
        }
        pending.services += services.len();
        if pending.services > MAX_SERVICES {
            self.pending = None;
            return None;
        }
        *slot = Some(services);
        pending.missing -= 1;
        if pending.missing > 0 {
            return None;
        }
        let done = self.pending.take()?;
        let all: Vec<ServiceEntry> = done.parts.into_iter().flatten().flatten().collect();
        let directory = Directory::new(done.mode, all);
        (directory.digest == done.digest).then_some(directory)
    }

    /// Drops what was collected.
    pub fn clear(&mut self) {
        self.pending = None;
    }
}

fn protocol_byte(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::TcpUdp => 0,
    }
}

/// `name` cut to at most [`MAX_NAME_LEN`] bytes at a character boundary.
fn wire_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default()
}

fn entry_len(s: &ServiceEntry) -> usize {
    ENTRY_FIXED_LEN + wire_name(&s.name).len()
}

fn emit_entry(s: &ServiceEntry, out: &mut Vec<u8>) {
    let name = wire_name(&s.name);
    out.extend_from_slice(&s.id.0.to_be_bytes());
    out.push(protocol_byte(s.protocol));
    out.extend_from_slice(&s.port.to_be_bytes());
    out.extend_from_slice(&s.connector.to_be_bytes());
    out.extend_from_slice(&s.connector_key);
    // `wire_name` keeps the length within a byte.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}

fn digest(mode: ConnectionMode, services: &[ServiceEntry]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    let count = u32::try_from(services.len()).unwrap_or(u32::MAX);
    h.update(&[mode.to_byte()]);
    h.update(&count.to_be_bytes());
    let mut buf = Vec::with_capacity(MAX_ENTRY_LEN);
    for s in services {
        buf.clear();
        emit_entry(s, &mut buf);
        h.update(&buf);
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first).max(1)
}

/// A cursor over a body that fails instead of indexing out of bounds.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.at)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ControlError> {
        let bytes = self.bytes(N)?;
        bytes.try_into().map_err(|_| ControlError::Truncated)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ControlError> {
        let end = self.at.checked_add(n).ok_or(ControlError::Truncated)?;
        let bytes = self.buf.get(self.at..end).ok_or(ControlError::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ControlError> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, ControlError> {
        self.take().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, ControlError> {
        self.take().map(u64::from_be_bytes)
    }

    fn entry(&mut self) -> Result<ServiceEntry, ControlError> {
        let id = ServiceId(self.u32()?);
        let protocol = match self.u8()? {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            0 => Protocol::TcpUdp,
            other => return Err(ControlError::BadProtocol(other)),
        };
        let port = self.u16()?;
        let connector = self.u32()?;
        let connector_key = self.take::<32>()?;
        let name_len = self.u8()?;
        let name = core::str::from_utf8(self.bytes(usize::from(name_len))?)
            .map_err(|_| ControlError::BadName)?
            .to_owned();
        Ok(ServiceEntry {
            id,
            name,
            protocol,
            port,
            connector,
            connector_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A DirectoryPart: digest 0x0102030405060708, part 1 of 3, always-on,
    // one service: id 10, tcp, port 5432, connector 501, key 0xab.., "db".
    #[rustfmt::skip]
    const PART: [u8; 62] = [
        3,
        1, 2, 3, 4, 5, 6, 7, 8,
        0, 1,
        0, 3,
        2,
        0, 1,
        0, 0, 0, 10,
        6,
        0x15, 0x38,
        0, 0, 0x01, 0xf5,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        2, b'd', b'b',
    ];

    fn db() -> ServiceEntry {
        ServiceEntry {
            id: ServiceId(10),
            name: "db".into(),
            protocol: Protocol::Tcp,
            port: 5432,
            connector: 501,
            connector_key: [0xab; 32],
        }
    }

    fn entry(id: u32, name: &str) -> ServiceEntry {
        ServiceEntry {
            id: ServiceId(id),
            name: name.into(),
            protocol: Protocol::Udp,
            port: 53,
            connector: 7,
            connector_key: [id as u8; 32],
        }
    }

    fn emitted(m: &ControlMessage) -> Vec<u8> {
        let mut out = Vec::new();
        m.emit(&mut out);
        assert_eq!(out.len(), m.encoded_len());
        out
    }

    #[test]
    fn parses_and_emits_the_static_vector() {
        let m = ControlMessage::parse(&PART).unwrap();
        assert_eq!(
            m,
            ControlMessage::DirectoryPart {
                digest: 0x0102_0304_0506_0708,
                part: 1,
                parts: 3,
                mode: ConnectionMode::AlwaysOn,
                services: vec![db()],
            }
        );
        assert_eq!(emitted(&m), PART);
        assert_eq!(PART.len(), PART_HEADER_LEN + ENTRY_FIXED_LEN + 2);
    }

    #[test]
    fn ping_and_pong() {
        let ping = [1, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        assert_eq!(
            ControlMessage::parse(&ping),
            Ok(ControlMessage::Ping { digest: 0x1234 })
        );
        let pong = ControlMessage::Pong { digest: u64::MAX };
        assert_eq!(
            emitted(&pong),
            [2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(ControlMessage::parse(&emitted(&pong)), Ok(pong));
    }

    #[test]
    fn truncated_and_padded_bodies_are_rejected() {
        for len in 0..PART.len() {
            assert_eq!(
                ControlMessage::parse(&PART[..len]),
                Err(ControlError::Truncated),
                "len {len}"
            );
        }
        let mut long = PART.to_vec();
        long.push(0);
        assert_eq!(
            ControlMessage::parse(&long),
            Err(ControlError::TrailingBytes(1))
        );
        assert_eq!(
            ControlMessage::parse(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(ControlError::TrailingBytes(1))
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let with = |at: usize, v: u8| {
            let mut b = PART;
            b[at] = v;
            ControlMessage::parse(&b)
        };
        assert_eq!(with(0, 0), Err(ControlError::UnknownType(0)));
        assert_eq!(with(0, 4), Err(ControlError::UnknownType(4)));
        assert_eq!(with(13, 4), Err(ControlError::BadMode(4)));
        assert_eq!(with(20, 1), Err(ControlError::BadProtocol(1)));
        assert_eq!(with(60, 0xff), Err(ControlError::BadName));
        assert_eq!(
            with(12, 1),
            Err(ControlError::BadPart { part: 1, parts: 1 })
        );
        assert_eq!(
            with(12, 0),
            Err(ControlError::BadPart { part: 1, parts: 0 })
        );
        let mut b = PART;
        b[11] = 0x10;
        b[12] = 0x01; // 4097 parts
        assert_eq!(
            ControlMessage::parse(&b),
            Err(ControlError::BadPart {
                part: 1,
                parts: 4097
            })
        );
        let mut b = PART;
        b[1..9].fill(0);
        assert_eq!(ControlMessage::parse(&b), Err(ControlError::ZeroDigest));
    }

    #[test]
    fn a_huge_count_in_a_short_body_is_truncated_not_allocated() {
        let mut b = PART[..PART_HEADER_LEN].to_vec();
        b[14] = 0xff;
        b[15] = 0xff;
        assert_eq!(ControlMessage::parse(&b), Err(ControlError::Truncated));
    }

    #[test]
    fn modes_have_names_and_order() {
        for m in ConnectionMode::ALL {
            assert_eq!(m.name().parse::<ConnectionMode>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
            assert_eq!(ConnectionMode::from_byte(m.to_byte()), Some(m));
        }
        assert_eq!(ConnectionMode::default(), ConnectionMode::OnDemand);
        assert!(ConnectionMode::Off < ConnectionMode::OnDemand);
        assert!(ConnectionMode::AlwaysOn < ConnectionMode::Lockdown);
        let e = "always_on".parse::<ConnectionMode>().unwrap_err();
        assert!(e.to_string().contains("\"always-on\""), "{e}");
        #[derive(Deserialize)]
        struct T {
            m: ConnectionMode,
        }
        let t: T = toml::from_str("m = \"on-demand\"").unwrap();
        assert_eq!(t.m, ConnectionMode::OnDemand);
        assert!(toml::from_str::<T>("m = \"OnDemand\"").is_err());
    }

    #[test]
    fn directory_sorts_dedups_and_digests_its_content() {
        let d = Directory::new(
            ConnectionMode::OnDemand,
            vec![entry(3, "c"), entry(1, "a"), entry(3, "again")],
        );
        let ids: Vec<u32> = d.services.iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(d.service(ServiceId(3)).unwrap().name, "c");
        assert!(d.service(ServiceId(2)).is_none());
        let same = Directory::new(ConnectionMode::OnDemand, vec![entry(1, "a"), entry(3, "c")]);
        assert_eq!(d, same);
        assert_ne!(d.digest, 0);
        // Any change of content changes the digest.
        let other_mode = Directory::new(ConnectionMode::Lockdown, same.services.clone());
        let mut rekeyed = same.services.clone();
        rekeyed[1].connector_key[0] ^= 1;
        let rekeyed = Directory::new(ConnectionMode::OnDemand, rekeyed);
        let fewer = Directory::new(ConnectionMode::OnDemand, vec![entry(1, "a")]);
        for d2 in [&other_mode, &rekeyed, &fewer] {
            assert_ne!(d2.digest, d.digest);
        }
        assert_ne!(Directory::new(ConnectionMode::Off, Vec::new()).digest, 0);
    }

    #[test]
    fn parts_fit_the_budget_and_reassemble() {
        let services: Vec<ServiceEntry> = (0..100)
            .map(|i| entry(i, &format!("service-{i}")))
            .collect();
        let d = Directory::new(ConnectionMode::AlwaysOn, services);
        let parts = d.parts(DEFAULT_MAX_BODY);
        assert!(parts.len() > 1, "100 services need several parts");
        let mut asm = DirectoryAssembler::new();
        let mut got = None;
        // Out of order, with a duplicate.
        let mut order: Vec<usize> = (0..parts.len()).rev().collect();
        order.insert(1, parts.len() - 1);
        for i in order {
            let body = emitted(&parts[i]);
            assert!(body.len() <= DEFAULT_MAX_BODY, "part {i}: {}", body.len());
            let Ok(ControlMessage::DirectoryPart {
                digest,
                part,
                parts: n,
                mode,
                services,
            }) = ControlMessage::parse(&body)
            else {
                panic!("part {i} does not parse");
            };
            assert!(got.is_none(), "complete before the last part");
            got = asm.push(digest, part, n, mode, services);
        }
        assert_eq!(got, Some(d));
        assert_eq!(asm.pending(), None);
    }

    #[test]
    fn empty_directory_is_one_empty_part() {
        let d = Directory::new(ConnectionMode::Off, Vec::new());
        let parts = d.parts(DEFAULT_MAX_BODY);
        assert_eq!(
            parts,
            [ControlMessage::DirectoryPart {
                digest: d.digest,
                part: 0,
                parts: 1,
                mode: ConnectionMode::Off,
                services: Vec::new()
            }]
        );
        assert_eq!(
            DirectoryAssembler::new().push(d.digest, 0, 1, ConnectionMode::Off, Vec::new()),
            Some(d)
        );
    }

    #[test]
    fn a_tiny_budget_still_makes_progress() {
        let d = Directory::new(
            ConnectionMode::OnDemand,
            vec![entry(1, &"x".repeat(300)), entry(2, "b")],
        );
        let parts = d.parts(0);
        assert_eq!(parts.len(), 2);
        let ControlMessage::DirectoryPart { services, .. } = &parts[0] else {
            panic!()
        };
        // Cut to 255 bytes on the wire.
        let body = emitted(&parts[0]);
        assert_eq!(body.len(), PART_HEADER_LEN + MAX_ENTRY_LEN);
        let back = ControlMessage::parse(&body).unwrap();
        let ControlMessage::DirectoryPart { services: back, .. } = back else {
            panic!()
        };
        assert_eq!(back[0].name.len(), MAX_NAME_LEN);
        assert_eq!(services[0].name.len(), 300);
        // Cutting respects characters.
        assert_eq!(wire_name(&"é".repeat(200)).len(), 254);
    }

    #[test]
    fn assembler_rejects_wrong_digests_and_switches_to_newer_directories() {
        let d = Directory::new(ConnectionMode::OnDemand, vec![entry(1, "a"), entry(2, "b")]);
        let mut asm = DirectoryAssembler::new();
        // A complete set with a digest that does not match its content.
        assert_eq!(
            asm.push(d.digest ^ 1, 0, 1, d.mode, d.services.clone()),
            None
        );
        assert_eq!(asm.pending(), None);
        // Half of an old directory, then a whole new one.
        assert_eq!(asm.push(77, 0, 2, d.mode, vec![entry(9, "old")]), None);
        assert_eq!(asm.pending(), Some(77));
        assert_eq!(
            asm.push(d.digest, 0, 1, d.mode, d.services.clone()),
            Some(d.clone())
        );
        // Impossible parts are dropped without touching the state.
        assert_eq!(asm.push(5, 0, 2, d.mode, vec![entry(1, "a")]), None);
        for (digest, part, parts) in [(0, 0, 1), (5, 2, 2), (5, 0, 0), (5, 0, MAX_PARTS + 1)] {
            assert_eq!(asm.push(digest, part, parts, d.mode, Vec::new()), None);
            assert_eq!(asm.pending(), Some(5));
        }
        assert_eq!(
            asm.push(
                5,
                1,
                2,
                d.mode,
                vec![entry(3, &"n".repeat(MAX_NAME_LEN + 1))]
            ),
            None
        );
        assert_eq!(asm.pending(), Some(5));
        // A part contradicting the others starts over.
        assert_eq!(asm.push(5, 1, 3, d.mode, Vec::new()), None);
        asm.clear();
        assert_eq!(asm.pending(), None);
    }

    #[test]
    fn assembler_memory_is_bounded() {
        let mut asm = DirectoryAssembler::new();
        let many: Vec<ServiceEntry> = (0..MAX_SERVICES as u32 / 2 + 1)
            .map(|i| entry(i, ""))
            .collect();
        assert_eq!(asm.push(9, 0, 3, ConnectionMode::Off, many.clone()), None);
        assert_eq!(asm.pending(), Some(9));
        assert_eq!(asm.push(9, 1, 3, ConnectionMode::Off, many), None);
        assert_eq!(asm.pending(), None, "over MAX_SERVICES: dropped");
    }

    fn any_entry() -> impl Strategy<Value = ServiceEntry> {
        (
            any::<u32>(),
            "\\PC{0,40}",
            0u8..3,
            any::<u16>(),
            any::<u32>(),
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(id, name, proto, port, connector, connector_key)| ServiceEntry {
                    id: ServiceId(id),
                    name,
                    protocol: [Protocol::Tcp, Protocol::Udp, Protocol::TcpUdp][usize::from(proto)],
                    port,
                    connector,
                    connector_key,
                },
            )
    }

    fn any_mode() -> impl Strategy<Value = ConnectionMode> {
        (0u8..4).prop_map(|b| ConnectionMode::from_byte(b).unwrap_or_default())
    }

    fn any_message() -> impl Strategy<Value = ControlMessage> {
        prop_oneof![
            any::<u64>().prop_map(|digest| ControlMessage::Ping { digest }),
            any::<u64>().prop_map(|digest| ControlMessage::Pong { digest }),
            (
                1u64..,
                (1..=MAX_PARTS).prop_flat_map(|parts| (0..parts, Just(parts))),
                any_mode(),
                proptest::collection::vec(any_entry(), 0..6),
            )
                .prop_map(|(digest, (part, parts), mode, services)| {
                    ControlMessage::DirectoryPart {
                        digest,
                        part,
                        parts,
                        mode,
                        services,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn parse_inverts_emit(m in any_message()) {
            let body = emitted(&m);
            prop_assert_eq!(ControlMessage::parse(&body), Ok(m));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = ControlMessage::parse(&bytes) {
                // What parses is canonical: it emits the same bytes.
                prop_assert_eq!(emitted(&m), bytes);
            }
        }

        #[test]
        fn mutated_messages_never_panic(m in any_message(), at in any::<usize>(), v in any::<u8>()) {
            let mut body = emitted(&m);
            let i = at % body.len();
            body[i] = v;
            let _ = ControlMessage::parse(&body);
            let _ = ControlMessage::parse(&body[..i]);
        }

        #[test]
        fn any_directory_round_trips_through_its_parts(
            services in proptest::collection::vec(any_entry(), 0..40),
            mode in any_mode(),
            max_body in 0usize..2000,
        ) {
            let d = Directory::new(mode, services);
            let mut asm = DirectoryAssembler::new();
            let mut got = None;
            for p in d.parts(max_body) {
                let body = emitted(&p);
                prop_assert!(body.len() <= max_body.max(PART_HEADER_LEN + MAX_ENTRY_LEN));
                if let Ok(ControlMessage::DirectoryPart { digest, part, parts, mode, services }) = ControlMessage::parse(&body) {
                    got = asm.push(digest, part, parts, mode, services);
                }
            }
            prop_assert_eq!(got, Some(d));
        }
    }
}
