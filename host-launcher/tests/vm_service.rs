//! `vmsilo vm run` driven through its CLI with recorders standing in for crosvm, QEMU, the Wayland
//! security-context helper and vhost-device-vsock (`tests/support/fake-*`, Python 3), and a plain
//! listener standing in for vm-switch's socket of `banking` on network `internal`. Each test
//! runs the real binary in its own process group under a temporary root and checks what it
//! created, what it told the recorders, and that everything is gone after it exits.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The configured user: a stranger when we are root (so ownership changes are visible), else us
/// (nobody else can be given files).
fn user_uid() -> u32 {
    if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getuid().as_raw()
    }
}

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

struct Env {
    dir: tempfile::TempDir,
    notify: UnixDatagram,
    /// vm-switch's vhost-user socket for `banking` on `internal`, listening.
    switch: Option<UnixListener>,
    start_timeout: Cell<u64>,
}

impl Env {
    fn new(vm_json: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // The helper running as the user must reach its log and the compositor dir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let doc = format!(
            r#"{{"user": "vmuser", "userUid": {}, "isolatedPciDevices": ["01:00.0"], "nixosVms": [{vm_json}]}}"#,
            user_uid()
        );
        fs::create_dir_all(root.join("etc/vmsilo")).unwrap();
        fs::write(root.join("etc/vmsilo/config.json"), doc).unwrap();
        let template = root.join("var/lib/vmsilo/home-template");
        fs::create_dir_all(template.join(".config")).unwrap();
        fs::write(template.join(".config/seeded"), "from the template\n").unwrap();
        // A compositor socket for the security-context helper to find.
        fs::create_dir_all(dir.path().join("user-run")).unwrap();
        fs::write(dir.path().join("user-run/wayland-0"), "").unwrap();
        fs::create_dir_all(dir.path().join("sys")).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let switch_dir = root.join("run/vm-switch/internal");
        fs::create_dir_all(&switch_dir).unwrap();
        let switch = Some(UnixListener::bind(switch_dir.join("banking.sock")).unwrap());
        Self {
            dir,
            notify,
            switch,
            start_timeout: Cell::new(20),
        }
    }

    fn switch_socket(&self) -> PathBuf {
        self.root().join("run/vm-switch/internal/banking.sock")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn run_dir(&self) -> PathBuf {
        self.root().join("run/vmsilo")
    }
    fn log(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if !path.exists() {
            fs::write(&path, "").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        }
        path
    }

    fn command(&self, vm: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsilo"));
        cmd.args(["--log-level", "debug", "vm", "run", vm]);
        self.options(cmd)
    }

    /// `vm-start-debug <vm>` with the same options.
    fn debug_command(&self, vm: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm-start-debug"));
        cmd.arg(vm);
        self.options(cmd)
    }

    fn options(&self, mut cmd: Command) -> Command {
        cmd.arg("--root")
            .arg(self.root())
            .arg("--crosvm")
            .arg(support("fake-crosvm"))
            .arg("--wayland-context")
            .arg(support("fake-wayland-context"))
            .arg("--vhost-device-vsock")
            .arg(support("fake-vhost-device-vsock"))
            .arg("--sysfs")
            .arg(self.dir.path().join("sys"))
            .arg("--user-runtime-dir")
            .arg(self.dir.path().join("user-run"))
            .args(["--shutdown-timeout", "3", "--start-timeout"])
            .arg(self.start_timeout.get().to_string())
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("FAKE_CROSVM_LOG", self.log("crosvm.log"))
            .env("FAKE_WAYLAND_LOG", self.log("wayland.log"))
            .env("FAKE_VSOCK_LOG", self.log("vsock.log"))
            .env("FAKE_QEMU_LOG", self.log("qemu.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so group signals in the tests reach only the service tree.
            .process_group(0);
        cmd
    }

    fn wait_ready(&self, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf)
                && &buf[..n] == b"READY=1"
            {
                return;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("service exited before READY=1: {status}\n{}", stderr(child));
            }
        }
        panic!("no READY=1 within 30s");
    }

    fn events(&self, log: &str) -> Vec<serde_json::Value> {
        fs::read_to_string(self.log(log))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A spawned service whose whole process group is killed if the test panics first, so a failing
/// test never leaves a VM service (and its recorders) running.
struct Service(Child);

impl std::ops::Deref for Service {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

trait SpawnGuarded {
    fn spawn_guarded(&mut self) -> Service;
}

impl SpawnGuarded for Command {
    fn spawn_guarded(&mut self) -> Service {
        Service(self.spawn().unwrap())
    }
}

fn stderr(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn wait_exit(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    panic!("service did not exit within {secs}s\n{}", stderr(child));
}

fn open_console(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .unwrap()
}

fn read_until(file: &mut fs::File, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        match file.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("console read: {e}"),
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
    panic!(
        "no {needle:?} on the console; got {:?}",
        String::from_utf8_lossy(&got)
    );
}

const SWITCHED_VM: &str = r##"{ "id": 3, "name": "banking", "color": "#2ecc71",
    "rootOverlay": { "size": "16M" },
    "network": { "interfaces": { "internal": { "type": "vm-switch", "addresses": ["10.1.0.1/24"],
        "vmNetwork": { "name": "internal", "routes": ["192.168.0.0/16"] } } } } }"##;

#[test]
fn full_lifecycle_under_crosvm_and_clean_stop_on_sigterm() {
    let env = Env::new(SWITCHED_VM);
    let mut child = env.command("banking").spawn_guarded();
    env.wait_ready(&mut child);
    let run = env.run_dir();

    // crosvm got the foundation's argv with the serial on the service's PTY.
    let events = env.events("crosvm.log");
    let start = events.iter().find(|e| e["event"] == "start").unwrap();
    let argv: Vec<String> = start["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().into())
        .collect();
    assert_eq!(argv[0], "--log-level");
    let after = |flag: &str| -> Vec<&str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    };
    let sock = run.join("banking/crosvm.sock");
    assert_eq!(after("--socket"), [sock.to_str().unwrap()]);
    assert_eq!(
        after("--wayland-sock"),
        [run.join("banking/wayland-0").to_str().unwrap()]
    );
    let serial = after("--serial");
    assert_eq!(serial.len(), 1);
    assert!(
        serial[0].starts_with("type=file,path=/dev/pts/"),
        "{serial:?}"
    );
    let link = run.join("banking-console");
    let user_pts = fs::read_link(&link).unwrap();
    assert!(
        !serial[0].contains(user_pts.to_str().unwrap()),
        "VMM must not share the users' pts"
    );
    assert!(after("--block").iter().any(|b| {
        b.starts_with(
            env.root()
                .join("var/lib/vmsilo/banking/overlay.qcow2")
                .to_str()
                .unwrap(),
        )
    }));
    // Clean signal mask, own process group, no inherited descriptors (PTYs, signalfd, pipes).
    assert_eq!(start["sigblk"], "0000000000000000");
    assert_eq!(
        start["fds"],
        serde_json::json!([]),
        "fds leaked into the VMM"
    );
    assert_eq!(start["pgid"], start["pid"]);

    // The users' end of the console belongs to the user (vm-shell runs as the user).
    let pts_meta = fs::metadata(&link).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            (pts_meta.uid(), pts_meta.mode() & 0o777),
            (user_uid(), 0o600)
        );
    }
    // The console works both ways through the link.
    let mut console = open_console(&link);
    read_until(&mut console, "FAKE_CONSOLE_UP");
    console.write_all(b"hello vm\r").unwrap();
    read_until(&mut console, "ECHO hello vm");

    // Overlay, home, peer file, security context.
    let overlay = env.root().join("var/lib/vmsilo/banking/overlay.qcow2");
    assert_eq!(&fs::read(&overlay).unwrap()[..4], b"QFI\xfb");
    let seeded = env.root().join("shared/banking/.config/seeded");
    assert_eq!(fs::read_to_string(&seeded).unwrap(), "from the template\n");
    assert_eq!(fs::metadata(&seeded).unwrap().uid(), user_uid());
    let peer_file = env.root().join("run/vm-switch/internal/banking.json");
    let peer: serde_json::Value = serde_json::from_slice(&fs::read(&peer_file).unwrap()).unwrap();
    assert_eq!(
        peer,
        serde_json::json!({"name": "banking",
            "mac": vmsilo::derive::mac_address("banking", "internal").to_string(),
            "ipv4": ["10.1.0.1/24"], "ipv6": [], "routes": ["192.168.0.0/16"],
            "receiveBroadcast": false})
    );
    let wayland = env.events("wayland.log");
    assert_eq!(wayland.len(), 1);
    let listen = run.join("banking/wayland-0");
    assert_eq!(
        wayland[0]["argv"],
        serde_json::json!([
            "--vm",
            "banking",
            "--color",
            "#2ecc71",
            "--listen",
            listen.to_str().unwrap(),
            "--display",
            "wayland-0"
        ])
    );
    assert_eq!(
        wayland[0]["XDG_RUNTIME_DIR"],
        env.dir.path().join("user-run").to_str().unwrap()
    );
    assert!(
        fs::symlink_metadata(&listen)
            .unwrap()
            .file_type()
            .is_socket_like()
    );
    assert_eq!(wayland[0]["uid"], user_uid(), "the helper runs as the user");
    let run_meta = fs::metadata(run.join("banking")).unwrap();
    assert_eq!(
        run_meta.mode() & 0o7777,
        0o1770,
        "group-writable and sticky for the helper"
    );
    assert_eq!(run_meta.uid(), nix::unistd::geteuid().as_raw());

    // SIGTERM: power button, guest powers off, everything created is removed.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert!(status.success(), "{status}\n{err}");
    let controls: Vec<_> = env
        .events("crosvm.log")
        .into_iter()
        .filter(|e| e["event"] == "control" || e["event"] == "signal")
        .collect();
    assert_eq!(
        controls,
        [serde_json::json!({"event": "control", "command": "powerbtn"})]
    );
    for gone in [&run.join("banking"), &link, &peer_file, &overlay, &listen] {
        assert!(
            fs::symlink_metadata(gone).is_err(),
            "{} left behind",
            gone.display()
        );
    }
    assert!(
        seeded.exists(),
        "the shared home is the user's data and stays"
    );
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}
impl SocketLike for fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_socket()
    }
}

