//! One child's switching state, independent of vhost-user: the forwarder, the ingress rings
//! (frames for our VM), the egress rings with their FQ-CoDel queues (frames from our VM), and
//! control-message handling.
//!
//! Frames carry the 12-byte virtio-net header (`virtio_net_hdr_v1`) in front of the Ethernet
//! frame, in the rings too, so offload metadata can travel with them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::control::{self, Msg};
use crate::forward::{Forwarder, PeerSlot, Verdict};
use crate::fq_codel::{FqCodel, MonotonicClock, Params};
use crate::frame;
use crate::peer::PeerConfig;
use crate::ring::{self, Consumer, Producer, Pushed, Shared};

/// Size of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 makes `num_buffers` always present).
pub const VNET_HDR: usize = 12;
/// Largest frame accepted from a guest (64 KiB GSO frame plus Ethernet and vnet headers); the
/// same bound as a ring record.
pub const MAX_FRAME: usize = crate::ring::MAX_RECORD;
/// Maximum replies (proxy ARP/ND) waiting for our guest's RX buffers.
const MAX_REPLIES: usize = 64;
/// Highest slot number; event ids are derived from slots and must fit in u16.
const MAX_SLOTS: u32 = 16_000;
/// Event id of the control socket in the worker's epoll.
pub const EV_CTL: u16 = 3;
/// Event id of the back-pressure stall timer in the worker's epoll.
pub const EV_TIMER: u16 = 4;
/// Queued bytes towards one destination at which we stop taking frames from our guest's TX
/// queue: the guest keeps the rest in its own ring (back-pressure) instead of the switch
/// dropping them. Small, so the queue's sojourn time stays far below the CoDel target.
pub const BACKPRESSURE_BYTES: usize = 64 * 1024;
/// Frames queued towards one destination at which back-pressure starts even when they are
/// small: each queued frame costs an allocation and a timestamp, so thousands of tiny frames
/// waiting in FQ-CoDel cost more than leaving them in the guest's ring.
pub const BACKPRESSURE_FRAMES: usize = 128;
/// A destination that frees no ring space for this long no longer holds back our guest: its
/// frames go to FQ-CoDel (and are dropped there), so a peer that never drains cannot stall our
/// traffic to everyone else.
pub const STALL_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Event id for the data eventfd of the ingress ring from `slot`.
pub fn ev_ingress(slot: PeerSlot) -> u16 {
    (16 + slot * 2) as u16
}

/// Event id for the space eventfd of the egress ring to `slot`.
pub fn ev_space(slot: PeerSlot) -> u16 {
    (17 + slot * 2) as u16
}

/// Decode an event id into (slot, is_space).
pub fn decode_ev(id: u16) -> Option<(PeerSlot, bool)> {
    let id = u32::from(id);
    (id >= 16).then(|| ((id - 16) / 2, id % 2 == 1))
}

/// A descriptor the caller must add to its epoll set (removal happens by closing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// Watch this fd for input with this event id.
    Add(RawFd, u16),
}

/// Counters a child keeps (beyond the forwarder's drop counters).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Frames read from our guest.
    pub tx_frames: u64,
    /// Frames written to our guest.
    pub rx_frames: u64,
    /// Frames dropped because a destination ring or queue was unavailable.
    pub egress_drops: u64,
    /// Frames from peers rejected by the ingress check.
    pub ingress_rejects: u64,
    /// Rings abandoned because their peer corrupted them.
    pub corrupt_rings: u64,
}

struct Ingress {
    cons: Consumer,
}

/// Bytes of a frame copied ahead of the rest so checks never read shared memory twice: the
/// virtio-net header and the Ethernet addresses with room to spare.
pub const HEAD: usize = 64;

/// A frame waiting for our guest.
pub enum Incoming<'a> {
    /// A frame the child owns (proxy ARP/ND replies).
    Owned(&'a mut Vec<u8>),
    /// A frame still in a peer's ring: `head` is our checked copy of its first bytes (up to
    /// [`HEAD`]), `whole` the record in shared memory (including those first bytes).
    Shared {
        /// Our copy of the first bytes, already checked.
        head: &'a [u8],
        /// The whole record, to be copied once into the guest.
        whole: Shared<'a>,
    },
}

