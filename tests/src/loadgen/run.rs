//! Measurement runs: one worker thread drives every simulated VM round-robin; VM i sends its
//! flow to VM (i+1) mod n and receives from the previous one.
//!
//! Counting: a frame counts as sent once the backend has returned its TX buffer (so a backend
//! that stalls shows up as a low `tx_pps`, not as drops), and as received when it arrives on
//! the destination VM's RX queue with its own MAC and IP, the sender's IP and our stamp. Rates
//! are deltas over the measurement window after a warm-up; `drop_pct` compares all frames sent
//! with all received after a final drain, so frames in flight at the window's edges do not
//! count as lost.
//!
//! Latency: probes (a separate UDP 5-tuple) carry the send time from the process's monotonic
//! clock; the receiving thread subtracts it from its own reading of the same clock.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::frame::{self, BULK_PORT, Endpoint, Kind, PROBE_PORT, Stamp};
use super::rss::{self, ProcRss};
use super::vm::{Vm, VmError};

/// Errors from a measurement run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A VM's NIC failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// ARP resolution got no answer.
    #[error("{vm}: no ARP reply for {target} within {secs} s")]
    ArpTimeout {
        /// VM asking.
        vm: String,
        /// Address asked for.
        target: Ipv4Addr,
        /// How long we waited.
        secs: u64,
    },
    /// Fewer than two VMs.
    #[error("need at least two VMs, got {0}")]
    TooFewVms(usize),
    /// A worker thread panicked.
    #[error("worker thread for {0} panicked")]
    WorkerPanic(String),
    /// Nothing arrived during the measurement window.
    #[error(
        "no frame arrived during the {secs:.1} s window ({sent} sent): the backend forwards nothing"
    )]
    NothingReceived {
        /// Window length.
        secs: f64,
        /// Frames the backend accepted.
        sent: u64,
    },
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Saturating bulk flows; report packet and bit rates.
    Throughput,
    /// Sparse timestamped probes from VM 0 to VM 1, with or without a bulk flow alongside.
    Latency {
        /// Run a saturating bulk flow VM 0 → VM 1 at the same time.
        with_load: bool,
    },
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// What to measure.
    pub mode: Mode,
    /// Ethernet frame length in bytes (no FCS; virtio carries none).
    pub size: usize,
    /// Measurement window.
    pub duration: Duration,
    /// Traffic before the window starts.
    pub warmup: Duration,
    /// Throughput mode: only VM 0 sends (otherwise every VM sends to the next).
    pub one_way: bool,
    /// Frames queued per TX round.
    pub batch: usize,
    /// Gap between latency probes.
    pub probe_interval: Duration,
    /// Processes whose RSS (with all descendants) is sampled mid-window.
    pub rss_pids: Vec<u32>,
    /// Never sleep on the call eventfds (a polling guest driver); costs a full CPU.
    pub busy_poll: bool,
    /// Latency mode: VM 1 receives at most this many frames per second, so a standing queue
    /// builds up in the backend (where FQ-CoDel must keep the sparse flow fast).
    pub drain_pps: Option<u64>,
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The mode measured.
    pub mode: Mode,
    /// Frame size.
    pub size: usize,
    /// Number of VMs.
    pub vms: usize,
    /// Number of sending VMs.
    pub senders: usize,
    /// Actual window length.
    pub secs: f64,
    /// Frames per second the backend took from TX queues (all senders).
    pub tx_pps: f64,
    /// Frames per second delivered correctly to RX queues (all receivers).
    pub rx_pps: f64,
    /// Frames sent but never delivered, over the whole run, in percent.
    pub drop_pct: f64,
    /// Frames of ours delivered to the wrong VM or with wrong addresses.
    pub rx_misrouted: u64,
    /// Frames that are not ours (e.g. ARP, IPv6 chatter).
    pub rx_foreign: u64,
    /// Probe one-way latencies in ns for probes sent inside the window, sorted.
    pub latencies_ns: Vec<u64>,
    /// Probes sent inside the window.
    pub probes_sent: u64,
    /// RSS samples taken mid-window.
    pub rss: Vec<ProcRss>,
    /// The receiver's rate limit, if any.
    pub drain_pps: Option<u64>,
}

