//! Guest RAM and split virtqueues accessed through host pointers, for the frame path.
//!
//! `virtio-queue` and `vm-memory` route every descriptor read, ring update and frame copy
//! through generic, region-iterating accessors; at small frames that was over half of a child's
//! CPU time. This module translates guest-physical ranges once per access with a short region
//! table, reads descriptors and ring entries with single loads, publishes the used index once
//! per batch, and copies frames with `memcpy`. The `Queue` kept by `vhost-user-backend` stays
//! the owner of the queue's configuration and of `next_avail`/`next_used` (the VMM reads those
//! back on `GET_VRING_BASE`): a [`SplitQueue`] is a view opened from it for one batch and
//! written back with [`SplitQueue::finish`].
//!
//! Everything in guest memory belongs to a hostile guest that may change it at any moment.
//! Each index and length read from it is bounds-checked before use, descriptor chains are
//! bounded by the queue (or indirect table) size so loops end, indirect tables must lie inside
//! one region, and a range that leaves guest RAM is a [`Fault`], never an access. Frame bytes
//! are copied out first and parsed only from our copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering, fence};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// The descriptor continues in `next`.
const F_NEXT: u16 = 1;
/// The buffer is device-writable.
const F_WRITE: u16 = 2;
/// The buffer is a table of descriptors.
const F_INDIRECT: u16 = 4;
/// `used.flags`: the device does not want kicks (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// `avail.flags`: the driver does not want interrupts (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A guest address range that is not guest RAM, or a descriptor structure that breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

#[derive(Debug, Clone, Copy)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Guest RAM as a table of host mappings; keeps the mappings alive while it exists.
pub struct GuestRam {
    regions: Vec<Region>,
    _keep: Arc<GuestMemoryMmap>,
}

// SAFETY: the raw pointers point into mappings owned by `_keep` (an `Arc`), which is itself Send
// and Sync; the pointers are only dereferenced through the bounds-checked accessors below.
unsafe impl Send for GuestRam {}
// SAFETY: as above; no interior state is mutated through `&GuestRam`.
unsafe impl Sync for GuestRam {}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("regions", &self.regions.len())
            .finish()
    }
}

