//! Single-producer single-consumer frame ring in a sealed memfd, signalled with eventfds.
//!
//! The consumer (the child serving the destination VM) creates the ring and hands three file
//! descriptors to the producer (the child serving the source VM) through the main process:
//! the memfd, a *data* eventfd (producer → consumer: frames were written) and a *space* eventfd
//! (consumer → producer: room was freed after the producer found the ring full).
//!
//! Layout of the memfd (all integers little-endian, native atomics):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `VMSWRNG1` |
//! | 8 | 8 | capacity of the data area in bytes (a power of two) |
//! | 64 | 8 | `head`: bytes ever written (producer only) |
//! | 128 | 8 | `tail`: bytes ever consumed (consumer only) |
//! | 136 | 4 | `want_space`: the producer waits for the space eventfd |
//! | 140 | 4 | `want_data`: the consumer found the ring empty and waits for the data eventfd |
//! | 256 | capacity | data area |
//!
//! A record is an 8-byte header (`u32` length, `u32` reserved) followed by the frame, padded to
//! 8 bytes. Records never wrap: when the rest of the area is too short the producer writes a
//! header with length `u32::MAX` and continues at offset 0. `head` is published with release
//! ordering after the bytes, `tail` likewise after reading them, so no lock is needed.
//!
//! Both sides distrust each other: the memfd is sealed against resizing before it is shared; each
//! side keeps its own copy of the index it owns and only reads the other one, and every length or
//! index read from shared memory is bounds-checked; frames are copied out before they are parsed.
//! A ring that ever violates the rules is reported as [`RingError::Corrupt`] and abandoned.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const MAGIC: u64 = u64::from_le_bytes(*b"VMSWRNG1");
const OFF_MAGIC: usize = 0;
const OFF_CAP: usize = 8;
const OFF_HEAD: usize = 64;
const OFF_TAIL: usize = 128;
const OFF_WANT_SPACE: usize = 136;
const OFF_WANT_DATA: usize = 140;
/// Offset of the data area.
pub const DATA_OFFSET: usize = 256;
const REC_HDR: u64 = 8;
const WRAP: u32 = u32::MAX;
/// Largest record payload: a 64 KiB GSO frame plus virtio-net header, with slack.
pub const MAX_RECORD: usize = 65_536 + 256;
/// Smallest accepted data area.
pub const MIN_CAPACITY: usize = 4096;
/// Largest accepted data area (bounds what a peer can make us map).
pub const MAX_CAPACITY: usize = 64 << 20;

