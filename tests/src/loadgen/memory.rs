//! Guest memory of one simulated VM: a memfd mapped shared, guest-physical address 0, as QEMU's
//! `memory-backend-memfd,share=on` and crosvm provide it, so a vhost-user backend can map it.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::memfd::{MFdFlags, memfd_create};
use vhost::VhostUserMemoryRegionInfo;
use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion, VolatileMemory, VolatileSlice,
};

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create a {size}-byte memfd")]
    Memfd {
        /// Requested size.
        size: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(String),
    /// An allocation did not fit.
    #[error("guest memory exhausted: {wanted} bytes wanted, {left} left")]
    Exhausted {
        /// Bytes requested.
        wanted: usize,
        /// Bytes left.
        left: usize,
    },
}

/// Shared guest memory plus a bump allocator for rings and buffers.
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    file: File,
    size: usize,
    next: usize,
}

impl GuestMem {
    /// Create `size` bytes of memfd-backed shared memory at guest-physical address 0.
    pub fn new(size: usize) -> Result<Self, MemoryError> {
        let memfd_err = |source| MemoryError::Memfd { size, source };
        let fd = memfd_create("vhost-loadgen", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| memfd_err(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(memfd_err)?;
        let dup = file.try_clone().map_err(memfd_err)?;
        let region = MmapRegion::from_file(FileOffset::new(dup, 0), size)
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| MemoryError::Mmap("region does not fit the address space".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        Ok(Self {
            mem,
            file,
            size,
            next: 0,
        })
    }

    /// Reserve `len` bytes aligned to `align` (a power of two); returns the guest address.
    pub fn alloc(&mut self, len: usize, align: usize) -> Result<u64, MemoryError> {
        let start = self.next.next_multiple_of(align);
        if start + len > self.size {
            return Err(MemoryError::Exhausted {
                wanted: len,
                left: self.size.saturating_sub(start),
            });
        }
        self.next = start + len;
        Ok(start as u64)
    }

    /// The whole memory as one volatile slice; offsets in it are guest-physical addresses.
    pub fn slice(&self) -> VolatileSlice<'_, ()> {
        VolatileMemory::as_volatile_slice(&**self.region())
    }

    /// The memory as vm-memory's `GuestMemory`, for device-side code (tests, in-process backends).
    pub fn guest_memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    fn region(&self) -> &GuestRegionMmap<()> {
        // The constructor built exactly one region at address 0.
        self.mem
            .find_region(GuestAddress(0))
            .expect("GuestMem always holds its one region")
    }

    /// Our (frontend) virtual address of guest address `gpa`: what SET_VRING_ADDR carries.
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.region().as_ptr() as u64 + gpa
    }

    /// The region as SET_MEM_TABLE describes it (guest address, size, our address, memfd).
    pub fn region_info(&self) -> VhostUserMemoryRegionInfo {
        let region = self.region();
        let info = VhostUserMemoryRegion::new(
            region.start_addr().0,
            region.len(),
            region.as_ptr() as u64,
            0,
        );
        VhostUserMemoryRegionInfo {
            guest_phys_addr: info.guest_phys_addr,
            memory_size: info.memory_size,
            userspace_addr: info.user_addr,
            mmap_offset: info.mmap_offset,
            mmap_handle: self.fd(),
        }
    }

    /// The memfd, shared with the backend.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Total size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}
