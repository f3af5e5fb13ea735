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
    /// Hop sessions by receiver index − `first_link`.
    links: Vec<HopLink>,
    first_link: u32,
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
        let first_link = link.as_ref().map_or(0, |l| l.local_index().0);
        Sink {
            links: link.into_iter().collect(),
            first_link,
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
    /// sessions, with receiver indices `links[0]`'s and up, one apart.
    /// Otherwise as [`Sink::new`].
    pub fn with_links(
        links: Vec<HopLink>,
        flows: Vec<FlowKey>,
        verify_every: u64,
        epoch: Instant,
    ) -> Sink {
        let mut sink = Sink::new(None, flows, verify_every, epoch);
        sink.first_link = links.first().map_or(0, |l| l.local_index().0);
        debug_assert!(links
            .iter()
            .enumerate()
            .all(|(k, l)| l.local_index().0 == sink.first_link + k as u32));
        sink.links = links;
        sink
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
            let k = Frame::new_checked(&*frame)
                .ok()
                .and_then(|f| f.receiver().0.checked_sub(self.first_link));
            let Some(link) = k.and_then(|k| self.links.get_mut(k as usize)) else {
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
