//! The vhost-user-net device one child serves to its VM.
//!
//! Two queues (RX 0, TX 1) on one worker thread. The same worker's epoll also watches the
//! control socket, the ingress rings' data eventfds and the egress rings' space eventfds, so all
//! switching state is touched by one thread. Offered: VERSION_1, MAC (via CONFIG), STATUS,
//! EVENT_IDX, INDIRECT_DESC, and the MQ + CONFIG protocol features (crosvm assumes three queues
//! without MQ). Any queue size up to 32768 the VMM picks is accepted.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::control::{self, ControlError};
use crate::datapath::{
    self, Datapath, Delivery, EV_CTL, EV_TIMER, Incoming, MAX_FRAME, Reg, VNET_HDR,
};
use crate::forward::DropReason;
use crate::offload::{self, Adapted, Offloads};
use crate::ring::Shared;
use crate::vq::{Chain, Fault, Gather, GatherError, GuestRam, SplitQueue};

/// Largest queue size accepted (the virtio maximum for split queues).
pub const MAX_QUEUE_SIZE: usize = 32768;
const RX: usize = 0;
const TX: usize = 1;
/// TX frames longer than this are checked from a copy of their first bytes and copied once,
/// guest to destination ring; shorter ones are copied whole first (cheap at that size).
const TX_HEAD: usize = 256;
const _: () = assert!(TX_HEAD >= VNET_HDR + crate::forward::MIN_HEAD);
/// TX chains taken per avail-index read before their used entries are published.
const TX_BATCH: usize = 64;

/// Guest memory type used by the backend.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
/// The shared backend handle the vhost-user daemon drives.
pub type SharedBackend = Arc<Mutex<NetBackend>>;
/// The worker's epoll handler type.
pub type Handler = VringEpollHandler<SharedBackend>;

/// Counters for hostile-guest handling.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestErrors {
    /// Descriptor chains that could not be mapped (outside guest memory, overflow, ...).
    pub bad_chains: u64,
    /// TX frames with a length of zero, below a header, or above [`MAX_FRAME`].
    pub bad_lengths: u64,
    /// RX chains too small for the frame.
    pub small_rx_buffers: u64,
    /// TX frames whose virtio-net header asked for offloads not negotiated or made no sense.
    pub bad_offload_headers: u64,
    /// Frames from peers dropped because they could not be adapted for this guest.
    pub unadaptable: u64,
}

/// Spoofing warnings are repeated at most this often per child.
const SPOOF_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`NetBackend`] last said about spoofed frames.
#[derive(Debug, Default)]
struct SpoofReport {
    reported: u64,
    at: Option<std::time::Instant>,
}

/// Most frames queued for our guest after software segmentation of one super-frame.
const MAX_BACKLOG: usize = 128;

/// One VM's vhost-user-net device.
pub struct NetBackend {
    dp: Datapath,
    ctl: OwnedFd,
    /// Guest RAM as host mappings, rebuilt on every memory table from the VMM.
    ram: Option<Arc<GuestRam>>,
    /// The guest acked VIRTIO_RING_F_INDIRECT_DESC.
    indirect: bool,
    event_idx: bool,
    acked: u64,
    handler: Option<Arc<Handler>>,
    scratch: Vec<u8>,
    offloads: Offloads,
    mrg_rxbuf: bool,
    backlog: std::collections::VecDeque<Vec<u8>>,
    /// We stopped reading the TX queue because a destination is full (back-pressure).
    tx_paused: bool,
    /// Fires while paused so a destination that never drains is found to be stalled.
    stall_timer: Option<TimerFd>,
    /// Hostile-guest counters.
    pub guest_errors: GuestErrors,
    /// Spoofed frames already reported, and when.
    spoof: SpoofReport,
    /// Set when the control socket closed: main is gone.
    pub orphaned: bool,
    /// Test hook (see [`crate::child::SECCOMP_PROBE_ENV`]).
    pub seccomp_probe: bool,
}

