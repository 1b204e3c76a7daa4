//! What the demo needs on the host, found or installed.
//!
//! Run as root on Debian, the demo installs what is missing (apt packages, a Debian guest kernel
//! unpacked without touching /boot, and vhost-device-vsock from crates.io); otherwise it lists
//! exactly what to install and stops.
//!
//! The install never changes the host behind the user's back: apt is asked first what it would
//! do (`apt-get -s`), and every package it would remove, downgrade or upgrade is listed in the
//! transcript before the real install runs (still without a question: CI runs the demo). The
//! tools' own output goes to a log file, named when something fails.

use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::interrupt;

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

/// Where the tools' output goes, and how to say so.
struct Log<'a> {
    path: &'a Path,
}

impl Log<'_> {
    /// Run `cmd` with stdout and stderr appended to the log.
    fn run(&self, cmd: &mut Command, what: &str) -> Result<()> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let st = interrupt::status(cmd, what).with_context(|| format!("cannot run {what}"))?;
        if !st.success() {
            bail!(
                "{what} failed ({st}); its output is in {}",
                self.path.display()
            );
        }
        Ok(())
    }
}

/// One change apt would make to a package that is already installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `Remv pkg [version]`.
    Remove { package: String, version: String },
    /// `Inst pkg [old] (new …)`, with whether `new` sorts before, after or equal to `old`.
    Replace {
        package: String,
        old: String,
        new: String,
        order: Ordering,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Remove { package, version } => write!(f, "remove {package} {version}"),
            Self::Replace {
                package,
                old,
                new,
                order,
            } => {
                let verb = match order {
                    Ordering::Less => "downgrade",
                    Ordering::Greater => "upgrade",
                    Ordering::Equal => "reinstall",
                };
                write!(f, "{verb} {package} {old} -> {new}")
            }
        }
    }
}

/// The changes to installed packages in `apt-get -s` output: every `Remv` line, and every
/// `Inst` line that names a version already installed (`Inst pkg [old] (new release [arch])`).
pub(super) fn simulated_changes(sim: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for line in sim.lines() {
        let mut words = line.split_whitespace();
        let (Some(op), Some(package)) = (words.next(), words.next()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let bracketed = rest
            .first()
            .and_then(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .map(str::to_owned);
        match (op, bracketed) {
            ("Remv", version) => out.push(Change::Remove {
                package: package.to_owned(),
                version: version.unwrap_or_else(|| "(version unknown)".to_owned()),
            }),
            ("Inst", Some(old)) => {
                let new = rest
                    .get(1)
                    .and_then(|w| w.strip_prefix('('))
                    .unwrap_or("?")
                    .to_owned();
                out.push(Change::Replace {
                    package: package.to_owned(),
                    order: deb_version_cmp(&new, &old),
                    old,
                    new,
                });
            }
            _ => {}
        }
    }
    out
}

/// Debian version order (`dpkg --compare-versions`): epoch, then upstream version, then
/// revision, each compared by dpkg's rules (`~` sorts before everything, even the end).
pub(super) fn deb_version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) if e.chars().all(|c| c.is_ascii_digit()) => {
                (e.parse().unwrap_or(0), rest)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((upstream, revision)) => (epoch, upstream, revision),
            None => (epoch, rest, ""),
        }
    }
    fn weight(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(b'~') => -1,
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit())
            {
                let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
                if wa != wb {
                    return wa.cmp(&wb);
                }
                i += 1;
                j += 1;
            }
            while a.get(i) == Some(&b'0') {
                i += 1;
            }
            while b.get(j) == Some(&b'0') {
                j += 1;
            }
            let mut first_diff = Ordering::Equal;
            while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
                if first_diff == Ordering::Equal {
                    first_diff = a[i].cmp(&b[j]);
                }
                i += 1;
                j += 1;
            }
            if i < a.len() && a[i].is_ascii_digit() {
                return Ordering::Greater;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                return Ordering::Less;
            }
            if first_diff != Ordering::Equal {
                return first_diff;
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua, ub))
        .then_with(|| part(ra, rb))
}