impl Incoming<'_> {
    /// The frame as an owned buffer: the head from our copy, the rest copied from the ring.
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Incoming::Owned(v) => v.to_vec(),
            Incoming::Shared { head, whole } => {
                let mut v = vec![0u8; whole.len()];
                v[..head.len()].copy_from_slice(head);
                whole.copy_to(head.len(), &mut v[head.len()..]);
                v
            }
        }
    }
}

struct Egress {
    prod: Producer,
    q: FqCodel<Vec<u8>, MonotonicClock>,
    held: Option<Vec<u8>>,
    dirty: bool,
    waiting_space: bool,
    /// When the ring last turned out full without space freed since.
    blocked_since: Option<std::time::Instant>,
    /// The consumer made no room for [`STALL_AFTER`]: back-pressure ignores this destination.
    stalled: bool,
}

impl Egress {
    fn note_full(&mut self) {
        self.waiting_space = true;
        if self.blocked_since.is_none() {
            self.blocked_since = Some(std::time::Instant::now());
        }
    }

    fn holds_back(&self) -> bool {
        !self.stalled
            && (self.q.backlog() >= BACKPRESSURE_BYTES || self.q.len() >= BACKPRESSURE_FRAMES)
    }
}

/// What the guest-side sink did with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the guest.
    Delivered,
    /// No RX buffer available: keep the frame and stop.
    NoBuffer,
    /// The guest's buffer was unusable: the frame is gone.
    Dropped,
}

/// One child's switching state.
pub struct Datapath {
    fwd: Forwarder,
    slots: HashMap<String, PeerSlot>,
    ingress: BTreeMap<PeerSlot, Ingress>,
    egress: BTreeMap<PeerSlot, Egress>,
    replies: VecDeque<Vec<u8>>,
    params: Params,
    buffer_size: usize,
    hash_seed: u64,
    rr: PeerSlot,
    /// Counters.
    pub counters: Counters,
}

impl Datapath {
    /// State for the VM `me`, with ring data areas of `buffer_size` bytes.
    pub fn new(me: PeerConfig, params: Params, buffer_size: usize) -> Self {
        let hash_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Datapath {
            fwd: Forwarder::new(me),
            slots: HashMap::new(),
            ingress: BTreeMap::new(),
            egress: BTreeMap::new(),
            replies: VecDeque::new(),
            params,
            buffer_size,
            hash_seed,
            rr: 0,
            counters: Counters::default(),
        }
    }

    /// The forwarder (for counters and tests).
    pub fn forwarder(&self) -> &Forwarder {
        &self.fwd
    }

    fn slot_for(&mut self, name: &str) -> Option<PeerSlot> {
        if let Some(s) = self.slots.get(name) {
            return Some(*s);
        }
        let used: std::collections::BTreeSet<PeerSlot> = self.slots.values().copied().collect();
        let s = (0..MAX_SLOTS).find(|s| !used.contains(s))?;
        self.slots.insert(name.to_string(), s);
        Some(s)
    }

    fn remove_slot(&mut self, name: &str) -> Vec<Reg> {
        if let Some(slot) = self.slots.remove(name) {
            self.fwd.remove_peer(slot);
            if let Some(i) = self.ingress.remove(&slot) {
                // Closing the eventfd removes it from epoll: nothing else holds it.
                drop(i);
            }
            if let Some(e) = self.egress.remove(&slot) {
                drop(e);
            }
        }
        Vec::new()
    }

