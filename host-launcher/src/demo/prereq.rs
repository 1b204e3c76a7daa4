//! What the demo needs on the host, found or installed.
//!
//! Run as root on Debian, the demo installs what is missing (apt packages, a Debian guest kernel
//! unpacked without touching /boot, and vhost-device-vsock from crates.io); otherwise it lists
//! exactly what to install and stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A program the demo runs, and the Debian package that provides it.
const APT_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("xz", "xz-utils"),
    ("ip", "iproute2"),
    ("apt-get", "apt"),
];

/// Where everything the demo found lives.
#[derive(Debug, Clone)]
pub struct Tools {
    /// QEMU for x86-64.
    pub qemu: PathBuf,
    /// The vhost-user-vsock backend.
    pub vhost_device_vsock: PathBuf,
    /// A Debian kernel tree (boot/vmlinuz-*, lib/modules/*).
    pub kroot: PathBuf,
}

/// Find `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn has_kernel(kroot: &Path) -> bool {
    std::fs::read_dir(kroot.join("boot"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false)
}

fn vhost_device_vsock() -> Option<PathBuf> {
    std::env::var_os("VHOST_DEVICE_VSOCK")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which("vhost-device-vsock"))
        .or_else(|| {
            let p = PathBuf::from("/opt/vhost-device/bin/vhost-device-vsock");
            p.is_file().then_some(p)
        })
}

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// Check, and when `install` is set and we are root, install what is missing.
pub fn ensure(kroot: &Path, install: bool, say: &mut dyn FnMut(String)) -> Result<Tools> {
    let missing_pkgs: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    let need_kernel = !has_kernel(kroot);
    let need_vsock = vhost_device_vsock().is_none();
    if missing_pkgs.is_empty() && !need_kernel && !need_vsock {
        return found(kroot);
    }
    let mut plan = Vec::new();
    if !missing_pkgs.is_empty() {
        plan.push(format!("apt-get install {}", missing_pkgs.join(" ")));
    }
    if need_kernel {
        plan.push(format!(
            "a Debian kernel unpacked into {} (apt-get download linux-image-amd64's image; dpkg-deb -x)",
            kroot.display()
        ));
    }
    if need_vsock {
        plan.push(
            "cargo install vhost-device-vsock --version 0.3.0 --locked --root /opt/vhost-device"
                .to_owned(),
        );
    }
    if !(install && is_root()) {
        bail!(
            "the demo needs:\n  - {}\n(run `vmsilo demo` as root to install these automatically)",
            plan.join("\n  - ")
        );
    }
    if !missing_pkgs.is_empty() {
        say(format!("installing {}", missing_pkgs.join(" ")));
        status(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
        )?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing_pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install",
        )?;
    }
    if need_kernel {
        say(format!(
            "unpacking a Debian guest kernel into {}",
            kroot.display()
        ));
        install_kernel(kroot)?;
    }
    if need_vsock {
        say("building vhost-device-vsock 0.3.0 from crates.io (a few minutes)".to_owned());
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "-q",
                    "vhost-device-vsock",
                    "--version",
                    "0.3.0",
                    "--locked",
                ])
                .args(["--root", "/opt/vhost-device"]),
            "cargo install vhost-device-vsock",
        )?;
    }
    found(kroot)
}

fn install_kernel(kroot: &Path) -> Result<()> {
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("cannot run apt-cache")?;
    let deps = String::from_utf8_lossy(&deps.stdout);
    let Some(image) = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
    else {
        bail!("apt-cache knows no linux-image-amd64 kernel (run apt-get update)");
    };
    let tmp = tempfile::tempdir()?;
    // apt downloads as its sandbox user, which must be able to write here.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    status(
        Command::new("apt-get")
            .args(["download", "-qq", image])
            .current_dir(tmp.path()),
        "apt-get download",
    )?;
    std::fs::create_dir_all(kroot)?;
    for deb in std::fs::read_dir(tmp.path())? {
        let deb = deb?.path();
        status(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(kroot),
            "dpkg-deb -x",
        )?;
    }
    Ok(())
}

fn found(kroot: &Path) -> Result<Tools> {
    Ok(Tools {
        qemu: which("qemu-system-x86_64").context("qemu-system-x86_64 vanished")?,
        vhost_device_vsock: vhost_device_vsock().context("vhost-device-vsock vanished")?,
        kroot: kroot.to_owned(),
    })
}
