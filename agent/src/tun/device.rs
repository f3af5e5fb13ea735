//! [`TunDevice`]: the client's TUN interface, opened and configured with
//! ioctls, read and written without blocking.

use super::batch::PacketBatch;
use super::gro::{self, Coalescer};
use super::offload::{self, DropReason, Plan, Segmenter};
use super::sys;
use super::vnet::{self, VirtioNetHdr};
use super::{TunConfig, TunError};
use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// The offloads asked for with `TUNSETOFFLOAD`: the kernel may then hand
/// over TCP super-packets (IPv4 and IPv6) and packets whose checksum is
/// still to be computed.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// The longest read with `IFF_VNET_HDR`: the header and a 64 KiB
/// super-packet (an IPv6 one may be 40 bytes over), with room to spare so
/// that a read filling it is known to be cut.
const SCRATCH_LEN: usize = VirtioNetHdr::LEN + (64 << 10) + 1024;

/// Counters of what the device has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunStats {
    /// Reads that returned a packet or super-packet.
    pub reads: u64,
    /// Reads that returned a TCP super-packet.
    pub super_packets: u64,
    /// Packets handed out by `read_packets` (each super-packet counts
    /// once per segment).
    pub packets: u64,
    /// Packets read but dropped (malformed, unsupported, over the MTU).
    pub dropped: u64,
    /// Write system calls that succeeded.
    pub writes: u64,
    /// Of those, writes of a super-packet merged from several segments.
    pub super_writes: u64,
    /// Packets given to `write_packets` that the kernel refused (skipped).
    pub write_errors: u64,
}

/// A TUN interface (`IFF_TUN | IFF_NO_PI`, optionally `IFF_VNET_HDR`),
/// nonblocking, configured and up. Closing it (dropping) removes the
/// interface.
///
/// Register [`as_raw_fd`](AsRawFd::as_raw_fd) with `mio` as a
/// `mio::unix::SourceFd` and call [`read_packets`](Self::read_packets)
/// until it returns `WouldBlock`.
pub struct TunDevice {
    file: File,
    name: String,
    mtu: u16,
    offload: bool,
    /// Where super-packets are cut from: `SCRATCH_LEN` bytes.
    scratch: Box<[u8]>,
    /// A super-packet in `scratch[..len]` whose segments did not all fit
    /// in the caller's batch.
    pending: Option<(Segmenter, usize)>,
    /// Where `write_packets` merges segments: `gro::MAX_SUPER_PACKET`
    /// bytes with offload on, empty without.
    gro_buf: Box<[u8]>,
    stats: TunStats,
}

impl TunDevice {
    /// Creates the interface, sets its MTU and address, brings it up.
    ///
    /// With `config.offload`, asks for `IFF_VNET_HDR` and TSO/checksum
    /// offload; if the kernel refuses, opens a plain device instead and
    /// says so once in the log ([`offload_enabled`](Self::offload_enabled)
    /// tells which).
    pub fn open(config: &TunConfig) -> Result<Self, TunError> {
        config.validate()?;
        let plain = libc::IFF_TUN | libc::IFF_NO_PI;
        let mut opened = None;
        if config.offload {
            let file = sys::open_clone_device().map_err(TunError::from_open)?;
            match sys::set_iff(&file, &config.name, plain | libc::IFF_VNET_HDR) {
                Ok(name) => match sys::set_offload(&file, OFFLOADS) {
                    Ok(()) => opened = Some((file, name, true)),
                    Err(err) => tracing::warn!(
                        %err,
                        "the kernel refused TUN offloads (TUNSETOFFLOAD); using plain reads and writes"
                    ),
                },
                // An old kernel without IFF_VNET_HDR says EINVAL.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => tracing::warn!(
                    %err,
                    "the kernel refused IFF_VNET_HDR; using plain reads and writes"
                ),
                Err(err) => return Err(TunError::from_create(&config.name, err)),
            }
            // A refused attempt's file is dropped here, which removes its
            // interface before the plain one takes the name.
        }
        let (file, name, offload) = match opened {
            Some(done) => done,
            None => {
                let file = sys::open_clone_device().map_err(TunError::from_open)?;
                let name = sys::set_iff(&file, &config.name, plain)
                    .map_err(|err| TunError::from_create(&config.name, err))?;
                (file, name, false)
            }
        };