    /// Apply one control message from main; may answer on `ctl`. Returns epoll changes.
    pub fn handle_ctl(&mut self, ctl: BorrowedFd<'_>, msg: Msg, fds: Vec<OwnedFd>) -> Vec<Reg> {
        match msg {
            Msg::GetBuffer { peer, generation } => {
                let name = peer.name.clone();
                if name == self.fwd.me().name {
                    return Vec::new();
                }
                let mut regs = Vec::new();
                let Some(slot) = self.slot_for(&name) else {
                    tracing::warn!(peer = %name, "too many peers");
                    return regs;
                };
                self.fwd.upsert_peer(slot, peer);
                // A replaced ring's descriptors close here, which also removes them from epoll.
                self.ingress.remove(&slot);
                match ring::create(self.buffer_size) {
                    Ok((cons, fds)) => {
                        regs.push(Reg::Add(cons.data_fd().as_raw_fd(), ev_ingress(slot)));
                        let reply = Msg::BufferReady {
                            peer: name.clone(),
                            generation,
                        };
                        if let Err(e) = control::send_ring(ctl, &reply, &fds) {
                            tracing::warn!(peer = %name, error = %crate::error_chain(&e), "cannot send BufferReady");
                        }
                        self.ingress.insert(slot, Ingress { cons });
                    }
                    Err(e) => tracing::error!(peer = %name, error = %e, "cannot create ring"),
                }
                regs
            }
            Msg::PutBuffer { peer } => {
                let name = peer.name.clone();
                let mut regs = Vec::new();
                if name == self.fwd.me().name {
                    return regs;
                }
                let Some(rfds) = control::ring_fds(fds) else {
                    return regs;
                };
                let Some(slot) = self.slot_for(&name) else {
                    return regs;
                };
                self.fwd.upsert_peer(slot, peer);
                match Producer::attach(rfds) {
                    Ok(prod) => {
                        self.egress.remove(&slot);
                        regs.push(Reg::Add(prod.space_fd().as_raw_fd(), ev_space(slot)));
                        self.egress.insert(
                            slot,
                            Egress {
                                prod,
                                q: FqCodel::new(self.params, MonotonicClock::default()),
                                held: None,
                                dirty: false,
                                waiting_space: false,
                                blocked_since: None,
                                stalled: false,
                            },
                        );
                    }
                    Err(e) => tracing::warn!(peer = %name, error = %e, "rejected egress ring"),
                }
                regs
            }
            Msg::UpdatePeer { peer } => {
                if let Some(&slot) = self.slots.get(&peer.name) {
                    self.fwd.upsert_peer(slot, peer);
                }
                Vec::new()
            }
            Msg::SetSelf { me } => {
                if me.name == self.fwd.me().name {
                    self.fwd.set_me(me);
                }
                Vec::new()
            }
            Msg::RemovePeer { peer } => self.remove_slot(&peer),
            Msg::BufferReady { .. } | Msg::Serving => Vec::new(),
        }
    }

    /// Handle a frame our guest transmitted (`pkt` = vnet header + Ethernet frame).
    pub fn from_guest(&mut self, pkt: &mut Vec<u8>) {
        self.counters.tx_frames += 1;
        if pkt.len() < VNET_HDR + frame::ETH_HLEN || pkt.len() > MAX_FRAME {
            self.fwd.drops[crate::forward::DropReason::Malformed as usize] += 1;
            return;
        }
        let verdict = self.fwd.classify(&mut pkt[VNET_HDR..]);
        self.act(verdict, pkt);
    }

    /// Handle a large frame our guest transmitted, given its first bytes (`head`, at least
    /// [`crate::forward::MIN_HEAD`] past the virtio-net header, already validated) and `rest`,
    /// which copies frame bytes from an offset into a buffer and fails when the guest's memory
    /// does. A unicast frame with room in its destination ring is copied there once, head from
    /// our checked copy and payload straight from the guest; anything else takes the buffered
    /// path.
    pub fn from_guest_split(
        &mut self,
        head: &mut [u8],
        total: usize,
        rest: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) {
        self.counters.tx_frames += 1;
        if !(VNET_HDR + frame::ETH_HLEN..=MAX_FRAME).contains(&total) || head.len() > total {
            self.fwd.drops[crate::forward::DropReason::Malformed as usize] += 1;
            return;
        }
        let verdict = self
            .fwd
            .classify_head(&mut head[VNET_HDR..], total - VNET_HDR);
        if let Verdict::Unicast(slot) = verdict
            && let Some(e) = self.egress.get_mut(&slot)
            && e.q.is_empty()
            && e.held.is_none()
        {
            let pushed = e.prod.push_with(total, |dst| {
                dst[..head.len()].copy_from_slice(head);
                rest(head.len(), &mut dst[head.len()..])
            });
            match pushed {
                Ok(Pushed::Yes) => {
                    e.dirty = true;
                    return;
                }
                Ok(Pushed::Abandoned) => {
                    self.fwd.drops[crate::forward::DropReason::Malformed as usize] += 1;
                    return;
                }
                // Full (or unusable): the buffered path below queues or counts it.
                Ok(Pushed::Full) | Err(_) => {}
            }
        }
        if matches!(verdict, Verdict::Drop(_)) {
            return;
        }
        let mut pkt = vec![0u8; total];
        pkt[..head.len()].copy_from_slice(head);
        if !rest(head.len(), &mut pkt[head.len()..]) {
            self.fwd.drops[crate::forward::DropReason::Malformed as usize] += 1;
            return;
        }
        self.act(verdict, &mut pkt);
    }

