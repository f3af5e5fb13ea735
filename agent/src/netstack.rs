//! The user-space TCP/IP stack behind the tunnel: one smoltcp interface per
//! end-to-end pair, over a device whose "wire" is two packet queues.
//!
//! Packets opened from frames are pushed into [`QueueDevice`]'s receive
//! queue; packets smoltcp emits land in its transmit queue, each already
//! placed at [`HEADROOM`] in a pooled buffer so the caller seals it into a
//! frame in place. One interface per pair keeps pairs apart by
//! construction: every client uses the same inner address, and a
//! connector's stack for (alice, db) never sees bob's packets.

use std::collections::VecDeque;
use std::time::Instant as StdInstant;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use crate::pool::{Packet, Pool, HEADROOM, TAILROOM};

/// Inner address of every client (the TUN device's address in `tun` mode).
pub const CLIENT_ADDR: Ipv4Address = Ipv4Address::new(100, 80, 0, 1);
/// Prefix of the virtual service addresses.
pub const SERVICE_PREFIX_LEN: u8 = 16;
/// Extra egress passes per [`Stack::poll`] at most (each sends up to one
/// packet per socket).
pub const EGRESS_BURST: usize = 256;
/// Packets queued towards smoltcp at most; more are dropped (TCP resends).
pub const RX_QUEUE: usize = 1024;

/// smoltcp's clock from ours.
pub fn smol_now(epoch: StdInstant, now: StdInstant) -> Instant {
    Instant::from_micros(now.duration_since(epoch).as_micros() as i64)
}

/// A device whose wire is two queues of pooled packets.
#[derive(Debug)]
pub struct QueueDevice {
    pool: Pool,
    /// Packets for smoltcp to receive.
    pub rx: VecDeque<Packet>,
    /// Packets smoltcp sent, at `HEADROOM` in their buffers.
    pub tx: VecDeque<Packet>,
    mtu: usize,
    /// Packets dropped because `rx` was full.
    pub rx_dropped: u64,
}

impl QueueDevice {
    /// A device for inner packets of at most `mtu` bytes. The queues
    /// start at their working size, so they do not grow (allocate) on the
    /// packet path: `rx` never holds more than [`RX_QUEUE`] packets, and
    /// `tx`, emptied after every poll, rarely does.
    pub fn new(pool: Pool, mtu: usize) -> QueueDevice {
        QueueDevice {
            pool,
            rx: VecDeque::with_capacity(RX_QUEUE),
            tx: VecDeque::with_capacity(RX_QUEUE),
            mtu,
            rx_dropped: 0,
        }
    }

    /// Queues a received packet for the stack; drops it when the queue is
    /// full (the buffer goes back to the pool).
    pub fn push_rx(&mut self, packet: Packet) {
        if self.rx.len() >= RX_QUEUE {
            self.rx_dropped += 1;
            self.pool.put(packet.buf);
        } else {
            self.rx.push_back(packet);
        }
    }
}

/// Receive token: one queued packet.
#[derive(Debug)]
pub struct QueueRx<'a> {
    packet: Packet,
    pool: &'a Pool,
}

/// Transmit token.
#[derive(Debug)]
pub struct QueueTx<'a> {
    tx: &'a mut VecDeque<Packet>,
    pool: &'a Pool,
}

impl smoltcp::phy::RxToken for QueueRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.packet.bytes());
        self.pool.put(self.packet.buf);
        r
    }
}

