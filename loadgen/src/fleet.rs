//! The synthetic peers of one run, attached to a world's relays: one socket
//! for all users (a busy agent host), one for the connector, every hop and
//! end-to-end session established with real handshakes. Users attach to
//! the world's first relay, the connector to its last (the same one in a
//! one-relay world).
//!
//! With several connectors (`fan-out`), each has its own address,
//! 127.0.0.k, on one port, so the relay sees as many next hops; all of
//! them are received by one socket bound to the wildcard address on that
//! port. Each connector's handshakes run on a socket bound to its own
//! address first (the relay answers there, and records it as the
//! connector's endpoint); once they are done those sockets close and the
//! wildcard socket receives everything, so the load generator drains one
//! socket whatever the fan-out.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::Context as _;
use proto::aead::E2eKey;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use relay::io::train::TrainSender;
use relay::io::{bind_socket, Backend, Io, IoConfig};

use crate::handshakes::{self, AgentEnd, ConnectorEnd, E2eRequest};
use crate::payload::FlowKey;
use crate::scenario::{connector_of, Plan};
use crate::sink::Sink;
use crate::traffic::{SendFlow, Traffic};
use crate::world::World;

/// Both ends of a plan's traffic, connected to a relay.
#[derive(Debug)]
pub struct Fleet {
    /// The users' socket.
    pub sender: Io,
    /// Sends the users' trains from `sender`'s socket.
    pub trains: TrainSender,
    /// The connector's socket.
    pub receiver: Io,
    /// The connector's address (the target of runs without a relay).
    pub receiver_addr: SocketAddr,
    /// The trains.
    pub traffic: Traffic,
    /// The connector's checks.
    pub sink: Sink,
}

/// Opens a load generator socket on loopback: GRO on, `recvmmsg` /
/// `sendmmsg`. Not io_uring: the load generator polls its receive side
/// without waiting between trains, and a zero-timeout `io_uring_enter`
/// wait cost half the thread's time there (perf, 2026-11-23), making the
/// load generator and not the relay the bound at 64 B.
pub fn open_socket() -> anyhow::Result<Io> {
    open_socket_at(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// [`open_socket`] bound to `addr`.
fn open_socket_at(addr: SocketAddr) -> anyhow::Result<Io> {
    let cfg = IoConfig::default();
    let socket = bind_socket(addr, &cfg)?;
    Ok(Io::start(Backend::Mmsg, socket, cfg)?)
}

/// The address of connector `k` (0-based) of several: 127.0.0.(k + 1).
fn connector_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + k)
}