/// Errors from creating, attaching or using a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A system call failed.
    #[error("{op} failed")]
    Sys {
        /// The call.
        op: &'static str,
        /// errno.
        #[source]
        source: std::io::Error,
    },
    /// The capacity is not a power of two within bounds.
    #[error("ring capacity {0} must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}")]
    BadCapacity(usize),
    /// The memfd handed to us does not look like a ring (size, seals or header).
    #[error("received ring memory is invalid: {0}")]
    BadMemory(&'static str),
    /// The other side broke the protocol; stop using this ring.
    #[error("ring corrupted by its peer: {0}")]
    Corrupt(&'static str),
    /// The frame is larger than [`MAX_RECORD`] or the ring.
    #[error("frame of {0} bytes is too large for the ring")]
    TooLarge(usize),
}

fn sys(op: &'static str) -> RingError {
    RingError::Sys {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// A shared mapping of a ring memfd.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    cap: u64,
}

// SAFETY: the mapping is plain shared memory; all cross-thread access goes through atomics or
// copies guarded by the head/tail protocol.
unsafe impl Send for Mapping {}
// SAFETY: shared references only reach the header atomics; data-area copies need `&mut` on the
// owning Producer/Consumer.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: &OwnedFd, len: usize) -> Result<Mapping, RingError> {
        // SAFETY: mapping a memfd we own with a length equal to its (sealed) size; the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(sys("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RingError::BadMemory("null mapping"))?;
        Ok(Mapping {
            ptr,
            len,
            cap: (len - DATA_OFFSET) as u64,
        })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= DATA_OFFSET && off.is_multiple_of(8));
        // SAFETY: `off` is an aligned header offset inside the mapping (page aligned base), and
        // AtomicU64 has the same layout as u64; shared memory is only accessed atomically here.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= DATA_OFFSET && off.is_multiple_of(4));
        // SAFETY: as in `u64_at`, for a 4-byte aligned header field.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: DATA_OFFSET < len, checked at creation/attach.
        unsafe { self.ptr.as_ptr().add(DATA_OFFSET) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; nothing borrows it past drop.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The three descriptors that describe a ring, as sent over the control socket.
#[derive(Debug)]
pub struct RingFds {
    /// The sealed memfd.
    pub memfd: OwnedFd,
    /// Producer → consumer doorbell.
    pub data: OwnedFd,
    /// Consumer → producer doorbell.
    pub space: OwnedFd,
}

fn dup_eventfd(e: &EventFd) -> Result<OwnedFd, RingError> {
    let c = e.try_clone().map_err(|source| RingError::Sys {
        op: "dup eventfd",
        source,
    })?;
    // SAFETY: `into_raw_fd`-like transfer: we take ownership of the cloned descriptor and forget
    // the EventFd wrapper so it is not closed twice.
    let fd = unsafe { OwnedFd::from_raw_fd(c.as_raw_fd()) };
    std::mem::forget(c);
    Ok(fd)
}

fn eventfd_from(fd: OwnedFd) -> EventFd {
    use std::os::fd::IntoRawFd;
    // SAFETY: we own `fd` and hand its ownership to the EventFd.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

/// The receiving end of a ring; owned by the child whose VM receives the frames.
#[derive(Debug)]
pub struct Consumer {
    map: Mapping,
    tail: u64,
    data: EventFd,
    space: EventFd,
}

/// The sending end of a ring; owned by the child whose VM sends the frames.
#[derive(Debug)]
pub struct Producer {
    map: Mapping,
    head: u64,
    data: EventFd,
    space: EventFd,
}

/// What [`Producer::push_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The frame is in the ring.
    Yes,
    /// No room; nothing written.
    Full,
    /// The filler gave up; nothing published.
    Abandoned,
}

/// A record found by [`Consumer::peek`], still in the ring.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    off: usize,
    len: usize,
    need: u64,
}

impl Record {
    /// Length of the frame in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A record's bytes in shared memory. The producer is untrusted and may still write them, so
/// they are only ever copied out (never parsed in place); whatever is parsed comes from a copy.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    ptr: *const u8,
    len: usize,
    _ring: std::marker::PhantomData<&'a Consumer>,
}

impl Shared<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy bytes `from..from + dst.len()` into `dst`; false (and nothing copied) when that
    /// range is not inside the record.
    pub fn copy_to(&self, from: usize, dst: &mut [u8]) -> bool {
        match self.raw(from, dst.len()) {
            Some(p) => {
                // SAFETY: `raw` checked the range lies inside the record, which lies inside the
                // mapping borrowed for 'a; `dst` is our own memory.
                unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
                true
            }
            None => false,
        }
    }

    /// A pointer to bytes `from..from + n`, when inside the record; valid for reads of `n`
    /// bytes while the consumer is borrowed.
    pub fn raw(&self, from: usize, n: usize) -> Option<*const u8> {
        let end = from.checked_add(n)?;
        // SAFETY: from <= end <= len, so the result is inside the record.
        (end <= self.len).then(|| unsafe { self.ptr.add(from) })
    }
}