impl GuestRam {
    /// The region table of `mem`; regions whose host address cannot be had are left out (their
    /// guest addresses then fault).
    pub fn new(mem: Arc<GuestMemoryMmap>) -> GuestRam {
        let mut regions: Vec<Region> = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(Region {
                    gpa: r.start_addr().0,
                    len: r.len(),
                    host,
                })
            })
            .filter(|r| r.len > 0)
            .collect();
        regions.sort_by_key(|r| r.gpa);
        GuestRam {
            regions,
            _keep: mem,
        }
    }

    /// The region holding `gpa` and how many bytes of it follow `gpa`.
    fn locate(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.gpa)?;
            // SAFETY: off < len, so the result stays inside the region's mapping.
            (off < r.len).then(|| (unsafe { r.host.add(off as usize) }, r.len - off))
        })
    }

    /// A host pointer to `len` bytes at `gpa`, when they lie inside one region.
    pub fn range(&self, gpa: u64, len: u64) -> Result<*mut u8, Fault> {
        match self.locate(gpa) {
            Some((p, left)) if len <= left => Ok(p),
            _ => Err(Fault),
        }
    }

    /// Copy guest bytes at `gpa` into `dst`; the range may span adjacent regions.
    pub fn read(&self, mut gpa: u64, dst: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < dst.len() {
            let (p, left) = self.locate(gpa).ok_or(Fault)?;
            let n = (dst.len() - done).min(usize::try_from(left).unwrap_or(usize::MAX));
            // SAFETY: `p` has at least `n` mapped bytes (locate), `dst[done..]` has `n` bytes, and
            // guest RAM never overlaps our own buffers. The guest may write these bytes
            // concurrently; we take whatever bytes are there and validate only our copy.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), n) };
            done += n;
            gpa = gpa.checked_add(n as u64).ok_or(Fault)?;
        }
        Ok(())
    }

    /// Append `len` guest bytes at `gpa` to `buf` without zero-filling first.
    pub fn read_append(&self, gpa: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), Fault> {
        buf.reserve(len);
        let start = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len];
        // SAFETY: MaybeUninit<u8> has u8's layout; `read` only writes into the slice, and the
        // length is set below only after every byte was written.
        let dst = unsafe { &mut *(std::ptr::from_mut(spare) as *mut [u8]) };
        self.read(gpa, dst)?;
        // SAFETY: `read` succeeded, so bytes start..start + len are initialised.
        unsafe { buf.set_len(start + len) };
        Ok(())
    }

    /// Copy bytes `from..from + n` of a ring record into guest memory at `gpa`, without an
    /// intermediate copy.
    pub fn write_shared(
        &self,
        mut gpa: u64,
        src: &crate::ring::Shared<'_>,
        from: usize,
        n: usize,
    ) -> Result<(), Fault> {
        let base = src.raw(from, n).ok_or(Fault)?;
        let mut done = 0usize;
        while done < n {
            let (p, left) = self.locate(gpa).ok_or(Fault)?;
            let k = (n - done).min(usize::try_from(left).unwrap_or(usize::MAX));
            // SAFETY: `base` is readable for `n` bytes (Shared::raw) and `p` writable for `k`
            // (locate); ring memory and guest RAM are different mappings.
            unsafe { std::ptr::copy_nonoverlapping(base.add(done), p, k) };
            done += k;
            gpa = gpa.checked_add(k as u64).ok_or(Fault)?;
        }
        Ok(())
    }

    /// Copy `src` into guest memory at `gpa`; the range may span adjacent regions.
    pub fn write(&self, mut gpa: u64, src: &[u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < src.len() {
            let (p, left) = self.locate(gpa).ok_or(Fault)?;
            let n = (src.len() - done).min(usize::try_from(left).unwrap_or(usize::MAX));
            // SAFETY: as in `read`, with the direction reversed; the guest owns this buffer until
            // we return it through the used ring.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), p, n) };
            done += n;
            gpa = gpa.checked_add(n as u64).ok_or(Fault)?;
        }
        Ok(())
    }
}

/// One descriptor as read from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor when `F_NEXT` is set.
    pub next: u16,
}

impl Desc {
    /// Whether the device may write this buffer.
    pub fn is_write(&self) -> bool {
        self.flags & F_WRITE != 0
    }
}

/// Read descriptor `i` of a table at `table`.
///
/// # Safety
/// `table` must point to at least `i + 1` mapped, 16-byte aligned descriptors.
unsafe fn read_desc(table: *const u8, i: u16) -> Desc {
    // SAFETY: guaranteed by the caller; a volatile read because the guest may write it.
    let raw = unsafe { std::ptr::read_volatile(table.add(usize::from(i) * 16).cast::<[u8; 16]>()) };
    Desc {
        addr: u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]),
        len: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
        next: u16::from_le_bytes([raw[14], raw[15]]),
    }
}

/// The descriptors of one chain, direct and indirect, bounded so a looping chain ends.
pub struct Chain<'a> {
    ram: &'a GuestRam,
    indirect_ok: bool,
    table: *const u8,
    count: u32,
    in_indirect: bool,
    next: Option<u16>,
    budget: u32,
    /// The queue size: no chain may be longer (virtio 1.2, 2.7.5.3.1), indirect ones included.
    max_len: u32,
}

impl Iterator for Chain<'_> {
    type Item = Result<Desc, Fault>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next.take()?;
        if u32::from(i) >= self.count || self.budget == 0 {
            return Some(Err(Fault));
        }
        self.budget -= 1;
        // SAFETY: i < count, and `table` maps `count` aligned descriptors (checked when the
        // table was entered).
        let d = unsafe { read_desc(self.table, i) };
        if d.flags & F_INDIRECT != 0 {
            // Only from the main table, never with NEXT, a whole number of descriptors.
            if !self.indirect_ok
                || self.in_indirect
                || d.flags & F_NEXT != 0
                || d.len == 0
                || d.len % 16 != 0
                || d.len / 16 > self.max_len
                || d.addr % 16 != 0
            {
                return Some(Err(Fault));
            }
            let Ok(table) = self.ram.range(d.addr, u64::from(d.len)) else {
                return Some(Err(Fault));
            };
            self.table = table;
            self.count = d.len / 16;
            self.budget = self.count;
            self.in_indirect = true;
            self.next = Some(0);
            return self.next();
        }
        if d.flags & F_NEXT != 0 {
            self.next = Some(d.next);
        }
        Some(Ok(d))
    }
}