        let ctl = sys::ControlSocket::new()
            .map_err(|err| TunError::from_configure(&name, "open a control socket", err))?;
        ctl.set_mtu(&name, config.mtu)
            .map_err(|err| TunError::from_configure(&name, "set the MTU", err))?;
        ctl.set_address(&name, config.address)
            .map_err(|err| TunError::from_configure(&name, "set the address", err))?;
        ctl.set_netmask(&name, config.netmask())
            .map_err(|err| TunError::from_configure(&name, "set the netmask", err))?;
        ctl.set_up(&name)
            .map_err(|err| TunError::from_configure(&name, "bring the link up", err))?;
        tracing::info!(
            name,
            mtu = config.mtu,
            address = %config.address,
            prefix_len = config.prefix_len,
            offload,
            "TUN device up"
        );
        Ok(Self {
            file,
            name,
            mtu: config.mtu,
            offload,
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            pending: None,
            gro_buf: vec![0; if offload { gro::MAX_SUPER_PACKET } else { 0 }].into_boxed_slice(),
            stats: TunStats::default(),
        })
    }

    /// The interface's name (the kernel's choice if none was asked for).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether reads and writes carry a `virtio_net_hdr` with TSO and
    /// checksum offload on.
    pub fn offload_enabled(&self) -> bool {
        self.offload
    }

    /// What the device has done so far.
    pub fn stats(&self) -> TunStats {
        self.stats
    }

    /// A batch sized for this device: `capacity` packets of up to the MTU.
    pub fn batch(&self, capacity: usize) -> PacketBatch {
        PacketBatch::new(capacity, usize::from(self.mtu))
    }

    /// Reads what the kernel has queued, appending plain IP packets of at
    /// most [`mtu`](Self::mtu) bytes to `out` (super-packets are cut into
    /// segments, partial checksums finished) until the device has nothing
    /// more or `out` is full; returns how many packets were appended.
    ///
    /// `Err(WouldBlock)` when nothing was available. `Ok(0)` only when
    /// `out` was full already. A super-packet whose segments do not all fit
    /// is kept and continued on the next call. Malformed packets are
    /// dropped and counted in [`stats`](Self::stats). `out` must hold
    /// packets of the MTU (see [`batch`](Self::batch)).
    pub fn read_packets(&mut self, out: &mut PacketBatch) -> io::Result<usize> {
        let mtu = usize::from(self.mtu);
        if out.max_packet_len() < mtu {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the batch's packets are shorter than the TUN MTU; make it with TunDevice::batch",
            ));
        }
        let start = out.len();
        if let Some((seg, len)) = self.pending.take() {
            self.pending = cut(seg, &self.scratch[..len], len, out, &mut self.stats);
            if self.pending.is_some() {
                return Ok(out.len() - start);
            }
        }
        let mut result = Ok(());
        while !out.is_full() {
            match self.read_one(out, mtu) {
                Ok(true) => {}
                Ok(false) => {
                    result = Err(io::ErrorKind::WouldBlock.into());
                    break;
                }
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
            if self.pending.is_some() {
                break;
            }
        }
        match result {
            Err(err) if out.len() == start => Err(err),
            _ => Ok(out.len() - start),
        }
    }

    /// One read system call into `out`; `Ok(false)` when nothing was
    /// queued.
    fn read_one(&mut self, out: &mut PacketBatch, mtu: usize) -> io::Result<bool> {
        let Some(slot) = out.spare() else {
            return Ok(true);
        };
        let slot = &mut slot[..mtu];
        // A packet that fits the MTU lands in the batch directly; a longer
        // one (a super-packet) runs on into the scratch buffer, whose front
        // then takes the slot's part so the whole is contiguous there.
        let (scratch_front, scratch_rest) = self.scratch.split_at_mut(mtu);
        let mut hdr_bytes = [0u8; VirtioNetHdr::LEN];
        let (n, room) = if self.offload {
            let mut iov = [
                IoSliceMut::new(&mut hdr_bytes),
                IoSliceMut::new(slot),
                IoSliceMut::new(scratch_rest),
            ];
            (read_retrying(&self.file, &mut iov)?, iov_len(&iov))
        } else {
            let mut iov = [IoSliceMut::new(slot), IoSliceMut::new(scratch_rest)];
            (read_retrying(&self.file, &mut iov)?, iov_len(&iov))
        };
        let Some(n) = n else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(false);
        }
        self.stats.reads += 1;
        if n >= room {
            // Filled every byte offered: it may have been cut.
            self.drop_packet(DropReason::Oversize);
            return Ok(true);
        }
        if !self.offload {
            if n > mtu {
                self.drop_packet(DropReason::Oversize);
            } else {
                out.commit(n);
                self.stats.packets += 1;
            }
            return Ok(true);
        }
        let Some(len) = n.checked_sub(VirtioNetHdr::LEN) else {
            self.drop_packet(DropReason::Truncated);
            return Ok(true);
        };
        let hdr = VirtioNetHdr::parse(&hdr_bytes).unwrap_or_default();
        if hdr.gso_kind() == vnet::GSO_NONE && len <= mtu {
            // The common case: a packet in place in the batch.
            match offload::prepare(&hdr, &mut slot[..len], mtu) {
                Ok(Plan::Whole) => {
                    out.commit(len);
                    self.stats.packets += 1;
                }
                Ok(Plan::Split(_)) => self.drop_packet(DropReason::UnsupportedGso),
                Err(reason) => self.drop_packet(reason),
            }
            return Ok(true);
        }
        let in_slot = len.min(mtu);
        scratch_front[..in_slot].copy_from_slice(&slot[..in_slot]);
        let packet = &mut self.scratch[..len];
        match offload::prepare(&hdr, packet, mtu) {
            Ok(Plan::Split(seg)) => {
                self.stats.super_packets += 1;
                self.pending = cut(seg, &self.scratch[..len], len, out, &mut self.stats);
            }
            // Only a packet over the MTU gets here without GSO, and
            // `prepare` refuses those.
            Ok(Plan::Whole) => self.drop_packet(DropReason::Oversize),
            Err(reason) => self.drop_packet(reason),
        }
        Ok(true)
    }

    fn drop_packet(&mut self, reason: DropReason) {
        self.stats.dropped += 1;
        tracing::debug!(%reason, device = %self.name, "dropped a packet read from the TUN device");
    }

    /// Writes one IP packet into the interface (the kernel then routes it
    /// as if received). With offload on, a zero `virtio_net_hdr` (no GSO,
    /// checksum complete) goes first.
    pub fn write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.offload {
            let hdr = [0u8; VirtioNetHdr::LEN];
            self.write_iov(&[IoSlice::new(&hdr), IoSlice::new(packet)])
        } else {
            self.write_iov(&[IoSlice::new(packet)])
        }
    }

    /// Writes the packets of `batch` in order. With offload on, runs of
    /// consecutive TCP segments of one flow go as one super-packet per
    /// write (GRO, see [`gro`]); other packets one write each.
    ///
    /// Returns how many of the batch's packets were taken: all, unless a
    /// write fails (then those before it; the error itself if none). A
    /// packet the kernel refuses as malformed (`EINVAL`) is skipped and
    /// counted in [`TunStats::write_errors`].
    pub fn write_packets(&mut self, batch: &PacketBatch) -> io::Result<usize> {
        let mut done = 0;
        while let Some(first) = batch.get(done) {
            let mut taken = 1;
            let run = if self.offload {
                Coalescer::start(first, &mut self.gro_buf)
            } else {
                None
            };
            let result = match run {
                Some(mut run) => {
                    while let Some(next) = batch.get(done + taken) {
                        if !run.push(next, &mut self.gro_buf) {
                            break;
                        }
                        taken += 1;
                    }
                    let (hdr, len) = run.finish(&mut self.gro_buf);
                    let hdr = hdr.emit();
                    let packet = self.gro_buf.get(..len).unwrap_or_default();
                    let result = write_all(&self.file, &[IoSlice::new(&hdr), IoSlice::new(packet)]);
                    if result.is_ok() {
                        self.stats.writes += 1;
                        self.stats.super_writes += u64::from(taken > 1);
                    }
                    result
                }
                None => self.write_packet(first),
            };
            match result {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    self.stats.write_errors += taken as u64;
                    tracing::debug!(%err, device = %self.name, "the TUN device refused a packet");
                }
                Err(err) if done == 0 => return Err(err),
                Err(_) => return Ok(done),
            }
            done += taken;
        }
        Ok(done)
    }

    fn write_iov(&mut self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        write_all(&self.file, iov)?;
        self.stats.writes += 1;
        Ok(())
    }
}

