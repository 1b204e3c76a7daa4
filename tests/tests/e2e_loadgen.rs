//! End-to-end: `vhost-loadgen` plays VMs against dpdk-testpmd (io forwarding between two
//! vhost-user ports, the reference vhost-user backend) and against vm-switch built from this
//! checkout; frames must arrive on every VM.
//!
//! Needs `dpdk-testpmd` (Debian `dpdk-dev`) and, for vm-switch's sandbox, root (user namespaces).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_tests::require_tool;
use vmsilo_tests::switch::{PeerSpec, SwitchProcess};

struct Testpmd(Child);

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_testpmd(dir: &Path) -> Testpmd {
    let tool = require_tool("dpdk-testpmd");
    let log = std::fs::File::create(dir.join("testpmd.log")).expect("create testpmd log");
    let child = Command::new(tool)
        .args([
            "-l",
            "0,1",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--no-shconf",
        ])
        .arg(format!("--file-prefix=e2elg{}", std::process::id()))
        .arg("--vdev")
        .arg(format!("net_vhost0,iface={}", dir.join("a.sock").display()))
        .arg("--vdev")
        .arg(format!("net_vhost1,iface={}", dir.join("b.sock").display()))
        .args([
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "--total-num-mbufs",
            "32768",
        ])
        .args(["--stats-period", "3600"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn dpdk-testpmd");
    let testpmd = Testpmd(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(dir.join("a.sock").exists() && dir.join("b.sock").exists()) {
        assert!(
            Instant::now() < deadline,
            "dpdk-testpmd did not create its sockets: {}",
            std::fs::read_to_string(dir.join("testpmd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    testpmd
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}

fn loadgen(dir: &Path, extra: &[&str]) -> String {
    let vms = [
        format!(
            "a,{},52:54:00:00:00:0a,10.9.0.1",
            dir.join("a.sock").display()
        ),
        format!(
            "b,{},52:54:00:00:00:0b,10.9.0.2",
            dir.join("b.sock").display()
        ),
    ];
    run_loadgen(&vms, "testpmd", extra)
}

fn run_loadgen(vms: &[String], label: &str, extra: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-loadgen"));
    for vm in vms {
        cmd.arg("--vm").arg(vm);
    }
    let out = cmd
        .args(["--secs", "2", "--warmup", "0.5", "--label", label])
        .args(extra)
        .output()
        .expect("run vhost-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vhost-loadgen failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn loadgen_drives_frames_through_testpmd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _testpmd = start_testpmd(tmp.path());

    let out = loadgen(tmp.path(), &["--mode", "throughput", "--size", "64"]);
    // Both VMs negotiated VERSION_1 and the MQ protocol feature with testpmd.
    let connected: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("LOADGEN connected"))
        .collect();
    assert_eq!(connected.len(), 2, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("LOADGEN mode=throughput"))
        .unwrap_or_else(|| panic!("no throughput line in {out}"));
    assert_eq!(field(line, "senders"), 2.0);
    assert!(field(line, "rx_pps") > 1000.0, "{line}");
    assert!(field(line, "drop_pct") < 50.0, "{line}");
    assert_eq!(field(line, "misrouted"), 0.0, "{line}");

    let out = loadgen(
        tmp.path(),
        &["--mode", "latency", "--size", "1514", "--no-load"],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("LOADGEN mode=latency"))
        .unwrap_or_else(|| panic!("no latency line in {out}"));
    assert!(field(line, "probes") > 100.0, "{line}");
    assert!(
        field(line, "probes_lost") < field(line, "probes") / 2.0,
        "{line}"
    );
    assert!(field(line, "p50_us") > 0.0, "{line}");
}

#[test]
fn loadgen_drives_three_vms_through_vm_switch_with_proxy_arp() {
    let sw = SwitchProcess::start("lgtest", &[]);
    let names = ["a", "b", "c"];
    for (i, n) in names.iter().enumerate() {
        let spec = PeerSpec::new(
            n,
            &format!("52:54:00:00:01:0{i}"),
            &format!("10.9.1.{}/24", i + 1),
        );
        sw.add_peer(&spec);
    }
    for n in names {
        sw.wait_socket(n);
    }
    let vms: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n},{},52:54:00:00:01:0{i},10.9.1.{}",
                sw.socket(n).display(),
                i + 1
            )
        })
        .collect();
    // A ring a -> b -> c -> a; each next hop resolved by the switch's proxy ARP.
    let out = run_loadgen(
        &vms,
        "vm-switch",
        &["--mode", "throughput", "--size", "64", "--arp"],
    );
    for (i, n) in names.iter().enumerate() {
        let next = (i + 1) % names.len();
        let want = format!(
            "LOADGEN arp backend=vm-switch vm={n} next_hop=10.9.1.{} mac=52:54:00:00:01:0{next}",
            next + 1
        );
        assert!(
            out.contains(&want),
            "missing `{want}` in:\n{out}\n{}",
            sw.log_text()
        );
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("LOADGEN mode=throughput"))
        .unwrap_or_else(|| panic!("no throughput line in {out}"));
    assert_eq!(field(line, "vms"), 3.0, "{line}");
    assert_eq!(field(line, "senders"), 3.0, "{line}");
    assert!(field(line, "rx_pps") > 1000.0, "{line}\n{}", sw.log_text());
    assert_eq!(field(line, "misrouted"), 0.0, "{line}");
}
