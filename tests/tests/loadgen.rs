//! Normal tier: the load generator over real vhost-user sockets against a tiny in-test backend.
//!
//! The backend is a two-port "wire" (what testpmd's io forwarding does) built on
//! vhost-user-backend and virtio-queue, the device-side crates vm-switch uses: frames the
//! generator queues on port A's TX come out on port B's RX and vice versa. No root, DPDK or QEMU.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmsilo_tests::loadgen::frame::Endpoint;
use vmsilo_tests::loadgen::run::{self, Mode, RunConfig};
use vmsilo_tests::loadgen::vm::{FeatureRequest, Vm, VmError, VmSpec};

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Each port's RX queue and memory, once its frontend has set them up.
#[derive(Default)]
struct Wire {
    rx: [Mutex<Option<(VringRwLock, Mem)>>; 2],
    delivered: std::sync::atomic::AtomicU64,
}

struct Port {
    index: usize,
    wire: Arc<Wire>,
    mem: Option<Mem>,
    /// Lets `serve` stop the vring worker thread when the frontend disconnects.
    exit: (EventConsumer, EventNotifier),
}

impl Port {
    /// Copy one frame (with its 12-byte virtio-net header) into the peer's next RX buffer.
    fn deliver(&self, bytes: &[u8]) {
        let peer = self.wire.rx[1 - self.index].lock().unwrap();
        let Some((vring, mem)) = peer.as_ref() else {
            return;
        };
        let m = mem.memory();
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(m.clone());
        let Some(chain) = chain else {
            return; // no RX buffer: dropped, as a wire does
        };
        let head = chain.head_index();
        let mut written = 0usize;
        for desc in chain {
            if written == bytes.len() || !desc.is_write_only() {
                break;
            }
            let n = (desc.len() as usize).min(bytes.len() - written);
            m.write_slice(&bytes[written..written + n], desc.addr())
                .unwrap();
            written += n;
        }
        vring.add_used(head, written as u32).unwrap();
        if vring.needs_notification().unwrap() {
            vring.signal_used_queue().unwrap();
        }
        self.wire
            .delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl VhostUserBackendMut for Port {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << 30) // VHOST_USER_F_PROTOCOL_FEATURES
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }
    fn update_memory(&mut self, mem: Mem) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        *self.wire.rx[self.index].lock().unwrap() = Some((vrings[0].clone(), mem.clone()));
        if device_event != 1 {
            return Ok(());
        }
        let tx = &vrings[1];
        loop {
            tx.disable_notification().unwrap();
            loop {
                let m = mem.memory();
                let chain = tx.get_mut().get_queue_mut().pop_descriptor_chain(m.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut bytes = Vec::new();
                for desc in chain {
                    let mut buf = vec![0u8; (desc.len() as usize).min(4096)];
                    m.read_slice(&mut buf, desc.addr()).unwrap();
                    bytes.extend_from_slice(&buf);
                }
                if bytes.len() >= 12 {
                    bytes[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    self.deliver(&bytes);
                }
                tx.add_used(head, 0).unwrap();
            }
            if tx.needs_notification().unwrap() {
                tx.signal_used_queue().unwrap();
            }
            if !tx.enable_notification().unwrap() {
                break;
            }
        }
        Ok(())
    }
}

fn serve(socket: PathBuf, index: usize, wire: Arc<Wire>) -> JoinHandle<()> {
    let port = Arc::new(RwLock::new(Port {
        index,
        wire,
        mem: None,
        exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap(),
    }));
    let mut daemon = VhostUserDaemon::new(
        format!("wire{index}"),
        port,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .unwrap();
    std::thread::spawn(move || {
        // Returns when the frontend disconnects.
        let _ = daemon.serve(socket);
    })
}

fn spec(name: &str, dir: &Path, last: u8) -> VmSpec {
    VmSpec {
        name: name.into(),
        socket: dir.join(format!("{name}.sock")),
        endpoint: Endpoint {
            mac: [0x52, 0x54, 0, 0, 0, last],
            ip: std::net::Ipv4Addr::new(10, 9, 0, last),
        },
    }
}

fn connect_pair(dir: &Path, features: FeatureRequest) -> (Vec<Vm>, Vec<[u8; 6]>) {
    let a = spec("a", dir, 1);
    let b = spec("b", dir, 2);
    let timeout = Duration::from_secs(10);
    let vms = vec![
        Vm::connect(&a, features, 256, timeout).unwrap(),
        Vm::connect(&b, features, 256, timeout).unwrap(),
    ];
    (vms, vec![b.endpoint.mac, a.endpoint.mac])
}

fn config(mode: Mode) -> RunConfig {
    RunConfig {
        mode,
        size: 64,
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(200),
        one_way: false,
        batch: 32,
        probe_interval: Duration::from_micros(500),
        rss_pids: vec![std::process::id()],
        busy_poll: false,
        drain_pps: None,
    }
}

#[test]
fn throughput_run_moves_frames_both_ways_through_a_vhost_user_wire() {
    let dir = tempfile::tempdir().unwrap();
    let wire = Arc::new(Wire::default());
    let servers = [
        serve(dir.path().join("a.sock"), 0, wire.clone()),
        serve(dir.path().join("b.sock"), 1, wire.clone()),
    ];
    let (vms, macs) = connect_pair(dir.path(), FeatureRequest::default());
    for vm in &vms {
        assert!(vm.negotiated.has(VIRTIO_RING_F_EVENT_IDX));
        assert!(vm.negotiated.has(VIRTIO_NET_F_MRG_RXBUF));
        assert_eq!(vm.negotiated.queue_num, Some(2));
    }
    let report = run::run(vms, &macs, &config(Mode::Throughput)).unwrap();
    assert!(report.rx_pps > 0.0, "{report:?}");
    assert_eq!(report.senders, 2);
    assert_eq!(report.rx_misrouted, 0);
    assert_eq!(report.rx_foreign, 0);
    // Everything the wire delivered was counted (the generator stopped sending before the
    // drain, and the run ends only after it).
    assert!(report.drop_pct < 100.0);
    assert!(!report.rss.is_empty() && report.rss[0].rss_kib > 0);
    let lines = report.lines("wire");
    assert!(lines[0].starts_with("LOADGEN mode=throughput backend=wire size=64 vms=2"));
    assert!(wire.delivered.load(std::sync::atomic::Ordering::Relaxed) > 0);
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
fn latency_probes_are_timed_without_event_idx() {
    let dir = tempfile::tempdir().unwrap();
    let wire = Arc::new(Wire::default());
    let servers = [
        serve(dir.path().join("a.sock"), 0, wire.clone()),
        serve(dir.path().join("b.sock"), 1, wire.clone()),
    ];
    // Flag-based notification suppression and single RX buffers this time.
    let features = FeatureRequest {
        event_idx: false,
        mrg_rxbuf: false,
        csum: false,
        gso: false,
    };
    let (vms, macs) = connect_pair(dir.path(), features);
    assert!(!vms[0].negotiated.has(VIRTIO_RING_F_EVENT_IDX));
    let report = run::run(vms, &macs, &config(Mode::Latency { with_load: false })).unwrap();
    assert!(report.probes_sent > 100, "{report:?}");
    assert!(report.latencies_ns.len() as u64 > report.probes_sent / 2);
    let p50 = report.latency_us(0.5).unwrap();
    let p99 = report.latency_us(0.99).unwrap();
    assert!(p50 > 0.0 && p99 >= p50);
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
fn frames_for_another_mac_never_count_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let wire = Arc::new(Wire::default());
    let servers = [
        serve(dir.path().join("a.sock"), 0, wire.clone()),
        serve(dir.path().join("b.sock"), 1, wire.clone()),
    ];
    let (vms, _) = connect_pair(dir.path(), FeatureRequest::default());
    // A wire does not rewrite MACs: sending with a wrong next-hop MAC must not count as delivered.
    let wrong = [[2, 0, 0, 0, 0, 99]; 2];
    let err = run::run(vms, &wrong, &config(Mode::Throughput)).unwrap_err();
    assert!(
        matches!(err, run::RunError::NothingReceived { .. }),
        "{err}"
    );
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
fn connecting_to_a_missing_socket_fails_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec("nobody", dir.path(), 9);
    let err = Vm::connect(
        &s,
        FeatureRequest::default(),
        256,
        Duration::from_millis(200),
    )
    .err()
    .unwrap();
    assert!(matches!(err, VmError::Connect { .. }));
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}
