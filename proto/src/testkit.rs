//! A relay's datapath state in memory, with users and a connector attached,
//! for tests, benches and fuzzing. Keys are fixed, not secret.
//!
//! The relay has one hop session per user (peer `User(u)`) and one for the
//! connector (peer `Connector(1)`), which serves every service. Frames built
//! by [`Fixture::upstream`] are what the user's agent would send.

pub mod handshake;

use std::sync::Arc;

use crate::datapath::{Counters, Datapath, Mode};
use crate::hoptag::HopKey;
use crate::ids::{ReceiverIndex, ServiceId, UserId};
use crate::policy::{CompiledPolicy, Connector, Group, PolicyFile, Protocol, Rule, Service, User};
use crate::route::RouteTable;
use crate::session::{Confirmations, HopId, Peer, RxSession, SessionTable, TxCounters, TxHop};
use crate::wire::{Frame, HeaderRepr, Kind, DATA_OVERHEAD, DEFAULT_TTL, HEADER_LEN};

/// Hop id of the connector in the fixture's route table.
pub const CONNECTOR_HOP: HopId = HopId(0);

/// The relay-side state and the agents' keys.
#[derive(Debug)]
pub struct Fixture {
    /// Policy snapshot.
    pub policy: CompiledPolicy,
    /// Routing snapshot.
    pub routes: RouteTable,
    /// The worker's sessions.
    pub sessions: SessionTable,
    /// The worker's counter reservations.
    pub tx: TxCounters,
    /// The worker's counters.
    pub counters: Counters,
    /// Sessions the worker saw confirmed (the fixture's own sessions are
    /// confirmed from the start, as the routes to them imply).
    pub confirmations: Confirmations,
    /// Whether the relay sends hop initiations (is in a mesh); `false`
    /// unless a test sets it.
    pub initiates: bool,
    /// The worker's audit table; `None` (audit off) unless a test sets it.
    pub audit: Option<crate::audit::AuditTable>,
    users: u32,
    next_counter: Vec<u64>,
    user_keys: Vec<HopKey>,
}

/// The key the agent of user `u` tags its frames with (and the relay
/// verifies with).
pub fn user_key(u: u32) -> [u8; 32] {
    let mut k = [0x55u8; 32];
    k[..4].copy_from_slice(&u.to_be_bytes());
    k
}

/// The receiver index the relay gave user `u`'s hop session.
pub fn user_index(u: u32) -> ReceiverIndex {
    ReceiverIndex(u + 1)
}

impl Fixture {
    /// `users` users (ids `0..users`), each allowed every service in
    /// `0..services` whose id is not a multiple of 4 (so some pairs are
    /// denied), routed to one connector.
    pub fn new(users: u32, services: u32) -> Fixture {
        let mut routes = RouteTable::new();
        let connector = Arc::new(TxHop::new(
            "127.0.0.1:9".parse().expect("literal address"),
            ReceiverIndex(0xc0),
            &[0xcc; 32],
            0,
        ));
        routes.set_hop(CONNECTOR_HOP, connector);
        let mut sessions = SessionTable::new();
        sessions.install(
            ReceiverIndex(0xc0c0),
            RxSession::new(&[0xcd; 32], Peer::Connector(1), CONNECTOR_HOP).already_confirmed(),
        );
        for s in 0..services {
            routes.set_service(ServiceId(s), vec![CONNECTOR_HOP]);
        }
        for u in 0..users {
            let hop = HopId(u + 1);
            routes.set_hop(
                hop,
                Arc::new(TxHop::new(
                    "127.0.0.1:10".parse().expect("literal address"),
                    ReceiverIndex(0x1000 + u),
                    &user_key(u),
                    u64::from(u) + 1,
                )),
            );
            routes.set_user(UserId(u), hop);
            sessions.install(
                user_index(u),
                RxSession::new(&user_key(u), Peer::User(UserId(u)), hop).already_confirmed(),
            );
        }
        let policy = CompiledPolicy::compile(&policy_file(users, services))
            .expect("the fixture's policy is valid");
        let tx = TxCounters::with_capacity(routes.hop_slots());
        Fixture {
            policy,
            routes,
            sessions,
            tx,
            counters: Counters::default(),
            confirmations: Confirmations::new(),
            initiates: false,
            audit: None,
            users,
            next_counter: vec![0; users as usize],
            user_keys: (0..users).map(|u| HopKey::new(&user_key(u))).collect(),
        }
    }