#[test]
fn unresponsive_guest_is_stopped_after_the_timeout_and_ctrl_c_spares_the_vmm() {
    let env = Env::new(
        r#"{ "id": 5, "name": "shop", "gpu": false, "sharedHome": false, "rootOverlay": { "type": "tmpfs" } }"#,
    );
    let mut cmd = env.command("shop");
    cmd.env("FAKE_CROSVM_IGNORE_POWERBTN", "1");
    let mut child = cmd.spawn_guarded();
    env.wait_ready(&mut child);
    let mode = fs::metadata(env.run_dir().join("shop")).unwrap().mode() & 0o7777;
    assert_eq!(
        mode, 0o755,
        "no security context: the runtime dir stays root's"
    );
    // Ctrl-C in a terminal signals the whole foreground group: only the service may see it.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let begun = Instant::now();
    let status = wait_exit(&mut child, 30);
    assert!(status.success(), "{status}\n{}", stderr(&mut child));
    assert!(
        begun.elapsed() >= Duration::from_secs(3),
        "waited the shutdown timeout"
    );
    let controls: Vec<_> = env
        .events("crosvm.log")
        .into_iter()
        .filter(|e| e["event"] == "control" || e["event"] == "signal")
        .map(|e| e.get("command").or(e.get("signal")).unwrap().to_string())
        .collect();
    assert_eq!(controls, ["\"powerbtn\"", "\"stop\""]);
    assert!(!env.run_dir().join("shop").exists());
    assert!(
        !env.root()
            .join("var/lib/vmsilo/shop/overlay.qcow2")
            .exists(),
        "tmpfs: no disk"
    );
    assert!(
        !env.root().join("shared/shop").exists(),
        "sharedHome = false"
    );
    assert!(
        env.events("wayland.log").is_empty(),
        "gpu = false: no security context"
    );
}