/// Create a ring with a data area of `capacity` bytes; returns the consumer and the descriptors
/// to hand to the producer.
pub fn create(capacity: usize) -> Result<(Consumer, RingFds), RingError> {
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(RingError::BadCapacity(capacity));
    }
    let len = DATA_OFFSET + capacity;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"vm-switch-ring".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(sys("memfd_create"));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on our memfd; result checked.
    if unsafe { libc::ftruncate(memfd.as_raw_fd(), len as libc::off_t) } < 0 {
        return Err(sys("ftruncate"));
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl F_ADD_SEALS on our memfd; result checked.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(sys("fcntl(F_ADD_SEALS)"));
    }
    let map = Mapping::map(&memfd, len)?;
    map.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Relaxed);
    map.u64_at(OFF_CAP)
        .store(capacity as u64, Ordering::Relaxed);
    map.u64_at(OFF_HEAD).store(0, Ordering::Relaxed);
    map.u64_at(OFF_TAIL).store(0, Ordering::Relaxed);
    map.u32_at(OFF_WANT_DATA).store(1, Ordering::Relaxed);
    map.u32_at(OFF_WANT_SPACE).store(0, Ordering::Release);
    let data = EventFd::new(EFD_NONBLOCK).map_err(|source| RingError::Sys {
        op: "eventfd",
        source,
    })?;
    let space = EventFd::new(EFD_NONBLOCK).map_err(|source| RingError::Sys {
        op: "eventfd",
        source,
    })?;
    let fds = RingFds {
        memfd,
        data: dup_eventfd(&data)?,
        space: dup_eventfd(&space)?,
    };
    Ok((
        Consumer {
            map,
            tail: 0,
            data,
            space,
        },
        fds,
    ))
}

impl Producer {
    /// Attach to a ring created by the other side, after checking its size, seals and header.
    pub fn attach(fds: RingFds) -> Result<Producer, RingError> {
        // SAFETY: fstat into a zeroed stat buffer for a descriptor we own; result checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fds.memfd.as_raw_fd(), &mut st) } < 0 {
            return Err(sys("fstat"));
        }
        let len = usize::try_from(st.st_size).map_err(|_| RingError::BadMemory("size"))?;
        if !(DATA_OFFSET + MIN_CAPACITY..=DATA_OFFSET + MAX_CAPACITY).contains(&len) {
            return Err(RingError::BadMemory("size out of range"));
        }
        if !(len - DATA_OFFSET).is_power_of_two() {
            return Err(RingError::BadMemory("capacity not a power of two"));
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; result checked.
        let seals = unsafe { libc::fcntl(fds.memfd.as_raw_fd(), libc::F_GET_SEALS) };
        let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if seals < 0 || seals & need != need {
            return Err(RingError::BadMemory("memfd is not sealed against resizing"));
        }
        let map = Mapping::map(&fds.memfd, len)?;
        if map.u64_at(OFF_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(RingError::BadMemory("bad magic"));
        }
        if map.u64_at(OFF_CAP).load(Ordering::Acquire) != map.cap {
            return Err(RingError::BadMemory("capacity field disagrees with size"));
        }
        let head = map.u64_at(OFF_HEAD).load(Ordering::Acquire);
        Ok(Producer {
            map,
            head,
            data: eventfd_from(fds.data),
            space: eventfd_from(fds.space),
        })
    }

    /// Descriptor that becomes readable when the consumer freed space we asked for.
    pub fn space_fd(&self) -> &EventFd {
        &self.space
    }

    /// Bytes free right now (may grow concurrently).
    fn free(&self) -> Result<u64, RingError> {
        let tail = self.map.u64_at(OFF_TAIL).load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > self.map.cap {
            return Err(RingError::Corrupt("tail ahead of head"));
        }
        Ok(self.map.cap - used)
    }

