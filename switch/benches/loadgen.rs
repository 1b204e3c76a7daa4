//! Load generator: plays two VMs over vhost-user (our frontend in `tests/support/vfront.rs`) and
//! measures vm-switch against dpdk-testpmd (io forwarding between two vhost-user ports) in the
//! same run. Reported as ratios to testpmd.
//!
//! Run: `cargo bench -p vm-switch --bench loadgen` (or `tests/bench-switch.sh`).
//! Options (env): `LOADGEN_SECS` (default 3), `LOADGEN_BACKENDS` (default `vm-switch,testpmd`).
//!
//! Phases per backend:
//! 1. throughput, 64-byte frames: Mpps received by VM B;
//! 2. throughput, 1500-byte frames: Gbit/s (L2 bytes) received by VM B;
//! 3. latency under load: VM B drains at half the rate phase 2 reached, so a standing queue
//!    builds in the forwarder; a bulk UDP flow fills it while a sparse flow (one frame per ms,
//!    another port) measures one-way delay (p50/p99).

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/support/vfront.rs"]
mod vfront;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfront::{GuestMem, Port, connect, parse_udp_frame, udp_frame};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const IP_A: [u8; 4] = [198, 18, 0, 1];
const IP_B: [u8; 4] = [198, 18, 0, 2];
const QSIZE: u16 = 256;
const BUF: usize = 2048;
const BULK_PORT: u16 = 4000;
const PROBE_PORT: u16 = 5000;

