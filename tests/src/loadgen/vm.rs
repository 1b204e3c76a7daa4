//! One simulated VM: connects to a vhost-user-net backend as its frontend (the VMM's role) and
//! drives the NIC's RX (queue 0) and TX (queue 1) as a guest driver would.
//!
//! The handshake follows QEMU 7.2 and crosvm: GET_FEATURES, protocol features (MQ, and
//! GET_QUEUE_NUM when offered), SET_OWNER, SET_FEATURES, SET_MEM_TABLE with the memfd, then per
//! queue SET_VRING_NUM/ADDR/BASE/CALL/KICK and SET_VRING_ENABLE.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::frame::{Endpoint, MAX_FRAME};
use super::memory::{GuestMem, MemoryError};
use super::vring::{AllocError, Vring, VringError, VringLayout};

/// vhost-user's "the backend speaks the protocol-feature extension" bit.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// RX is queue 0 and TX queue 1 of the first queue pair.
pub const RX_QUEUE: usize = 0;
/// See [`RX_QUEUE`].
pub const TX_QUEUE: usize = 1;
/// virtio-net header with `num_buffers` (VERSION_1 layout).
pub const NET_HDR_LEN: usize = 12;
/// Bytes per RX/TX buffer: header plus a full-MTU frame, rounded up.
pub const BUF_SIZE: u32 = 2048;