impl NetBackend {
    /// A backend over `dp`, receiving control messages on `ctl`.
    pub fn new(dp: Datapath, ctl: OwnedFd) -> Self {
        NetBackend {
            dp,
            ctl,
            ram: None,
            indirect: false,
            event_idx: false,
            acked: 0,
            handler: None,
            scratch: Vec::with_capacity(2048),
            offloads: Offloads::default(),
            mrg_rxbuf: false,
            backlog: std::collections::VecDeque::new(),
            tx_paused: false,
            stall_timer: TimerFd::new()
                .inspect_err(|e| tracing::warn!(error = %e, "no stall timer"))
                .ok(),
            guest_errors: GuestErrors::default(),
            spoof: SpoofReport::default(),
            orphaned: false,
            seccomp_probe: false,
        }
    }

    /// The switching state.
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// Remember the worker's epoll handler and register the control socket and any rings.
    pub fn attach_handler(&mut self, h: Arc<Handler>) -> std::io::Result<()> {
        h.register_listener(self.ctl.as_raw_fd(), EventSet::IN, u64::from(EV_CTL))?;
        if let Some(t) = &self.stall_timer {
            h.register_listener(t.as_raw_fd(), EventSet::IN, u64::from(EV_TIMER))?;
        }
        for Reg::Add(fd, id) in self.dp.all_registrations() {
            h.register_listener(fd, EventSet::IN, u64::from(id))?;
        }
        self.handler = Some(h);
        Ok(())
    }

    fn apply(&self, regs: Vec<Reg>) {
        let Some(h) = &self.handler else { return };
        for Reg::Add(fd, id) in regs {
            if let Err(e) = h.register_listener(fd, EventSet::IN, u64::from(id)) {
                tracing::warn!(error = %e, id, "cannot watch ring descriptor");
            }
        }
    }

    /// Read and apply all queued control messages.
    pub fn poll_ctl(&mut self) {
        loop {
            match control::recv(self.ctl.as_fd()) {
                Ok((msg, fds)) => {
                    tracing::debug!(?msg, "control message");
                    let regs = self.dp.handle_ctl(self.ctl.as_fd(), msg, fds);
                    self.apply(regs);
                }
                Err(ControlError::WouldBlock) => return,
                Err(ControlError::Closed) => {
                    self.orphaned = true;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad control message ignored");
                }
            }
        }
    }

    /// Read every available TX chain, switch the frames, and return the chains.
    pub fn process_tx(&mut self, txq: &VringRwLock) {
        let Some(ram) = self.ram.clone() else {
            return;
        };
        self.tx_paused = false;
        // One lock for the whole run: only this worker thread touches the queue while it runs.
        let mut st = txq.get_mut();
        let Ok(mut sq) = SplitQueue::open(&ram, st.get_queue(), self.indirect) else {
            return;
        };
        let mut notify = false;
        loop {
            sq.disable_notification();
            let mut in_batch = 0;
            while !self.tx_paused {
                if self.dp.tx_blocked() {
                    // Back-pressure: leave the rest in the guest's ring until the full
                    // destination frees space (its space eventfd resumes us).
                    self.tx_paused = true;
                    break;
                }
                let head_idx = match sq.pop() {
                    None => break,
                    Some(Ok(head)) => head,
                    Some(Err(Fault)) => {
                        self.guest_errors.bad_chains += 1;
                        break;
                    }
                };
                if self.seccomp_probe {
                    tracing::warn!("seccomp probe: calling socket(), which children may not");
                    // SAFETY: a plain socket() call; under the child filter it never returns.
                    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                    if fd >= 0 {
                        // SAFETY: closing the descriptor we just got (seccomp was off).
                        unsafe { libc::close(fd) };
                    }
                    self.seccomp_probe = false;
                }
                self.switch_chain(&ram, &sq, head_idx);
                sq.add_used(head_idx, 0);
                in_batch += 1;
                if in_batch == TX_BATCH {
                    // Give the guest its buffers back and wake the destinations in batches.
                    notify |= sq.publish_and_check();
                    self.dp.flush();
                    in_batch = 0;
                }
            }
            if self.tx_paused || sq.is_broken() || !sq.enable_notification() {
                break;
            }
        }
        notify |= sq.publish_and_check();
        sq.finish(st.get_queue_mut());
        if notify {
            let _ = st.signal_used_queue();
        }
        drop(st);
        self.dp.flush();
        if self.tx_paused {
            self.arm_stall_timer();
        }
        self.report_spoofing();
    }