struct Backend {
    name: &'static str,
    child: Child,
    sock_a: PathBuf,
    sock_b: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: signalling the process we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vm_switch() -> Backend {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench");
    std::fs::create_dir(&dir).unwrap();
    for (n, mac, ip) in [
        ("a", "52:54:00:00:00:0a", "198.18.0.1/24"),
        ("b", "52:54:00:00:00:0b", "198.18.0.2/24"),
    ] {
        std::fs::write(
            dir.join(format!("{n}.json")),
            format!(r#"{{"name":"{n}","mac":"{mac}","ipv4":["{ip}"]}}"#),
        )
        .unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args(["--name", "bench", "--log-level", "warn", "--config-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Backend {
        name: "vm-switch",
        child,
        sock_a: dir.join("a.sock"),
        sock_b: dir.join("b.sock"),
        _tmp: tmp,
    }
}

fn start_testpmd() -> Backend {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.sock");
    let b = tmp.path().join("b.sock");
    let prefix = format!("vmsilo-loadgen-{}", std::process::id());
    let child = Command::new("dpdk-testpmd")
        .args([
            "-l",
            "0,1",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--no-shconf",
            "--file-prefix",
            &prefix,
        ])
        .arg(format!("--vdev=net_vhost0,iface={}", a.display()))
        .arg(format!("--vdev=net_vhost1,iface={}", b.display()))
        .args([
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "--total-num-mbufs=32768",
            "--stats-period=0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("dpdk-testpmd (Debian package dpdk-dev) is required: {e}"));
    Backend {
        name: "testpmd",
        child,
        sock_a: a,
        sock_b: b,
        _tmp: tmp,
    }
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i] as f64 / 1e6
}

struct Vm {
    mem: GuestMem,
    port: Port,
}

fn vm(sock: &Path) -> Vm {
    let mem = GuestMem::new(8 << 20);
    let fe = connect(sock, Duration::from_secs(20));
    let port = Port::setup(fe, &mem, 0, QSIZE, BUF);
    Vm { mem, port }
}

struct Phase {
    rx_frames: u64,
    rx_bytes: u64,
    secs: f64,
    probe_lat: Vec<u64>,
}

/// Send bulk frames of `size` from a to b for `secs`; b drains at most `rx_rate` frames/s
/// (unlimited if None). A probe frame on another port goes out every millisecond.
fn run_phase(
    a: &mut Vm,
    b: &mut Vm,
    size: usize,
    secs: f64,
    rx_rate: Option<f64>,
    origin: Instant,
) -> Phase {
    let mut ph = Phase {
        rx_frames: 0,
        rx_bytes: 0,
        secs,
        probe_lat: Vec::new(),
    };
    let start = Instant::now();
    let mut seq = 0u64;
    let mut next_probe = 0.0f64;
    let dur = Duration::from_secs_f64(secs);
    let mut received_total = 0u64;
    while start.elapsed() < dur {
        let el = start.elapsed().as_secs_f64();
        let probe_due = el >= next_probe;
        if probe_due {
            next_probe = el + 0.001;
        }
        let mut first = probe_due;
        a.port.send_burst(&a.mem, usize::from(QSIZE), &mut |buf| {
            seq += 1;
            let port = if first { PROBE_PORT } else { BULK_PORT };
            first = false;
            udp_frame(
                buf,
                size,
                MAC_A,
                MAC_B,
                IP_A,
                IP_B,
                port,
                seq,
                now_ns(origin),
            )
        });
        let allowed = match rx_rate {
            None => true,
            Some(r) => (r * el) as u64 >= received_total + 64,
        };
        if allowed {
            let t = now_ns(origin);
            let n = b.port.recv(&b.mem, &mut |f| {
                ph.rx_frames += 1;
                ph.rx_bytes += f.len() as u64;
                if let Some((_, ts, sport)) = parse_udp_frame(f)
                    && sport == PROBE_PORT
                {
                    ph.probe_lat.push(t.saturating_sub(ts));
                }
            });
            received_total += n as u64;
        }
    }
    // Drain what is in flight without counting it against the time window.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(200) {
        a.port.reap_tx(&a.mem);
        b.port.recv(&b.mem, &mut |_| {});
    }
    ph
}

fn worker_rss_kib(root: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    let mut all = Vec::new();
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        all.push((p, ppid));
    }
    let mut frontier = vec![root];
    let mut desc = Vec::new();
    while let Some(x) = frontier.pop() {
        for (p, pp) in &all {
            if *pp == x {
                desc.push(*p);
                frontier.push(*p);
            }
        }
    }
    for p in desc {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if !cmd.starts_with(b"vm-switch(") {
            continue;
        }
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/status"))
            && let Some(l) = st.lines().find(|l| l.starts_with("VmRSS:"))
        {
            out.push(
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
    }
    out
}

struct Report {
    name: &'static str,
    mpps_64: f64,
    gbps_1500: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_kib: Vec<u64>,
}

fn measure(mut be: Backend, secs: f64) -> Report {
    let origin = Instant::now();
    let mut a = vm(&be.sock_a);
    let mut b = vm(&be.sock_b);
    std::thread::sleep(Duration::from_millis(500));
    // Warm-up.
    run_phase(&mut a, &mut b, 64, 0.3, None, origin);
    let p64 = run_phase(&mut a, &mut b, 64, secs, None, origin);
    let p1500 = run_phase(&mut a, &mut b, 1500, secs, None, origin);
    let rate = p1500.rx_frames as f64 / p1500.secs;
    let mut lat = run_phase(&mut a, &mut b, 1500, secs, Some(rate / 2.0), origin);
    let rss = worker_rss_kib(be.child.id());
    let _ = be.child.try_wait();
    Report {
        name: be.name,
        mpps_64: p64.rx_frames as f64 / p64.secs / 1e6,
        gbps_1500: p1500.rx_bytes as f64 * 8.0 / p1500.secs / 1e9,
        p50_ms: percentile(&mut lat.probe_lat, 0.5),
        p99_ms: percentile(&mut lat.probe_lat, 0.99),
        rss_kib: rss,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let secs: f64 = std::env::var("LOADGEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let which = std::env::var("LOADGEN_BACKENDS").unwrap_or_else(|_| "vm-switch,testpmd".into());
    let mut reports = Vec::new();
    for name in which.split(',') {
        let be = match name.trim() {
            "vm-switch" => start_vm_switch(),
            "testpmd" => start_testpmd(),
            other => panic!("unknown backend {other}"),
        };
        eprintln!("loadgen: measuring {name} ({secs} s per phase)");
        reports.push(measure(be, secs));
    }
    println!(
        "| backend | Mpps @64 B | Gbit/s @1500 B | sparse-flow delay p50 / p99 under a standing bulk queue (ms) | worker RSS (KiB) |"
    );
    println!("|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {:.3} | {:.3} | {:.2} / {:.2} | {} |",
            r.name,
            r.mpps_64,
            r.gbps_1500,
            r.p50_ms,
            r.p99_ms,
            if r.rss_kib.is_empty() {
                "-".to_string()
            } else {
                format!("{:?}", r.rss_kib)
            }
        );
    }
    if let (Some(s), Some(t)) = (
        reports.iter().find(|r| r.name == "vm-switch"),
        reports.iter().find(|r| r.name == "testpmd"),
    ) {
        println!(
            "RATIO vm-switch/testpmd: mpps_64={:.2} gbps_1500={:.2} sparse_p99_delay={:.2}",
            s.mpps_64 / t.mpps_64,
            s.gbps_1500 / t.gbps_1500,
            s.p99_ms / t.p99_ms
        );
    }
}