#[test]
fn guest_powering_off_ends_the_service_cleanly() {
    let env = Env::new(SWITCHED_VM);
    let mut cmd = env.command("banking");
    cmd.env("FAKE_CROSVM_EXIT_AFTER", "2");
    let mut child = cmd.spawn_guarded();
    env.wait_ready(&mut child);
    let status = wait_exit(&mut child, 20);
    assert!(status.success(), "{status}\n{}", stderr(&mut child));
    assert!(!env.run_dir().join("banking").exists());
    assert!(!env.run_dir().join("banking-console").exists());
    assert!(
        !env.root()
            .join("run/vm-switch/internal/banking.json")
            .exists()
    );
    assert!(
        env.events("crosvm.log")
            .iter()
            .all(|e| e["event"] != "control"),
        "nobody pressed the power button"
    );
}

#[test]
fn pci_device_not_on_vfio_fails_before_anything_is_created() {
    let env = Env::new(
        r#"{ "id": 7, "name": "usb", "gpu": false, "pciDevices": [ { "path": "01:00.0" } ] }"#,
    );
    let sys = env.dir.path().join("sys");
    let dev = sys.join("devices/pci0000:00/0000:01:00.0");
    fs::create_dir_all(&dev).unwrap();
    fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
    std::os::unix::fs::symlink(&dev, sys.join("bus/pci/devices/0000:01:00.0")).unwrap();
    fs::create_dir_all(sys.join("bus/pci/drivers/xhci_hcd")).unwrap();
    std::os::unix::fs::symlink(sys.join("bus/pci/drivers/xhci_hcd"), dev.join("driver")).unwrap();
    let mut child = env.command("usb").spawn_guarded();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("0000:01:00.0 is bound to xhci_hcd, not vfio-pci"),
        "{err}"
    );
    assert!(!env.run_dir().join("usb").exists());
    assert!(!env.run_dir().join("usb-console").exists());
    assert!(env.events("crosvm.log").is_empty(), "VMM never started");
}