/// Most device-readable buffers [`Gather`] keeps for one chain (Linux sends a frame in at most
/// 19); longer chains are read in one pass instead.
pub const MAX_SEGS: usize = 32;

/// Why a chain could not be gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherError {
    /// A descriptor outside guest memory, or a broken chain.
    Memory,
    /// Longer than the limit.
    TooLong,
    /// More than [`MAX_SEGS`] buffers.
    TooManySegments,
}

/// The device-readable buffers of a TX chain (up to its first device-writable one), so the
/// frame can be read in pieces: headers first, payload later straight to where it goes.
pub struct Gather {
    segs: [(u64, u32); MAX_SEGS],
    n: usize,
    total: usize,
}

impl Gather {
    /// Walk `chain`, checking that every buffer lies in guest RAM and the total stays within
    /// `limit` bytes.
    pub fn collect(ram: &GuestRam, chain: Chain<'_>, limit: usize) -> Result<Gather, GatherError> {
        let mut g = Gather {
            segs: [(0, 0); MAX_SEGS],
            n: 0,
            total: 0,
        };
        for d in chain {
            let d = d.map_err(|Fault| GatherError::Memory)?;
            if d.is_write() {
                break;
            }
            if d.len == 0 {
                continue;
            }
            g.total += d.len as usize;
            if g.total > limit {
                return Err(GatherError::TooLong);
            }
            if g.n == MAX_SEGS {
                return Err(GatherError::TooManySegments);
            }
            // Adjacent regions are allowed; anything not RAM is not.
            let mut at = d.addr;
            let mut left = u64::from(d.len);
            while left > 0 {
                let (_, avail) = ram.locate(at).ok_or(GatherError::Memory)?;
                let k = avail.min(left);
                left -= k;
                at = at.checked_add(k).ok_or(GatherError::Memory)?;
            }
            g.segs[g.n] = (d.addr, d.len);
            g.n += 1;
        }
        Ok(g)
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the chain carried no bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Copy frame bytes `from..from + dst.len()` into `dst`.
    pub fn read(&self, ram: &GuestRam, from: usize, dst: &mut [u8]) -> Result<(), Fault> {
        let end = from.checked_add(dst.len()).ok_or(Fault)?;
        if end > self.total {
            return Err(Fault);
        }
        let mut pos = 0usize;
        let mut out = 0usize;
        for &(addr, len) in &self.segs[..self.n] {
            let len = len as usize;
            let (s, e) = (pos, pos + len);
            pos = e;
            if e <= from + out {
                continue;
            }
            if out == dst.len() {
                break;
            }
            let skip = from + out - s;
            let k = (len - skip).min(dst.len() - out);
            ram.read(addr + skip as u64, &mut dst[out..out + k])?;
            out += k;
        }
        Ok(())
    }
}

/// A split virtqueue opened for one batch of work (see the module docs).
pub struct SplitQueue<'a> {
    ram: &'a GuestRam,
    size: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    event_idx: bool,
    indirect: bool,
    next_avail: u16,
    next_used: u16,
    /// `next_used` when the view was opened: what the driver was last told about.
    used_at_open: u16,
    /// The driver's avail index as last read.
    avail_idx: u16,
    /// The driver broke the ring (bad head, impossible avail index): take nothing more.
    broken: bool,
}