    /// Warn (at most once a minute) when our guest sent frames with a source MAC or IP that is
    /// not its own: worth an administrator's attention, unlike the other drop counters.
    fn report_spoofing(&mut self) {
        let drops = &self.dp.forwarder().drops;
        let (mac, ip) = (
            drops[DropReason::SpoofedMac as usize],
            drops[DropReason::SpoofedIp as usize],
        );
        if mac + ip == self.spoof.reported
            || self
                .spoof
                .at
                .is_some_and(|t| t.elapsed() < SPOOF_REPORT_EVERY)
        {
            return;
        }
        tracing::warn!(
            vm = %self.dp.forwarder().me().name,
            spoofed_mac = mac,
            spoofed_ip = ip,
            "guest sent frames whose source MAC or IP is not its own; dropped (totals this session)"
        );
        self.spoof.reported = mac + ip;
        self.spoof.at = Some(std::time::Instant::now());
    }

    /// Read one TX chain and switch its frame; the caller returns the chain to the guest.
    fn switch_chain(&mut self, ram: &GuestRam, sq: &SplitQueue<'_>, head_idx: u16) {
        let gathered = Gather::collect(ram, sq.chain(head_idx), MAX_FRAME);
        if let Ok(g) = &gathered
            && g.len() > TX_HEAD
        {
            // Large frame: check its headers from our copy, then let the payload go
            // from guest memory to the destination ring in one copy.
            let mut head = [0u8; TX_HEAD];
            if g.read(ram, 0, &mut head).is_err() {
                self.guest_errors.bad_chains += 1;
            } else if offload::validate_head(&mut head, g.len(), self.offloads) {
                self.dp
                    .from_guest_split(&mut head, g.len(), &mut |from, dst| {
                        g.read(ram, from, dst).is_ok()
                    });
            } else {
                self.guest_errors.bad_offload_headers += 1;
            }
            return;
        }
        let read = match gathered {
            Ok(g) if g.len() < VNET_HDR => Err(ChainFault::Length),
            Ok(g) => {
                self.scratch.clear();
                self.scratch.resize(g.len(), 0);
                g.read(ram, 0, &mut self.scratch)
                    .map_err(|Fault| ChainFault::Memory)
            }
            Err(GatherError::TooManySegments) => {
                read_chain(ram, sq.chain(head_idx), &mut self.scratch)
            }
            Err(GatherError::TooLong) => Err(ChainFault::Length),
            Err(GatherError::Memory) => Err(ChainFault::Memory),
        };
        match read {
            Ok(()) => {
                // Only offloads this guest negotiated, with sane offsets, may reach
                // another guest.
                if offload::validate(&mut self.scratch, self.offloads) {
                    self.dp.from_guest(&mut self.scratch);
                } else {
                    self.guest_errors.bad_offload_headers += 1;
                }
            }
            Err(ChainFault::Length) => self.guest_errors.bad_lengths += 1,
            Err(ChainFault::Memory) => self.guest_errors.bad_chains += 1,
        }
    }

    fn arm_stall_timer(&mut self) {
        let next = self.dp.check_stalls();
        if let (Some(t), Some(d)) = (self.stall_timer.as_mut(), next) {
            let _ = t.reset(d, None);
        }
    }

    /// End a back-pressure pause once no destination holds us back any more.
    fn maybe_resume_tx(&mut self, txq: &VringRwLock) {
        if self.tx_paused && !self.dp.tx_blocked() {
            self.tx_paused = false;
            self.process_tx(txq);
        }
    }

