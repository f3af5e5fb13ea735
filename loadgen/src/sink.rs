//! The receiving side: the connector's checks on every frame the relay
//! delivers, and the latency of the timestamped samples.
//!
//! Every frame's hop tag and counter are verified (when the sink has a hop
//! session: runs without a relay have none); every sample and one in
//! `verify_every` pool records is opened end to end and its plaintext
//! compared byte for byte.

use std::time::Instant;

use hdrhistogram::Histogram;
use proto::link::HopLink;
use proto::wire::{E2eRecord, Frame};

use crate::payload::{FlowKey, SAMPLE_BIT};
use crate::scenario::allowed;

/// What a sink counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkCounts {
    /// Datagrams handed to the sink.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames whose hop tag, counter or header did not verify.
    pub bad_hop: u64,
    /// Frames opened end to end with the right plaintext.
    pub verified: u64,
    /// Frames that failed to open or opened to the wrong plaintext, or
    /// arrived with ids that do not match their end-to-end session.
    pub corrupt: u64,
    /// Frames for pairs the policy denies that were delivered anyway.
    pub denied_delivered: u64,
    /// Latency samples recorded.
    pub samples: u64,
}

impl SinkCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &SinkCounts) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.bad_hop += other.bad_hop;
        self.verified += other.verified;
        self.corrupt += other.corrupt;
        self.denied_delivered += other.denied_delivered;
        self.samples += other.samples;
    }
}

/// The connectors' end of a run (one connector, or several sharing one
/// socket: frames are checked with the hop session their receiver index
/// names).
#[derive(Debug)]
pub struct Sink {
    /// Hop sessions by receiver index ([`LinkTable`]).
    links: LinkTable,
    check_hop: bool,
    flows: Vec<Option<FlowKey>>,
    verify_every: u64,
    pool_seen: u64,
    epoch: Instant,
    counts: SinkCounts,
    lifetime: u64,
    latency: Histogram<u64>,
}

/// Highest latency the histogram tracks (60 s, in ns); larger saturate.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Hop links by receiver index, direct-mapped: slot `index & mask` of a
/// power-of-two table, sized so that no two links share a slot. One look-up
/// costs the same whatever the indices are (the load generator's own,
/// consecutive, or a relay's behind a bare hop), so the sink does the same
/// work per frame in every mode. [`HopLink::accept`] then refuses a frame
/// whose index only shares the slot.
#[derive(Debug, Default)]
struct LinkTable {
    slots: Vec<Option<HopLink>>,
    mask: u32,
    /// Links held.
    len: usize,
}

impl LinkTable {
    /// Slots at most: a relay's receiver indices differ in their low 20
    /// bits (the session table's slot), so this size always fits them.
    const MAX_SLOTS: usize = 1 << 20;

    fn new(links: Vec<HopLink>) -> LinkTable {
        let mut len = links.len().next_power_of_two().max(1);
        while len < Self::MAX_SLOTS && !Self::distinct(&links, len) {
            len *= 2;
        }
        let mask = (len - 1) as u32;
        let mut slots: Vec<Option<HopLink>> = (0..len).map(|_| None).collect();
        let mut held = 0;
        for link in links {
            let slot = (link.local_index().0 & mask) as usize;
            // Distinct up to MAX_SLOTS; a later link with the same slot
            // would only ever see WrongReceiver, so keep the first.
            if slots[slot].is_none() {
                slots[slot] = Some(link);
                held += 1;
            }
        }
        LinkTable {
            slots,
            mask,
            len: held,
        }
    }

