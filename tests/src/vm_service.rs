//! Helpers for the VM service's end-to-end tests: a tiny QEMU guest built from `shared/vmtest`.
//!
//! The vmtest initramfs (busybox, virtio modules) gets a second cpio appended that replaces its
//! `/init` with one made for the service: it prints `VMSILO_GUEST_UP` on the serial console,
//! answers every console line with `GUEST_ECHO <line>`, and powers off cleanly (printing
//! `VMSILO_POWER_BUTTON`) when the ACPI power button is pressed — which is what the service's
//! QMP `system_powerdown` does. For that it loads `button.ko` and `evdev.ko` from the same kernel
//! tree as the initramfs. `vsock-probe` (from `shared/vmtest`, built static with gcc) echoes on
//! vsock port 5000, where the guest agent would listen.
//!
//! Environment: `VMSILO_KROOT` (default `/`) is the kernel tree, as for `build-initramfs.sh
//! --kroot`; `VMTEST_DIR` (default `/tmp/vmtest`) holds vmtest's initramfs, built if missing;
//! the service-test initrd goes to `target/vmsilo-e2e/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{require_tool, shared_dir};

/// Kernel and initrd of the test guest.
#[derive(Debug, Clone)]
pub struct TestGuest {
    /// Kernel image (uncompressed vmlinux when available: boots fastest under TCG).
    pub kernel: PathBuf,
    /// vmtest initramfs with the service-test `/init` appended.
    pub initrd: PathBuf,
}

/// The test guest's `/init`.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
for m in $(cat /etc/vmtest/modules) $(cat /etc/vmtest/modules-vsock 2>/dev/null); do
    insmod /lib/vmtest-modules/$m 2>/dev/null
done
insmod /lib/vmsilo-test/evdev.ko || echo "VMSILO_WARN evdev"
insmod /lib/vmsilo-test/button.ko || echo "VMSILO_WARN button"
stty raw -echo 2>/dev/null
sleep 0.2
# Open each power-button device here, before announcing readiness, so no press can be missed;
# the UART drains asynchronously, so give the last line a moment before powering off.
for ev in /dev/input/event*; do
    [ -e "$ev" ] || continue
    # A guest that ignores the power button, for the forced-stop path.
    grep -q vmsilo_test.deaf=1 /proc/cmdline && continue
    [ "$(cat /sys/class/input/${ev##*/}/device/name 2>/dev/null)" = "Power Button" ] || continue
    exec 3<"$ev"
    ( dd bs=24 count=1 <&3 >/dev/null 2>&1; echo "VMSILO_POWER_BUTTON"; sync; sleep 1; poweroff -f ) &
    exec 3<&-
done
# The guest agent's port: an echo server stands in for it.
[ -e /dev/vsock ] && { vsock-probe listen 5000 >/dev/null 2>&1 & }
macs=""
for n in /sys/class/net/*; do [ "${n##*/}" = lo ] || macs="$macs ${n##*/}=$(cat $n/address)"; done
echo "VMSILO_GUEST_UP nics=${macs# }"
while IFS= read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -n "$line" ] && echo "GUEST_ECHO $line"
done
sleep 1000000
"#;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

/// Build (or reuse) the test guest. Panics with what to install when something is missing.
pub fn test_guest() -> TestGuest {
    require_tool("busybox");
    require_tool("qemu-system-x86_64");
    let cache = crate::repo_root().join("target/vmsilo-e2e");
    fs::create_dir_all(&cache).expect("create e2e cache dir");
    let kroot = std::env::var_os("VMSILO_KROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let vmtest_dir = std::env::var_os("VMTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/vmtest"));
    fs::create_dir_all(&vmtest_dir).expect("create VMTEST_DIR");
    let base = vmtest_dir.join("initramfs.cpio.gz");
    if !base.exists() {
        let script = shared_dir().join("vmtest/build-initramfs.sh");
        assert!(
            script.exists(),
            "{} missing (set VMSILO_SHARED)",
            script.display()
        );
        run(Command::new(&script)
            .arg("-o")
            .arg(&base)
            .arg("--kroot")
            .arg(&kroot));
    }
    let kernel = PathBuf::from(
        fs::read_to_string(vmtest_dir.join("initramfs.cpio.gz.kernel"))
            .expect("build-initramfs.sh wrote no .kernel file")
            .trim(),
    );
    let kver = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| {
            n.strip_prefix("vmlinux-")
                .or_else(|| n.strip_prefix("vmlinuz-"))
        })
        .expect("kernel named vmlinux-KVER")
        .to_owned();
    let moddir = kroot.join("lib/modules").join(&kver).join("kernel/drivers");
    let initrd = cache.join("initrd-vmsilo-service.img");
    let extra = cache.join("extra");
    let _ = fs::remove_dir_all(&extra);
    fs::create_dir_all(extra.join("lib/vmsilo-test")).expect("extra dir");
    for (module, src) in [
        ("button.ko", moddir.join("acpi/button.ko")),
        ("evdev.ko", moddir.join("input/evdev.ko")),
    ] {
        fs::copy(&src, extra.join("lib/vmsilo-test").join(module)).unwrap_or_else(|e| {
            panic!(
                "{} missing ({e}); install linux-image-amd64 or set VMSILO_KROOT to the unpacked \
                 kernel package the vmtest initramfs was built from (tests/setup.sh does)",
                src.display()
            )
        });
    }
    fs::create_dir_all(extra.join("usr/bin")).expect("extra dir");
    require_tool("gcc");
    run(Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(extra.join("usr/bin/vsock-probe"))
        .arg(shared_dir().join("vmtest/vsock-probe.c")));
    let init = extra.join("init");
    fs::write(&init, INIT).expect("write init");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).expect("chmod init");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | busybox cpio -o -H newc 2>/dev/null")
        .current_dir(&extra)
        .output()
        .expect("busybox cpio");
    assert!(cpio.status.success(), "busybox cpio failed");
    // The kernel unpacks concatenated archives in order; later files replace earlier ones, and
    // NUL padding between archives is skipped.
    let mut out = fs::read(&base).expect("read base initramfs");
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&cpio.stdout);
    let mut file = fs::File::create(&initrd).expect("create initrd");
    file.write_all(&out).expect("write initrd");
    TestGuest { kernel, initrd }
}