    /// Append one frame made of `parts` (e.g. header and payload). `Ok(false)` means the ring is
    /// full; the producer then registered interest in the space eventfd.
    pub fn push(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.push_with(len, |dst| {
            let mut at = 0;
            for p in parts {
                dst[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            true
        })
        .map(|r| r == Pushed::Yes)
    }

    /// Append one frame of `len` bytes written in place by `fill`, which returns false to
    /// abandon it (nothing is published then). A full ring registers interest in the space
    /// eventfd and returns [`Pushed::Full`] without calling `fill`.
    pub fn push_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<Pushed, RingError> {
        if len > MAX_RECORD || (len as u64 + REC_HDR) * 2 > self.map.cap {
            return Err(RingError::TooLarge(len));
        }
        let need = REC_HDR + (len as u64).div_ceil(8) * 8;
        let mask = self.map.cap - 1;
        let off = self.head & mask;
        let contiguous = self.map.cap - off;
        let total = if need > contiguous {
            contiguous + need
        } else {
            need
        };
        if self.free()? < total {
            self.map.u32_at(OFF_WANT_SPACE).store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // The consumer may have drained between our check and the flag: look again.
            if self.free()? < total {
                return Ok(Pushed::Full);
            }
        }
        let base = self.map.data();
        let at = if need > contiguous {
            // SAFETY: off + 8 <= cap since records are 8-aligned and cap is a multiple of 8.
            unsafe { write_hdr(base.add(off as usize), WRAP) };
            0
        } else {
            off
        };
        // SAFETY: at + need <= cap (checked above), so header and frame are inside the data area.
        unsafe { write_hdr(base.add(at as usize), len as u32) };
        // SAFETY: as above; these bytes are ours until `head` publishes them. A consumer that
        // breaks the protocol and writes them only garbles its own incoming frame.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(base.add(at as usize + REC_HDR as usize), len)
        };
        if !fill(bytes) {
            return Ok(Pushed::Abandoned);
        }
        self.head += total;
        self.map
            .u64_at(OFF_HEAD)
            .store(self.head, Ordering::Release);
        Ok(Pushed::Yes)
    }

    /// Wake the consumer after one or more pushes, unless it is still draining (it clears
    /// `want_data` while busy and sets it again before it sleeps on an empty ring).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.map.u32_at(OFF_WANT_DATA).swap(0, Ordering::AcqRel) != 0 {
            let _ = self.data.write(1);
        }
    }

    /// Whether the ring has room for a frame of `len` bytes now.
    pub fn has_room(&self, len: usize) -> bool {
        let need = REC_HDR + (len as u64).div_ceil(8) * 8;
        self.free().is_ok_and(|f| f >= need * 2)
    }
}

/// Write a record header.
///
/// # Safety
/// `p` must point to 8 writable bytes inside the data area.
unsafe fn write_hdr(p: *mut u8, len: u32) {
    let h = u64::from(len).to_le_bytes();
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), p, 8) };
}

impl Consumer {
    /// Descriptor that becomes readable when the producer wrote frames.
    pub fn data_fd(&self) -> &EventFd {
        &self.data
    }

    /// Reset the data doorbell before draining.
    pub fn ack(&self) {
        let _ = self.data.read();
    }

    /// Whether a record is waiting.
    pub fn is_empty(&self) -> bool {
        self.map.u64_at(OFF_HEAD).load(Ordering::Acquire) == self.tail
    }

    /// Copy the next frame into `buf` (cleared first). `Ok(false)` when the ring is empty.
    pub fn pop(&mut self, buf: &mut Vec<u8>) -> Result<bool, RingError> {
        buf.clear();
        let Some(rec) = self.peek()? else {
            return Ok(false);
        };
        buf.resize(rec.len, 0);
        self.bytes(&rec).copy_to(0, buf);
        self.consume(rec);
        Ok(true)
    }

