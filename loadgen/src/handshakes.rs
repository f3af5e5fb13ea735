//! Many handshakes at once: hop handshakes of many users with a relay, and
//! end-to-end handshakes of many (user, service) flows with the connector,
//! carried through the relay like any agent's.
//!
//! Both keep a bounded window of attempts in flight (below the relay's
//! under-load threshold, so it answers without cookie round trips), resend
//! what goes unanswered, and give up with an error after a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::handshake::{
    self, CookieJar, E2eInitiator, E2eResponder, E2eSessionKeys, HandshakeFrame, HopInitiator,
    LocalIdentity, Trust,
};
use proto::identity::{CaPublicKey, Role};
use proto::ids::{ReceiverIndex, ServiceId, UserId};
use proto::link::HopLink;
use proto::wire::{Frame, Kind, HEADER_LEN};
use relay::control::unix_nanos;
use relay::io::{Action, Io};

use crate::link::HANDSHAKE_TIMEOUT;

/// Attempts in flight at once.
pub const WINDOW: usize = 32;
/// How long a batch of handshakes may take in all, per 1 000 handshakes
/// (and at least this long).
const DEADLINE_PER_1000: Duration = Duration::from_secs(30);
/// How long one poll waits for answers.
const POLL: Duration = Duration::from_millis(2);

fn deadline_for(n: usize) -> Instant {
    let thousands = u32::try_from(n.div_ceil(1000)).unwrap_or(u32::MAX).max(1);
    Instant::now() + DEADLINE_PER_1000 * thousands
}

/// Collects every datagram from `from` that one poll of `io` returns.
fn receive(io: &mut Io, from: SocketAddr, out: &mut Vec<Vec<u8>>) -> anyhow::Result<()> {
    io.poll(POLL, &mut |src, bytes: &mut [u8]| {
        if src == from {
            out.push(bytes.to_vec());
        }
        Action::Consume
    })?;
    Ok(())
}

struct PendingHop {
    slot: usize,
    initiator: HopInitiator,
    sent: Instant,
    attempts: u32,
}

/// Runs hop handshakes with the relay at `relay` for every identity in
/// `ids` from `io`'s socket, naming link `k` with receiver index
/// `first_index + k`. Returns the links in the order of `ids`.
pub fn hop_handshakes(
    io: &mut Io,
    relay: SocketAddr,
    relay_static: &[u8; 32],
    ca: CaPublicKey,
    ids: &[LocalIdentity],
    first_index: u32,
) -> anyhow::Result<Vec<HopLink>> {
    let mut jar = CookieJar::new(relay_static);
    let mut links: Vec<Option<HopLink>> = ids.iter().map(|_| None).collect();
    let mut pending: HashMap<u32, PendingHop> = HashMap::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let mut answers = Vec::new();
    let deadline = deadline_for(ids.len());
    while done < ids.len() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {done} of {} hop handshakes with relay {relay} completed in time; is the relay overloaded or its key not the one configured?",
                ids.len()
            );
        }
        while pending.len() < WINDOW && next < ids.len() {
            let index = first_index
                .checked_add(next as u32)
                .context("receiver indices exhausted")?;
            let (initiator, init) = HopInitiator::new(
                &ids[next],
                relay_static,
                Trust::new(ca, &[Role::Relay]),
                ReceiverIndex(index),
                &jar,
                Instant::now(),
                unix_nanos(),
            )?;
            io.send_to(relay, &init)?;
            pending.insert(
                index,
                PendingHop {
                    slot: next,
                    initiator,
                    sent: Instant::now(),
                    attempts: 1,
                },
            );
            next += 1;
        }
        let now = Instant::now();
        for p in pending.values_mut() {
            if now.duration_since(p.sent) >= HANDSHAKE_TIMEOUT {
                p.attempts += 1;
                p.sent = now;
                io.send_to(relay, &p.initiator.init_frame(&jar, now))?;
            }
        }
        io.flush()?;
        answers.clear();
        receive(io, relay, &mut answers)?;
        for bytes in &answers {
            match handshake::parse(bytes) {
                Ok(HandshakeFrame::Response(r)) => {
                    if let Some(mut p) = pending.remove(&r.receiver.0) {
                        let keys = p
                            .initiator
                            .handle_response(bytes, Instant::now(), unix_nanos())
                            .context("relay's hop handshake response")?;
                        // Confirm the keys at once: the relay routes
                        // nothing to the session before a frame on it
                        // passed the tag.
                        let mut link = HopLink::from_keys(keys);
                        io.send_to(relay, &link.keepalive())?;
                        links[p.slot] = Some(link);
                        done += 1;
                    }
                }
                Ok(HandshakeFrame::CookieReply(c)) => {
                    if let Some(p) = pending.get_mut(&c.receiver.0) {
                        let now = Instant::now();
                        p.initiator.handle_cookie_reply(bytes, &mut jar, now)?;
                        p.sent = now;
                        io.send_to(relay, &p.initiator.init_frame(&jar, now))?;
                    }
                }
                _ => {}
            }
        }
    }
    // The last keepalives are still queued.
    io.flush()?;
    Ok(links.into_iter().flatten().collect())
}