    /// Carry out the forwarding decision for a frame held in `pkt`.
    fn act(&mut self, verdict: Verdict, pkt: &mut Vec<u8>) {
        match verdict {
            Verdict::Drop(_) => {}
            Verdict::Reply(frame) => {
                if self.replies.len() < MAX_REPLIES {
                    let mut v = vec![0u8; VNET_HDR];
                    v.extend_from_slice(&frame);
                    self.replies.push_back(v);
                }
            }
            Verdict::Broadcast => {
                let targets: Vec<PeerSlot> = self.fwd.broadcast_targets().collect();
                for slot in targets {
                    // Broadcast bypasses FQ-CoDel: best effort straight into the ring.
                    match self.egress.get_mut(&slot) {
                        Some(e) => match e.prod.push(&[pkt]) {
                            Ok(true) => e.dirty = true,
                            Ok(false) => self.counters.egress_drops += 1,
                            Err(_) => self.counters.egress_drops += 1,
                        },
                        None => self.counters.egress_drops += 1,
                    }
                }
            }
            Verdict::Unicast(slot) => {
                let Some(e) = self.egress.get_mut(&slot) else {
                    self.counters.egress_drops += 1;
                    return;
                };
                // Empty queue and room in the ring: bypass the queue (no delay to manage).
                if e.q.is_empty() && e.held.is_none() {
                    match e.prod.push(&[pkt]) {
                        Ok(true) => {
                            e.dirty = true;
                            return;
                        }
                        Ok(false) => e.note_full(),
                        Err(err) => {
                            tracing::debug!(error = %err, "egress push failed");
                            self.counters.egress_drops += 1;
                            return;
                        }
                    }
                }
                let hash = frame::flow_hash(&pkt[VNET_HDR..], self.hash_seed);
                let dropped = e.q.enqueue(hash, std::mem::take(pkt));
                self.counters.egress_drops += dropped as u64;
                Self::drain(e, &mut self.counters);
            }
        }
    }

    fn drain(e: &mut Egress, counters: &mut Counters) {
        loop {
            let p = match e.held.take() {
                Some(p) => p,
                None => match e.q.dequeue() {
                    Some(p) => p,
                    None => return,
                },
            };
            match e.prod.push(&[&p]) {
                Ok(true) => e.dirty = true,
                Ok(false) => {
                    e.held = Some(p);
                    e.note_full();
                    return;
                }
                Err(_) => counters.egress_drops += 1,
            }
        }
    }

    /// The egress ring to `slot` signalled space: move queued frames into it.
    pub fn on_space(&mut self, slot: PeerSlot) {
        if let Some(e) = self.egress.get_mut(&slot) {
            let _ = e.prod.space_fd().read();
            e.waiting_space = false;
            e.blocked_since = None;
            e.stalled = false;
            Self::drain(e, &mut self.counters);
        }
        self.flush();
    }

    /// Whether a destination's queue is full enough that we should stop reading our guest's TX
    /// queue until its ring frees space (the space eventfd ends the pause).
    pub fn tx_blocked(&self) -> bool {
        self.egress.values().any(Egress::holds_back)
    }

