//! End to end: `vmsilo vm run` boots a real QEMU guest (vmm = "qemu", TCG here) from the vmtest
//! kernel and initramfs, with a vm-switch interface served by dpdk-testpmd (standing in for
//! vm-switch) and vsock over vhost-device-vsock. Checks: readiness via sd_notify, the peer file
//! and the other created files while it runs, the guest's NIC has the derived MAC, the serial
//! console through the `<vm>-console` link both ways, a hybrid-vsock round trip to guest port
//! 5000 through the backend the service started, and on SIGTERM an ACPI power-button
//! shutdown that the guest acts on, followed by removal of everything the service created. And a
//! QEMU stuck before its main loop on a vhost-user netdev nobody accepts: a bounded failure that
//! quotes QEMU and leaves no process behind.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use vmsilo_tests::require_tool;
use vmsilo_tests::vm_service::{TestSwitch, hybrid_connect, test_guest, vmsilo_bin};

/// Reads the console without blocking, remembering everything seen.
struct ConsoleReader {
    file: fs::File,
    seen: String,
}

impl ConsoleReader {
    fn open(link: &Path) -> Self {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(link)
            .unwrap();
        Self {
            file,
            seen: String::new(),
        }
    }

    /// Read what is there; false once the other side is gone.
    fn poll(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false, // EIO: the service closed the PTY
            }
        }
    }

    fn wait_for(&mut self, needle: &str, secs: u64, service: &mut Child) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            self.poll();
            if let Some(at) = self.seen.find(needle) {
                let line_end = self.seen[at..]
                    .find('\n')
                    .map_or(self.seen.len(), |e| at + e);
                return self.seen[at..line_end].trim_end().to_owned();
            }
            if let Some(status) = service.try_wait().unwrap() {
                panic!(
                    "service exited ({status}) before {needle:?}; console: {}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no {needle:?} within {secs}s; console so far: {}",
            self.seen
        );
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn qemu_vm_runs_under_the_service_and_stops_cleanly() {
    require_tool("qemu-img");
    let vhost_device_vsock = std::env::var_os("VHOST_DEVICE_VSOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/vhost-device/bin/vhost-device-vsock"));
    assert!(
        vhost_device_vsock.is_file(),
        "{} missing: cargo install vhost-device-vsock --version 0.3.0 (see tests/setup.sh)",
        vhost_device_vsock.display()
    );
    let guest = test_guest();
    let vmsilo = vmsilo_bin();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run = root.join("run/vmsilo");
    let net_dir = root.join("run/vm-switch/e2enet");
    fs::create_dir_all(&net_dir).unwrap();
    fs::create_dir_all(root.join("etc/vmsilo")).unwrap();
    fs::create_dir_all(root.join("var/lib/vmsilo/home-template")).unwrap();
    fs::write(
        root.join("var/lib/vmsilo/home-template/.profile"),
        "# e2e\n",
    )
    .unwrap();
    let root_img = dir.path().join("root.img");
    fs::write(&root_img, vec![0u8; 1 << 20]).unwrap();
    let uid = if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getuid().as_raw()
    };
    let doc = serde_json::json!({
        "user": "vmuser", "userUid": uid,
        "nixosVms": [{
            "id": 3, "name": "e2e", "vmm": "qemu", "memory": 256, "cpus": 1, "gpu": false,
            "kernel": guest.kernel, "initramfs": guest.initrd, "rootDisk": { "path": root_img },
            "rootOverlay": { "size": "64M" },
            "vsock": { "transport": "vhost-user" },
            "kernelParams": ["quiet", "panic=-1"],
            "network": { "interfaces": { "internal": {
                "type": "vm-switch", "addresses": ["10.1.0.1/24"],
                "vmNetwork": { "name": "e2enet", "routes": ["10.9.0.0/16"] } } } }
        }]
    });
    fs::write(root.join("etc/vmsilo/config.json"), doc.to_string()).unwrap();

    let _switch = TestSwitch::start(&net_dir.join("e2e.sock"), &dir.path().join("testpmd.log"));

    let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut service = Command::new(&vmsilo)
        .args(["--log-level", "info", "vm", "run", "e2e", "--accel", "tcg"])
        .arg("--root")
        .arg(&root)
        .arg("--vhost-device-vsock")
        .arg(&vhost_device_vsock)
        .args(["--shutdown-timeout", "90", "--start-timeout", "120"])
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let pid = Pid::from_raw(i32::try_from(service.id()).unwrap());
    let guard = scopeguard(pid);

    // READY=1 once QEMU's QMP socket answers.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut buf = [0u8; 64];
    loop {
        if let Ok(n) = notify.recv(&mut buf)
            && &buf[..n] == b"READY=1"
        {
            break;
        }
        if let Some(status) = service.try_wait().unwrap() {
            panic!(
                "service exited before READY=1: {status}\n{}",
                stderr_of(&mut service)
            );
        }
        assert!(Instant::now() < deadline, "no READY=1 within 150s");
    }

    let ready_s = started.elapsed().as_secs_f64();

    // What the service created.
    let mac = vmsilo::derive::mac_address("e2e", "internal").to_string();
    let peer_file = net_dir.join("e2e.json");
    let peer: serde_json::Value = serde_json::from_slice(&fs::read(&peer_file).unwrap()).unwrap();
    assert_eq!(
        peer,
        serde_json::json!({"name": "e2e", "mac": mac, "ipv4": ["10.1.0.1/24"], "ipv6": [],
            "routes": ["10.9.0.0/16"], "receiveBroadcast": false})
    );
    let overlay = root.join("var/lib/vmsilo/e2e/overlay.qcow2");
    assert_eq!(&fs::read(&overlay).unwrap()[..4], b"QFI\xfb");
    assert!(
        root.join("shared/e2e/.profile").is_file(),
        "home seeded from the template"
    );
    assert!(
        run.join("e2e/vsock.sock").exists(),
        "vhost-device-vsock serves the hybrid vsock socket"
    );
    let link = run.join("e2e-console");

    // The console: the guest's own output, then a round trip.
    let mut console = ConsoleReader::open(&link);
    let up = console.wait_for("VMSILO_GUEST_UP", 240, &mut service);
    assert!(
        up.contains(&format!("eth0={mac}")),
        "guest NIC on the vm-switch socket has the derived MAC: {up}"
    );
    let guest_up_s = started.elapsed().as_secs_f64();
    console.file.write_all(b"hello from the host\n").unwrap();
    console.wait_for("GUEST_ECHO hello from the host", 60, &mut service);

    // vsock through the vhost-device-vsock the service runs: the agent's port answers.
    let mut agent = hybrid_connect(&run.join("e2e/vsock.sock"), 5000, Duration::from_secs(60));
    agent.write_all(b"ping over vsock\n").unwrap();
    let mut echo = [0u8; 16];
    agent.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping over vsock\n");
    drop(agent);

    // SIGTERM: ACPI power button (QMP system_powerdown), the guest powers off by itself.
    kill(pid, Signal::SIGTERM).unwrap();
    let stopping = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        console.poll();
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "service did not stop within 120s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::mem::forget(guard);
    // Informational (TCG on a shared 2-core machine; not asserted).
    eprintln!(
        "VM_SERVICE_E2E ready_s={ready_s:.2} guest_up_s={guest_up_s:.2} stop_s={:.2}",
        stopping.elapsed().as_secs_f64()
    );
    let log = stderr_of(&mut service);
    assert!(status.success(), "{status}\n{log}");
    assert!(
        console.seen.contains("VMSILO_POWER_BUTTON"),
        "the guest saw the power button; console: {}\n{log}",
        console.seen
    );
    assert!(
        log.contains("PoweredOff"),
        "guest powered off before the timeout:\n{log}"
    );
    for gone in [run.join("e2e"), link, peer_file, overlay] {
        assert!(
            fs::symlink_metadata(&gone).is_err(),
            "{} left behind",
            gone.display()
        );
    }
    assert!(
        root.join("shared/e2e/.profile").is_file(),
        "the shared home stays"
    );
}

