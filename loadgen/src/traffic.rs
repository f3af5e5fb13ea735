//! The sending side: GSO trains of ready frames, re-tagged per send.
//!
//! A train is what one agent hands its socket in one `UDP_SEGMENT` send:
//! frames of one size from one user, cycling through that user's flows.
//! Trains are built once into a small cache and then only re-tagged (new
//! hop counter, new hop tag: 16 header bytes written per frame, the tag
//! computed over the header and the record's header and AEAD tag, as
//! `proto::hoptag` says) before each send,
//! the way a GSO-capable agent would emit them; the first frame of every
//! train is a fresh timestamped sample (see [`crate::payload`]).

use std::time::Instant;

use proto::ids::ServiceId;
use proto::link::HopLink;
use proto::wire::{HeaderRepr, Kind, DEFAULT_TTL, HEADER_LEN};
use relay::io::{MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD};

use crate::payload::{pool_counter, FlowKey, SAMPLE_BIT};
use crate::scenario::Plan;

/// Trains kept built at once; users × sizes beyond it rebuild on use.
const CACHE: usize = 64;

/// One flow as the sender sees it.
#[derive(Debug, Clone)]
pub struct SendFlow {
    /// Its end-to-end key (for denied flows: a key nobody holds, since the
    /// policy never let their handshake through).
    pub key: FlowKey,
    /// Whether the policy allows it.
    pub allowed: bool,
}

#[derive(Debug)]
struct Train {
    /// (user, size index, first flow) it was built for.
    owner: Option<(usize, usize, usize)>,
    buf: Vec<u8>,
    segments: usize,
    allowed: usize,
}

/// A train ready to send.
#[derive(Debug)]
pub struct Ready<'a> {
    /// The frames, back to back.
    pub bytes: &'a [u8],
    /// Size of each frame.
    pub size: usize,
    /// Frames in the train.
    pub segments: usize,
    /// Of those, frames the policy allows.
    pub allowed: usize,
}

/// Builds and re-tags trains for a plan.
#[derive(Debug)]
pub struct Traffic {
    links: Vec<HopLink>,
    flows: Vec<Vec<SendFlow>>,
    sizes: Vec<usize>,
    pool: Vec<Option<Box<[u8]>>>,
    cache: Vec<Train>,
    next_user: usize,
    next_size: usize,
    /// Per user: the flow the next train starts with, so that trains
    /// shorter than a user's flow list still cycle through all of it.
    cursor: Vec<usize>,
    epoch: Instant,
    last_stamp: u64,
}

/// The most frames of `size` bytes one GSO send may carry.
pub fn max_segments(size: usize) -> usize {
    (MAX_UDP_PAYLOAD / size.max(1)).clamp(1, MAX_GSO_SEGMENTS)
}

impl Traffic {
    /// The users' links as the relay holds them
    /// ([`HopLink::reversed`]): what checks the users' own hop tags on
    /// frames that a bare hop forwarded unchanged.
    pub fn reversed_links(&self) -> Vec<HopLink> {
        self.links.iter().map(HopLink::reversed).collect()
    }

    /// Traffic from `links[u]` (user `u` of the plan) over `flows[u]`, in
    /// the plan's sizes, with sample timestamps counted from `epoch`.
    pub fn new(
        plan: &Plan,
        links: Vec<HopLink>,
        flows: Vec<Vec<SendFlow>>,
        epoch: Instant,
    ) -> Traffic {
        assert_eq!(links.len(), flows.len(), "one link per sending user");
        let n_flows: usize = flows.iter().map(Vec::len).sum();
        Traffic {
            links,
            flows,
            sizes: plan.sizes.clone(),
            pool: vec![None; n_flows * plan.sizes.len()],
            cache: (0..CACHE)
                .map(|_| Train {
                    owner: None,
                    buf: Vec::new(),
                    segments: 0,
                    allowed: 0,
                })
                .collect(),
            next_user: 0,
            next_size: 0,
            cursor: vec![0; plan.flows.len()],
            epoch,
            last_stamp: 0,
        }
    }