impl<'a> SplitQueue<'a> {
    /// Open `q`; fails when the queue is not ready or its rings are not inside guest RAM or are
    /// misaligned.
    pub fn open(ram: &'a GuestRam, q: &Queue, indirect: bool) -> Result<Self, Fault> {
        let size = q.size();
        if !q.ready() || size == 0 {
            return Err(Fault);
        }
        let n = u64::from(size);
        let (d, a, u) = (q.desc_table(), q.avail_ring(), q.used_ring());
        if d % 16 != 0 || a % 2 != 0 || u % 4 != 0 {
            return Err(Fault);
        }
        let desc = ram.range(d, 16 * n)?;
        // flags, idx, ring[size], used_event
        let avail = ram.range(a, 6 + 2 * n)?;
        // flags, idx, ring[size] of (id, len), avail_event
        let used = ram.range(u, 6 + 8 * n)?;
        let mut sq = SplitQueue {
            ram,
            size,
            desc,
            avail,
            used,
            event_idx: q.event_idx_enabled(),
            indirect,
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            used_at_open: q.next_used(),
            avail_idx: 0,
            broken: false,
        };
        sq.avail_idx = sq.load_avail_idx();
        Ok(sq)
    }

    fn u16_at(&self, p: *const u8, off: usize) -> &AtomicU16 {
        // SAFETY: callers pass offsets inside the ring areas mapped in `open`; the ring bases are
        // 2-byte aligned (checked) and offsets even, and AtomicU16 has u16's layout. The guest
        // shares this memory, which is why it is only accessed atomically.
        unsafe { AtomicU16::from_ptr(p.add(off).cast::<u16>().cast_mut()) }
    }

    fn load_avail_idx(&self) -> u16 {
        u16::from_le(self.u16_at(self.avail, 2).load(Ordering::Acquire))
    }

    /// Take the head of the next available chain, reading the avail index again only when the
    /// entries seen so far are used up.
    pub fn pop(&mut self) -> Option<Result<u16, Fault>> {
        if self.broken {
            return None;
        }
        if self.next_avail == self.avail_idx {
            self.avail_idx = self.load_avail_idx();
            if self.next_avail == self.avail_idx {
                return None;
            }
        }
        let slot = usize::from(self.next_avail % self.size);
        let head = u16::from_le(
            self.u16_at(self.avail, 4 + 2 * slot)
                .load(Ordering::Relaxed),
        );
        // The driver claims more entries than the ring holds, or names a descriptor that does
        // not exist.
        if self.avail_idx.wrapping_sub(self.next_avail) > self.size || head >= self.size {
            self.broken = true;
            return Some(Err(Fault));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(Ok(head))
    }

    /// Whether the driver broke the ring during this batch.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Give back the last `n` chains taken with [`pop`](Self::pop) (the frame did not fit).
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// The descriptors of the chain starting at `head`.
    pub fn chain(&self, head: u16) -> Chain<'a> {
        Chain {
            ram: self.ram,
            indirect_ok: self.indirect,
            table: self.desc,
            count: u32::from(self.size),
            in_indirect: false,
            next: Some(head),
            budget: u32::from(self.size),
            max_len: u32::from(self.size),
        }
    }

