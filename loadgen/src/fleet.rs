//! The synthetic peers of one run, attached to a world's relays: one socket
//! for all users (a busy agent host), one for the connector, every hop and
//! end-to-end session established with real handshakes. Users attach to
//! the world's first relay, the connector to its last (the same one in a
//! one-relay world).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use proto::aead::E2eKey;
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use relay::io::train::TrainSender;
use relay::io::{bind_socket, Backend, Io, IoConfig};

use crate::handshakes::{self, AgentEnd, ConnectorEnd, E2eRequest};
use crate::payload::FlowKey;
use crate::scenario::Plan;
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
    let cfg = IoConfig::default();
    let socket = bind_socket(SocketAddr::from(([127, 0, 0, 1], 0)), &cfg)?;
    Ok(Io::start(Backend::Mmsg, socket, cfg)?)
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
        let mut receiver = open_socket().context("load generator's connector socket")?;
        let receiver_addr = receiver.local_addr()?;

        let users: Vec<UserId> = plan
            .flows
            .iter()
            .map(|f| f.first().map_or(UserId(0), |f| f.user))
            .collect();
        let ids = users
            .iter()
            .map(|u| world.user_identity(u.0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let connector_id = world.connector_identity()?;
        let mut links = handshakes::hop_handshakes(
            &mut sender,
            entry.local_addr(),
            entry.public_key(),
            ca,
            &ids,
            1,
        )
        .context("users' hop handshakes")?;
        let mut connector = handshakes::hop_handshakes(
            &mut receiver,
            exit.local_addr(),
            exit.public_key(),
            ca,
            std::slice::from_ref(&connector_id),
            1,
        )
        .context("connector's hop handshake")?
        .pop()
        .context("connector's hop handshake gave no link")?;

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
        let sessions = handshakes::e2e_handshakes(
            AgentEnd {
                relay: entry.local_addr(),
                io: &mut sender,
                links: &mut links,
                ids: &ids,
            },
            ConnectorEnd {
                relay: exit.local_addr(),
                io: &mut receiver,
                link: &mut connector,
                identity: &connector_id,
            },
            ca,
            &requests,
        )
        .context("end-to-end handshakes through the relays")?;

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
            sink: Sink::new(Some(connector), sink_flows, verify_every, epoch),
        })
    }
}