#[test]
fn vhost_user_vsock_backend_is_started_and_its_death_stops_the_vm() {
    let env = Env::new(
        r#"{ "id": 9, "name": "dev", "gpu": false, "sharedHome": false, "vsock": { "transport": "vhost-user" } }"#,
    );
    let mut cmd = env.command("dev");
    cmd.env("FAKE_VSOCK_DIE_AFTER", "3");
    let mut child = cmd.spawn_guarded();
    env.wait_ready(&mut child);
    let run = env.run_dir().join("dev");
    let vsock = env.events("vsock.log");
    assert_eq!(
        vsock[0]["argv"],
        serde_json::json!([
            "--guest-cid",
            "9",
            "--socket",
            run.join("vhost-vsock.sock").to_str().unwrap(),
            "--uds-path",
            run.join("vsock.sock").to_str().unwrap()
        ])
    );
    let argv = env.events("crosvm.log")[0]["argv"].to_string();
    assert!(argv.contains(&format!(
        "type=vsock,socket={}",
        run.join("vhost-vsock.sock").display()
    )));
    let status = wait_exit(&mut child, 30);
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("vhost-device-vsock exited unexpectedly"),
        "{err}"
    );
    assert!(
        env.events("crosvm.log")
            .iter()
            .any(|e| e["command"] == "powerbtn")
    );
    assert!(!run.exists());
}

#[test]
fn failing_security_context_is_a_clear_error_and_cleans_up() {
    let env = Env::new(SWITCHED_VM);
    let mut cmd = env.command("banking");
    cmd.env("FAKE_WAYLAND_FAIL", "1");
    let mut child = cmd.spawn_guarded();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the Wayland security context did not become ready"),
        "{err}"
    );
    assert!(!env.run_dir().join("banking").exists());
    assert!(!env.run_dir().join("banking-console").exists());
    assert!(
        !env.root()
            .join("run/vm-switch/internal/banking.json")
            .exists()
    );
    assert!(
        !env.root()
            .join("var/lib/vmsilo/banking/overlay.qcow2")
            .exists()
    );
    assert!(env.events("crosvm.log").is_empty());
}

#[test]
fn unknown_vm_is_rejected() {
    let env = Env::new(SWITCHED_VM);
    let mut child = env.command("nope").spawn_guarded();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("no VM is named \"nope\"; VMs: banking"),
        "{err}"
    );
}