    /// Move waiting frames into the guest's RX buffers.
    pub fn deliver(&mut self, rxq: &VringRwLock) {
        let Some(ram) = self.ram.clone() else {
            return;
        };
        let neg = self.offloads;
        let mrg = self.mrg_rxbuf;
        let mut guard = rxq.get_mut();
        let Ok(mut view) = SplitQueue::open(&ram, guard.get_queue(), self.indirect) else {
            return;
        };
        let sq = &mut view;
        let ram = &*ram;
        loop {
            let mut ran_out = false;
            // Segments left over from an earlier super-frame go first.
            while let Some(f) = self.backlog.pop_front() {
                if write_frame(sq, ram, &Src::owned(&f), mrg, &mut self.guest_errors)
                    == Delivery::NoBuffer
                {
                    self.backlog.push_front(f);
                    ran_out = true;
                    break;
                }
            }
            if !ran_out {
                let errors = &mut self.guest_errors;
                let backlog = &mut self.backlog;
                let mut sink = |inc: Incoming<'_>| -> Delivery {
                    if !backlog.is_empty() {
                        ran_out = true;
                        return Delivery::NoBuffer;
                    }
                    let mut copy;
                    let frame: &mut [u8] = match inc {
                        // The common case: one copy, ring to guest.
                        Incoming::Shared { head, whole }
                            if offload::passes_unchanged(head, neg) =>
                        {
                            let src = Src {
                                head,
                                rest: Some(whole),
                                len: whole.len(),
                            };
                            let d = write_frame(sq, ram, &src, mrg, errors);
                            if d == Delivery::NoBuffer {
                                ran_out = true;
                            }
                            return d;
                        }
                        Incoming::Shared { .. } => {
                            copy = inc.to_vec();
                            &mut copy
                        }
                        Incoming::Owned(v) => v,
                    };
                    match offload::adapt_in_place(frame, neg) {
                        Adapted::AsIs => {
                            let d = write_frame(sq, ram, &Src::owned(frame), mrg, errors);
                            if d == Delivery::NoBuffer {
                                ran_out = true;
                            }
                            d
                        }
                        Adapted::Drop => {
                            errors.unadaptable += 1;
                            Delivery::Dropped
                        }
                        Adapted::Segments(segs) => {
                            // The frame is consumed; segments that do not fit wait here.
                            for seg in segs {
                                if backlog.is_empty() {
                                    if write_frame(sq, ram, &Src::owned(&seg), mrg, errors)
                                        == Delivery::NoBuffer
                                    {
                                        ran_out = true;
                                        backlog.push_back(seg);
                                    }
                                } else if backlog.len() < MAX_BACKLOG {
                                    backlog.push_back(seg);
                                }
                            }
                            Delivery::Delivered
                        }
                    }
                };
                self.dp.to_guest(&mut sink);
            }
            if !ran_out {
                // Nothing is waiting for buffers: the guest need not kick us when it adds some
                // (new frames wake us through the ingress rings instead).
                sq.disable_notification();
                break;
            }
            // Out of buffers: ask for a kick when some are added; if some arrived meanwhile,
            // go again.
            if sq.is_broken() || !sq.enable_notification() {
                break;
            }
        }
        let notify = view.publish_and_check();
        view.finish(guard.get_queue_mut());
        if notify {
            let _ = guard.signal_used_queue();
        }
    }
}

enum ChainFault {
    /// Zero, too short or too long.
    Length,
    /// A descriptor outside guest memory, or a broken chain.
    Memory,
}

/// Copy the device-readable part of a TX chain (up to its first device-writable descriptor)
/// into `buf`.
fn read_chain(ram: &GuestRam, chain: Chain<'_>, buf: &mut Vec<u8>) -> Result<(), ChainFault> {
    buf.clear();
    for d in chain {
        let d = d.map_err(|Fault| ChainFault::Memory)?;
        if d.is_write() {
            break;
        }
        let len = d.len as usize;
        if buf.len() + len > MAX_FRAME {
            return Err(ChainFault::Length);
        }
        ram.read_append(d.addr, len, buf)
            .map_err(|Fault| ChainFault::Memory)?;
    }
    if buf.len() < VNET_HDR {
        return Err(ChainFault::Length);
    }
    Ok(())
}