/// Kills the service's process group if the test panics before it stopped.
/// vhost-device-vsock as tests/setup.sh installs it (or `$VHOST_DEVICE_VSOCK`).
fn vhost_device_vsock() -> PathBuf {
    let p = std::env::var_os("VHOST_DEVICE_VSOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/vhost-device/bin/vhost-device-vsock"));
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// A root for the service under `dir` (with `etc/vmsilo/`), a 1 MiB root disk image, and the uid
/// the VM's user gets (a fixed one when we are root, else our own).
fn service_root(dir: &std::path::Path) -> (PathBuf, PathBuf, u32) {
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc/vmsilo")).unwrap();
    let root_img = dir.join("root.img");
    fs::write(&root_img, vec![0u8; 1 << 20]).unwrap();
    let uid = if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getuid().as_raw()
    };
    (root, root_img, uid)
}

struct Guard(Pid);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}
fn scopeguard(pid: Pid) -> Guard {
    Guard(pid)
}

#[test]
fn qemu_guest_ignoring_the_power_button_is_quit_after_the_timeout() {
    require_tool("qemu-img");
    let vhost_device_vsock = vhost_device_vsock();
    let guest = test_guest();
    let vmsilo = vmsilo_bin();
    let dir = tempfile::tempdir().unwrap();
    let (root, root_img, uid) = service_root(dir.path());
    let doc = serde_json::json!({
        "user": "vmuser", "userUid": uid,
        "nixosVms": [{
            "id": 5, "name": "deaf", "vmm": "qemu", "memory": 256, "cpus": 1, "gpu": false,
            "sharedHome": false, "rootOverlay": { "type": "tmpfs" },
            "kernel": guest.kernel, "initramfs": guest.initrd, "rootDisk": { "path": root_img },
            "vsock": { "transport": "vhost-user" },
            "kernelParams": ["quiet", "panic=-1", "vmsilo_test.deaf=1"]
        }]
    });
    fs::write(root.join("etc/vmsilo/config.json"), doc.to_string()).unwrap();
    let mut service = Command::new(&vmsilo)
        .args(["--log-level", "info", "vm", "run", "deaf", "--accel", "tcg"])
        .arg("--root")
        .arg(&root)
        .arg("--vhost-device-vsock")
        .arg(&vhost_device_vsock)
        .args(["--shutdown-timeout", "3", "--start-timeout", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(service.id()).unwrap());
    let guard = scopeguard(pid);
    let link = root.join("run/vmsilo/deaf-console");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::symlink_metadata(&link).is_err() {
        assert!(Instant::now() < deadline, "no console link");
        assert!(
            service.try_wait().unwrap().is_none(),
            "{}",
            stderr_of(&mut service)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut console = ConsoleReader::open(&link);
    console.wait_for("VMSILO_GUEST_UP", 240, &mut service);

    kill(pid, Signal::SIGTERM).unwrap();
    let stopping = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        console.poll();
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "service did not stop within 60s");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::mem::forget(guard);
    let log = stderr_of(&mut service);
    assert!(status.success(), "{status}\n{log}");
    assert!(
        stopping.elapsed() >= Duration::from_secs(3),
        "waited for the guest first"
    );
    assert!(log.contains("did not power off in time"), "{log}");
    assert!(log.contains("Forced"), "{log}");
    assert!(
        !console.seen.contains("VMSILO_POWER_BUTTON"),
        "{}",
        console.seen
    );
    assert!(!root.join("run/vmsilo/deaf").exists());
    assert!(fs::symlink_metadata(&link).is_err());
}

/// Processes whose command line mentions `needle` (a test's private temporary directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if name.to_str().and_then(|n| n.parse::<u32>().ok()).is_none() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", name.to_string_lossy()));
        }
    }
    found
}