impl Fleet {
    /// Connects `plan`'s users and the connector to `world`'s relays and
    /// runs an end-to-end handshake for every allowed flow. Sample timestamps
    /// count from `epoch`; the sink opens one in `verify_every` pool
    /// records.
    pub fn connect(
        world: &World,
        plan: &Plan,
        verify_every: u64,
        epoch: Instant,
    ) -> anyhow::Result<Fleet> {
        let (entry, exit) = (&world.relay, world.connector_relay());
        let ca = world.pki.ca();
        let mut sender = open_socket().context("load generator's user socket")?;
        let n = plan.connectors.max(1);
        // One connector: its socket is the receiver. Several: a wildcard
        // receiver, and one socket per connector address for the
        // handshakes.
        let (mut receiver, mut own): (Io, Vec<Io>) = if n == 1 {
            (
                open_socket().context("load generator's connector socket")?,
                Vec::new(),
            )
        } else {
            let wild = open_socket_at(SocketAddr::from(([0, 0, 0, 0], 0)))
                .context("load generator's connectors' socket")?;
            let port = wild.local_addr()?.port();
            let own = (0..n)
                .map(|k| open_socket_at(SocketAddr::from((connector_ip(k), port))))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("a connector's own socket (127.0.0.k on the shared port)")?;
            (wild, own)
        };
        let receiver_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, receiver.local_addr()?.port()));

        let users: Vec<UserId> = plan
            .flows
            .iter()
            .map(|f| f.first().map_or(UserId(0), |f| f.user))
            .collect();
        let ids = users
            .iter()
            .map(|u| world.user_identity(u.0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let connector_ids = (1..=n)
            .map(|id| world.nth_connector_identity(id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut links = handshakes::hop_handshakes(
            &mut sender,
            entry.local_addr(),
            entry.public_key(),
            ca,
            &ids,
            1,
        )
        .context("users' hop handshakes")?;
        let mut connectors = Vec::with_capacity(n as usize);
        for (k, id) in connector_ids.iter().enumerate() {
            let io = own.get_mut(k).unwrap_or(&mut receiver);
            let link = handshakes::hop_handshakes(
                io,
                exit.local_addr(),
                exit.public_key(),
                ca,
                std::slice::from_ref(id),
                k as u32 + 1,
            )
            .context("connector's hop handshake")?
            .pop()
            .context("connector's hop handshake gave no link")?;
            connectors.push(link);
        }

        let services: BTreeSet<ServiceId> = plan
            .flows
            .iter()
            .flatten()
            .filter(|f| f.allowed)
            .map(|f| f.service)
            .collect();
        for s in services {
            world.await_routes(s, &[])?;
        }
        world.await_routes(ServiceId(1), &users)?;

        // Flow ids number the plan's flows in order; both ends use them.
        let mut requests = Vec::new();
        let mut request_flow = Vec::new();
        let mut flow_id = 0usize;
        for (link, flows) in plan.flows.iter().enumerate() {
            for f in flows {
                if f.allowed {
                    requests.push(E2eRequest {
                        link,
                        user: f.user,
                        service: f.service,
                    });
                    request_flow.push(flow_id);
                }
                flow_id += 1;
            }
        }
        // Each connector answers the handshakes of its services' flows.
        let mut agent_keys: Vec<Option<_>> = requests.iter().map(|_| None).collect();
        let mut connector_keys: Vec<Option<_>> = requests.iter().map(|_| None).collect();
        let mut next_index = 1u32;
        for (k, (link, identity)) in connectors.iter_mut().zip(&connector_ids).enumerate() {
            let mine: Vec<usize> = (0..requests.len())
                .filter(|&r| connector_of(requests[r].service, n) == k as u32 + 1)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let subset: Vec<E2eRequest> = mine.iter().map(|&r| requests[r]).collect();
            let sessions = handshakes::e2e_handshakes(
                AgentEnd {
                    relay: entry.local_addr(),
                    io: &mut sender,
                    links: &mut links,
                    ids: &ids,
                },
                ConnectorEnd {
                    relay: exit.local_addr(),
                    io: own.get_mut(k).unwrap_or(&mut receiver),
                    link,
                    identity,
                    first_index: next_index,
                },
                ca,
                &subset,
            )
            .context("end-to-end handshakes through the relays")?;
            next_index += subset.len() as u32;
            for ((&r, a), c) in mine.iter().zip(sessions.agent).zip(sessions.connector) {
                agent_keys[r] = Some(a);
                connector_keys[r] = Some(c);
            }
        }
        // Handshakes done: from now on the wildcard socket receives what
        // the relay sends to every connector address.
        drop(own);
        let sessions = handshakes::E2eSessions {
            agent: agent_keys.into_iter().flatten().collect(),
            connector: connector_keys.into_iter().flatten().collect(),
        };
        anyhow::ensure!(
            sessions.agent.len() == requests.len(),
            "end-to-end handshakes: {} sessions for {} flows",
            sessions.agent.len(),
            requests.len()
        );

        let mut agent_keys = sessions.agent.iter().zip(&request_flow).peekable();
        let nobody = E2eKey::new(&[0; 32]);
        let mut flow_id = 0usize;
        let send_flows: Vec<Vec<SendFlow>> = plan
            .flows
            .iter()
            .map(|flows| {
                flows
                    .iter()
                    .map(|f| {
                        let id = flow_id;
                        flow_id += 1;
                        let agent = agent_keys.next_if(|(_, &fid)| fid == id).map(|(k, _)| k);
                        SendFlow {
                            key: FlowKey {
                                flow: id,
                                user: f.user,
                                service: f.service,
                                receiver: agent.map_or(ReceiverIndex(0), |k| k.remote_index),
                                key: agent
                                    .map_or_else(|| nobody.clone(), |k| E2eKey::new(&k.send_key)),
                            },
                            allowed: f.allowed,
                        }
                    })
                    .collect()
            })
            .collect();
        let sink_flows = sessions
            .connector
            .iter()
            .zip(&request_flow)
            .zip(&requests)
            .map(|((k, &flow), r)| FlowKey {
                flow,
                user: r.user,
                service: r.service,
                receiver: k.local_index,
                key: E2eKey::new(&k.recv_key),
            })
            .collect();
        Ok(Fleet {
            sender,
            trains: TrainSender::new(true),
            receiver,
            receiver_addr,
            traffic: Traffic::new(plan, links, send_flows, epoch),
            sink: Sink::with_links(connectors, sink_flows, verify_every, epoch),
        })
    }
}
