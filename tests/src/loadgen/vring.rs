//! The driver (guest) side of a split virtqueue, as a virtio-net guest driver runs it.
//!
//! Descriptor `i` always points at buffer `i` of the queue's own buffer area, so a buffer needs
//! no allocation and a TX buffer that still holds the right frame need not be rewritten. The ring
//! honours `VIRTIO_RING_F_EVENT_IDX` in both directions (kick only when the device's
//! `avail_event` asks for it; ask for an interrupt by writing `used_event`), or the flag-based
//! suppression without it. Everything the device writes (used ring entries) is checked before
//! use: a backend handing back an unknown or duplicate id or an oversized length is an error,
//! not a crash.

use std::sync::atomic::{Ordering, fence};

use vhost::VringConfigData;
use vhost::vhost_user::message::VhostUserVringAddrFlags;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::Bytes;

use super::memory::{GuestMem, MemoryError};

/// Errors from the driver-side ring.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VringError {
    /// The queue size is not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u16),
    /// The device returned an id that is out of range or not in flight.
    #[error("device returned descriptor id {id} which is not in flight")]
    BadUsedId {
        /// The id from the used ring.
        id: u32,
    },
    /// The device claimed to write more than the buffer holds.
    #[error("device used {len} bytes of descriptor {id}, but the buffer holds {cap}")]
    BadUsedLen {
        /// The descriptor id.
        id: u16,
        /// The length from the used ring.
        len: u32,
        /// The buffer size.
        cap: u32,
    },
    /// Guest memory access failed (cannot happen for addresses this module laid out).
    #[error("guest memory access at {addr:#x} failed: {message}")]
    Memory {
        /// Guest address.
        addr: u64,
        /// vm-memory's message.
        message: String,
    },
}

/// Where a ring lives and what it may use.
#[derive(Debug, Clone, Copy)]
pub struct VringLayout {
    /// Number of descriptors (power of two).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// Guest address of buffer 0; buffer `i` is at `bufs + i * buf_size`.
    pub bufs: u64,
    /// Bytes per buffer.
    pub buf_size: u32,
}

impl VringLayout {
    /// Allocate the rings and `size` buffers of `buf_size` bytes in `mem`.
    pub fn allocate(mem: &mut GuestMem, size: u16, buf_size: u32) -> Result<Self, AllocError> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(AllocError::Vring(VringError::BadSize(size)));
        }
        let n = usize::from(size);
        Ok(Self {
            size,
            desc: mem.alloc(16 * n, 4096)?,
            avail: mem.alloc(6 + 2 * n, 4096)?,
            used: mem.alloc(6 + 8 * n, 4096)?,
            bufs: mem.alloc(n * buf_size as usize, 4096)?,
            buf_size,
        })
    }

    /// SET_VRING_ADDR's payload: ring addresses in the frontend's own address space, as QEMU
    /// and crosvm send them (the backend translates them through the memory table).
    pub fn config(&self, mem: &GuestMem) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: VhostUserVringAddrFlags::empty().bits(),
            desc_table_addr: mem.host_addr(self.desc),
            used_ring_addr: mem.host_addr(self.used),
            avail_ring_addr: mem.host_addr(self.avail),
            log_addr: None,
        }
    }

    /// Guest address of buffer `id`.
    pub fn buf_addr(&self, id: u16) -> u64 {
        self.bufs + u64::from(id) * u64::from(self.buf_size)
    }
}