    /// The next record, left in the ring until [`consume`](Self::consume)d; `Ok(None)` when the
    /// ring is empty (the producer is then asked for the data doorbell).
    pub fn peek(&mut self) -> Result<Option<Record>, RingError> {
        loop {
            let head = self.map.u64_at(OFF_HEAD).load(Ordering::Acquire);
            let mut avail = head.wrapping_sub(self.tail);
            if avail == 0 {
                // About to sleep: ask for the doorbell, then look once more in case the producer
                // published before it could see the request.
                self.map.u32_at(OFF_WANT_DATA).store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                avail = self
                    .map
                    .u64_at(OFF_HEAD)
                    .load(Ordering::Acquire)
                    .wrapping_sub(self.tail);
                if avail == 0 {
                    return Ok(None);
                }
                self.map.u32_at(OFF_WANT_DATA).store(0, Ordering::Relaxed);
            }
            if avail > self.map.cap || avail < REC_HDR {
                return Err(RingError::Corrupt("head out of range"));
            }
            let mask = self.map.cap - 1;
            let off = self.tail & mask;
            let mut h = [0u8; 8];
            // SAFETY: off is 8-aligned and < cap, so 8 bytes are inside the data area.
            unsafe {
                std::ptr::copy_nonoverlapping(self.map.data().add(off as usize), h.as_mut_ptr(), 8)
            };
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            if len == WRAP {
                let skip = self.map.cap - off;
                if skip > avail {
                    return Err(RingError::Corrupt("wrap marker beyond head"));
                }
                self.tail += skip;
                continue;
            }
            let need = REC_HDR + u64::from(len).div_ceil(8) * 8;
            if len as usize > MAX_RECORD || need > avail || off + need > self.map.cap {
                return Err(RingError::Corrupt("record length out of range"));
            }
            return Ok(Some(Record {
                off: off as usize + REC_HDR as usize,
                len: len as usize,
                need,
            }));
        }
    }

    /// The bytes of a record returned by [`peek`](Self::peek).
    pub fn bytes(&self, rec: &Record) -> Shared<'_> {
        Shared {
            // SAFETY: peek checked off + len <= cap, so the record lies inside the data area.
            ptr: unsafe { self.map.data().add(rec.off) },
            len: rec.len,
            _ring: std::marker::PhantomData,
        }
    }

    /// Drop a peeked record from the ring (its space is handed back on [`release`](Self::release)
    /// or earlier).
    pub fn consume(&mut self, rec: Record) {
        self.tail += rec.need;
        self.map
            .u64_at(OFF_TAIL)
            .store(self.tail, Ordering::Release);
    }

    /// After draining: wake the producer if it is waiting for space, but only once at least
    /// half the ring is free, so a full ring costs one wake-up per half ring rather than one
    /// per drained batch. Every drain ends with a call, so the flag is never forgotten: either
    /// this one signals or a later one (after more was consumed) does.
    pub fn release(&self) {
        fence(Ordering::SeqCst);
        let used = self
            .map
            .u64_at(OFF_HEAD)
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail);
        if used > self.map.cap / 2 && used <= self.map.cap {
            return;
        }
        if self.map.u32_at(OFF_WANT_SPACE).swap(0, Ordering::AcqRel) != 0 {
            let _ = self.space.write(1);
        }
    }
}