    /// Put `head` on the used ring with `len` bytes written; visible once published.
    pub fn add_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // SAFETY: the used ring's element `slot` (< size) lies inside the area mapped in `open`
        // (4 + 8 * slot + 8 <= 6 + 8 * size) and is 4-byte aligned.
        unsafe {
            std::ptr::write_volatile(self.used.add(4 + 8 * slot).cast::<[u8; 8]>(), elem);
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Make the used entries added so far visible to the driver.
    pub fn publish(&self) {
        self.u16_at(self.used, 2)
            .store(self.next_used.to_le(), Ordering::Release);
    }

    /// Ask the driver to kick us when it adds buffers; true when some arrived meanwhile (so the
    /// caller should keep going instead of sleeping).
    pub fn enable_notification(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.event_idx {
            let off = 4 + 8 * usize::from(self.size);
            self.u16_at(self.used, off)
                .store(self.next_avail.to_le(), Ordering::Relaxed);
        } else {
            self.u16_at(self.used, 0).store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.avail_idx = self.load_avail_idx();
        self.avail_idx != self.next_avail
    }

    /// Tell the driver that kicks are not needed while we are working (without EVENT_IDX; with
    /// it, a kick already disarms itself).
    pub fn disable_notification(&self) {
        if !self.event_idx {
            self.u16_at(self.used, 0)
                .store(USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        }
    }

    /// Publish the used entries and say whether the driver asked to be interrupted for them.
    pub fn publish_and_check(&mut self) -> bool {
        if self.next_used == self.used_at_open {
            return false;
        }
        self.publish();
        fence(Ordering::SeqCst);
        let old = self.used_at_open;
        let new = self.next_used;
        self.used_at_open = new;
        if self.event_idx {
            let off = 4 + 2 * usize::from(self.size);
            let event = u16::from_le(self.u16_at(self.avail, off).load(Ordering::Relaxed));
            // vring_need_event: the driver's event index lies in (old, new].
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(self.u16_at(self.avail, 0).load(Ordering::Relaxed));
            flags & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Store the positions back into the queue the VMM can query.
    pub fn finish(self, q: &mut Queue) {
        self.publish();
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn two_regions() -> Arc<GuestMemoryMmap> {
        Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[
                (GuestAddress(0), 0x10_0000),
                (GuestAddress(0x10_0000), 0x1000),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn copies_span_adjacent_regions_and_fault_outside() {
        let gm = two_regions();
        let ram = GuestRam::new(gm.clone());
        let data: Vec<u8> = (0..64).collect();
        ram.write(0x10_0000 - 32, &data).unwrap();
        let mut back = [0u8; 64];
        gm.read_slice(&mut back, GuestAddress(0x10_0000 - 32))
            .unwrap();
        assert_eq!(&back[..], &data[..]);
        let mut again = [0u8; 64];
        ram.read(0x10_0000 - 32, &mut again).unwrap();
        assert_eq!(again, back);
        assert_eq!(ram.read(0x10_1000 - 8, &mut [0u8; 16]), Err(Fault));
        assert_eq!(ram.write(u64::MAX - 4, &[1u8; 8]), Err(Fault));
        assert_eq!(ram.range(0x10_0000 - 8, 16), Err(Fault), "one region only");
    }

    fn queue_of(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(false);
        q
    }

    #[test]
    fn chains_follow_next_and_indirect_and_loops_fault() {
        let gm = two_regions();
        let vq = MockSplitQueue::new(&*gm, 16);
        vq.add_desc_chains(&[d(0x1000, 10, F_NEXT, 1), d(0x2000, 20, F_WRITE, 0)], 0)
            .unwrap();
        // Indirect table at 0x8000 with two descriptors.
        gm.write_obj(d(0x3000, 30, F_NEXT, 1), GuestAddress(0x8000))
            .unwrap();
        gm.write_obj(d(0x4000, 40, 0, 0), GuestAddress(0x8010))
            .unwrap();
        vq.add_desc_chains(&[d(0x8000, 32, F_INDIRECT, 0)], 2)
            .unwrap();
        // A loop 3 -> 4 -> 3.
        vq.add_desc_chains(&[d(0x5000, 8, F_NEXT, 4), d(0x6000, 8, F_NEXT, 3)], 3)
            .unwrap();
        let ram = GuestRam::new(gm.clone());
        let q = queue_of(&vq);
        let mut sq = SplitQueue::open(&ram, &q, true).unwrap();
        let h = sq.pop().unwrap().unwrap();
        let lens: Vec<u32> = sq.chain(h).map(|d| d.unwrap().len).collect();
        assert_eq!(lens, [10, 20]);
        let h = sq.pop().unwrap().unwrap();
        let lens: Vec<u32> = sq.chain(h).map(|d| d.unwrap().len).collect();
        assert_eq!(lens, [30, 40]);
        let h = sq.pop().unwrap().unwrap();
        let r: Vec<_> = sq.chain(h).take(100).collect();
        assert!(r.len() <= 17 && r.last() == Some(&Err(Fault)), "{r:?}");
        assert!(sq.pop().is_none());
        // Without the feature an indirect descriptor is a fault.
        let mut sq = SplitQueue::open(&ram, &q, false).unwrap();
        sq.pop();
        let h = sq.pop().unwrap().unwrap();
        assert_eq!(sq.chain(h).next(), Some(Err(Fault)));
    }

    #[test]
    fn used_entries_are_published_and_written_back() {
        let gm = two_regions();
        let vq = MockSplitQueue::new(&*gm, 16);
        vq.add_desc_chains(&[d(0x1000, 10, 0, 0)], 0).unwrap();
        vq.add_desc_chains(&[d(0x2000, 10, 0, 0)], 1).unwrap();
        let ram = GuestRam::new(gm.clone());
        let mut q = queue_of(&vq);
        let mut sq = SplitQueue::open(&ram, &q, false).unwrap();
        let a = sq.pop().unwrap().unwrap();
        let b = sq.pop().unwrap().unwrap();
        sq.add_used(a, 0);
        sq.add_used(b, 7);
        assert_eq!(vq.used().idx().load(), 0, "not yet published");
        assert!(
            sq.publish_and_check(),
            "no EVENT_IDX, no NO_INTERRUPT: interrupt"
        );
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().len(), 7);
        sq.finish(&mut q);
        assert_eq!((q.next_avail(), q.next_used()), (2, 2));
    }

    #[test]
    fn a_driver_claiming_more_entries_than_the_ring_holds_faults() {
        let gm = two_regions();
        let vq = MockSplitQueue::new(&*gm, 16);
        vq.avail().idx().store(40);
        let ram = GuestRam::new(gm.clone());
        let q = queue_of(&vq);
        let mut sq = SplitQueue::open(&ram, &q, false).unwrap();
        assert_eq!(sq.pop(), Some(Err(Fault)));
        assert_eq!(sq.pop(), None, "a broken ring yields nothing more");
        assert!(
            !sq.enable_notification(),
            "and never asks to be run again at once"
        );
    }

    #[test]
    fn gather_reads_any_range_across_buffers_and_checks_limits() {
        let gm = two_regions();
        let vq = MockSplitQueue::new(&*gm, 16);
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        // 100 + 0 + 150 bytes, the last straddling the two regions, then a writable buffer.
        gm.write_slice(&bytes[..100], GuestAddress(0x1000)).unwrap();
        gm.write_slice(&bytes[100..250], GuestAddress(0x10_0000 - 50))
            .unwrap();
        vq.add_desc_chains(
            &[
                d(0x1000, 100, F_NEXT, 1),
                d(0x3000, 0, F_NEXT, 2),
                d(0x10_0000 - 50, 150, F_NEXT, 3),
                d(0x5000, 64, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        vq.add_desc_chains(&[d(0x10_1000 - 10, 20, 0, 0)], 4)
            .unwrap();
        let ram = GuestRam::new(gm.clone());
        let q = queue_of(&vq);
        let mut sq = SplitQueue::open(&ram, &q, false).unwrap();
        let h = sq.pop().unwrap().unwrap();
        let g = Gather::collect(&ram, sq.chain(h), 4096).unwrap();
        assert_eq!(g.len(), 250);
        for (from, n) in [
            (0, 250),
            (0, 1),
            (99, 2),
            (100, 150),
            (120, 130),
            (249, 1),
            (250, 0),
        ] {
            let mut out = vec![0u8; n];
            g.read(&ram, from, &mut out).unwrap();
            assert_eq!(out, bytes[from..from + n], "{from}+{n}");
        }
        assert_eq!(g.read(&ram, 200, &mut [0u8; 51]), Err(Fault));
        assert!(matches!(
            Gather::collect(&ram, sq.chain(h), 249),
            Err(GatherError::TooLong)
        ));
        let h = sq.pop().unwrap().unwrap();
        assert!(matches!(
            Gather::collect(&ram, sq.chain(h), 4096),
            Err(GatherError::Memory)
        ));
    }
}