/// Errors while connecting or driving a VM's NIC.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The socket never accepted a connection.
    #[error("{vm}: cannot connect to {}", socket.display())]
    Connect {
        /// VM name.
        vm: String,
        /// Socket path.
        socket: PathBuf,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user request failed.
    #[error("{vm}: vhost-user {request} failed")]
    Protocol {
        /// VM name.
        vm: String,
        /// The request.
        request: &'static str,
        /// The crate's error.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something we need.
    #[error("{vm}: backend does not offer {what}")]
    Missing {
        /// VM name.
        vm: String,
        /// The missing feature.
        what: &'static str,
    },
    /// Guest memory setup failed.
    #[error("{vm}: guest memory")]
    Memory {
        /// VM name.
        vm: String,
        /// The cause.
        #[source]
        source: MemoryError,
    },
    /// Ring layout failed.
    #[error("{vm}: ring layout")]
    Alloc {
        /// VM name.
        vm: String,
        /// The cause.
        #[source]
        source: AllocError,
    },
    /// The backend broke ring rules.
    #[error("{vm}: {queue} queue")]
    Ring {
        /// VM name.
        vm: String,
        /// "rx" or "tx".
        queue: &'static str,
        /// What it did.
        #[source]
        source: VringError,
    },
    /// An eventfd could not be created or written.
    #[error("{vm}: eventfd")]
    EventFd {
        /// VM name.
        vm: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Virtio features the generator may ask for (what the guest driver would accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureRequest {
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// CSUM and GUEST_CSUM.
    pub csum: bool,
    /// HOST_/GUEST_TSO4/6 (needs csum; received GSO frames need mrg_rxbuf).
    pub gso: bool,
}

impl Default for FeatureRequest {
    fn default() -> Self {
        // A Linux guest on QEMU's default virtio-net-pci acks all of these.
        Self {
            event_idx: true,
            mrg_rxbuf: true,
            csum: false,
            gso: false,
        }
    }
}

impl FeatureRequest {
    fn bits(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = bit(VIRTIO_F_VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
        if self.event_idx {
            f |= bit(VIRTIO_RING_F_EVENT_IDX);
        }
        if self.mrg_rxbuf {
            f |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        if self.csum || self.gso {
            f |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
        }
        if self.gso {
            f |= bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        f
    }
}

/// What was negotiated with the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio feature bits acked.
    pub features: u64,
    /// Protocol features acked (empty when the backend lacks the extension).
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM's answer, when MQ was negotiated.
    pub queue_num: Option<u64>,
}

impl Negotiated {
    /// Whether virtio feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }
}

/// How to reach and present one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name used in messages.
    pub name: String,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// The VM's MAC and IPv4 address.
    pub endpoint: Endpoint,
}

/// A connected VM with its NIC's two queues.
pub struct Vm {
    /// Name used in messages.
    pub name: String,
    /// Our MAC and IP.
    pub endpoint: Endpoint,
    /// What the backend agreed to.
    pub negotiated: Negotiated,
    // Kept open for the VM's lifetime: closing it is the backend's "VM went away".
    _frontend: Frontend,
    mem: GuestMem,
    rx: Vring,
    tx: Vring,
    rx_kick: EventFd,
    tx_kick: EventFd,
    rx_call: EventFd,
    tx_call: EventFd,
    /// Per TX buffer, a caller-chosen tag for what it holds (0 = nothing valid).
    tx_content: Vec<u32>,
    mrg_rxbuf: bool,
    /// Device errors that are not fatal (e.g. frames spanning several buffers without MRG_RXBUF).
    pub rx_malformed: u64,
    /// Frames larger than one buffer received via MRG_RXBUF (counted, contents beyond the
    /// first buffer not inspected).
    pub rx_multi_buffer: u64,
}

fn connect_retrying(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Vm {
    /// Connect to `spec.socket` (retrying up to `timeout` while it does not exist yet) and set
    /// up the NIC with `queue_size`-entry queues, as a VMM starting the VM would.
    pub fn connect(
        spec: &VmSpec,
        want: FeatureRequest,
        queue_size: u16,
        timeout: Duration,
    ) -> Result<Self, VmError> {
        let vm = spec.name.clone();
        let proto = |request: &'static str| {
            let vm = vm.clone();
            move |source| VmError::Protocol {
                vm,
                request,
                source,
            }
        };
        let stream =
            connect_retrying(&spec.socket, timeout).map_err(|source| VmError::Connect {
                vm: vm.clone(),
                socket: spec.socket.clone(),
                source,
            })?;
        let mut fe = Frontend::from_stream(stream, 2);
        let offered = fe.get_features().map_err(proto("GET_FEATURES"))?;
        if offered & (1u64 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VmError::Missing {
                vm,
                what: "VIRTIO_F_VERSION_1",
            });
        }
        let mut negotiated = Negotiated {
            features: offered & want.bits(),
            protocol: VhostUserProtocolFeatures::empty(),
            queue_num: None,
        };
        if negotiated.has(VHOST_USER_F_PROTOCOL_FEATURES) {
            let pf = fe
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            // MQ as crosvm requires it; CONFIG so the backend may serve the MAC.
            let acked = pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG);
            fe.set_protocol_features(acked)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
            negotiated.protocol = acked;
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = fe.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
                if n < 2 {
                    return Err(VmError::Missing {
                        vm,
                        what: "two queues (GET_QUEUE_NUM < 2)",
                    });
                }
                negotiated.queue_num = Some(n);
            }
        }
        fe.set_owner().map_err(proto("SET_OWNER"))?;
        fe.set_features(negotiated.features)
            .map_err(proto("SET_FEATURES"))?;

        let alloc = |source| VmError::Alloc {
            vm: vm.clone(),
            source,
        };
        let n = usize::from(queue_size);
        let mem_size =
            (2 * n * (BUF_SIZE as usize + 16 + 8 + 2) + 8 * 4096).next_multiple_of(2 << 20);
        let mut mem = GuestMem::new(mem_size).map_err(|source| VmError::Memory {
            vm: vm.clone(),
            source,
        })?;
        let rx_layout = VringLayout::allocate(&mut mem, queue_size, BUF_SIZE).map_err(alloc)?;
        let tx_layout = VringLayout::allocate(&mut mem, queue_size, BUF_SIZE).map_err(alloc)?;
        fe.set_mem_table(&[mem.region_info()])
            .map_err(proto("SET_MEM_TABLE"))?;

        let event_idx = negotiated.has(VIRTIO_RING_F_EVENT_IDX);
        let ring_err = |queue| {
            let vm = vm.clone();
            move |source| VmError::Ring { vm, queue, source }
        };
        let mut rx = Vring::new(&mem, rx_layout, event_idx).map_err(ring_err("rx"))?;
        let tx = Vring::new(&mem, tx_layout, event_idx).map_err(ring_err("tx"))?;
        // Fill RX with empty buffers before the backend may look at it, as a guest does.
        while let Some(id) = rx.take_free() {
            rx.post(&mem, id, BUF_SIZE, true).map_err(ring_err("rx"))?;
        }
        rx.publish(&mem).map_err(ring_err("rx"))?;

        let efd = || {
            EventFd::new(EFD_NONBLOCK).map_err(|source| VmError::EventFd {
                vm: vm.clone(),
                source,
            })
        };
        let (rx_kick, tx_kick, rx_call, tx_call) = (efd()?, efd()?, efd()?, efd()?);
        for (q, layout, kick, call) in [
            (RX_QUEUE, &rx_layout, &rx_kick, &rx_call),
            (TX_QUEUE, &tx_layout, &tx_kick, &tx_call),
        ] {
            fe.set_vring_num(q, queue_size)
                .map_err(proto("SET_VRING_NUM"))?;
            fe.set_vring_addr(q, &layout.config(&mem))
                .map_err(proto("SET_VRING_ADDR"))?;
            fe.set_vring_base(q, 0).map_err(proto("SET_VRING_BASE"))?;
            fe.set_vring_call(q, call)
                .map_err(proto("SET_VRING_CALL"))?;
            fe.set_vring_kick(q, kick)
                .map_err(proto("SET_VRING_KICK"))?;
        }
        if negotiated.has(VHOST_USER_F_PROTOCOL_FEATURES) {
            for q in [RX_QUEUE, TX_QUEUE] {
                fe.set_vring_enable(q, true)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
        }
        // Tell the backend the RX buffers are there.
        rx_kick.write(1).map_err(|source| VmError::EventFd {
            vm: vm.clone(),
            source,
        })?;
        Ok(Self {
            name: spec.name.clone(),
            endpoint: spec.endpoint,
            mrg_rxbuf: negotiated.has(VIRTIO_NET_F_MRG_RXBUF),
            negotiated,
            _frontend: fe,
            mem,
            rx,
            tx,
            rx_kick,
            tx_kick,
            rx_call,
            tx_call,
            tx_content: vec![0; n],
            rx_malformed: 0,
            rx_multi_buffer: 0,
        })
    }

    fn ring_err(&self, queue: &'static str) -> impl FnOnce(VringError) -> VmError {
        let vm = self.name.clone();
        move |source| VmError::Ring { vm, queue, source }
    }

    fn kick(&self, fd: &EventFd) -> Result<(), VmError> {
        fd.write(1).map_err(|source| VmError::EventFd {
            vm: self.name.clone(),
            source,
        })
    }

    /// Collect TX buffers the backend has finished with; returns how many.
    pub fn reap_tx(&mut self) -> Result<usize, VmError> {
        let mut n = 0;
        while let Some((id, _)) = self.tx.pop_used(&self.mem).map_err(self.ring_err("tx"))? {
            self.tx.give_back(id);
            n += 1;
        }
        Ok(n)
    }

    /// Free TX descriptors right now (without reaping).
    pub fn tx_free(&self) -> usize {
        self.tx.free_count()
    }

    /// Queue one frame for transmission. `tag` (non-zero) names the frame's content: a buffer
    /// that already holds the frame with that tag is not rewritten, which keeps the sender
    /// cheap. Pass 0 for a frame that must be written every time. Returns false if TX is full.
    pub fn queue_tx(&mut self, tag: u32, frame: &[u8]) -> Result<bool, VmError> {
        let Some(id) = self.tx.take_free() else {
            return Ok(false);
        };
        let len = frame.len().min(MAX_FRAME);
        let slot = &mut self.tx_content[usize::from(id)];
        if tag == 0 || *slot != tag {
            let addr = self.tx.layout().buf_addr(id) as usize;
            let s = self.mem.slice();
            let write = s
                .write_slice(&[0u8; NET_HDR_LEN], addr)
                .and_then(|()| s.write_slice(&frame[..len], addr + NET_HDR_LEN));
            if let Err(e) = write {
                self.tx.give_back(id);
                return Err(VmError::Ring {
                    vm: self.name.clone(),
                    queue: "tx",
                    source: VringError::Memory {
                        addr: addr as u64,
                        message: e.to_string(),
                    },
                });
            }
            *slot = tag;
        }
        self.tx
            .post(&self.mem, id, (NET_HDR_LEN + len) as u32, false)
            .map_err(self.ring_err("tx"))?;
        Ok(true)
    }

    /// Publish queued TX frames and kick the backend if it asked for it.
    pub fn flush_tx(&mut self) -> Result<(), VmError> {
        if self.tx.publish(&self.mem).map_err(self.ring_err("tx"))? {
            self.kick(&self.tx_kick)?;
        }
        Ok(())
    }

    /// Receive up to `budget` frames; `on_frame` sees the first bytes of each (up to `peek`
    /// bytes of the frame, without the virtio-net header) and its full length. Buffers go
    /// straight back to the backend. Returns the number of frames.
    pub fn poll_rx(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&[u8], usize),
    ) -> Result<usize, VmError> {
        const PEEK: usize = 64;
        let mut buf = [0u8; NET_HDR_LEN + PEEK];
        let mut frames = 0;
        while frames < budget {
            let Some((id, len)) = self.rx.pop_used(&self.mem).map_err(self.ring_err("rx"))? else {
                break;
            };
            let addr = self.rx.layout().buf_addr(id) as usize;
            let take = (len as usize).min(buf.len());
            let read = self.mem.slice().read_slice(&mut buf[..take], addr);
            let mut extra = 0u16;
            if read.is_err() || take < NET_HDR_LEN {
                self.rx_malformed += 1;
            } else {
                if self.mrg_rxbuf {
                    let num_buffers = u16::from_le_bytes([buf[10], buf[11]]);
                    extra = num_buffers.saturating_sub(1);
                    if extra > 0 {
                        self.rx_multi_buffer += 1;
                    }
                }
                on_frame(&buf[NET_HDR_LEN..take], len as usize - NET_HDR_LEN);
                frames += 1;
            }
            self.rx
                .post(&self.mem, id, BUF_SIZE, true)
                .map_err(self.ring_err("rx"))?;
            // The rest of a merged frame: recycle its buffers.
            for _ in 0..extra {
                match self.rx.pop_used(&self.mem).map_err(self.ring_err("rx"))? {
                    Some((id, _)) => self
                        .rx
                        .post(&self.mem, id, BUF_SIZE, true)
                        .map_err(self.ring_err("rx"))?,
                    None => {
                        self.rx_malformed += 1;
                        break;
                    }
                }
            }
        }
        if self.rx.publish(&self.mem).map_err(self.ring_err("rx"))? {
            self.kick(&self.rx_kick)?;
        }
        Ok(frames)
    }

    /// Arm interrupts on RX (and TX when `tx` is set) before sleeping on the call eventfds.
    /// Returns true if work is already pending, in which case the caller should not sleep.
    pub fn arm(&mut self, tx: bool) -> Result<bool, VmError> {
        let mut pending = self
            .rx
            .enable_interrupts(&self.mem)
            .map_err(self.ring_err("rx"))?;
        if tx {
            pending |= self
                .tx
                .enable_interrupts(&self.mem)
                .map_err(self.ring_err("tx"))?;
        }
        Ok(pending)
    }

    /// Back to polling after a sleep: suppress interrupts and drain the call eventfds.
    pub fn disarm(&mut self) -> Result<(), VmError> {
        self.rx
            .disable_interrupts(&self.mem)
            .map_err(self.ring_err("rx"))?;
        self.tx
            .disable_interrupts(&self.mem)
            .map_err(self.ring_err("tx"))?;
        // Non-blocking reads: EAGAIN just means no signal came.
        let _ = self.rx_call.read();
        let _ = self.tx_call.read();
        Ok(())
    }

    /// The call eventfds (RX, TX) to sleep on.
    pub fn call_fds(&self) -> (&EventFd, &EventFd) {
        (&self.rx_call, &self.tx_call)
    }
}