impl smoltcp::phy::TxToken for QueueTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.pool.get();
        let end = (HEADROOM + len).min(buf.len() - TAILROOM);
        let r = f(&mut buf[HEADROOM..end]);
        self.tx.push_back(Packet {
            buf,
            start: HEADROOM,
            end,
        });
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QueueRx<'a>;
    type TxToken<'a> = QueueTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            QueueRx {
                packet,
                pool: &self.pool,
            },
            QueueTx {
                tx: &mut self.tx,
                pool: &self.pool,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(QueueTx {
            tx: &mut self.tx,
            pool: &self.pool,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        // The tunnel is authenticated end to end: a corrupted packet never
        // reaches the stack, so checksums need not be verified on receive.
        // They are still written on transmit: in tun mode the kernel on the
        // far side of the device checks them.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        sums.udp = Checksum::Tx;
        sums.icmpv4 = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}

/// One user-space stack: interface, sockets, device.
pub struct Stack {
    /// The interface.
    pub iface: Interface,
    /// Its sockets.
    pub sockets: SocketSet<'static>,
    /// Its device.
    pub dev: QueueDevice,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("rx", &self.dev.rx.len())
            .field("tx", &self.dev.tx.len())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// A client's stack: address [`CLIENT_ADDR`], services on-link in
    /// 100.80.0.0/16.
    pub fn client(pool: Pool, mtu: usize, now: Instant) -> Stack {
        Stack::build(pool, mtu, now, false)
    }

    /// A connector's stack: accepts packets for any destination address
    /// (smoltcp's AnyIP), since the frame's service id, not the inner
    /// address, says where a packet goes.
    pub fn connector(pool: Pool, mtu: usize, now: Instant) -> Stack {
        Stack::build(pool, mtu, now, true)
    }

    fn build(pool: Pool, mtu: usize, now: Instant, any_ip: bool) -> Stack {
        let mut dev = QueueDevice::new(pool, mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut dev, now);
        let own = if any_ip {
            Ipv4Address::new(100, 80, 0, 2)
        } else {
            CLIENT_ADDR
        };
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(own), SERVICE_PREFIX_LEN));
        });
        if any_ip {
            iface.set_any_ip(true);
            // AnyIP accepts a destination only if a route to it goes
            // through one of our own addresses: route everything so.
            let _ = iface.routes_mut().add_default_ipv4_route(own);
        }
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
        }
    }

    /// Runs the stack: takes queued packets in, lets sockets send.
    ///
    /// smoltcp's egress pass sends at most one packet per socket, so a TCP
    /// sender with a full window would trickle out one segment per turn of
    /// the event loop; passes repeat here until nothing more goes out (at
    /// most [`EGRESS_BURST`], so one busy stack cannot starve the others).
    pub fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for _ in 0..EGRESS_BURST {
            if self
                .iface
                .poll_egress(now, &mut self.dev, &mut self.sockets)
                == PollResult::None
            {
                break;
            }
        }
    }

    /// How soon the stack next needs polling without new input (zero:
    /// at once). Not `poll_at`: it says "now" as the instant 0, which is
    /// not a deadline to subtract `now` from.
    pub fn poll_delay(&mut self, now: Instant) -> Option<std::time::Duration> {
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| std::time::Duration::from_micros(d.total_micros()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::socket::udp;
    use smoltcp::wire::IpEndpoint;

    #[test]
    fn waiting_datagrams_ask_for_a_turn_at_once_and_all_go_in_one_poll() {
        // Far from smoltcp's instant 0, which `poll_at` uses for "now".
        let now = Instant::from_secs(1_000);
        let mut stack = Stack::client(Pool::new(), 1400, now);
        assert_eq!(stack.poll_delay(now), None, "nothing to do");
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
        let mut sock = udp::Socket::new(buf(), buf());
        sock.bind(20_000).unwrap();
        let handle = stack.sockets.add(sock);
        let to = IpEndpoint::new(IpAddress::Ipv4(crate::dns::service_address(7)), 53);
        let sock = stack.sockets.get_mut::<udp::Socket<'_>>(handle);
        for msg in [&b"one"[..], b"two", b"three"] {
            sock.send_slice(msg, to).unwrap();
        }
        assert_eq!(stack.poll_delay(now), Some(std::time::Duration::ZERO));
        // One smoltcp egress pass sends one datagram per socket; `poll`
        // repeats passes, so everything queued leaves in one call.
        stack.poll(now);
        assert_eq!(stack.dev.tx.len(), 3);
        assert_eq!(stack.poll_delay(now), None);
    }
}