/// Errors from laying out a ring.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Bad parameters.
    #[error(transparent)]
    Vring(#[from] VringError),
    /// Not enough guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Driver state of one split virtqueue.
pub struct Vring {
    layout: VringLayout,
    event_idx: bool,
    /// Next free slot in the available ring (not yet visible to the device).
    avail_idx: u16,
    /// avail idx the device last saw.
    published: u16,
    /// Used entries consumed so far.
    last_used: u16,
    /// The device's used idx as last loaded.
    used_cache: u16,
    free: Vec<u16>,
    in_flight: Vec<bool>,
}

fn mem_err(addr: u64) -> impl FnOnce(vm_memory::VolatileMemoryError) -> VringError {
    move |e| VringError::Memory {
        addr,
        message: e.to_string(),
    }
}

impl Vring {
    /// A fresh ring (all descriptors free, interrupts suppressed) over `layout`; zeroes the
    /// ring headers so that a reused layout starts clean.
    pub fn new(mem: &GuestMem, layout: VringLayout, event_idx: bool) -> Result<Self, VringError> {
        let s = mem.slice();
        let flags = if event_idx {
            0
        } else {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        };
        s.store(flags, layout.avail as usize, Ordering::Relaxed)
            .map_err(mem_err(layout.avail))?;
        s.store(0u16, layout.avail as usize + 2, Ordering::Relaxed)
            .map_err(mem_err(layout.avail))?;
        s.store(0u32, layout.used as usize, Ordering::Relaxed)
            .map_err(mem_err(layout.used))?;
        let n = layout.size;
        Ok(Self {
            layout,
            event_idx,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            used_cache: 0,
            free: (0..n).rev().collect(),
            in_flight: vec![false; usize::from(n)],
        })
    }

    /// The ring's layout.
    pub fn layout(&self) -> &VringLayout {
        &self.layout
    }

    /// Descriptors not currently owned by the device.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Take a free descriptor id (its buffer is ours to fill).
    pub fn take_free(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Return an id (from [`take_free`](Self::take_free) or [`pop_used`](Self::pop_used)) to
    /// the free list without posting it.
    pub fn give_back(&mut self, id: u16) {
        self.free.push(id);
    }

    /// Hand descriptor `id` (buffer `id`, `len` bytes; device-writable if `write`) to the device.
    /// It becomes visible at the next [`publish`](Self::publish).
    pub fn post(
        &mut self,
        mem: &GuestMem,
        id: u16,
        len: u32,
        write: bool,
    ) -> Result<(), VringError> {
        let l = &self.layout;
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        let desc = Descriptor::new(l.buf_addr(id), len.min(l.buf_size), flags, 0);
        let s = mem.slice();
        let at = l.desc + 16 * u64::from(id);
        s.write_obj(desc, at as usize).map_err(mem_err(at))?;
        let slot = l.avail + 4 + 2 * u64::from(self.avail_idx & (l.size - 1));
        s.store(id, slot as usize, Ordering::Relaxed)
            .map_err(mem_err(slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.in_flight[usize::from(id)] = true;
        Ok(())
    }

    /// Make posted descriptors visible; returns whether the device wants a kick for them.
    pub fn publish(&mut self, mem: &GuestMem) -> Result<bool, VringError> {
        if self.avail_idx == self.published {
            return Ok(false);
        }
        let l = &self.layout;
        let s = mem.slice();
        let idx_at = l.avail + 2;
        // Release: descriptors and buffers are written before the device can see the index.
        s.store(self.avail_idx, idx_at as usize, Ordering::Release)
            .map_err(mem_err(idx_at))?;
        // The index store must be visible before we read the device's suppression state, or
        // both sides could decide the other one will act (virtio's mb() here).
        fence(Ordering::SeqCst);
        let old = self.published;
        self.published = self.avail_idx;
        if self.event_idx {
            let at = l.used + 4 + 8 * u64::from(l.size);
            let avail_event: u16 = s
                .load(at as usize, Ordering::Acquire)
                .map_err(mem_err(at))?;
            Ok(need_event(avail_event, self.avail_idx, old))
        } else {
            let flags: u16 = s
                .load(l.used as usize, Ordering::Acquire)
                .map_err(mem_err(l.used))?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// The next used entry `(id, len)`, if the device returned one. The id is the caller's
    /// again: [`post`](Self::post) it anew or [`give_back`](Self::give_back) it.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<(u16, u32)>, VringError> {
        let l = self.layout;
        let s = mem.slice();
        if self.used_cache == self.last_used {
            let at = l.used + 2;
            // Acquire: the used element and written buffers are visible once the index is.
            self.used_cache = s
                .load(at as usize, Ordering::Acquire)
                .map_err(mem_err(at))?;
            if self.used_cache == self.last_used {
                return Ok(None);
            }
        }
        let elem = l.used + 4 + 8 * u64::from(self.last_used & (l.size - 1));
        let id: u32 = s
            .load(elem as usize, Ordering::Relaxed)
            .map_err(mem_err(elem))?;
        let len: u32 = s
            .load(elem as usize + 4, Ordering::Relaxed)
            .map_err(mem_err(elem))?;
        self.last_used = self.last_used.wrapping_add(1);
        let idx = usize::try_from(id).unwrap_or(usize::MAX);
        if !self.in_flight.get(idx).copied().unwrap_or(false) {
            return Err(VringError::BadUsedId { id });
        }
        let id = idx as u16;
        self.in_flight[idx] = false;
        if len > l.buf_size {
            return Err(VringError::BadUsedLen {
                id,
                len,
                cap: l.buf_size,
            });
        }
        Ok(Some((id, len)))
    }

    /// Ask the device to signal the call eventfd for the next used entry. Returns true when an
    /// entry is already pending (the caller must not sleep then).
    pub fn enable_interrupts(&mut self, mem: &GuestMem) -> Result<bool, VringError> {
        let l = &self.layout;
        let s = mem.slice();
        if self.event_idx {
            let at = l.avail + 4 + 2 * u64::from(l.size);
            s.store(self.last_used, at as usize, Ordering::Relaxed)
                .map_err(mem_err(at))?;
        } else {
            s.store(0u16, l.avail as usize, Ordering::Relaxed)
                .map_err(mem_err(l.avail))?;
        }
        fence(Ordering::SeqCst);
        let at = l.used + 2;
        let used: u16 = s
            .load(at as usize, Ordering::Acquire)
            .map_err(mem_err(at))?;
        Ok(used != self.last_used)
    }

    /// Tell the device we are polling and need no interrupts.
    pub fn disable_interrupts(&mut self, mem: &GuestMem) -> Result<(), VringError> {
        if !self.event_idx {
            let l = &self.layout;
            mem.slice()
                .store(
                    VRING_AVAIL_F_NO_INTERRUPT as u16,
                    l.avail as usize,
                    Ordering::Relaxed,
                )
                .map_err(mem_err(l.avail))?;
        }
        // With EVENT_IDX a stale used_event already means "no interrupt" until the index wraps.
        Ok(())
    }
}

/// virtio's `vring_need_event`: has the index moved from `old` to `new` past `event`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    //! The driver side checked against virtio-queue's device side (what vhost-user-backend
    //! based backends, vm-switch among them, run) on the same guest memory.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtio_queue::{Queue, QueueT};

    fn device_queue(layout: &VringLayout, event_idx: bool) -> Queue {
        let mut q = Queue::new(layout.size).unwrap();
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (l, h) = split(layout.desc);
        q.set_desc_table_address(l, h);
        let (l, h) = split(layout.avail);
        q.set_avail_ring_address(l, h);
        let (l, h) = split(layout.used);
        q.set_used_ring_address(l, h);
        q.set_size(layout.size);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn setup(size: u16, event_idx: bool) -> (GuestMem, Vring, Queue) {
        let mut mem = GuestMem::new(4 << 20).unwrap();
        let layout = VringLayout::allocate(&mut mem, size, 2048).unwrap();
        let ring = Vring::new(&mem, layout, event_idx).unwrap();
        let q = device_queue(&layout, event_idx);
        assert!(q.is_valid(mem.guest_memory()));
        (mem, ring, q)
    }

    #[test]
    fn tx_descriptors_reach_the_device_and_come_back() {
        let (mem, mut ring, mut q) = setup(8, true);
        let gm = mem.guest_memory();
        // Three rounds over an 8-entry ring: indices wrap and ids are reused.
        for round in 0..3u8 {
            let mut posted = Vec::new();
            for i in 0..5u8 {
                let id = ring.take_free().unwrap();
                let payload = [round, i, 0xab];
                mem.slice()
                    .write_slice(&payload, ring.layout().buf_addr(id) as usize)
                    .unwrap();
                ring.post(&mem, id, 3, false).unwrap();
                posted.push(id);
            }
            ring.publish(&mem).unwrap();
            let mut seen = Vec::new();
            while let Some(chain) = q.pop_descriptor_chain(gm) {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                assert_eq!(descs.len(), 1);
                assert!(!descs[0].is_write_only());
                assert_eq!(descs[0].len(), 3);
                let mut buf = [0u8; 3];
                gm.read_slice(&mut buf, descs[0].addr()).unwrap();
                seen.push(buf);
                q.add_used(gm, head, 0).unwrap();
            }
            let want: Vec<[u8; 3]> = (0..5).map(|i| [round, i, 0xab]).collect();
            assert_eq!(seen, want, "device reads frames in posting order");
            let mut back = Vec::new();
            while let Some((id, len)) = ring.pop_used(&mem).unwrap() {
                assert_eq!(len, 0);
                back.push(id);
                ring.give_back(id);
            }
            assert_eq!(back, posted);
            assert_eq!(ring.free_count(), 8);
        }
    }

    #[test]
    fn rx_buffers_are_device_writable_and_lengths_are_reported() {
        let (mem, mut ring, mut q) = setup(4, false);
        let gm = mem.guest_memory();
        while let Some(id) = ring.take_free() {
            ring.post(&mem, id, 2048, true).unwrap();
        }
        ring.publish(&mem).unwrap();
        let chain = q.pop_descriptor_chain(gm).unwrap();
        let head = chain.head_index();
        let desc = chain.into_iter().next().unwrap();
        assert!(desc.is_write_only());
        assert_eq!(desc.len(), 2048);
        gm.write_slice(b"frame", desc.addr()).unwrap();
        q.add_used(gm, head, 5).unwrap();
        let (id, len) = ring.pop_used(&mem).unwrap().unwrap();
        assert_eq!((id, len), (head, 5));
        let mut buf = [0u8; 5];
        mem.slice()
            .read_slice(&mut buf, ring.layout().buf_addr(id) as usize)
            .unwrap();
        assert_eq!(&buf, b"frame");
        assert_eq!(ring.pop_used(&mem).unwrap(), None);
    }

    #[test]
    fn hostile_used_entries_are_errors() {
        let (mem, mut ring, _q) = setup(4, false);
        let id = ring.take_free().unwrap();
        ring.post(&mem, id, 100, false).unwrap();
        ring.publish(&mem).unwrap();
        let used = ring.layout().used;
        let s = mem.slice();
        // An id that was never posted.
        s.store(3u32, used as usize + 4, Ordering::Relaxed).unwrap();
        s.store(1u16, used as usize + 2, Ordering::Release).unwrap();
        assert_eq!(ring.pop_used(&mem), Err(VringError::BadUsedId { id: 3 }));
        // A length beyond the buffer.
        s.store(u32::from(id), used as usize + 12, Ordering::Relaxed)
            .unwrap();
        s.store(4096u32, used as usize + 16, Ordering::Relaxed)
            .unwrap();
        s.store(2u16, used as usize + 2, Ordering::Release).unwrap();
        assert!(matches!(
            ring.pop_used(&mem),
            Err(VringError::BadUsedLen { len: 4096, .. })
        ));
        // An id far out of range.
        s.store(0xffff_ffffu32, used as usize + 20, Ordering::Relaxed)
            .unwrap();
        s.store(3u16, used as usize + 2, Ordering::Release).unwrap();
        assert!(matches!(
            ring.pop_used(&mem),
            Err(VringError::BadUsedId { .. })
        ));
    }

    #[test]
    fn kicks_follow_the_devices_event_idx() {
        let (mem, mut ring, mut q) = setup(8, true);
        let gm = mem.guest_memory();
        let post_one = |ring: &mut Vring| {
            let id = ring.take_free().unwrap();
            ring.post(&mem, id, 1, false).unwrap();
        };
        // The device has not asked for anything yet: avail_event is 0, so the first publish
        // (0 -> 1 crosses it) kicks.
        post_one(&mut ring);
        assert!(ring.publish(&mem).unwrap());
        // The device polls: it consumes without re-enabling notifications, avail_event stays
        // stale, so further publishes do not kick.
        while let Some(c) = q.pop_descriptor_chain(gm) {
            q.add_used(gm, c.head_index(), 0).unwrap();
        }
        q.disable_notification(gm).unwrap();
        post_one(&mut ring);
        assert!(!ring.publish(&mem).unwrap());
        // The device goes to sleep: enable_notification writes avail_event = its next index.
        while let Some(c) = q.pop_descriptor_chain(gm) {
            q.add_used(gm, c.head_index(), 0).unwrap();
        }
        assert!(!q.enable_notification(gm).unwrap());
        post_one(&mut ring);
        assert!(
            ring.publish(&mem).unwrap(),
            "a sleeping device must be kicked"
        );
        // Publishing with nothing new never kicks.
        assert!(!ring.publish(&mem).unwrap());
    }

    #[test]
    fn interrupts_follow_the_drivers_used_event() {
        let (mem, mut ring, mut q) = setup(8, true);
        let gm = mem.guest_memory();
        for _ in 0..4 {
            let id = ring.take_free().unwrap();
            ring.post(&mem, id, 1, false).unwrap();
        }
        ring.publish(&mem).unwrap();
        let mut chains: Vec<u16> = Vec::new();
        while let Some(c) = q.pop_descriptor_chain(gm) {
            chains.push(c.head_index());
        }
        // Driver armed at used index 0: the first used entry must interrupt.
        assert!(!ring.enable_interrupts(&mem).unwrap());
        q.add_used(gm, chains[0], 0).unwrap();
        assert!(q.needs_notification(gm).unwrap());
        // Driver polling (armed point passed): further entries do not interrupt.
        let (id, _) = ring.pop_used(&mem).unwrap().unwrap();
        ring.give_back(id);
        ring.disable_interrupts(&mem).unwrap();
        q.add_used(gm, chains[1], 0).unwrap();
        assert!(!q.needs_notification(gm).unwrap());
        // Re-armed while an entry is already pending: the driver is told not to sleep.
        assert!(ring.enable_interrupts(&mem).unwrap());
    }

    #[test]
    fn flag_based_suppression_without_event_idx() {
        let (mem, mut ring, mut q) = setup(4, false);
        let gm = mem.guest_memory();
        let id = ring.take_free().unwrap();
        ring.post(&mem, id, 1, false).unwrap();
        assert!(ring.publish(&mem).unwrap(), "no NO_NOTIFY flag: kick");
        let c = q.pop_descriptor_chain(gm).unwrap();
        q.disable_notification(gm).unwrap();
        let id2 = ring.take_free().unwrap();
        ring.post(&mem, id2, 1, false).unwrap();
        assert!(
            !ring.publish(&mem).unwrap(),
            "device set NO_NOTIFY: no kick"
        );
        // virtio-queue ignores VRING_AVAIL_F_NO_INTERRUPT, so check the flag itself.
        let avail_at = ring.layout().avail as usize;
        let avail_flags = || -> u16 { mem.slice().load(avail_at, Ordering::Acquire).unwrap() };
        assert_eq!(
            avail_flags(),
            VRING_AVAIL_F_NO_INTERRUPT as u16,
            "suppressed at start"
        );
        q.add_used(gm, c.head_index(), 0).unwrap();
        assert!(ring.enable_interrupts(&mem).unwrap(), "an entry is pending");
        assert_eq!(avail_flags(), 0);
        ring.disable_interrupts(&mem).unwrap();
        assert_eq!(avail_flags(), VRING_AVAIL_F_NO_INTERRUPT as u16);
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        assert!(matches!(
            VringLayout::allocate(&mut mem, 100, 2048),
            Err(AllocError::Vring(VringError::BadSize(100)))
        ));
        assert!(matches!(
            VringLayout::allocate(&mut mem, 1024, 2048),
            Err(AllocError::Memory(MemoryError::Exhausted { .. }))
        ));
    }

    #[test]
    fn need_event_matches_virtio() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 2));
        assert!(need_event(2, 3, 2));
        // Wrap-around.
        assert!(need_event(65535, 0, 65534));
        assert!(!need_event(10, 0, 65534));
    }
}