/// A frame to write into the guest: its first bytes from our memory, the rest (if any) straight
/// from a peer's ring record, whose byte offsets match the frame's.
struct Src<'a> {
    head: &'a [u8],
    rest: Option<Shared<'a>>,
    len: usize,
}

impl<'a> Src<'a> {
    fn owned(frame: &'a [u8]) -> Self {
        Src {
            head: frame,
            rest: None,
            len: frame.len(),
        }
    }

    /// Copy frame bytes `off..off + n` to guest address `gpa`.
    fn write(
        &self,
        ram: &GuestRam,
        mut gpa: u64,
        mut off: usize,
        mut n: usize,
    ) -> Result<(), Fault> {
        if off < self.head.len() {
            let k = n.min(self.head.len() - off);
            ram.write(gpa, &self.head[off..off + k])?;
            gpa = gpa.checked_add(k as u64).ok_or(Fault)?;
            off += k;
            n -= k;
        }
        if n > 0 {
            ram.write_shared(gpa, self.rest.as_ref().ok_or(Fault)?, off, n)?;
        }
        Ok(())
    }
}

/// Most RX chains one frame may span with mergeable buffers (64 KiB in 1.5 KiB buffers).
const MAX_MERGE: usize = 64;

/// Write one frame (virtio-net header included) into the guest's RX queue, across several
/// buffers when mergeable RX buffers were negotiated. No allocation.
fn write_frame(
    sq: &mut SplitQueue<'_>,
    ram: &GuestRam,
    frame: &Src<'_>,
    mrg: bool,
    errors: &mut GuestErrors,
) -> Delivery {
    let mut used = [(0u16, 0u32); MAX_MERGE];
    let mut n_used = 0usize;
    let mut off = 0usize;
    let mut hdr_at: Option<u64> = None;
    let give_back = |sq: &mut SplitQueue<'_>, used: &[(u16, u32)]| {
        for &(head, _) in used {
            sq.add_used(head, 0);
        }
    };
    while off < frame.len {
        let head = match sq.pop() {
            Some(Ok(head)) => head,
            found => {
                if found.is_some() {
                    errors.bad_chains += 1;
                }
                // Not enough buffers yet (or a broken ring): give back what we took (nothing
                // was reported used) and wait for more.
                sq.unpop(n_used as u16);
                return Delivery::NoBuffer;
            }
        };
        let mut written = 0usize;
        let mut fault = false;
        for d in sq.chain(head) {
            let Ok(d) = d else {
                fault = true;
                break;
            };
            if !d.is_write() {
                continue;
            }
            if off + written == frame.len {
                break;
            }
            if hdr_at.is_none() {
                if (d.len as usize) < VNET_HDR {
                    fault = true;
                    break;
                }
                hdr_at = Some(d.addr);
            }
            let n = (d.len as usize).min(frame.len - off - written);
            if frame.write(ram, d.addr, off + written, n).is_err() {
                fault = true;
                break;
            }
            written += n;
        }
        if fault || written == 0 || n_used == MAX_MERGE {
            errors.bad_chains += u64::from(fault || written == 0);
            sq.add_used(head, 0);
            give_back(sq, &used[..n_used]);
            return Delivery::Dropped;
        }
        used[n_used] = (head, written as u32);
        n_used += 1;
        off += written;
        if !mrg && off < frame.len {
            errors.small_rx_buffers += 1;
            give_back(sq, &used[..n_used]);
            return Delivery::Dropped;
        }
    }
    // num_buffers (the last field of the header) now that the count is known.
    if let Some(at) = hdr_at {
        let nb = (n_used as u16).to_le_bytes();
        if at
            .checked_add(10)
            .is_none_or(|a| ram.write(a, &nb).is_err())
        {
            errors.bad_chains += 1;
        }
    }
    for &(head, len) in &used[..n_used] {
        sq.add_used(head, len);
    }
    Delivery::Delivered
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_HOST_ECN
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_ECN
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
        let has = |bit: u32| features & (1 << bit) != 0;
        self.offloads = Offloads {
            tx_csum: has(VIRTIO_NET_F_CSUM),
            tx_tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tx_tso6: has(VIRTIO_NET_F_HOST_TSO6),
            tx_ecn: has(VIRTIO_NET_F_HOST_ECN),
            rx_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            rx_tso4: has(VIRTIO_NET_F_GUEST_TSO4),
            rx_tso6: has(VIRTIO_NET_F_GUEST_TSO6),
            rx_ecn: has(VIRTIO_NET_F_GUEST_ECN),
        };
        self.mrg_rxbuf = has(VIRTIO_NET_F_MRG_RXBUF);
        self.indirect = has(VIRTIO_RING_F_INDIRECT_DESC);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config { mac[6]; status; max_virtqueue_pairs; mtu; }
        let mut cfg = Vec::with_capacity(12);
        cfg.extend_from_slice(&self.dp.forwarder().me().mac.0);
        cfg.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg.extend_from_slice(&1u16.to_le_bytes());
        cfg.extend_from_slice(&1500u16.to_le_bytes());
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&mut self, mem: GuestMem) -> std::io::Result<()> {
        self.ram = Some(Arc::new(GuestRam::new(mem.memory().into_inner())));
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let (Some(rxq), Some(txq)) = (vrings.get(RX), vrings.get(TX)) else {
            return Ok(());
        };
        match device_event {
            d if d as usize == RX => self.deliver(rxq),
            d if d as usize == TX => {
                self.process_tx(txq);
                self.deliver(rxq);
            }
            EV_CTL => {
                self.poll_ctl();
                if self.orphaned || evset.contains(EventSet::HANG_UP) {
                    tracing::info!("main process went away; exiting");
                    std::process::exit(0);
                }
            }
            id => match datapath::decode_ev(id) {
                Some((slot, false)) => {
                    self.dp.ack_ingress(slot);
                    self.deliver(rxq);
                }
                Some((slot, true)) => self.dp.on_space(slot),
                None => {}
            },
        }
        if device_event == EV_TIMER {
            if let Some(t) = self.stall_timer.as_mut() {
                let _ = t.clear();
            }
            if self.tx_paused {
                self.arm_stall_timer();
            }
        }
        if self.tx_paused {
            self.maybe_resume_tx(txq);
            if !self.tx_paused {
                self.deliver(rxq);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::forward::DropReason;
    use crate::fq_codel::Params;
    use crate::peer::PeerConfig;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn backend() -> (NetBackend, OwnedFd) {
        let me = PeerConfig::from_json(
            std::path::Path::new("a.json"),
            r#"{"name":"a","mac":"52:54:00:00:00:0a","ipv4":["10.1.0.1/24"]}"#,
        )
        .unwrap();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let dp = Datapath::new(me, Params::default(), 64 * 1024);
        (NetBackend::new(dp, ours), theirs)
    }

    fn vring_for(vq: &MockSplitQueue<'_, GuestMemoryMmap>, mem: &GuestMem) -> VringRwLock {
        let v = VringRwLock::new(mem.clone(), 16).unwrap();
        v.set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
            .unwrap();
        v.set_queue_size(16);
        v.set_queue_ready(true);
        v.set_enabled(true);
        v
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn hostile_tx_chains_are_returned_and_counted_never_fatal() {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&gm, 16);
        // Each add_desc_chains call publishes one chain starting at `offset`.
        vq.add_desc_chains(&[d(0x2000_0000, 100, 0, 0)], 0).unwrap(); // outside memory
        vq.add_desc_chains(&[d(0x1_0000, 0, 0, 0)], 1).unwrap(); // zero length
        vq.add_desc_chains(&[d(0x2_0000, 0x2_0000, 0, 0)], 2)
            .unwrap(); // 128 KiB: too big
        vq.add_desc_chains(&[d(0x4_0000, 60, 0, 0)], 3).unwrap(); // zeros: bad source MAC
        vq.add_desc_chains(&[d(0xf_fff0, 100, 0, 0)], 4).unwrap(); // runs off the end
        // A two-descriptor loop (5 -> 6 -> 5 ...).
        vq.add_desc_chains(&[d(0x5_0000, 64, NEXT, 6), d(0x5_1000, 64, NEXT, 5)], 5)
            .unwrap();
        // A device-writable buffer on the TX queue.
        vq.add_desc_chains(&[d(0x6_0000, 64, WRITE, 0)], 7).unwrap();
        let mem = GuestMemoryAtomic::new(gm.clone());
        let txq = vring_for(&vq, &mem);
        let (mut b, _peer) = backend();
        b.update_memory(mem).unwrap();
        b.process_tx(&txq);
        // Every chain went back to the guest.
        assert_eq!(vq.used().idx().load(), 7);
        let e = b.guest_errors;
        assert!(e.bad_chains >= 2, "{e:?}");
        assert!(e.bad_lengths >= 2, "{e:?}");
        let drops = b.datapath().forwarder().drops;
        assert!(drops[DropReason::SpoofedMac as usize] >= 1, "{drops:?}");
        assert_eq!(b.datapath().counters.rx_frames, 0);
    }

    #[test]
    fn rx_buffers_too_small_or_outside_memory_drop_the_frame_only() {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&gm, 16);
        vq.add_desc_chains(&[d(0x2000_0000, 2048, WRITE, 0)], 0)
            .unwrap(); // outside
        vq.add_desc_chains(&[d(0x1_0000, 20, WRITE, 0)], 1).unwrap(); // too small
        vq.add_desc_chains(&[d(0x2_0000, 2048, WRITE, 0)], 2)
            .unwrap(); // fine
        let mem = GuestMemoryAtomic::new(gm.clone());
        let rxq = vring_for(&vq, &mem);
        let (mut b, _peer) = backend();
        b.update_memory(mem.clone()).unwrap();
        // Proxy ARP replies are the frames our own guest gets without any peer: ask three times.
        let gm2 = gm.clone();
        let txvq = MockSplitQueue::create(&gm2, GuestAddress(0x8_0000), 16);
        let mut arp = vec![0u8; VNET_HDR + 60];
        {
            let f = &mut arp[VNET_HDR..];
            f[..6].copy_from_slice(&[0xff; 6]);
            f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0a]);
            f[12..14].copy_from_slice(&[8, 6]);
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[22..28].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0a]);
            f[28..32].copy_from_slice(&[10, 1, 0, 1]);
            f[38..42].copy_from_slice(&[10, 1, 0, 2]);
        }
        // No peer b yet, so no reply would come: add b to the forwarder via a control message.
        let (ctl_a, ctl_b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let peer_b = PeerConfig::from_json(
            std::path::Path::new("b.json"),
            r#"{"name":"b","mac":"52:54:00:00:00:0b","ipv4":["10.1.0.2/24"]}"#,
        )
        .unwrap();
        let _regs = b.dp.handle_ctl(
            ctl_a.as_fd(),
            crate::control::Msg::GetBuffer {
                peer: peer_b,
                generation: 1,
            },
            Vec::new(),
        );
        drop(ctl_b);
        for k in 0..3u64 {
            gm.write_slice(&arp, GuestAddress(0x9_0000 + k * 0x1000))
                .unwrap();
            txvq.add_desc_chains(
                &[d(0x9_0000 + k * 0x1000, arp.len() as u32, 0, 0)],
                k as u16,
            )
            .unwrap();
        }
        let txq = vring_for(&txvq, &mem);
        b.process_tx(&txq);
        b.deliver(&rxq);
        assert_eq!(vq.used().idx().load(), 3, "all three RX chains consumed");
        assert_eq!(b.datapath().counters.rx_frames, 1, "one reply fit");
        assert_eq!(b.guest_errors.small_rx_buffers, 1);
        assert_eq!(b.guest_errors.bad_chains, 1);
        // The good buffer holds an ARP reply with b's MAC.
        let mut got = [0u8; VNET_HDR + 60];
        gm.read_slice(&mut got, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(
            &got[VNET_HDR + 6..VNET_HDR + 12],
            &[0x52, 0x54, 0, 0, 0, 0x0b]
        );
    }
}