    /// Mark destinations that freed no space for [`STALL_AFTER`] as stalled, so they stop
    /// holding back our guest. Returns how long until the next one could stall, if any still
    /// holds back.
    pub fn check_stalls(&mut self) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let mut next: Option<std::time::Duration> = None;
        for e in self.egress.values_mut() {
            if !e.holds_back() {
                continue;
            }
            let since = *e.blocked_since.get_or_insert(now);
            let waited = now.saturating_duration_since(since);
            if waited >= STALL_AFTER {
                e.stalled = true;
            } else {
                let left = STALL_AFTER - waited;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }

    /// Ring the data doorbell of every ring written since the last flush.
    pub fn flush(&mut self) {
        for e in self.egress.values_mut() {
            if e.dirty {
                e.prod.notify();
                e.dirty = false;
            }
        }
    }

    /// Acknowledge the data doorbell of the ingress ring from `slot`.
    pub fn ack_ingress(&mut self, slot: PeerSlot) {
        if let Some(i) = self.ingress.get(&slot) {
            i.cons.ack();
        }
    }

    /// Hand waiting frames (replies first, then ingress rings round robin) to `sink` until it
    /// runs out of buffers. Returns whether anything was delivered.
    pub fn to_guest(&mut self, sink: &mut dyn FnMut(Incoming<'_>) -> Delivery) -> bool {
        let mut any = false;
        while let Some(mut r) = self.replies.pop_front() {
            match sink(Incoming::Owned(&mut r)) {
                Delivery::Delivered => {
                    any = true;
                    self.counters.rx_frames += 1;
                }
                Delivery::Dropped => {}
                Delivery::NoBuffer => {
                    self.replies.push_front(r);
                    return any;
                }
            }
        }
        if self.ingress.is_empty() {
            return any;
        }
        let mut corrupt = Vec::new();
        let mut out_of_buffers: Option<PeerSlot> = None;
        let (fwd, counters) = (&self.fwd, &mut self.counters);
        // Up to 64 frames from one ring; true when the guest ran out of buffers.
        let mut serve = |slot: PeerSlot, ing: &mut Ingress, progress: &mut bool| -> bool {
            let mut stop = false;
            for _ in 0..64 {
                let rec = match ing.cons.peek() {
                    Ok(Some(rec)) => rec,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "abandoning ingress ring");
                        corrupt.push(slot);
                        break;
                    }
                };
                let whole = ing.cons.bytes(&rec);
                // Checks run on our own copy of the head; the guest gets that copy, and the
                // rest straight from the ring.
                let mut buf = [0u8; HEAD];
                let n = whole.len().min(HEAD);
                whole.copy_to(0, &mut buf[..n]);
                let head = &buf[..n];
                if n < VNET_HDR || !fwd.accept_ingress(slot, &head[VNET_HDR..]) {
                    counters.ingress_rejects += 1;
                    *progress = true;
                    ing.cons.consume(rec);
                    continue;
                }
                match sink(Incoming::Shared { head, whole }) {
                    Delivery::Delivered => {
                        any = true;
                        *progress = true;
                        counters.rx_frames += 1;
                        ing.cons.consume(rec);
                    }
                    Delivery::Dropped => {
                        *progress = true;
                        ing.cons.consume(rec);
                    }
                    Delivery::NoBuffer => {
                        // The frame stays in the ring until the guest adds buffers.
                        stop = true;
                        break;
                    }
                }
            }
            ing.cons.release();
            stop
        };
        // Round robin, starting at the ring that last found the guest out of buffers; passes
        // until all rings are empty or the guest is out of buffers.
        let rr = self.rr;
        let mut progress = true;
        while progress && out_of_buffers.is_none() {
            progress = false;
            for (&slot, ing) in self.ingress.range_mut(rr..) {
                if serve(slot, ing, &mut progress) {
                    out_of_buffers = Some(slot);
                    break;
                }
            }
            if out_of_buffers.is_none() {
                for (&slot, ing) in self.ingress.range_mut(..rr) {
                    if serve(slot, ing, &mut progress) {
                        out_of_buffers = Some(slot);
                        break;
                    }
                }
            }
        }
        if let Some(slot) = out_of_buffers {
            self.rr = slot;
        }
        for slot in corrupt {
            self.counters.corrupt_rings += 1;
            self.ingress.remove(&slot);
        }
        any
    }

    /// Descriptors to watch after (re)starting an event loop.
    pub fn all_registrations(&self) -> Vec<Reg> {
        let mut v = Vec::new();
        for (s, i) in &self.ingress {
            v.push(Reg::Add(i.cons.data_fd().as_raw_fd(), ev_ingress(*s)));
        }
        for (s, e) in &self.egress {
            v.push(Reg::Add(e.prod.space_fd().as_raw_fd(), ev_space(*s)));
        }
        v
    }

    /// Frames waiting to be written towards peers (queued + held).
    pub fn queued(&self) -> usize {
        self.egress
            .values()
            .map(|e| e.q.len() + usize::from(e.held.is_some()))
            .sum()
    }

    /// The data eventfd of an ingress ring, for tests that poll it.
    pub fn ingress_fd(&self, slot: PeerSlot) -> Option<RawFd> {
        self.ingress
            .get(&slot)
            .map(|i| i.cons.data_fd().as_raw_fd())
    }