impl Report {
    /// Delivered bit rate of frame bytes (Ethernet header through payload).
    pub fn gbps(&self) -> f64 {
        self.rx_pps * self.size as f64 * 8.0 / 1e9
    }

    /// The `q`-quantile (0..=1) of probe latency in µs, if any probe arrived.
    pub fn latency_us(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies_ns, q).map(|ns| ns as f64 / 1000.0)
    }

    /// The machine-readable `LOADGEN ...` result lines.
    pub fn lines(&self, label: &str) -> Vec<String> {
        let mut out = Vec::new();
        let fmt = |v: Option<f64>| v.map_or_else(|| "nan".to_string(), |v| format!("{v:.1}"));
        match self.mode {
            Mode::Throughput => out.push(format!(
                "LOADGEN mode=throughput backend={label} size={} vms={} senders={} secs={:.2} \
                 tx_pps={:.0} rx_pps={:.0} mpps={:.3} gbps={:.3} drop_pct={:.2} misrouted={} foreign={}",
                self.size,
                self.vms,
                self.senders,
                self.secs,
                self.tx_pps,
                self.rx_pps,
                self.rx_pps / 1e6,
                self.gbps(),
                self.drop_pct,
                self.rx_misrouted,
                self.rx_foreign
            )),
            Mode::Latency { with_load } => {
                let lost = self
                    .probes_sent
                    .saturating_sub(self.latencies_ns.len() as u64);
                out.push(format!(
                    "LOADGEN mode=latency backend={label} size={} load={} drain_pps={} secs={:.2} probes={} \
                     probes_lost={lost} p50_us={} p90_us={} p99_us={} max_us={} bulk_rx_pps={:.0} \
                     bulk_drop_pct={:.2}",
                    self.size,
                    if with_load { "bulk" } else { "none" },
                    self.drain_pps
                        .map_or_else(|| "none".to_string(), |p| p.to_string()),
                    self.secs,
                    self.probes_sent,
                    fmt(self.latency_us(0.5)),
                    fmt(self.latency_us(0.9)),
                    fmt(self.latency_us(0.99)),
                    fmt(self.latency_us(1.0)),
                    self.rx_pps,
                    self.drop_pct
                ));
            }
        }
        for p in &self.rss {
            out.push(format!(
                "LOADGEN rss backend={label} pid={} ppid={} comm={} rss_kib={} anon_kib={} shmem_kib={}",
                p.pid, p.ppid, p.comm, p.rss_kib, p.anon_kib, p.shmem_kib
            ));
        }
        out
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Resolve each VM's next hop's MAC by ARP, as a guest would before sending.
pub fn resolve_arp(vms: &mut [Vm], timeout: Duration) -> Result<Vec<[u8; 6]>, RunError> {
    let n = vms.len();
    let targets: Vec<Ipv4Addr> = (0..n).map(|i| vms[(i + 1) % n].endpoint.ip).collect();
    let mut macs = Vec::with_capacity(n);
    for (vm, target) in vms.iter_mut().zip(targets) {
        let request = frame::arp_request(&vm.endpoint, target);
        let deadline = Instant::now() + timeout;
        let mut next_send = Instant::now();
        let mut answer = None;
        while answer.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(RunError::ArpTimeout {
                    vm: vm.name.clone(),
                    target,
                    secs: timeout.as_secs(),
                });
            }
            if now >= next_send {
                vm.reap_tx()?;
                vm.queue_tx(0, &request)?;
                vm.flush_tx()?;
                next_send = now + Duration::from_millis(200);
            }
            vm.poll_rx(64, |f, _| {
                if let Some(mac) = frame::parse_arp_reply(f, target) {
                    answer = Some(mac);
                }
            })?;
            thread::sleep(Duration::from_millis(1));
        }
        macs.extend(answer);
    }
    Ok(macs)
}

#[derive(Default)]
struct Counters {
    tx: AtomicU64,
    rx_ok: AtomicU64,
    misrouted: AtomicU64,
    foreign: AtomicU64,
}

struct Control {
    sending: AtomicBool,
    stop: AtomicBool,
}