/// Install `pkgs` with apt, after listing what it would do to packages already installed.
fn apt_install(pkgs: &[&str], log: &Log<'_>, say: &mut dyn FnMut(String)) -> Result<()> {
    log.run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    let args = ["install", "-y", "--no-install-recommends"];
    let sim = interrupt::output(
        Command::new("apt-get")
            .arg("-s")
            .args(args)
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get -s install",
    )
    .context("cannot run apt-get -s install")?;
    // Keep the simulation with the rest of apt's output.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log.path)
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "$ apt-get -s {} {}", args.join(" "), pkgs.join(" "))?;
            f.write_all(&sim.stdout)?;
            f.write_all(&sim.stderr)
        });
    if !sim.status.success() {
        bail!(
            "apt-get -s install (the dry run) failed ({}); its output is in {}",
            sim.status,
            log.path.display()
        );
    }
    let changes = simulated_changes(&String::from_utf8_lossy(&sim.stdout));
    if !changes.is_empty() {
        let mut text = format!(
            "apt-get will change {} package{} already installed:",
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        );
        for change in &changes {
            text.push_str(&format!("\n  - {change}"));
        }
        say(text);
    }
    log.run(
        Command::new("apt-get")
            .args(args)
            .arg("-qq")
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// Check, and when `install` is set and we are root, install what is missing, with the
/// installers' output in `log`.
pub fn ensure(
    kroot: &Path,
    install: bool,
    log: &Path,
    say: &mut dyn FnMut(String),
) -> Result<Tools> {
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
    let how = match (install, is_root()) {
        (true, true) => None,
        (false, true) => Some("without --no-install to install these automatically"),
        (false, false) => Some("as root without --no-install to install these automatically"),
        (true, false) => Some("as root to install these automatically"),
    };
    if let Some(how) = how {
        bail!(
            "the demo needs:\n  - {}\n(run `vmsilo demo` {how})",
            plan.join("\n  - ")
        );
    }
    let log = Log { path: log };
    say(format!(
        "installing what is missing; the installers' output goes to {}",
        log.path.display()
    ));
    if !missing_pkgs.is_empty() {
        say(format!("apt-get install {}", missing_pkgs.join(" ")));
        apt_install(&missing_pkgs, &log, say)?;
    }
    if need_kernel {
        say(format!(
            "unpacking a Debian guest kernel into {}",
            kroot.display()
        ));
        install_kernel(kroot, &log)?;
    }
    if need_vsock {
        say("building vhost-device-vsock 0.3.0 from crates.io (a few minutes)".to_owned());
        log.run(
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

fn install_kernel(kroot: &Path, log: &Log<'_>) -> Result<()> {
    let deps = interrupt::output(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        "apt-cache depends",
    )
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
    log.run(
        Command::new("apt-get")
            .args(["download", "-qq", image])
            .current_dir(tmp.path()),
        "apt-get download",
    )?;
    std::fs::create_dir_all(kroot)?;
    for deb in std::fs::read_dir(tmp.path())? {
        let deb = deb?.path();
        log.run(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_version_order() {
        for (a, b, want) in [
            (
                "1:7.2+dfsg-7+deb12u7",
                "1:10.0.2+ds-1~bpo12+1",
                Ordering::Less,
            ),
            ("1.0", "1.0", Ordering::Equal),
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1.0", "1.0-0", Ordering::Equal),
            ("2:1.0", "10.0", Ordering::Greater),
            ("1.0a", "1.0", Ordering::Greater),
            ("1.0+b1", "1.0a", Ordering::Greater),
            ("1.002", "1.2", Ordering::Equal),
            ("1.10", "1.9", Ordering::Greater),
        ] {
            assert_eq!(deb_version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(deb_version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn simulation_lists_removals_and_replacements_only() {
        let sim = "NOTE: This is only a simulation!\n\
                   Remv qemu-utils [1:10.0.2+ds-1~bpo12+1]\n\
                   Inst qemu-utils [1:10.0.2+ds-1~bpo12+1] (1:7.2+dfsg-7+deb12u7 Debian:12.12/oldstable [amd64])\n\
                   Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u7 Debian:12.12/oldstable [amd64])\n\
                   Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u7 Debian:12.12/oldstable [amd64])\n";
        let changes: Vec<String> = simulated_changes(sim)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "remove qemu-utils 1:10.0.2+ds-1~bpo12+1",
                "downgrade qemu-utils 1:10.0.2+ds-1~bpo12+1 -> 1:7.2+dfsg-7+deb12u7"
            ]
        );
    }
}