/// One end-to-end flow to set up: which user link sends it, and its ids.
#[derive(Debug, Clone, Copy)]
pub struct E2eRequest {
    /// Index into the user links.
    pub link: usize,
    /// The user.
    pub user: UserId,
    /// The service.
    pub service: ServiceId,
}

/// Both ends of a set of end-to-end sessions.
#[derive(Debug)]
pub struct E2eSessions {
    /// The agent's keys, in the order of the requests.
    pub agent: Vec<E2eSessionKeys>,
    /// The connector's keys, in the order of the requests.
    pub connector: Vec<E2eSessionKeys>,
}

struct PendingE2e {
    request: usize,
    initiator: E2eInitiator,
    sent: Instant,
}

/// The connector's side of the end-to-end handshakes.
#[derive(Debug)]
pub struct ConnectorEnd<'a> {
    /// The relay the connector is attached to.
    pub relay: SocketAddr,
    /// The connector's socket.
    pub io: &'a mut Io,
    /// Its hop session with the relay.
    pub link: &'a mut HopLink,
    /// Its identity.
    pub identity: &'a LocalIdentity,
    /// Its end-to-end receiver indices are handed out from this one up
    /// (several connectors sharing a sink need distinct ones).
    pub first_index: u32,
}

/// The agents' side of the end-to-end handshakes.
#[derive(Debug)]
pub struct AgentEnd<'a> {
    /// The relay the users are attached to.
    pub relay: SocketAddr,
    /// The socket all user links share.
    pub io: &'a mut Io,
    /// Hop sessions, one per user.
    pub links: &'a mut [HopLink],
    /// Identities, parallel to `links`.
    pub ids: &'a [LocalIdentity],
}