struct WorkerOut {
    /// (send time, latency) of every probe received.
    probes: Vec<(u64, u64)>,
    /// Send times of every probe sent.
    probe_sends: Vec<u64>,
}

/// Upper bound on recorded probe samples per worker (bounded memory).
const MAX_PROBES: usize = 1 << 20;
/// Idle polling rounds before sleeping on the call eventfds.
const SPIN_ROUNDS: u32 = 64;

struct Flow {
    bulk: Option<Vec<u8>>,
    probe: Option<(Vec<u8>, Duration)>,
}

/// One VM as the worker drives it.
struct Station {
    vm: Vm,
    index: u8,
    flow: Flow,
    /// The IP its traffic must come from (the previous VM).
    from_ip: Ipv4Addr,
    next_probe: Instant,
    seq: u32,
    /// Receive rate limit: a slow guest that leaves frames queued in the backend.
    drain: Option<Drain>,
}

/// Token bucket for a receiver that drains at most `pps` frames per second.
struct Drain {
    pps: f64,
    tokens: f64,
    last: Instant,
}

impl Drain {
    fn new(pps: u64) -> Self {
        Self {
            pps: pps as f64,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Frames that may be received now; at most a small burst so the rate stays smooth.
    fn budget(&mut self) -> usize {
        let now = Instant::now();
        let burst = (self.pps / 100.0).max(8.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.pps).min(burst);
        self.last = now;
        self.tokens as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

impl Station {
    /// One round: reap TX, send (if `sending`), receive. Returns the work done and how long
    /// the station may sleep before its next probe is due.
    fn round(
        &mut self,
        sending: bool,
        batch: usize,
        counters: &Counters,
        out: &mut WorkerOut,
    ) -> Result<(usize, Duration), RunError> {
        let vm = &mut self.vm;
        let mut work = 0usize;
        let done = vm.reap_tx()?;
        counters.tx.fetch_add(done as u64, Ordering::Relaxed);
        work += done;
        let mut may_sleep = Duration::from_millis(1);
        if sending {
            if let Some((probe, gap)) = self.flow.probe.as_mut() {
                let now = Instant::now();
                if now >= self.next_probe {
                    let sent_ns = now_ns();
                    let stamp = Stamp {
                        kind: Kind::Probe,
                        from: self.index,
                        seq: self.seq,
                        sent_ns,
                    };
                    frame::write_stamp(probe, &stamp);
                    if vm.queue_tx(0, probe)? {
                        self.seq = self.seq.wrapping_add(1);
                        if out.probe_sends.len() < MAX_PROBES {
                            out.probe_sends.push(sent_ns);
                        }
                        self.next_probe += *gap;
                        if self.next_probe < now {
                            self.next_probe = now + *gap;
                        }
                        work += 1;
                    }
                }
                may_sleep = self
                    .next_probe
                    .saturating_duration_since(Instant::now())
                    .min(may_sleep);
            }
            if let Some(bulk) = self.flow.bulk.as_ref() {
                for _ in 0..batch {
                    if !vm.queue_tx(1, bulk)? {
                        break;
                    }
                    work += 1;
                }
            }
            vm.flush_tx()?;
        }
        let me = vm.endpoint;
        let from_ip = self.from_ip;
        let (mut ok, mut misrouted, mut foreign) = (0u64, 0u64, 0u64);
        let probes = &mut out.probes;
        // Receive more than we send per round so a backend that forwards everything never
        // finds the RX queue full because of us -- unless this receiver is rate-limited.
        let budget = match self.drain.as_mut() {
            Some(d) => d.budget().min(4 * batch.max(64)),
            None => 4 * batch.max(64),
        };
        let received = vm.poll_rx(budget, |f, _len| match frame::parse_udp(f) {
            Some(r) => {
                if r.dst_mac != me.mac || r.dst_ip != me.ip || r.src_ip != from_ip {
                    misrouted += 1;
                    return;
                }
                ok += 1;
                if r.stamp.kind == Kind::Probe && probes.len() < MAX_PROBES {
                    let sent = r.stamp.sent_ns;
                    probes.push((sent, now_ns().saturating_sub(sent)));
                }
            }
            None => foreign += 1,
        })?;
        if let Some(d) = self.drain.as_mut() {
            d.spend(received);
            // Idle until tokens accrue, but never oversleep the bucket.
            may_sleep = may_sleep.min(Duration::from_micros(200));
        }
        work += received;
        if ok > 0 {
            counters.rx_ok.fetch_add(ok, Ordering::Relaxed);
        }
        if misrouted > 0 {
            counters.misrouted.fetch_add(misrouted, Ordering::Relaxed);
        }
        if foreign > 0 {
            counters.foreign.fetch_add(foreign, Ordering::Relaxed);
        }
        Ok((work, may_sleep))
    }
}

/// Drive all stations round-robin from one thread, so every VM's RX is served between any
/// two TX batches: drops then come from the backend, not from a starved receiver thread.
fn worker(
    mut stations: Vec<Station>,
    batch: usize,
    busy_poll: bool,
    counters: Arc<Counters>,
    ctl: Arc<Control>,
) -> Result<WorkerOut, RunError> {
    let mut out = WorkerOut {
        probes: Vec::new(),
        probe_sends: Vec::new(),
    };
    let mut idle = 0u32;
    while !ctl.stop.load(Ordering::Relaxed) {
        let sending = ctl.sending.load(Ordering::Relaxed);
        let mut work = 0usize;
        let mut may_sleep = Duration::from_millis(1);
        for st in &mut stations {
            let (w, s) = st.round(sending, batch, &counters, &mut out)?;
            work += w;
            may_sleep = may_sleep.min(s);
        }
        if work > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if busy_poll || idle < SPIN_ROUNDS {
            std::hint::spin_loop();
            continue;
        }
        idle = 0;
        // Nothing to do: sleep until the backend signals a used buffer (RX frame or TX
        // completion) or the next probe is due, as a guest's NAPI would.
        let mut pending = false;
        for st in &mut stations {
            pending |= st.vm.arm(true)?;
        }
        if !pending && !may_sleep.is_zero() {
            let mut raw = Vec::with_capacity(2 * stations.len());
            for st in &stations {
                let (rx_call, tx_call) = st.vm.call_fds();
                raw.push(rx_call.as_raw_fd());
                raw.push(tx_call.as_raw_fd());
            }
            let mut fds: Vec<PollFd<'_>> = raw
                .iter()
                .map(|&fd| {
                    // SAFETY: the eventfds are owned by the stations' VMs, which outlive
                    // this poll call.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    PollFd::new(fd, PollFlags::POLLIN)
                })
                .collect();
            let ms = PollTimeout::try_from(may_sleep.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            // EINTR and friends just end the sleep early.
            let _ = poll(&mut fds, ms);
        }
        for st in &mut stations {
            st.vm.disarm()?;
        }
    }
    Ok(out)
}

fn snapshot(c: &Counters) -> (u64, u64) {
    (
        c.tx.load(Ordering::Relaxed),
        c.rx_ok.load(Ordering::Relaxed),
    )
}

/// Run one measurement over connected VMs; `next_hop_macs[i]` is the destination MAC VM i uses
/// for VM (i+1) mod n (the peer's MAC, or what ARP answered).
pub fn run(vms: Vec<Vm>, next_hop_macs: &[[u8; 6]], cfg: &RunConfig) -> Result<Report, RunError> {
    let n = vms.len();
    if n < 2 || next_hop_macs.len() < n {
        return Err(RunError::TooFewVms(n));
    }
    epoch();
    let endpoints: Vec<Endpoint> = vms.iter().map(|v| v.endpoint).collect();
    let ctl = Arc::new(Control {
        sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let counters: Arc<Counters> = Arc::default();
    let mut senders = 0;
    let mut stations = Vec::with_capacity(n);
    for (i, vm) in vms.into_iter().enumerate() {
        let me = endpoints[i];
        let to = endpoints[(i + 1) % n];
        let from = endpoints[(i + n - 1) % n];
        let stamp = |kind| Stamp {
            kind,
            from: i as u8,
            seq: 0,
            sent_ns: 0,
        };
        let bulk = frame::udp_frame(
            &me,
            next_hop_macs[i],
            to.ip,
            40000 + i as u16,
            BULK_PORT,
            cfg.size,
            &stamp(Kind::Bulk),
        );
        let flow = match cfg.mode {
            Mode::Throughput if i == 0 || !cfg.one_way => Flow {
                bulk: Some(bulk),
                probe: None,
            },
            Mode::Latency { with_load } if i == 0 => {
                let probe = frame::udp_frame(
                    &me,
                    next_hop_macs[i],
                    to.ip,
                    41000,
                    PROBE_PORT,
                    cfg.size,
                    &stamp(Kind::Probe),
                );
                Flow {
                    bulk: with_load.then_some(bulk),
                    probe: Some((probe, cfg.probe_interval)),
                }
            }
            _ => Flow {
                bulk: None,
                probe: None,
            },
        };
        if flow.bulk.is_some() || flow.probe.is_some() {
            senders += 1;
        }
        stations.push(Station {
            vm,
            index: i as u8,
            flow,
            from_ip: from.ip,
            next_probe: Instant::now(),
            seq: 0,
            // Only VM 1 (the bulk/probe receiver in latency mode) is slowed down.
            drain: match (cfg.mode, cfg.drain_pps) {
                (Mode::Latency { .. }, Some(pps)) if i == 1 => Some(Drain::new(pps)),
                _ => None,
            },
        });
    }
    let (c, ctl2, batch, busy) = (counters.clone(), ctl.clone(), cfg.batch, cfg.busy_poll);
    let handle = thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || worker(stations, batch, busy, c, ctl2))
        .map_err(|_| RunError::WorkerPanic("loadgen".into()))?;

    ctl.sending.store(true, Ordering::Relaxed);
    thread::sleep(cfg.warmup);
    let (tx0, rx0) = snapshot(&counters);
    let t0 = Instant::now();
    let t0_ns = now_ns();
    thread::sleep(cfg.duration / 2);
    let rss = cfg
        .rss_pids
        .iter()
        .flat_map(|&pid| rss::process_tree(pid))
        .collect();
    thread::sleep(cfg.duration.saturating_sub(t0.elapsed()));
    let (tx1, rx1) = snapshot(&counters);
    let secs = t0.elapsed().as_secs_f64();
    let t1_ns = now_ns();
    ctl.sending.store(false, Ordering::Relaxed);
    // Let frames in flight arrive before counting losses.
    thread::sleep(Duration::from_millis(300));
    ctl.stop.store(true, Ordering::Relaxed);

    let out = match handle.join() {
        Ok(r) => r?,
        Err(_) => return Err(RunError::WorkerPanic("loadgen".into())),
    };
    let probes_sent = out
        .probe_sends
        .iter()
        .filter(|&&t| (t0_ns..t1_ns).contains(&t))
        .count() as u64;
    let mut latencies: Vec<u64> = out
        .probes
        .iter()
        .filter(|(t, _)| (t0_ns..t1_ns).contains(t))
        .map(|&(_, l)| l)
        .collect();
    latencies.sort_unstable();
    let (tx_total, rx_total) = snapshot(&counters);
    let sum = |f: fn(&Counters) -> &AtomicU64| f(&counters).load(Ordering::Relaxed);
    if rx1 == rx0 {
        return Err(RunError::NothingReceived {
            secs,
            sent: tx1 - tx0,
        });
    }
    Ok(Report {
        mode: cfg.mode,
        size: cfg.size.clamp(frame::MIN_FRAME, frame::MAX_FRAME),
        vms: n,
        senders,
        secs,
        tx_pps: (tx1 - tx0) as f64 / secs,
        rx_pps: (rx1 - rx0) as f64 / secs,
        drop_pct: if tx_total == 0 {
            0.0
        } else {
            100.0 * tx_total.saturating_sub(rx_total) as f64 / tx_total as f64
        },
        rx_misrouted: sum(|c| &c.misrouted),
        rx_foreign: sum(|c| &c.foreign),
        latencies_ns: latencies,
        probes_sent,
        rss,
        drain_pps: cfg.drain_pps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
