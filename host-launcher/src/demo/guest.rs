//! The demo's tiny guest: a Debian kernel and a busybox initramfs with `vmsilo-agent` inside.
//!
//! The base initramfs (busybox, virtio and vsock modules) comes from `shared/vmtest`'s
//! `build-initramfs.sh`; a second cpio appended to it replaces `/init` with [`INIT`] and adds the
//! agent and the modules the power button needs. The guest reads its demo settings from the
//! kernel command line: `vmsilo.demo.name=`, `vmsilo.demo.addr=<ifname>,<cidr>` and
//! `vmsilo.demo.idle=<seconds>`. Like a NixOS guest, it names its NICs from `vmsilo.ifname=` and
//! configures them before the agent starts taking commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// `/init` of the demo guest.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run && mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
for m in $(cat /etc/vmtest/modules) vsock.ko vmw_vsock_virtio_transport_common.ko vmw_vsock_virtio_transport.ko; do
    insmod /lib/vmtest-modules/$m 2>/dev/null
done
insmod /lib/vmsilo-demo/evdev.ko 2>/dev/null
insmod /lib/vmsilo-demo/button.ko 2>/dev/null
arg() { for w in $(cat /proc/cmdline); do case $w in "$1"=*) echo "${w#*=}";; esac; done; }
name=$(arg vmsilo.demo.name); hostname "${name:-vmsilo}"
# ACPI power button (the VM service's clean shutdown): power off at once.
for ev in /dev/input/event*; do
    [ "$(cat /sys/class/input/${ev##*/}/device/name 2>/dev/null)" = "Power Button" ] || continue
    ( dd bs=24 count=1 <"$ev" >/dev/null 2>&1; echo "DEMO_POWER_BUTTON"; poweroff -f ) &
done
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'user:x:1000:1000:Guest:/home/user:/bin/sh' >> /etc/passwd
printf 'root:x:0:\nuser:x:1000:\n' > /etc/group
mkdir -p /home/user /run/user/1000 && chown 1000:1000 /home/user /run/user/1000
ip link set lo up
# As on NixOS, ping reaches the user through a setuid wrapper in /run/wrappers/bin.
mkdir -p /run/wrappers/bin && cp /bin/busybox /run/wrappers/bin/ping && chmod 4755 /run/wrappers/bin/ping
# Name and configure the NICs before the agent accepts commands, as a NixOS guest's .link files
# and networkd do before its agent socket starts.
for spec in $(arg vmsilo.ifname); do
    want=${spec%%,*}; mac=${spec#*,}
    for n in /sys/class/net/*; do
        [ "$(cat $n/address)" = "$mac" ] && [ "${n##*/}" != "$want" ] && ip link set dev "${n##*/}" name "$want"
    done
done
for spec in $(arg vmsilo.demo.addr); do
    ifname=${spec%%,*}; cidr=${spec#*,}
    ip addr add "$cidr" dev "$ifname" && ip link set "$ifname" up
done
idle=$(arg vmsilo.demo.idle)
vmsilo-agent --user user --path /run/wrappers/bin:/usr/bin:/bin:/usr/sbin:/sbin ${idle:+--auto-shutdown-after $idle} \
    --poweroff-command 'echo DEMO_IDLE_POWEROFF; poweroff -f' &
agent=$!
echo "DEMO_GUEST_UP name=$name uptime=$(cut -d' ' -f1 /proc/uptime)"
wait $agent
echo "DEMO_AGENT_EXIT rc=$?"
poweroff -f
"#;

/// Kernel and initramfs of the demo guest.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Kernel image (uncompressed vmlinux: boots fastest without hardware virtualisation).
    pub kernel: PathBuf,
    /// The initramfs with the agent and the demo `/init`.
    pub initramfs: PathBuf,
    /// A blank disk attached as the root disk (the demo guest runs from its initramfs).
    pub root_disk: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = super::interrupt::output(cmd, what).with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn find_module(kroot: &Path, name: &str) -> Result<PathBuf> {
    let modules = kroot.join("lib/modules");
    for kver in
        fs::read_dir(&modules).with_context(|| format!("cannot list {}", modules.display()))?
    {
        let dir = kver?.path();
        let out = run(
            Command::new("find")
                .arg(&dir)
                .args(["-name", &format!("{name}.ko*")]),
            "find",
        )?;
        if let Some(line) = String::from_utf8_lossy(&out).lines().next() {
            return Ok(PathBuf::from(line));
        }
    }
    bail!("kernel module {name} not found below {}", modules.display())
}

/// Copy a module into `dest`, decompressing `.ko.xz`/`.ko.zst` (busybox insmod wants plain .ko).
fn install_module(src: &Path, dest: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    if name.ends_with(".ko") {
        fs::copy(src, dest)?;
        return Ok(());
    }
    let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
    let data = run(Command::new(tool).arg("-dc").arg(src), tool)?;
    fs::write(dest, data)?;
    Ok(())
}

/// Build the guest in `work`, from the kernel tree `kroot`, vmtest's scripts and `agent`.
pub fn build(work: &Path, kroot: &Path, vmtest: &Path, agent: &Path) -> Result<GuestImage> {
    let base = work.join("base.cpio.gz");
    let script = vmtest.join("build-initramfs.sh");
    ensure!(script.exists(), "{} is missing", script.display());
    run(
        Command::new("bash")
            .arg(&script)
            .arg("--kroot")
            .arg(kroot)
            .arg("-o")
            .arg(&base)
            .arg("--no-iperf")
            .env("VMTEST_DIR", work),
        "build-initramfs.sh",
    )?;
    let kernel = fs::read_to_string(work.join("base.cpio.gz.kernel"))
        .context("build-initramfs.sh recorded no kernel")?;
    let kernel = PathBuf::from(kernel.trim());

    let tree = work.join("overlay");
    let _ = fs::remove_dir_all(&tree);
    for dir in ["usr/bin", "lib/vmsilo-demo"] {
        fs::create_dir_all(tree.join(dir))?;
    }
    fs::write(tree.join("init"), INIT)?;
    fs::copy(agent, tree.join("usr/bin/vmsilo-agent"))
        .with_context(|| format!("cannot copy the agent {}", agent.display()))?;
    for module in ["evdev", "button"] {
        if let Ok(src) = find_module(kroot, module) {
            install_module(&src, &tree.join(format!("lib/vmsilo-demo/{module}.ko")))?;
        }
    }
    run(
        Command::new("chmod")
            .args(["755"])
            .arg(tree.join("init"))
            .arg(tree.join("usr/bin/vmsilo-agent")),
        "chmod",
    )?;
    let cpio = run(
        Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 | busybox cpio -o -H newc 2>/dev/null | gzip -1")
            .current_dir(&tree),
        "busybox cpio",
    )?;
    let mut initramfs = fs::read(&base)?;
    initramfs.extend_from_slice(&cpio);
    let initramfs_path = work.join("initramfs.cpio.gz");
    fs::write(&initramfs_path, initramfs)?;

    let root_disk = work.join("blank-root.img");
    fs::write(&root_disk, vec![0u8; 1 << 20])?;
    Ok(GuestImage {
        kernel,
        initramfs: initramfs_path,
        root_disk,
    })
}