/// The tester's case with the real QEMU: something is bound at vm-switch's socket path but nobody
/// accepts there, so QEMU's vhost-user netdev (reconnect=1) retries forever before QEMU's main
/// loop while its QMP socket already accepts connections. The service must not call the VM up,
/// must fail at the start timeout quoting QEMU's complaint, and must leave neither QEMU nor
/// vhost-device-vsock behind.
#[test]
fn qemu_stuck_on_its_vhost_user_netdev_fails_at_the_start_timeout_without_orphans() {
    require_tool("qemu-img");
    let vhost_device_vsock = vhost_device_vsock();
    let guest = test_guest();
    let vmsilo = vmsilo_bin();
    let dir = tempfile::tempdir().unwrap();
    let (root, root_img, uid) = service_root(dir.path());
    let doc = serde_json::json!({
        "user": "vmuser", "userUid": uid,
        "nixosVms": [{
            "id": 7, "name": "stuck", "vmm": "qemu", "memory": 256, "cpus": 1, "gpu": false,
            "sharedHome": false, "rootOverlay": { "type": "tmpfs" },
            "kernel": guest.kernel, "initramfs": guest.initrd, "rootDisk": { "path": root_img },
            "vsock": { "transport": "vhost-user" },
            "network": { "interfaces": { "lan": {
                "type": "vm-switch", "addresses": ["10.1.0.2/24"],
                "vmNetwork": { "name": "lan" } } } }
        }]
    });
    fs::write(root.join("etc/vmsilo/config.json"), doc.to_string()).unwrap();
    // Bound, never listening: a connect is refused, so QEMU keeps retrying.
    let net_dir = root.join("run/vm-switch/lan");
    fs::create_dir_all(&net_dir).unwrap();
    let sock = net_dir.join("stuck.sock");
    let bound = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&bound),
        &nix::sys::socket::UnixAddr::new(&sock).unwrap(),
    )
    .unwrap();

    let begun = Instant::now();
    let mut service = Command::new(&vmsilo)
        .args([
            "--log-level",
            "info",
            "vm",
            "run",
            "stuck",
            "--accel",
            "tcg",
        ])
        .arg("--root")
        .arg(&root)
        .arg("--vhost-device-vsock")
        .arg(&vhost_device_vsock)
        .args(["--shutdown-timeout", "3", "--start-timeout", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(service.id()).unwrap());
    let guard = scopeguard(pid);
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "service still running after 30s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::mem::forget(guard);
    let log = stderr_of(&mut service);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("VM is up"), "{log}");
    assert!(log.contains("did not reach its main loop"), "{log}");
    assert!(
        log.contains("Unable to connect character device net-lan"),
        "QEMU's own complaint is quoted: {log}"
    );
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:#?}");
    assert!(!root.join("run/vmsilo/stuck").exists());
    assert!(!net_dir.join("stuck.json").exists());
}