/// Whether a path is a live unix socket someone listens on.
pub fn socket_listening(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The `vmsilo` binary: `$VMSILO_BIN`, else [`workspace_bin`].
pub fn vmsilo_bin() -> PathBuf {
    match std::env::var_os("VMSILO_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => workspace_bin("vmsilo", "vmsilo"),
    }
}

/// Build (if stale) and locate binary `bin` of workspace package `package`, next to the running
/// test binary (`<target>/<profile>/deps/<test>`): a test must never run an outdated binary, and
/// `CARGO_BIN_EXE_*` only covers the test's own package.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps")
        .to_owned();
    let target = profile_dir.parent().expect("target dir").to_owned();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(crate::repo_root());
    if let Some(profile) = profile_dir.file_name().and_then(|n| n.to_str())
        && profile != "debug"
    {
        cmd.args(["--profile", profile]);
    }
    run(&mut cmd);
    let path = profile_dir.join(bin);
    assert!(path.is_file(), "{} missing after build", path.display());
    path
}

/// The recorder that stands in for crosvm in service tests (`host-launcher/tests/support`).
pub fn fake_crosvm() -> PathBuf {
    crate::repo_root().join("host-launcher/tests/support/fake-crosvm")
}

/// A vhost-user-net peer standing in for vm-switch: dpdk-testpmd listening on `socket`,
/// interactive and idle (no forwarding started), so it serves the vhost-user protocol without
/// busy-polling a CPU. Dropped → killed.
pub struct TestSwitch {
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl TestSwitch {
    /// Start it and wait until the socket exists.
    pub fn start(socket: &Path, log: &Path) -> Self {
        let testpmd = require_tool("dpdk-testpmd");
        let prefix = format!("vmsilo-e2e-{}", std::process::id());
        let mut child = Command::new(testpmd)
            .args([
                "-l",
                "0,1",
                "--no-huge",
                "-m",
                "512",
                "--no-pci",
                "--no-shconf",
            ])
            .arg("--file-prefix")
            .arg(&prefix)
            .arg("--vdev")
            .arg(format!("net_vhost0,iface={}", socket.display()))
            .args(["--", "-i", "--nb-cores=1", "--total-num-mbufs", "8192"])
            .stdin(std::process::Stdio::piped())
            .stdout(fs::File::create(log).expect("testpmd log"))
            .stderr(fs::File::create(log.with_extension("err")).expect("testpmd log"))
            .spawn()
            .expect("start dpdk-testpmd (apt-get install dpdk-dev)");
        let stdin = child.stdin.take().expect("testpmd stdin");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dpdk-testpmd exited with {status}; see {}", log.display());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dpdk-testpmd never created {}",
                socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self {
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for TestSwitch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host side of hybrid vsock: connect to the backend's socket and ask for guest `port`,
/// retrying while the guest has no listener yet (the backend then closes without a reply).
/// Returns the stream once the backend said `OK`.
pub fn hybrid_connect(
    uds: &Path,
    port: u32,
    timeout: std::time::Duration,
) -> std::os::unix::net::UnixStream {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(uds) {
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            if stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .is_ok()
            {
                // Byte by byte: nothing after the newline belongs to the reply.
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while line.len() < 64 && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                if line.starts_with(b"OK ") {
                    return stream;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no OK for CONNECT {port} on {} within {timeout:?}",
            uds.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
