//! A minimal vhost-user-net *frontend* (the VMM side) for tests and the load generator: memfd
//! guest memory, split virtqueues written by hand, kick/call eventfds. It plays a VM whose
//! driver busy-polls its used rings (notifications from the device are suppressed).

#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::too_many_arguments,
    clippy::needless_update
)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const VNET_HDR: usize = 12;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Shared guest memory: one memfd region, mapped here and handed to the backend.
pub struct GuestMem {
    fd: OwnedFd,
    ptr: *mut u8,
    size: usize,
}

// SAFETY: plain shared memory used from one thread at a time in these tools.
unsafe impl Send for GuestMem {}

impl GuestMem {
    pub fn new(size: usize) -> GuestMem {
        // SAFETY: memfd_create with a static name; checked below.
        let raw = unsafe { libc::memfd_create(c"vfront-guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create");
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing our memfd.
        assert_eq!(unsafe { libc::ftruncate(raw, size as i64) }, 0);
        // SAFETY: shared mapping of our memfd, checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        GuestMem {
            fd,
            ptr: ptr.cast(),
            size,
        }
    }

    /// Guest physical address == offset; the VMM-side ("user") address is ptr + offset.
    pub fn uaddr(&self, off: usize) -> u64 {
        self.ptr as u64 + off as u64
    }

    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.ptr as u64,
            mmap_offset: 0,
            mmap_handle: self.fd.as_raw_fd(),
            ..Default::default()
        }
    }

    fn w16(&self, off: usize, v: u16) {
        assert!(off + 2 <= self.size);
        // SAFETY: in bounds (checked); volatile because the backend reads concurrently.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u16>(), v) }
    }
    fn r16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u16>()) }
    }
    fn w32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }
    fn r32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }
    fn w64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u64>(), v) }
    }
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) }
    }
    pub fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.size);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) }
    }
    /// Raw descriptor write, for hostile-guest tests.
    pub fn put_desc(&self, table: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = table + 16 * usize::from(i);
        self.w64(d, addr);
        self.w32(d + 8, len);
        self.w16(d + 12, flags);
        self.w16(d + 14, next);
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.size) };
    }
}

/// One split virtqueue laid out at `base` in guest memory, with `size` buffers of `buf_size`.
pub struct Vring {
    pub size: u16,
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    pub bufs: usize,
    pub buf_size: usize,
    pub next_avail: u16,
    pub last_used: u16,
    pub free: Vec<u16>,
    pub kick: EventFd,
    pub call: EventFd,
}

impl Vring {
    /// Bytes of guest memory a queue of `size` buffers of `buf_size` needs.
    pub fn footprint(size: u16, buf_size: usize) -> usize {
        let n = usize::from(size);
        let rings = 16 * n + (6 + 2 * n) + 8 + (6 + 8 * n);
        rings.div_ceil(4096) * 4096 + n * buf_size
    }