#[test]
fn vm_start_debug_mirrors_the_console_and_stops_on_ctrl_c() {
    let env = Env::new(
        r#"{ "id": 11, "name": "dbg", "gpu": false, "sharedHome": false, "rootOverlay": { "type": "tmpfs" } }"#,
    );
    let mut child = env.debug_command("dbg").spawn_guarded();
    env.wait_ready(&mut child);
    std::thread::sleep(Duration::from_millis(500));
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child, 20);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let err = stderr(&mut child);
    assert!(status.success(), "{status}\n{err}");
    assert!(
        out.contains("FAKE_CONSOLE_UP"),
        "console mirrored to stdout: {out:?}"
    );
    assert!(err.contains("VM is up"), "info logging: {err}");
    assert!(
        err.contains("dbg-console"),
        "tells where the console is: {err}"
    );
    assert!(!env.run_dir().join("dbg").exists());
}

#[test]
fn stop_during_start_is_a_clean_exit() {
    let env = Env::new(SWITCHED_VM);
    let mut cmd = env.command("banking");
    cmd.env("FAKE_CROSVM_START_DELAY", "30");
    let mut child = cmd.spawn_guarded();
    // Wait until the VMM has been started, then stop before it is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.events("crosvm.log").is_empty() {
        assert!(Instant::now() < deadline, "VMM never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert!(status.success(), "{status}\n{err}");
    assert!(err.contains("StoppedWhileStarting"), "{err}");
    for gone in [
        env.run_dir().join("banking"),
        env.run_dir().join("banking-console"),
        env.root().join("run/vm-switch/internal/banking.json"),
        env.root().join("var/lib/vmsilo/banking/overlay.qcow2"),
    ] {
        assert!(
            fs::symlink_metadata(&gone).is_err(),
            "{} left behind",
            gone.display()
        );
    }
}

#[test]
fn a_second_run_of_a_running_vm_is_refused_and_leaves_it_alone() {
    let env = Env::new(SWITCHED_VM);
    let mut first = env.command("banking").spawn_guarded();
    env.wait_ready(&mut first);
    let mut second = env.command("banking").spawn_guarded();
    let status = wait_exit(&mut second, 20);
    let err = stderr(&mut second);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("VM banking is already running"), "{err}");
    // The first one still has all its pieces and still stops cleanly.
    assert!(env.run_dir().join("banking/crosvm.sock").exists());
    assert!(env.run_dir().join("banking-console").exists());
    assert!(
        env.root()
            .join("run/vm-switch/internal/banking.json")
            .exists()
    );
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut first, 20);
    assert!(status.success(), "{status}\n{}", stderr(&mut first));
    assert!(!env.run_dir().join("banking").exists());
}

#[test]
fn guest_reboot_is_a_clean_end_and_a_crash_is_a_failure() {
    for (code, ok, outcome) in [
        ("32", true, "GuestRebooted"),
        ("33", false, "exit status: 33"),
    ] {
        let env = Env::new(SWITCHED_VM);
        let mut cmd = env.command("banking");
        cmd.env("FAKE_CROSVM_EXIT_AFTER", "1")
            .env("FAKE_CROSVM_EXIT_CODE", code);
        let mut child = cmd.spawn_guarded();
        env.wait_ready(&mut child);
        let status = wait_exit(&mut child, 20);
        let err = stderr(&mut child);
        assert_eq!(status.success(), ok, "crosvm exit {code}: {status}\n{err}");
        assert!(err.contains(outcome), "{err}");
        assert!(!env.run_dir().join("banking").exists());
        assert!(
            !env.root()
                .join("run/vm-switch/internal/banking.json")
                .exists()
        );
    }
}

/// A process that is gone for good (not even a zombie), waiting briefly for init to reap.
fn assert_gone(pid: i64, what: &str) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    let deadline = Instant::now() + Duration::from_secs(2);
    while kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still there"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const QEMU_VM: &str = r#"{ "id": 13, "name": "qvm", "vmm": "qemu", "gpu": false, "sharedHome": false,
    "rootOverlay": { "type": "tmpfs" }, "vsock": { "transport": "vhost-user" } }"#;