    /// The datapath over this state.
    pub fn datapath(&mut self, mode: Mode) -> Datapath<'_> {
        Datapath {
            mode,
            initiates: self.initiates,
            policy: &self.policy,
            routes: &self.routes,
            sessions: &mut self.sessions,
            tx: &mut self.tx,
            counters: &mut self.counters,
            confirmations: &mut self.confirmations,
            audit: self.audit.as_mut(),
        }
    }

    /// Number of users.
    pub fn users(&self) -> u32 {
        self.users
    }

    /// Writes into `buf` a data frame of `frame_len` bytes (at least
    /// [`DATA_OVERHEAD`]) from user `u` to `service`, with the next counter
    /// of that user's hop and a valid tag. The payload is left as it is in
    /// `buf` (relays never read it). Returns the frame's length.
    pub fn upstream(&mut self, u: u32, service: u32, buf: &mut [u8], frame_len: usize) -> usize {
        let counter = self.next_counter[u as usize];
        self.next_counter[u as usize] += 1;
        write_frame(
            &mut buf[..frame_len.max(DATA_OVERHEAD)],
            Kind::DataUp,
            user_index(u),
            counter,
            UserId(u),
            ServiceId(service),
            &self.user_keys[u as usize],
        )
    }
}

/// The fixture's policy: users `0..users` in group `everyone`, services
/// `0..services` behind connector 1, and one rule granting `everyone` every
/// service whose id is not a multiple of 4.
pub fn policy_file(users: u32, services: u32) -> PolicyFile {
    PolicyFile {
        users: (0..users)
            .map(|u| User {
                id: UserId(u),
                name: format!("user{u}"),
                groups: vec!["everyone".into()],
                static_keys: None,
            })
            .collect(),
        groups: vec![Group {
            name: "everyone".into(),
            id: None,
            mode: None,
        }],
        connectors: vec![Connector {
            id: 1,
            name: "connector1".into(),
            static_key: None,
        }],
        services: (0..services)
            .map(|s| Service {
                id: ServiceId(s),
                name: format!("service{s}"),
                protocol: Protocol::Udp,
                target: format!("127.0.0.1:{}", 10_000 + s % 50_000),
                connectors: vec!["connector1".into()],
            })
            .collect(),
        rules: vec![Rule {
            name: Some("everyone-but-every-fourth".into()),
            groups: vec!["everyone".into()],
            users: Vec::new(),
            services: (0..services)
                .filter(|s| s % 4 != 0)
                .map(|s| format!("service{s}"))
                .collect(),
        }],
        revoked: Vec::new(),
    }
}

/// Writes the hop header of a frame filling all of `buf` (body already in
/// place: the tag covers it) and tags it with `key`. Returns `buf.len()`.
pub fn write_frame(
    buf: &mut [u8],
    kind: Kind,
    receiver: ReceiverIndex,
    counter: u64,
    user: UserId,
    service: ServiceId,
    key: &HopKey,
) -> usize {
    let body_len = u16::try_from(buf.len() - HEADER_LEN).expect("frame fits a datagram");
    HeaderRepr {
        kind,
        ttl: DEFAULT_TTL,
        receiver,
        counter,
        user,
        service,
        body_len,
    }
    .emit(buf)
    .expect("buffer holds a header");
    key.seal_frame(&mut Frame::new_unchecked(&mut *buf));
    buf.len()
}

/// Seals `buf` under a caller-chosen `counter`: for measurement code that
/// sends pre-sealed records again and again (the load generator), where
/// the counter carries a value. Anything that talks to a real peer uses
/// [`crate::aead::E2eSender`], which owns its counter.
pub fn seal_with_counter(
    key: &crate::aead::E2eKey,
    counter: u64,
    aad: &crate::aead::Aad,
    buf: &mut [u8],
) -> [u8; crate::wire::E2E_TAG_LEN] {
    key.seal_in_place(counter, aad, buf)
}

/// Opens `buf` under `counter` with no replay window: for a measurement
/// sink that sees the same pre-sealed records many times. A real receiver
/// uses [`crate::aead::E2eReceiver`].
pub fn open_with_counter(
    key: &crate::aead::E2eKey,
    counter: u64,
    aad: &crate::aead::Aad,
    buf: &mut [u8],
    tag: &[u8; crate::wire::E2E_TAG_LEN],
) -> Result<(), crate::aead::OpenError> {
    key.open_in_place(counter, aad, buf, tag)
}