    pub fn new(base: usize, size: u16, buf_size: usize) -> Vring {
        let n = usize::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).div_ceil(8) * 8;
        let bufs = (used + 6 + 8 * n).div_ceil(4096) * 4096;
        Vring {
            size,
            desc,
            avail,
            used,
            bufs,
            buf_size,
            next_avail: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    pub fn buf(&self, i: u16) -> usize {
        self.bufs + usize::from(i) * self.buf_size
    }

    /// Publish descriptor head `i` in the avail ring (without bumping the index).
    fn push_avail(&mut self, mem: &GuestMem, i: u16) {
        let slot = usize::from(self.next_avail % self.size);
        mem.w16(self.avail + 4 + 2 * slot, i);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    fn publish(&self, mem: &GuestMem) {
        fence(Ordering::Release);
        mem.w16(self.avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
    }

    fn kick_if_wanted(&self, mem: &GuestMem) {
        if mem.r16(self.used) & VRING_USED_F_NO_NOTIFY == 0 {
            let _ = self.kick.write(1);
        }
    }

    /// Used entries since last time: (descriptor id, length).
    fn take_used(&mut self, mem: &GuestMem, out: &mut Vec<(u16, u32)>) {
        let idx = mem.r16(self.used + 2);
        fence(Ordering::Acquire);
        while self.last_used != idx {
            let slot = usize::from(self.last_used % self.size);
            let id = mem.r32(self.used + 4 + 8 * slot) as u16;
            let len = mem.r32(self.used + 4 + 8 * slot + 4);
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
    }
}

/// One vhost-user-net port: a connection to a backend plus RX (0) and TX (1) queues.
pub struct Port {
    pub fe: Frontend,
    pub rx: Vring,
    pub tx: Vring,
    pub features: u64,
    scratch: Vec<(u16, u32)>,
}

/// Connect to `sock` (retrying until `timeout`).
pub fn connect(sock: &Path, timeout: Duration) -> Frontend {
    let t = Instant::now();
    loop {
        match Frontend::connect(sock, 2) {
            Ok(f) => return f,
            Err(e) => {
                assert!(
                    t.elapsed() < timeout,
                    "cannot connect to {}: {e}",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Port {
    /// Negotiate (VERSION_1 only: plain frames, one buffer each), share memory, set up queues at
    /// `base` in `mem`, and post every RX buffer.
    pub fn setup(
        mut fe: Frontend,
        mem: &GuestMem,
        base: usize,
        qsize: u16,
        buf_size: usize,
    ) -> Port {
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let pf = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & pf != 0 {
            let p = fe.get_protocol_features().unwrap();
            fe.set_protocol_features(
                p & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG),
            )
            .unwrap();
        }
        let features = offered & (VIRTIO_F_VERSION_1 | pf);
        fe.set_features(features).unwrap();
        fe.set_mem_table(&[mem.region()]).unwrap();
        let rx = Vring::new(base, qsize, buf_size);
        let tx = Vring::new(base + Vring::footprint(qsize, buf_size), qsize, buf_size);
        for (q, r) in [(0usize, &rx), (1, &tx)] {
            // The driver polls: ask the device not to interrupt.
            mem.w16(r.avail, VRING_AVAIL_F_NO_INTERRUPT);
            fe.set_vring_num(q, qsize).unwrap();
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: qsize,
                    queue_size: qsize,
                    flags: 0,
                    desc_table_addr: mem.uaddr(r.desc),
                    used_ring_addr: mem.uaddr(r.used),
                    avail_ring_addr: mem.uaddr(r.avail),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(q, 0).unwrap();
            fe.set_vring_call(q, &r.call).unwrap();
            fe.set_vring_kick(q, &r.kick).unwrap();
            if features & pf != 0 {
                fe.set_vring_enable(q, true).unwrap();
            }
        }
        let mut port = Port {
            fe,
            rx,
            tx,
            features,
            scratch: Vec::with_capacity(usize::from(qsize)),
        };
        port.post_all_rx(mem);
        port
    }

    pub fn post_all_rx(&mut self, mem: &GuestMem) {
        while let Some(i) = self.rx.free.pop() {
            mem.put_desc(
                self.rx.desc,
                i,
                self.rx.buf(i) as u64,
                self.rx.buf_size as u32,
                VRING_DESC_F_WRITE,
                0,
            );
            self.rx.push_avail(mem, i);
        }
        self.rx.publish(mem);
        self.rx.kick_if_wanted(mem);
    }

    /// Queue as many frames as there are free TX buffers, produced by `make(buf)` (which writes
    /// the Ethernet frame after the virtio-net header and returns its length). Returns how many.
    pub fn send_burst(
        &mut self,
        mem: &GuestMem,
        max: usize,
        make: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> usize {
        self.reap_tx(mem);
        let mut n = 0;
        let mut frame = vec![0u8; self.tx.buf_size];
        while n < max {
            let Some(i) = self.tx.free.pop() else { break };
            frame[..VNET_HDR].fill(0);
            let len = make(&mut frame[VNET_HDR..]);
            mem.write(self.tx.buf(i), &frame[..VNET_HDR + len]);
            mem.put_desc(
                self.tx.desc,
                i,
                self.tx.buf(i) as u64,
                (VNET_HDR + len) as u32,
                0,
                0,
            );
            self.tx.push_avail(mem, i);
            n += 1;
        }
        if n > 0 {
            self.tx.publish(mem);
            self.tx.kick_if_wanted(mem);
        }
        n
    }

    pub fn reap_tx(&mut self, mem: &GuestMem) {
        self.scratch.clear();
        let mut used = std::mem::take(&mut self.scratch);
        self.tx.take_used(mem, &mut used);
        for (id, _) in used.drain(..) {
            if id < self.tx.size {
                self.tx.free.push(id);
            }
        }
        self.scratch = used;
    }

    /// Hand every received frame (without the virtio-net header) to `f`, then re-post buffers.
    pub fn recv(&mut self, mem: &GuestMem, f: &mut dyn FnMut(&[u8])) -> usize {
        self.scratch.clear();
        let mut used = std::mem::take(&mut self.scratch);
        self.rx.take_used(mem, &mut used);
        let n = used.len();
        let mut buf = vec![0u8; self.rx.buf_size];
        for &(id, len) in &used {
            let len = (len as usize).min(self.rx.buf_size);
            if id < self.rx.size && len >= VNET_HDR {
                mem.read(self.rx.buf(id), &mut buf[..len]);
                f(&buf[VNET_HDR..len]);
            }
            if id < self.rx.size {
                self.rx.free.push(id);
            }
        }
        self.scratch = used;
        if n > 0 {
            self.post_all_rx(mem);
        }
        n
    }
}

/// Build an Ethernet/IPv4/UDP frame of `len` bytes (>= 60) into `buf`, carrying `seq` and a
/// send timestamp; returns `len`.
pub fn udp_frame(
    buf: &mut [u8],
    len: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    seq: u64,
    ts_ns: u64,
) -> usize {
    let len = len.max(60);
    let f = &mut buf[..len];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 1] = 0;
    f[ip + 2..ip + 4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[ip + 4..ip + 8].fill(0);
    f[ip + 8] = 64;
    f[ip + 9] = 17;
    f[ip + 10..ip + 12].fill(0);
    f[ip + 12..ip + 16].copy_from_slice(&src);
    f[ip + 16..ip + 20].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    for c in f[ip..ip + 20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = ip + 20;
    f[udp..udp + 2].copy_from_slice(&sport.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&9u16.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&((len - udp) as u16).to_be_bytes());
    f[udp + 6..udp + 8].fill(0);
    f[udp + 8..udp + 16].copy_from_slice(&seq.to_le_bytes());
    f[udp + 16..udp + 24].copy_from_slice(&ts_ns.to_le_bytes());
    len
}

/// (seq, timestamp, source port) of a frame built by [`udp_frame`].
pub fn parse_udp_frame(f: &[u8]) -> Option<(u64, u64, u16)> {
    if f.len() < 58 || f[12..14] != [8, 0] || f[23] != 17 {
        return None;
    }
    let seq = u64::from_le_bytes(f[42..50].try_into().ok()?);
    let ts = u64::from_le_bytes(f[50..58].try_into().ok()?);
    let sport = u16::from_be_bytes([f[34], f[35]]);
    Some((seq, ts, sport))
}