    /// The next train of at most `segments` frames, re-tagged, its first
    /// frame a fresh sample stamped now.
    pub fn next_train(&mut self, segments: usize) -> Ready<'_> {
        let user = self.next_user;
        let size_idx = self.next_size;
        self.next_user = (self.next_user + 1) % self.links.len();
        self.next_size = (self.next_size + 1) % self.sizes.len();
        let size = self.sizes[size_idx];
        let segments = segments.clamp(1, max_segments(size));
        let n_flows = self.flows[user].len();
        let start = self.cursor[user];
        self.cursor[user] = (start + segments) % n_flows;
        let slot = ((user * self.sizes.len() + size_idx) * n_flows + start) % CACHE;
        let owner = Some((user, size_idx, start));
        if self.cache[slot].owner != owner || self.cache[slot].segments < segments {
            self.build(slot, owner, segments);
        }
        let link = &mut self.links[user];
        let train = &mut self.cache[slot];
        let bytes = &mut train.buf[..segments * size];
        for frame in bytes.chunks_exact_mut(size).skip(1) {
            link.retag(frame);
        }
        // The sample goes last, so its stamp is as close to the send as
        // the build allows; its hop tag (which covers the record header
        // and the AEAD tag the sealing just wrote) after it. The sample
        // thus carries the train's highest hop counter while it is sent
        // first: well inside the relay's replay window.
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let stamp = now.max(self.last_stamp + 1) & !SAMPLE_BIT;
        self.last_stamp = stamp;
        let first = &self.flows[user][start];
        first
            .key
            .seal(&mut bytes[HEADER_LEN..size], SAMPLE_BIT | stamp);
        link.retag(&mut bytes[..size]);
        let allowed = if segments == train.segments {
            train.allowed
        } else {
            count_allowed(&self.flows[user], start, segments)
        };
        Ready {
            bytes,
            size,
            segments,
            allowed,
        }
    }

    fn build(&mut self, slot: usize, owner: Option<(usize, usize, usize)>, segments: usize) {
        let Some((user, size_idx, start)) = owner else {
            return;
        };
        let size = self.sizes[size_idx];
        let n_sizes = self.sizes.len();
        let flows = &self.flows[user];
        let base: usize = self.flows[..user].iter().map(Vec::len).sum();
        let train = &mut self.cache[slot];
        train.buf.resize(segments * size, 0);
        for (j, frame) in train.buf.chunks_exact_mut(size).enumerate() {
            let f = (start + j) % flows.len();
            let flow = &flows[f];
            let record = self.pool[(base + f) * n_sizes + size_idx].get_or_insert_with(|| {
                let mut body = vec![0u8; size - HEADER_LEN].into_boxed_slice();
                flow.key.seal(&mut body, pool_counter(size_idx));
                body
            });
            header(frame, &self.links[user], flow.key.user, flow.key.service);
            frame[HEADER_LEN..].copy_from_slice(record);
        }
        train.owner = owner;
        train.segments = segments;
        train.allowed = count_allowed(flows, start, segments);
    }
}

fn count_allowed(flows: &[SendFlow], start: usize, segments: usize) -> usize {
    (start..start + segments)
        .filter(|j| flows[j % flows.len()].allowed)
        .count()
}

/// Writes a `DataUp` header (counter and tag filled in at send time).
fn header(frame: &mut [u8], link: &HopLink, user: proto::ids::UserId, service: ServiceId) {
    let repr = HeaderRepr {
        kind: Kind::DataUp,
        ttl: DEFAULT_TTL,
        receiver: link.remote_index(),
        counter: 0,
        user,
        service,
        body_len: u16::try_from(frame.len() - HEADER_LEN).unwrap_or(u16::MAX),
    };
    // The frame is at least a header long: sizes are clamped by the plan.
    let _ = repr.emit(frame);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use proto::aead::E2eKey;
    use proto::hoptag::HopKey;
    use proto::ids::ReceiverIndex;
    use proto::wire::{E2eRecord, Frame};

    const SEND: [u8; 32] = [0x21; 32];

    /// Each user's link as a handshake would give it.
    fn link() -> HopLink {
        crate::link::test_link(SEND, [0x42; 32])
    }

    /// The relay checks each frame's hop tag over the bytes sent,
    /// including the sample's freshly sealed record header and AEAD tag:
    /// every frame of every train must verify as sent, with a hop counter
    /// seen once.
    #[test]
    fn every_frame_sent_carries_the_tag_of_its_final_bytes() {
        let plan = Plan::new(Scenario::Imix, 0, 0.0);
        let flows: Vec<Vec<SendFlow>> = plan
            .flows
            .iter()
            .map(|user_flows| {
                user_flows
                    .iter()
                    .enumerate()
                    .map(|(i, f)| SendFlow {
                        key: FlowKey {
                            flow: i,
                            user: f.user,
                            service: f.service,
                            receiver: ReceiverIndex(i as u32 + 1),
                            key: E2eKey::new(&[i as u8; 32]),
                        },
                        allowed: f.allowed,
                    })
                    .collect()
            })
            .collect();
        let links = flows.iter().map(|_| link()).collect();
        let mut traffic = Traffic::new(&plan, links, flows, Instant::now());
        let key = HopKey::new(&SEND);
        let mut seen = std::collections::HashSet::new();
        for round in 0..3 * plan.flows.len() * plan.sizes.len() {
            let ready = traffic.next_train(4);
            for (j, frame) in ready.bytes.chunks_exact(ready.size).enumerate() {
                let f = Frame::new_checked(frame).expect("well-formed");
                assert!(key.verify_frame(&f), "train {round}, frame {j}");
                assert!(
                    seen.insert((f.user(), f.counter())),
                    "train {round}, frame {j}: hop counter reused"
                );
                let sample = E2eRecord::new_checked(f.body()).unwrap().counter() & SAMPLE_BIT;
                assert_eq!(sample != 0, j == 0, "train {round}, frame {j}");
            }
        }
    }
}