impl RingFds {
    /// Borrow the three descriptors in protocol order (memfd, data, space).
    pub fn as_fds(&self) -> [std::os::fd::BorrowedFd<'_>; 3] {
        [self.memfd.as_fd(), self.data.as_fd(), self.space.as_fd()]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(seq: u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    #[test]
    fn roundtrip_with_wraparound() {
        let (mut c, fds) = create(4096).unwrap();
        let mut p = Producer::attach(fds).unwrap();
        let mut buf = Vec::new();
        for seq in 0..1000u32 {
            let len = 1 + (seq as usize * 7) % 700;
            assert!(p.push(&[&frame(seq, len)]).unwrap());
            assert!(c.pop(&mut buf).unwrap());
            assert_eq!(buf, frame(seq, len));
        }
        assert!(!c.pop(&mut buf).unwrap());
    }

    #[test]
    fn data_doorbell_only_when_the_consumer_found_the_ring_empty() {
        let (mut c, fds) = create(4096).unwrap();
        let mut p = Producer::attach(fds).unwrap();
        assert!(p.push(&[&[1u8; 100]]).unwrap());
        p.notify();
        assert_eq!(
            c.data_fd().read().unwrap(),
            1,
            "a fresh consumer waits for data"
        );
        let mut buf = Vec::new();
        assert!(c.pop(&mut buf).unwrap());
        assert!(p.push(&[&[2u8; 100]]).unwrap());
        p.notify();
        assert!(c.data_fd().read().is_err(), "a busy consumer is not woken");
        assert!(c.pop(&mut buf).unwrap());
        assert!(!c.pop(&mut buf).unwrap());
        assert!(p.push(&[&[3u8; 100]]).unwrap());
        p.notify();
        assert_eq!(
            c.data_fd().read().unwrap(),
            1,
            "woken after it found the ring empty"
        );
    }

    #[test]
    fn full_ring_reports_false_and_signals_space() {
        let (mut c, fds) = create(4096).unwrap();
        let mut p = Producer::attach(fds).unwrap();
        let mut n = 0;
        while p.push(&[&[0u8; 500]]).unwrap() {
            n += 1;
        }
        assert!((6..=8).contains(&n), "{n} frames of 500 in 4096");
        let mut buf = Vec::new();
        assert!(c.pop(&mut buf).unwrap());
        c.release();
        assert!(
            p.space_fd().read().is_err(),
            "no doorbell while the ring is over half full"
        );
        for _ in 0..n / 2 {
            assert!(c.pop(&mut buf).unwrap());
        }
        c.release();
        assert_eq!(p.space_fd().read().unwrap(), 1, "space doorbell rung");
        assert!(p.push(&[&[1u8; 500]]).unwrap());
    }

    #[test]
    fn rejects_unsealed_or_wrong_memory() {
        // A plain memfd of the right size but without seals.
        // SAFETY: test-only memfd.
        let raw = unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: fresh descriptor.
        let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: test-only.
        unsafe { libc::ftruncate(raw, (DATA_OFFSET + 4096) as i64) };
        let e1 = EventFd::new(0).unwrap();
        let fds = RingFds {
            memfd,
            data: dup_eventfd(&e1).unwrap(),
            space: dup_eventfd(&e1).unwrap(),
        };
        assert!(matches!(
            Producer::attach(fds),
            Err(RingError::BadMemory(_))
        ));
        assert!(matches!(create(5000), Err(RingError::BadCapacity(5000))));
    }

    #[test]
    fn corrupted_indices_are_detected_not_trusted() {
        let (mut c, fds) = create(4096).unwrap();
        let mut p = Producer::attach(fds).unwrap();
        assert!(p.push(&[&[9u8; 100]]).unwrap());
        // A hostile producer scribbles a huge head / record length.
        c.map.u64_at(OFF_HEAD).store(1 << 40, Ordering::Release);
        let mut buf = Vec::new();
        assert!(matches!(c.pop(&mut buf), Err(RingError::Corrupt(_))));
        // A hostile consumer moves tail past head.
        p.map.u64_at(OFF_TAIL).store(1 << 40, Ordering::Release);
        assert!(matches!(p.push(&[&[1u8; 10]]), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn works_across_processes() {
        let (mut c, fds) = create(16384).unwrap();
        const N: u32 = 20_000;
        // SAFETY: the child only uses the ring and exits with _exit, never returning into the
        // test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut p = match Producer::attach(fds) {
                Ok(p) => p,
                // SAFETY: terminate the forked child without running destructors.
                Err(_) => unsafe { libc::_exit(2) },
            };
            let mut seq = 0;
            while seq < N {
                match p.push(&[&seq.to_le_bytes(), &frame(seq, 60 + seq as usize % 1400)]) {
                    Ok(true) => {
                        seq += 1;
                        p.notify();
                    }
                    Ok(false) => {
                        let mut pfd = libc::pollfd {
                            fd: p.space_fd().as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: polling one valid descriptor.
                        unsafe { libc::poll(&mut pfd, 1, 100) };
                        let _ = p.space_fd().read();
                    }
                    // SAFETY: as above.
                    Err(_) => unsafe { libc::_exit(3) },
                }
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let mut buf = Vec::new();
        let mut next = 0u32;
        while next < N {
            if c.pop(&mut buf).unwrap() {
                let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
                assert_eq!(seq, next, "in order, none lost");
                assert_eq!(&buf[4..], &frame(seq, 60 + seq as usize % 1400)[..]);
                next += 1;
            } else {
                c.release();
                let mut pfd = libc::pollfd {
                    fd: c.data_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one valid descriptor.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                c.ack();
            }
        }
        c.release();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