fn qemu_command(env: &Env, vm: &str, mode: &str) -> Command {
    let mut cmd = env.command(vm);
    cmd.arg("--qemu")
        .arg(support("fake-qemu"))
        .args(["--accel", "tcg"])
        .env("FAKE_QEMU_MODE", mode);
    cmd
}

fn pid_of(env: &Env, log: &str) -> i64 {
    env.events(log)
        .iter()
        .find_map(|e| e["pid"].as_i64())
        .unwrap_or_else(|| panic!("no pid in {log}"))
}

#[test]
fn qemu_ready_only_after_qmp_answers_and_powers_off_on_sigterm() {
    let env = Env::new(
        r#"{ "id": 3, "name": "banking", "vmm": "qemu", "gpu": false, "sharedHome": false,
            "rootOverlay": { "type": "tmpfs" },
            "network": { "interfaces": { "internal": { "type": "vm-switch",
                "addresses": ["10.1.0.1/24"], "vmNetwork": { "name": "internal" } } } } }"#,
    );
    let mut child = qemu_command(&env, "banking", "ok").spawn_guarded();
    env.wait_ready(&mut child);
    let qmp: Vec<_> = env
        .events("qemu.log")
        .into_iter()
        .filter_map(|e| e["command"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        qmp,
        ["qmp_capabilities"],
        "READY=1 came after the handshake"
    );
    let argv = env.events("qemu.log")[0]["argv"].to_string();
    assert!(
        argv.contains(&format!(
            "socket,id=net-internal,path={},reconnect=1",
            env.switch_socket().display()
        )),
        "{argv}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert!(status.success(), "{status}\n{err}");
    assert!(err.contains("PoweredOff"), "{err}");
    let qmp: Vec<_> = env
        .events("qemu.log")
        .into_iter()
        .filter_map(|e| e["command"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        qmp,
        ["qmp_capabilities", "qmp_capabilities", "system_powerdown"]
    );
    assert!(!env.run_dir().join("banking").exists());
}

/// QEMU stuck before its main loop (a vhost-user netdev retrying its connection): its QMP socket
/// accepts connections but never answers. The service must not report the VM up, must give up at
/// the start timeout with QEMU's own complaint in the error, and must leave nothing running.
#[test]
fn qemu_stuck_before_its_main_loop_fails_at_the_start_timeout_and_leaves_no_process() {
    let env = Env::new(QEMU_VM);
    env.start_timeout.set(3);
    let begun = Instant::now();
    let mut child = qemu_command(&env, "qvm", "stuck").spawn_guarded();
    let status = wait_exit(&mut child, 20);
    let err = stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        begun.elapsed() < Duration::from_secs(12),
        "bounded by the start timeout: {:?}",
        begun.elapsed()
    );
    assert!(!err.contains("VM is up"), "{err}");
    assert!(err.contains("did not reach its main loop"), "{err}");
    // Depending on timing the last try was answered by silence or by a full listen backlog.
    assert!(
        err.contains("no QMP greeting") || err.contains("listen backlog stays full"),
        "{err}"
    );
    assert!(
        err.contains("Its stderr ended with:")
            && err.contains("Unable to connect character device net-lan"),
        "QEMU's stderr tail is in the error: {err}"
    );
    let mut buf = [0u8; 64];
    assert!(env.notify.recv(&mut buf).is_err(), "no READY=1");
    assert_gone(pid_of(&env, "qemu.log"), "QEMU");
    assert_gone(pid_of(&env, "vsock.log"), "vhost-device-vsock");
    assert!(!env.run_dir().join("qvm").exists());
    assert!(!env.run_dir().join("qvm-console").exists());
}

/// QEMU answered at start, then froze. The power button cannot hang the stop, and a second
/// SIGTERM cuts even that short: the VMM and its helpers are killed at once.
#[test]
fn qemu_that_stops_answering_is_killed_on_a_second_sigterm() {
    let env = Env::new(QEMU_VM);
    let mut child = qemu_command(&env, "qvm", "hang-after-ready").spawn_guarded();
    let err = stop_twice(&env, &mut child, "the power button");
    assert!(err.contains("Forced"), "{err}");
    assert_gone(pid_of(&env, "qemu.log"), "QEMU");
    assert_gone(pid_of(&env, "vsock.log"), "vhost-device-vsock");
    assert!(!env.run_dir().join("qvm").exists());
}

#[test]
fn missing_or_stale_vm_switch_socket_is_a_clear_error_before_the_vmm_starts() {
    let mut env = Env::new(SWITCHED_VM);
    env.start_timeout.set(1);
    let sock = env.switch_socket();
    // vm-switch not running: no socket at all.
    drop(env.switch.take());
    fs::remove_file(&sock).unwrap();
    for (case, problem) in [
        ("missing", "is missing"),
        ("stale", "exists but nobody listens on it"),
    ] {
        if case == "stale" {
            // A socket file whose owner is gone (a vm-switch that was killed).
            drop(UnixListener::bind(&sock).unwrap());
        }
        let begun = Instant::now();
        let mut child = env.command("banking").spawn_guarded();
        let status = wait_exit(&mut child, 20);
        let err = stderr(&mut child);
        assert_eq!(status.code(), Some(1), "{case}: {err}");
        assert!(begun.elapsed() < Duration::from_secs(8), "{case}");
        let want = format!(
            "vm-switch for network 'internal' is not running: {} {problem}",
            sock.display()
        );
        assert!(err.contains(&want), "{case}: want {want:?} in {err}");
        assert!(err.contains("start vm-switch-internal.service"), "{err}");
        assert!(env.events("crosvm.log").is_empty(), "{case}: VMM started");
        assert!(
            env.events("wayland.log").is_empty(),
            "{case}: helpers started"
        );
        assert!(!env.run_dir().join("banking").exists());
        assert!(
            !env.root()
                .join("run/vm-switch/internal/banking.json")
                .exists(),
            "{case}: peer file left behind"
        );
    }
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

/// crosvm froze after start: `crosvm powerbtn` never returns. The stop is bounded all the same,
/// a second SIGTERM kills the VMM at once, and neither the VMM nor a control CLI is left over.
#[test]
fn frozen_crosvm_is_killed_on_a_second_sigterm_and_its_control_cli_too() {
    let env = Env::new(
        r#"{ "id": 15, "name": "frozen", "gpu": false, "sharedHome": false, "rootOverlay": { "type": "tmpfs" } }"#,
    );
    let mut cmd = env.command("frozen");
    cmd.env("FAKE_CROSVM_CONTROL_HANG", "1");
    let mut child = cmd.spawn_guarded();
    stop_twice(&env, &mut child, "`crosvm powerbtn`");
    let controls: Vec<_> = env
        .events("crosvm.log")
        .into_iter()
        .filter_map(|e| e["command"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(controls, ["powerbtn"]);
    let left = processes_mentioning(&env.dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:#?}");
    assert!(!env.run_dir().join("frozen").exists());
}

#[test]
fn a_config_that_is_not_a_regular_file_is_named_once_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for config in [std::path::Path::new("/dev/zero"), fifo.as_path()] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vm-start-debug"))
            .arg("banking")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn_guarded();
        let status = wait_exit(&mut child, 20);
        let err = stderr(&mut child);
        assert_eq!(status.code(), Some(1), "{err}");
        let shown = config.display().to_string();
        assert_eq!(err.matches(&shown).count(), 1, "{err}");
        assert!(err.contains("not a regular file"), "{err}");
    }
}

/// Wait until ready, send SIGTERM, and a second one 1.5 s later; the service must end at once
/// (not after waiting for `what`), successfully, saying it killed the VMM. Returns its stderr.
fn stop_twice(env: &Env, child: &mut Service, what: &str) -> String {
    env.wait_ready(child);
    let pid = Pid::from_raw(child.id() as i32);
    let begun = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kill(pid, Signal::SIGTERM).unwrap();
    let status = wait_exit(child, 20);
    let err = stderr(child);
    assert!(status.success(), "{status}\n{err}");
    assert!(
        begun.elapsed() < Duration::from_secs(4),
        "the second SIGTERM did not wait for {what}: {:?}\n{err}",
        begun.elapsed()
    );
    assert!(
        err.contains("second stop request; killing the VMM"),
        "{err}"
    );
    err
}