/// One `writev` of every byte of `iov` (a TUN write is all or nothing).
fn write_all(file: &File, iov: &[IoSlice<'_>]) -> io::Result<()> {
    let want: usize = iov.iter().map(|b| b.len()).sum();
    let n = write_retrying(file, iov)?;
    if n != want {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the TUN device took {n} of {want} bytes"),
        ));
    }
    Ok(())
}

/// Writes segments of `seg` (cut from `packet`, `len` bytes) into `out`
/// until done or `out` is full; returns the state to resume from then.
fn cut(
    mut seg: Segmenter,
    packet: &[u8],
    len: usize,
    out: &mut PacketBatch,
    stats: &mut TunStats,
) -> Option<(Segmenter, usize)> {
    while !seg.is_done() {
        let Some(slot) = out.spare() else {
            return Some((seg, len));
        };
        match seg.next_into(packet, slot) {
            Some(n) => {
                out.commit(n);
                stats.packets += 1;
            }
            // Cannot happen: slots hold the MTU, segments never exceed it.
            None => {
                stats.dropped += 1;
                return None;
            }
        }
    }
    None
}

fn iov_len(iov: &[IoSliceMut<'_>]) -> usize {
    iov.iter().map(|b| b.len()).sum()
}

/// `readv`, retried on EINTR; `None` on EAGAIN.
fn read_retrying(mut file: &File, iov: &mut [IoSliceMut<'_>]) -> io::Result<Option<usize>> {
    loop {
        match file.read_vectored(iov) {
            Ok(n) => return Ok(Some(n)),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        }
    }
}

/// `writev`, retried on EINTR.
fn write_retrying(mut file: &File, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match file.write_vectored(iov) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .field("mtu", &self.mtu)
            .field("offload", &self.offload)
            .field("pending_segments", &self.pending.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