    /// Whether every link has a slot of its own in a table of `len`.
    fn distinct(links: &[HopLink], len: usize) -> bool {
        let mask = (len - 1) as u32;
        let mut seen = vec![false; len];
        links.iter().all(|l| {
            let slot = (l.local_index().0 & mask) as usize;
            !std::mem::replace(&mut seen[slot], true)
        })
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The link whose slot `index` falls in (it may be another index's).
    #[inline]
    fn get_mut(&mut self, index: proto::ids::ReceiverIndex) -> Option<&mut HopLink> {
        self.slots
            .get_mut((index.0 & self.mask) as usize)
            .and_then(Option::as_mut)
    }
}

impl Sink {
    /// A sink that checks hop frames with `link` (`None`: frames come
    /// straight from the sender), knows the connector-side keys `flows`
    /// (by their receiver index), opens one in `verify_every` pool records
    /// (0: samples only) and reads sample stamps against `epoch`.
    pub fn new(
        link: Option<HopLink>,
        flows: Vec<FlowKey>,
        verify_every: u64,
        epoch: Instant,
    ) -> Sink {
        let len = flows
            .iter()
            .map(|f| f.receiver.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut by_index = vec![None; len];
        for f in flows {
            let i = f.receiver.0 as usize;
            by_index[i] = Some(f);
        }
        Sink {
            links: LinkTable::new(link.into_iter().collect()),
            check_hop: true,
            flows: by_index,
            verify_every,
            pool_seen: 0,
            epoch,
            counts: SinkCounts::default(),
            lifetime: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// A sink for several connectors on one socket: `links` are their hop
    /// sessions (any receiver indices, each its own). Otherwise as
    /// [`Sink::new`].
    pub fn with_links(
        links: Vec<HopLink>,
        flows: Vec<FlowKey>,
        verify_every: u64,
        epoch: Instant,
    ) -> Sink {
        let mut sink = Sink::new(None, flows, verify_every, epoch);
        sink.set_links(links);
        sink
    }

    /// Checks hop frames with `links` from now on, instead of the links it
    /// had: behind a bare hop, the users' own links reversed
    /// ([`HopLink::reversed`]), since the frames arrive with the users'
    /// hop tags; the same work per frame as behind a relay.
    pub fn set_links(&mut self, links: Vec<HopLink>) {
        self.links = LinkTable::new(links);
    }

    /// Counts so far.
    pub fn counts(&self) -> SinkCounts {
        self.counts
    }

    /// Latency of the samples so far, in nanoseconds.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// Frames handed to the sink since it was made (not reset).
    pub fn lifetime_frames(&self) -> u64 {
        self.lifetime
    }

    /// Whether frames carry the relay's hop tag (off for runs that send
    /// straight to the sink).
    pub fn set_hop_check(&mut self, on: bool) {
        self.check_hop = on;
    }

    /// Whether frames are checked for the relay's hop tag.
    pub fn hop_check(&self) -> bool {
        self.check_hop
    }

    /// Starts a new measurement window: counts and latency from zero.
    pub fn reset(&mut self) {
        self.counts = SinkCounts::default();
        self.latency.reset();
    }

    /// Checks one delivered frame (it may be decrypted in place).
    #[inline]
    pub fn on_frame(&mut self, frame: &mut [u8]) {
        self.counts.frames += 1;
        self.lifetime += 1;
        self.counts.bytes += frame.len() as u64;
        if self.check_hop && !self.links.is_empty() {
            let link = Frame::new_checked(&*frame)
                .ok()
                .and_then(|f| self.links.get_mut(f.receiver()));
            let Some(link) = link else {
                self.counts.bad_hop += 1;
                return;
            };
            if link.accept(frame).is_err() {
                self.counts.bad_hop += 1;
                return;
            }
        }
        let Ok(mut f) = Frame::new_checked(&mut *frame) else {
            self.counts.bad_hop += 1;
            return;
        };
        let (user, service) = (f.user(), f.service());
        let Ok(record) = E2eRecord::new_checked(f.body_mut()) else {
            self.counts.corrupt += 1;
            return;
        };
        let (index, counter) = (record.receiver(), record.counter());
        let Some(Some(flow)) = self.flows.get(index.0 as usize) else {
            if allowed(service) {
                self.counts.corrupt += 1;
            } else {
                self.counts.denied_delivered += 1;
            }
            return;
        };
        if (flow.user, flow.service) != (user, service) {
            self.counts.corrupt += 1;
            return;
        }
        let sample = counter & SAMPLE_BIT != 0;
        if !sample {
            self.pool_seen += 1;
            if self.verify_every == 0 || self.pool_seen % self.verify_every != 0 {
                return;
            }
        }
        if !flow.open_and_check(f.body_mut()) {
            self.counts.corrupt += 1;
            return;
        }
        self.counts.verified += 1;
        if sample {
            let sent = counter & !SAMPLE_BIT;
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .latency
                .record(now.saturating_sub(sent).clamp(1, MAX_LATENCY_NS));
            self.counts.samples += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::POOL_COUNTER;
    use proto::aead::E2eKey;
    use proto::ids::{ReceiverIndex, ServiceId, UserId};
    use proto::wire::{HeaderRepr, Kind, DEFAULT_TTL, HEADER_LEN};

    fn key() -> FlowKey {
        FlowKey {
            flow: 0,
            user: UserId(1),
            service: ServiceId(1),
            receiver: ReceiverIndex(3),
            key: E2eKey::new(&[1; 32]),
        }
    }

    fn frame(k: &FlowKey, service: ServiceId, counter: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 200];
        HeaderRepr {
            kind: Kind::DataUp,
            ttl: DEFAULT_TTL,
            receiver: ReceiverIndex(1),
            counter: 0,
            user: k.user,
            service,
            body_len: 200 - HEADER_LEN as u16,
        }
        .emit(&mut buf)
        .unwrap();
        assert!(k.seal(&mut buf[HEADER_LEN..], counter));
        buf
    }

    #[test]
    fn samples_are_opened_and_timed_pool_records_are_sampled() {
        let epoch = Instant::now();
        let mut sink = Sink::new(None, vec![key()], 2, epoch);
        for _ in 0..4 {
            sink.on_frame(&mut frame(&key(), ServiceId(1), POOL_COUNTER));
        }
        sink.on_frame(&mut frame(&key(), ServiceId(1), SAMPLE_BIT | 1));
        let c = sink.counts();
        assert_eq!((c.frames, c.verified, c.samples, c.corrupt), (5, 3, 1, 0));
        assert_eq!(sink.latency().len(), 1);
    }

    #[test]
    fn tampering_and_wrong_ids_count_as_corrupt() {
        let mut sink = Sink::new(None, vec![key()], 1, Instant::now());
        let mut f = frame(&key(), ServiceId(1), POOL_COUNTER);
        f[150] ^= 1;
        sink.on_frame(&mut f);
        // Right session, but the header names another (allowed) service.
        sink.on_frame(&mut frame(&key(), ServiceId(2), POOL_COUNTER));
        assert_eq!(sink.counts().corrupt, 2);
        assert_eq!(sink.counts().verified, 0);
    }

    #[test]
    fn denied_pairs_that_arrive_are_counted_apart() {
        let mut sink = Sink::new(None, vec![key()], 1, Instant::now());
        let mut stranger = key();
        stranger.receiver = ReceiverIndex(77);
        sink.on_frame(&mut frame(&stranger, ServiceId(4), POOL_COUNTER));
        assert_eq!(sink.counts().denied_delivered, 1);
        sink.reset();
        assert_eq!(sink.counts(), SinkCounts::default());
    }

    /// A hop link as the connector's handshake would give it: the relay
    /// tags frames to it with `RECV`.
    const RECV: [u8; 32] = [0x42; 32];
    /// `test_link`'s own receiver index.
    const LOCAL: ReceiverIndex = ReceiverIndex(7);

    fn link() -> HopLink {
        crate::link::test_link([0x21; 32], RECV)
    }

    /// Links at a relay's kind of receiver indices (slot in the low 20
    /// bits, generation above), not consecutive: each frame is checked by
    /// its own link, and an index that only shares a link's slot is a bad
    /// hop, as is a frame under another link's key.
    #[test]
    fn links_at_any_receiver_indices_each_check_their_own_frames() {
        let indices = [
            ReceiverIndex(0x0010_0003),
            ReceiverIndex(0x0020_0007),
            ReceiverIndex(5),
        ];
        let key_of = |i: usize| [0x30 + i as u8; 32];
        let links = indices
            .iter()
            .enumerate()
            .map(|(i, &at)| crate::link::test_link_at(at, [0x21; 32], key_of(i)))
            .collect();
        let k = key();
        let mut sink = Sink::with_links(links, vec![k.clone()], 1, Instant::now());
        let on = |at: ReceiverIndex, key: [u8; 32], counter: u64| {
            let mut f = frame(&k, k.service, counter);
            let mut fr = Frame::new_unchecked(&mut f[..]);
            fr.set_receiver(at);
            fr.set_counter(counter);
            proto::hoptag::HopKey::new(&key).seal_frame(&mut fr);
            f
        };
        for (i, &at) in indices.iter().enumerate() {
            sink.on_frame(&mut on(at, key_of(i), i as u64));
        }
        assert_eq!((sink.counts().frames, sink.counts().bad_hop), (3, 0));
        // Same slot as 0x0010_0003 in any table up to 2^20 slots.
        sink.on_frame(&mut on(ReceiverIndex(0x0030_0003), key_of(0), 10));
        // The right index, another link's key.
        sink.on_frame(&mut on(indices[1], key_of(2), 11));
        assert_eq!(sink.counts().bad_hop, 2);
    }

    /// `frame` as the relay delivers it on `link()`'s session: receiver
    /// index, hop counter `hop_counter`, tag.
    fn delivered(mut frame: Vec<u8>, hop_counter: u64) -> Vec<u8> {
        let mut f = Frame::new_unchecked(&mut frame[..]);
        f.set_receiver(LOCAL);
        f.set_counter(hop_counter);
        proto::hoptag::HopKey::new(&RECV).seal_frame(&mut f);
        frame
    }

    #[test]
    fn frames_with_a_bad_hop_tag_or_a_replayed_counter_are_bad_hop() {
        let mut sink = Sink::new(Some(link()), vec![key()], 1, Instant::now());
        let good = delivered(frame(&key(), ServiceId(1), POOL_COUNTER), 0);
        sink.on_frame(&mut good.clone());
        assert_eq!((sink.counts().verified, sink.counts().bad_hop), (1, 0));
        let mut forged = delivered(frame(&key(), ServiceId(1), POOL_COUNTER), 1);
        forged[24] ^= 1;
        sink.on_frame(&mut forged);
        sink.on_frame(&mut good.clone());
        let c = sink.counts();
        assert_eq!((c.frames, c.bad_hop, c.verified), (3, 2, 1), "{c:?}");
        // Without the relay (hop check off), the same bytes are judged end
        // to end only.
        sink.set_hop_check(false);
        sink.on_frame(&mut good.clone());
        assert_eq!(sink.counts().verified, 2);
    }

    #[test]
    fn a_tampered_sample_is_corrupt_and_not_timed() {
        // verify_every 0: pool records are not opened, samples always.
        let mut sink = Sink::new(None, vec![key()], 0, Instant::now());
        let mut f = frame(&key(), ServiceId(1), SAMPLE_BIT | 5);
        f[150] ^= 1;
        sink.on_frame(&mut f);
        let c = sink.counts();
        assert_eq!((c.corrupt, c.verified, c.samples), (1, 0, 0), "{c:?}");
        assert_eq!(sink.latency().len(), 0);
        sink.on_frame(&mut frame(&key(), ServiceId(1), SAMPLE_BIT | 6));
        assert_eq!(sink.counts().samples, 1);
    }
}