/// Runs an end-to-end handshake for every request, agents on `agents`,
/// the connector on `connector`, every message through the relays each end
/// is attached to (one relay, or two in a mesh). Agent-side index of
/// request `k` is `k + 1`, connector-side indices are handed out in
/// arrival order from `connector.first_index`.
pub fn e2e_handshakes(
    agents: AgentEnd<'_>,
    connector: ConnectorEnd<'_>,
    ca: CaPublicKey,
    requests: &[E2eRequest],
) -> anyhow::Result<E2eSessions> {
    let connector_static = *connector.identity.public_key();
    let mut responder =
        E2eResponder::new(connector.identity.clone(), Trust::new(ca, &[Role::User]));
    let by_hop_index: HashMap<u32, usize> = agents
        .links
        .iter()
        .enumerate()
        .map(|(k, l)| (l.local_index().0, k))
        .collect();
    let mut agent: Vec<Option<E2eSessionKeys>> = requests.iter().map(|_| None).collect();
    let mut connector_keys: Vec<Option<E2eSessionKeys>> = requests.iter().map(|_| None).collect();
    let mut pending: HashMap<u32, PendingE2e> = HashMap::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let mut next_connector_index = connector.first_index.max(1);
    let mut answers = Vec::new();
    let deadline = deadline_for(requests.len());

    let start = |k: usize, agents: &mut AgentEnd<'_>| -> anyhow::Result<(E2eInitiator, Vec<u8>)> {
        let r = requests[k];
        let (initiator, body) = E2eInitiator::new(
            &agents.ids[r.link],
            &connector_static,
            Trust::new(ca, &[Role::Connector]),
            r.user,
            r.service,
            ReceiverIndex(k as u32 + 1),
            unix_nanos(),
        )?;
        let mut frame = vec![0u8; HEADER_LEN + body.len()];
        frame[HEADER_LEN..].copy_from_slice(&body);
        agents.links[r.link].write_header(&mut frame, Kind::E2eHandshakeUp, r.user, r.service);
        Ok((initiator, frame))
    };

    let mut agents = agents;
    while done < requests.len() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {done} of {} end-to-end handshakes completed in time; does the policy allow every requested pair?",
                requests.len()
            );
        }
        // Start new attempts; restart (new ephemeral, new timestamp) the
        // ones that went unanswered.
        let now = Instant::now();
        let stale: Vec<u32> = pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) >= HANDSHAKE_TIMEOUT)
            .map(|(i, _)| *i)
            .collect();
        for index in stale {
            if let Some(p) = pending.remove(&index) {
                let (initiator, frame) = start(p.request, &mut agents)?;
                agents.io.send_to(agents.relay, &frame)?;
                pending.insert(
                    index,
                    PendingE2e {
                        request: p.request,
                        initiator,
                        sent: now,
                    },
                );
            }
        }
        while pending.len() < WINDOW && next < requests.len() {
            let (initiator, frame) = start(next, &mut agents)?;
            agents.io.send_to(agents.relay, &frame)?;
            pending.insert(
                next as u32 + 1,
                PendingE2e {
                    request: next,
                    initiator,
                    sent: Instant::now(),
                },
            );
            next += 1;
        }
        agents.io.flush()?;

        // The connector answers what arrived.
        answers.clear();
        receive(connector.io, connector.relay, &mut answers)?;
        for bytes in &answers {
            if connector.link.accept(bytes).is_err() {
                continue;
            }
            let Ok(f) = Frame::new_checked(&bytes[..]) else {
                continue;
            };
            if f.kind() != Kind::E2eHandshakeUp {
                continue;
            }
            let (user, service) = (f.user(), f.service());
            let index = ReceiverIndex(next_connector_index);
            let Ok((reply, keys)) =
                responder.handle_init(f.body(), user, service, index, unix_nanos())
            else {
                continue;
            };
            next_connector_index += 1;
            // The agent's index names the request.
            let k = keys.remote_index.0 as usize;
            if let Some(slot) = k.checked_sub(1).and_then(|k| connector_keys.get_mut(k)) {
                *slot = Some(keys);
            }
            let mut frame = vec![0u8; HEADER_LEN + reply.len()];
            frame[HEADER_LEN..].copy_from_slice(&reply);
            connector
                .link
                .write_header(&mut frame, Kind::E2eHandshakeDown, user, service);
            connector.io.send_to(connector.relay, &frame)?;
        }
        connector.io.flush()?;

        // The agents finish what came back.
        answers.clear();
        receive(agents.io, agents.relay, &mut answers)?;
        for bytes in &answers {
            let Ok(f) = Frame::new_checked(&bytes[..]) else {
                continue;
            };
            let Some(&link) = by_hop_index.get(&f.receiver().0) else {
                continue;
            };
            if f.kind() != Kind::E2eHandshakeDown || agents.links[link].accept(bytes).is_err() {
                continue;
            }
            let Ok(body) = handshake::e2e::E2eResponseBody::parse(f.body()) else {
                continue;
            };
            let Some(mut p) = pending.remove(&body.receiver.0) else {
                continue;
            };
            match p
                .initiator
                .handle_response(f.body(), f.user(), f.service(), unix_nanos())
            {
                Ok(keys) => {
                    agent[p.request] = Some(keys);
                    done += 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "end-to-end handshake answer rejected");
                    pending.insert(body.receiver.0, p);
                }
            }
        }
    }
    let agent: Vec<E2eSessionKeys> = agent.into_iter().flatten().collect();
    let connector: Vec<E2eSessionKeys> = connector_keys.into_iter().flatten().collect();
    anyhow::ensure!(
        agent.len() == requests.len() && connector.len() == requests.len(),
        "end-to-end handshakes finished with {} agent and {} connector sessions for {} flows",
        agent.len(),
        connector.len(),
        requests.len()
    );
    for (a, c) in agent.iter().zip(&connector) {
        anyhow::ensure!(
            a.remote_index == c.local_index && a.send_key == c.recv_key,
            "end-to-end handshake of agent index {} ended with mismatched keys",
            a.local_index
        );
    }
    Ok(E2eSessions { agent, connector })
}
