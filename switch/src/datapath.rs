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
use crate::ring::{self, Consumer, Producer};

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
    stash: Option<Vec<u8>>,
}

struct Egress {
    prod: Producer,
    q: FqCodel<Vec<u8>, MonotonicClock>,
    held: Option<Vec<u8>>,
    dirty: bool,
    waiting_space: bool,
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
                            tracing::warn!(peer = %name, error = %e, "cannot send BufferReady");
                        }
                        self.ingress.insert(slot, Ingress { cons, stash: None });
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
            Msg::BufferReady { .. } => Vec::new(),
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
                let hash = frame::flow_hash(&pkt[VNET_HDR..], self.hash_seed);
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
                        Ok(false) => e.waiting_space = true,
                        Err(err) => {
                            tracing::debug!(error = %err, "egress push failed");
                            self.counters.egress_drops += 1;
                            return;
                        }
                    }
                }
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
                    e.waiting_space = true;
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
            Self::drain(e, &mut self.counters);
        }
        self.flush();
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
    pub fn to_guest(&mut self, sink: &mut dyn FnMut(&mut [u8]) -> Delivery) -> bool {
        let mut any = false;
        while let Some(mut r) = self.replies.pop_front() {
            match sink(&mut r) {
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
        let slots: Vec<PeerSlot> = self.ingress.keys().copied().collect();
        if slots.is_empty() {
            return any;
        }
        let start = slots.iter().position(|&s| s >= self.rr).unwrap_or(0);
        let mut corrupt = Vec::new();
        let mut out_of_buffers = false;
        // Round robin: up to 64 frames per ring per pass, passes until all are empty.
        let mut progress = true;
        while progress && !out_of_buffers {
            progress = false;
            for k in 0..slots.len() {
                let slot = slots[(start + k) % slots.len()];
                let Some(ing) = self.ingress.get_mut(&slot) else {
                    continue;
                };
                for _ in 0..64 {
                    let mut buf = match ing.stash.take() {
                        Some(b) => b,
                        None => {
                            let mut b = Vec::new();
                            match ing.cons.pop(&mut b) {
                                Ok(true) => b,
                                Ok(false) => break,
                                Err(e) => {
                                    tracing::warn!(slot, error = %e, "abandoning ingress ring");
                                    corrupt.push(slot);
                                    break;
                                }
                            }
                        }
                    };
                    if buf.len() < VNET_HDR || !self.fwd.accept_ingress(slot, &buf[VNET_HDR..]) {
                        self.counters.ingress_rejects += 1;
                        progress = true;
                        continue;
                    }
                    match sink(&mut buf) {
                        Delivery::Delivered => {
                            any = true;
                            progress = true;
                            self.counters.rx_frames += 1;
                        }
                        Delivery::Dropped => progress = true,
                        Delivery::NoBuffer => {
                            ing.stash = Some(buf);
                            out_of_buffers = true;
                            self.rr = slot;
                            break;
                        }
                    }
                }
                ing.cons.release();
                if out_of_buffers {
                    break;
                }
            }
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
