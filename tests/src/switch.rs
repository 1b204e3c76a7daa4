//! Helpers for vm-switch end-to-end tests: run the real `vm-switch` binary on a temporary config
//! directory and boot QEMU guests on it through `../shared/vmtest/boot-guest.sh`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `vm-switch` binary: `$VM_SWITCH_BIN`, else built with cargo into this workspace's
/// target directory.
pub fn switch_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VM_SWITCH_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "vm-switch", "--bin", "vm-switch"])
        .current_dir(crate::repo_root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build vm-switch: {e}"));
    assert!(status.success(), "building vm-switch failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    target.join("debug/vm-switch")
}

/// One peer file's content.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// VM name.
    pub name: String,
    /// Guest MAC.
    pub mac: String,
    /// IPv4 address with prefix.
    pub ip: String,
    /// Advertised routes.
    pub routes: Vec<String>,
    /// Whether it receives broadcast.
    pub receive_broadcast: bool,
}

impl PeerSpec {
    /// A peer with no routes that does not receive broadcast.
    pub fn new(name: &str, mac: &str, ip: &str) -> Self {
        PeerSpec {
            name: name.into(),
            mac: mac.into(),
            ip: ip.into(),
            routes: Vec::new(),
            receive_broadcast: false,
        }
    }

    fn json(&self) -> String {
        let routes: Vec<String> = self.routes.iter().map(|r| format!("{r:?}")).collect();
        format!(
            r#"{{"name":{:?},"mac":{:?},"ipv4":[{:?}],"routes":[{}],"receiveBroadcast":{}}}"#,
            self.name,
            self.mac,
            self.ip,
            routes.join(","),
            self.receive_broadcast
        )
    }
}

/// A running `vm-switch` on a temporary config directory; killed on drop.
pub struct SwitchProcess {
    child: Child,
    /// The config directory (`<switch_dir>/<net>`).
    pub dir: PathBuf,
    /// Its stderr log.
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SwitchProcess {
    /// Start `vm-switch --name <net>` with `extra` flags on a fresh directory.
    pub fn start(net: &str, extra: &[&str]) -> SwitchProcess {
        Self::start_with_env(net, extra, &[])
    }

    /// As [`SwitchProcess::start`], with extra environment variables (test hooks).
    pub fn start_with_env(net: &str, extra: &[&str], env: &[(&str, &str)]) -> SwitchProcess {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dir = tmp.path().join("vm-switch").join(net);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let log = tmp.path().join("vm-switch.log");
        let logf = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(switch_binary())
            .args(["--name", net, "--config-dir"])
            .arg(&dir)
            .args(["--log-level", "info"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start vm-switch: {e}"));
        SwitchProcess {
            child,
            dir,
            log,
            _tmp: tmp,
        }
    }

    /// Write a peer file atomically, as the VM service does.
    pub fn add_peer(&self, p: &PeerSpec) {
        let tmp = self.dir.join(format!(".{}.json.tmp", p.name));
        std::fs::write(&tmp, p.json()).unwrap_or_else(|e| panic!("write peer: {e}"));
        std::fs::rename(&tmp, self.dir.join(format!("{}.json", p.name)))
            .unwrap_or_else(|e| panic!("rename peer: {e}"));
    }

    /// The vhost-user socket for a VM.
    pub fn socket(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.sock"))
    }

    /// Wait until the socket for `vm` exists.
    pub fn wait_socket(&self, vm: &str) {
        let t = Instant::now();
        while !self.socket(vm).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "vm-switch never created {}; log:\n{}",
                self.socket(vm).display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The switch's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the main process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Titles (`/proc/<pid>/cmdline`) of the per-VM workers (descendants titled `vm-switch(`).
    pub fn child_titles(&self) -> Vec<String> {
        self.child_pids().into_iter().map(|(_, t)| t).collect()
    }

    /// PIDs and titles of the per-VM workers. With the sandbox they are grandchildren (the
    /// sandboxed main is PID 1 of its namespace, under the process we started).
    pub fn child_pids(&self) -> Vec<(u32, String)> {
        descendants(self.child.id())
            .into_iter()
            .filter(|(_, t)| t.starts_with("vm-switch("))
            .collect()
    }
}

/// All descendants of `root` with their command lines.
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
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
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&cmd)
                .trim_end_matches('\0')
                .to_string();
            all.push((p, ppid, title));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, pp, t) in &all {
            if *pp == parent {
                out.push((*p, t.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one guest run.
#[derive(Debug, Clone)]
pub struct GuestResult {
    /// boot-guest.sh exit code.
    pub code: i32,
    /// Every tagged line the guest printed (without the `name: ` prefix) and the summary.
    pub lines: Vec<String>,
}

impl GuestResult {
    /// Lines starting with `tag`.
    pub fn tagged(&self, tag: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(tag))
            .map(String::as_str)
            .collect()
    }

    /// The value of `key=` in the first line tagged `tag`.
    pub fn field(&self, tag: &str, key: &str) -> Option<String> {
        let line = self.tagged(tag).into_iter().next()?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
    }
}

/// A guest booting in the background.
pub struct Guest {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Where the test-guest initramfs and kernel live (`tests/setup.sh` builds them there).
pub fn vmtest_dir() -> PathBuf {
    std::env::var_os("VMTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/vmtest"))
}

/// Per-run directory for guest serial logs, so parallel runs do not share files.
pub fn guest_log_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vm-switch-e2e-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Boot a guest on vhost-user socket `sock`, running `script` (busybox sh, guest-lib.sh loaded).
pub fn boot_guest(
    name: &str,
    sock: &Path,
    ip: &str,
    mac: &str,
    script: &str,
    timeout_s: u32,
) -> Guest {
    crate::require_tool("qemu-system-x86_64");
    let vmtest = crate::shared_dir().join("vmtest");
    let dir = vmtest_dir();
    let initrd = dir.join("initramfs.cpio.gz");
    assert!(
        initrd.is_file(),
        "{} is missing: run tests/setup.sh (builds the vmtest initramfs and kernel)",
        initrd.display()
    );
    let log = guest_log_dir().join(format!("{name}.log"));
    let mut child = Command::new(vmtest.join("boot-guest.sh"))
        .env("VMTEST_DIR", &dir)
        .arg("--log")
        .arg(&log)
        .args(["--name", name, "--vhost-user"])
        .arg(sock)
        .args([
            "--ip",
            ip,
            "--mac",
            mac,
            "--timeout",
            &timeout_s.to_string(),
        ])
        .args(["--run", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run boot-guest.sh: {e}"));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take();
    let l2 = lines.clone();
    let prefix = format!("{name}: ");
    let reader = std::thread::spawn(move || {
        let Some(out) = out else { return };
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let line = line.strip_prefix(&prefix).unwrap_or(&line).to_string();
            if let Ok(mut v) = l2.lock() {
                v.push(line);
            }
        }
    });
    Guest {
        name: name.into(),
        child,
        lines,
        reader: Some(reader),
    }
}

impl Guest {
    /// Wait for the guest to finish.
    pub fn wait(mut self) -> GuestResult {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for guest {}: {e}", self.name));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().map(|v| v.clone()).unwrap_or_default();
        GuestResult {
            code: status.code().unwrap_or(-1),
            lines,
        }
    }

    /// Whether the guest printed a line starting with `tag` yet.
    pub fn saw(&self, tag: &str) -> bool {
        self.lines
            .lock()
            .map(|v| v.iter().any(|l| l.starts_with(tag)))
            .unwrap_or(false)
    }

    /// Whether QEMU (boot-guest) is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