    /// The slot a peer name maps to.
    pub fn slot_of(&self, name: &str) -> Option<PeerSlot> {
        self.slots.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    fn cfg(json: &str) -> PeerConfig {
        PeerConfig::from_json(std::path::Path::new("x"), json).unwrap()
    }

    fn udp(sport: u16, seq: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; VNET_HDR + len];
        let f = &mut p[VNET_HDR..];
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0a]);
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 1, 0, 1]);
        f[30..34].copy_from_slice(&[10, 1, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[42..46].copy_from_slice(&seq.to_be_bytes());
        p
    }

    /// Wire two datapaths the way main does: b makes a ring for frames from a, a attaches it.
    fn pair(buffer: usize) -> (Datapath, Datapath, PeerSlot, PeerSlot) {
        let ca = cfg(r#"{"name":"a","mac":"52:54:00:00:00:0a","ipv4":["10.1.0.1/24"]}"#);
        let cb = cfg(r#"{"name":"b","mac":"52:54:00:00:00:0b","ipv4":["10.1.0.2/24"]}"#);
        let mut a = Datapath::new(ca.clone(), Params::default(), buffer);
        let mut b = Datapath::new(cb.clone(), Params::default(), buffer);
        let (b_ctl, main_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        b.handle_ctl(
            b_ctl.as_fd(),
            Msg::GetBuffer {
                peer: ca,
                generation: 1,
            },
            Vec::new(),
        );
        let (reply, fds) = control::recv(main_end.as_fd()).unwrap();
        assert!(matches!(reply, Msg::BufferReady { .. }));
        a.handle_ctl(b_ctl.as_fd(), Msg::PutBuffer { peer: cb }, fds);
        let (sa, sb) = (b.slot_of("a").unwrap(), a.slot_of("b").unwrap());
        (a, b, sa, sb)
    }

    #[test]
    fn a_sparse_flow_overtakes_a_standing_bulk_queue() {
        let (mut a, mut b, _slot_a_in_b, slot_b_in_a) = pair(8192);
        for seq in 0..200 {
            a.from_guest(&mut udp(4000, seq, 1000));
        }
        a.from_guest(&mut udp(5000, 0, 100));
        a.flush();
        assert!(
            a.queued() > 150,
            "the ring is small: most bulk frames wait in FQ-CoDel"
        );
        let mut order = Vec::new();
        for _ in 0..1000 {
            b.to_guest(&mut |inc: Incoming<'_>| {
                let f = inc.to_vec();
                let sport = u16::from_be_bytes([f[VNET_HDR + 34], f[VNET_HDR + 35]]);
                order.push(sport);
                Delivery::Delivered
            });
            a.on_space(slot_b_in_a);
            if a.queued() == 0 {
                break;
            }
        }
        b.to_guest(&mut |inc: Incoming<'_>| {
            let f = inc.to_vec();
            order.push(u16::from_be_bytes([f[VNET_HDR + 34], f[VNET_HDR + 35]]));
            Delivery::Delivered
        });
        // CoDel may shed a few bulk frames if this machine stalls for more than its interval.
        assert!(order.len() > 150, "{} of 201 delivered", order.len());
        let pos = order.iter().position(|&p| p == 5000).unwrap();
        assert!(
            pos < 12,
            "sparse frame delivered at position {pos} of 201 (FIFO: 200)"
        );
        assert_eq!(b.counters.rx_frames, order.len() as u64);
    }

    #[test]
    fn a_frame_that_finds_no_guest_buffer_stays_in_the_ring_in_order() {
        let (mut a, mut b, _, _) = pair(8192);
        for seq in 0..5 {
            a.from_guest(&mut udp(4000, seq, 200));
        }
        a.flush();
        let seq_of =
            |f: &[u8]| u32::from_be_bytes(f[VNET_HDR + 42..VNET_HDR + 46].try_into().unwrap());
        let mut got = Vec::new();
        // Room for two frames only.
        b.to_guest(&mut |inc: Incoming<'_>| {
            if got.len() == 2 {
                return Delivery::NoBuffer;
            }
            got.push(seq_of(&inc.to_vec()));
            Delivery::Delivered
        });
        assert_eq!(got, [0, 1]);
        b.to_guest(&mut |inc: Incoming<'_>| {
            let f = inc.to_vec();
            if let Incoming::Shared { head, .. } = inc {
                assert_eq!(head, &f[..HEAD], "the head copy is the frame's start");
            }
            got.push(seq_of(&f));
            Delivery::Delivered
        });
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_eq!(b.counters.rx_frames, 5);
    }

    #[test]
    fn large_frames_split_at_the_head_arrive_whole_or_not_at_all() {
        let (mut a, mut b, _, slot_b_in_a) = pair(16384);
        let mut sent = Vec::new();
        // Enough 1400-byte frames to fill the ring, so some take the queued path too.
        for seq in 0..30 {
            let mut f = udp(4000, seq, 1400);
            for (i, x) in f[VNET_HDR + 46..].iter_mut().enumerate() {
                *x = (i as u32 ^ seq) as u8;
            }
            let total = f.len();
            let mut head = f[..256].to_vec();
            let body = f.clone();
            a.from_guest_split(&mut head, total, &mut |from, dst| {
                dst.copy_from_slice(&body[from..from + dst.len()]);
                true
            });
            f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0b]);
            let mut expect = f;
            expect[..VNET_HDR].fill(0);
            expect[VNET_HDR..VNET_HDR + 6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x0b]);
            sent.push(expect);
        }
        // A guest whose memory faults mid-frame: nothing of that frame is delivered.
        let f = udp(4000, 99, 1400);
        let mut head = f[..256].to_vec();
        a.from_guest_split(&mut head, f.len(), &mut |_, _| false);
        a.flush();
        let mut got = Vec::new();
        for _ in 0..100 {
            b.to_guest(&mut |inc: Incoming<'_>| {
                got.push(inc.to_vec());
                Delivery::Delivered
            });
            a.on_space(slot_b_in_a);
            if a.queued() == 0 && got.len() >= sent.len() {
                break;
            }
        }
        b.to_guest(&mut |inc: Incoming<'_>| {
            got.push(inc.to_vec());
            Delivery::Delivered
        });
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(
                g[VNET_HDR..],
                s[VNET_HDR..],
                "frame intact, destination MAC set"
            );
        }
        assert_eq!(
            a.forwarder().drops[crate::forward::DropReason::Malformed as usize],
            1
        );
    }

    #[test]
    fn a_full_destination_pauses_the_sender_instead_of_dropping() {
        let (mut a, mut b, _, slot_b_in_a) = pair(8192);
        let mut sent = 0u32;
        while !a.tx_blocked() {
            a.from_guest(&mut udp(4000, sent, 1000));
            sent += 1;
            assert!(sent < 200, "back-pressure never engaged");
        }
        a.flush();
        assert_eq!(a.counters.egress_drops, 0);
        // A destination that keeps draining keeps holding the sender back until it made room.
        assert!(a.check_stalls().is_some());
        assert!(a.tx_blocked());
        let mut got = 0u32;
        for _ in 0..1000 {
            b.to_guest(&mut |_f: Incoming<'_>| {
                got += 1;
                Delivery::Delivered
            });
            a.on_space(slot_b_in_a);
            if a.queued() == 0 {
                break;
            }
        }
        assert!(!a.tx_blocked());
        b.to_guest(&mut |_f: Incoming<'_>| {
            got += 1;
            Delivery::Delivered
        });
        assert_eq!(got, sent, "every frame taken from the guest was delivered");
    }

    #[test]
    fn a_destination_that_never_drains_stops_holding_the_sender_back() {
        let (mut a, _b, _, slot_b_in_a) = pair(8192);
        let mut seq = 0;
        while !a.tx_blocked() {
            a.from_guest(&mut udp(4000, seq, 1000));
            seq += 1;
        }
        let e = a.egress.get_mut(&slot_b_in_a).unwrap();
        e.blocked_since = Some(std::time::Instant::now() - STALL_AFTER);
        assert_eq!(a.check_stalls(), None);
        assert!(!a.tx_blocked(), "a stalled peer must not block our guest");
        // Its frames now go to FQ-CoDel, bounded by the byte limit.
        for _ in 0..3000 {
            a.from_guest(&mut udp(4000, seq, 1000));
            seq += 1;
        }
        assert!(a.counters.egress_drops > 0);
        assert!(a.egress[&slot_b_in_a].q.backlog() <= Params::default().limit_bytes);
    }

    #[test]
    fn frames_for_a_vanished_peer_are_counted_not_queued() {
        let (mut a, _b, _, _) = pair(8192);
        a.handle_ctl(
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::empty(),
            )
            .unwrap()
            .0
            .as_fd(),
            Msg::RemovePeer { peer: "b".into() },
            Vec::new(),
        );
        a.from_guest(&mut udp(4000, 0, 200));
        assert_eq!(a.queued(), 0);
        assert_eq!(
            a.forwarder().drops[crate::forward::DropReason::NoRoute as usize],
            1
        );
    }
}
