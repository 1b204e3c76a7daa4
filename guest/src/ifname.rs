//! Interface naming: the host passes `vmsilo.ifname=<name>,<mac>` on the kernel command line for
//! every configured interface, and the agent renames the NIC with that MAC to `<name>`, so guest
//! interface names match the keys of `network.interfaces` whatever order PCI enumerates them in.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// One requested rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfName {
    /// Name the interface should get.
    pub name: String,
    /// MAC address (lower case, colon separated) that identifies it.
    pub mac: String,
}

/// Why a `vmsilo.ifname` parameter or a rename failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IfNameError {
    /// The parameter does not have the form `<name>,<mac>`.
    #[error("kernel parameter vmsilo.ifname={0:?} is not <name>,<mac>")]
    Malformed(String),
    /// The name is empty, too long for IFNAMSIZ, or has characters Linux rejects.
    #[error("interface name {0:?} is not valid (1-15 bytes, no '/', ':' or whitespace)")]
    BadName(String),
    /// No interface has the MAC.
    #[error("no network interface has MAC {0}")]
    NoSuchMac(String),
    /// An ioctl failed.
    #[error("renaming {from} to {to} failed: {errno}")]
    Rename {
        /// Current name.
        from: String,
        /// Wanted name.
        to: String,
        /// The error.
        errno: nix::errno::Errno,
    },
}

/// Parse every `vmsilo.ifname=` parameter of a kernel command line.
pub fn parse_cmdline(cmdline: &str) -> Vec<Result<IfName, IfNameError>> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("vmsilo.ifname="))
        .map(|v| {
            let (name, mac) = v
                .split_once(',')
                .ok_or_else(|| IfNameError::Malformed(v.to_owned()))?;
            let mac = mac.to_ascii_lowercase();
            let mac_ok = mac.len() == 17
                && mac
                    .split(':')
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
            if !mac_ok {
                return Err(IfNameError::Malformed(v.to_owned()));
            }
            if name.is_empty()
                || name.len() >= libc::IFNAMSIZ
                || name == "."
                || name == ".."
                || name
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace())
            {
                return Err(IfNameError::BadName(name.to_owned()));
            }
            Ok(IfName {
                name: name.to_owned(),
                mac,
            })
        })
        .collect()
}

/// Find the interface under `sysfs_net` whose address is `mac`.
pub fn find_by_mac(sysfs_net: &Path, mac: &str) -> Option<String> {
    std::fs::read_dir(sysfs_net).ok()?.flatten().find_map(|e| {
        let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
        (addr.trim().eq_ignore_ascii_case(mac))
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays, integers, a union of such); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req
}

fn ioctl(
    sock: &OwnedFd,
    op: libc::c_ulong,
    req: &mut libc::ifreq,
) -> Result<(), nix::errno::Errno> {
    // SAFETY: `req` is a valid, initialised ifreq that outlives the call, which is what the
    // SIOC[GS]IF* requests read and write.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// Rename `from` to `to`, taking the link down for the rename and restoring its up state.
pub fn rename(from: &str, to: &str) -> Result<(), IfNameError> {
    let err = |errno| IfNameError::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        errno,
    };
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    let mut req = ifreq_for(from);
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(err)?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let was_up = flags & libc::IFF_UP as libc::c_short != 0;
    if was_up {
        req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(err)?;
    }
    let mut req = ifreq_for(from);
    let new = ifreq_for(to).ifr_name;
    req.ifr_ifru.ifru_newname = new;
    ioctl(&sock, libc::SIOCSIFNAME, &mut req).map_err(err)?;
    if was_up {
        let mut req = ifreq_for(to);
        req.ifr_ifru.ifru_flags = flags;
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(err)?;
    }
    Ok(())
}

/// Apply every rename the command line asks for, logging (not failing on) each problem.
pub fn apply_from_cmdline(cmdline: &str, sysfs_net: &Path) {
    for wanted in parse_cmdline(cmdline) {
        let result = wanted.and_then(|w| {
            let current = find_by_mac(sysfs_net, &w.mac)
                .ok_or_else(|| IfNameError::NoSuchMac(w.mac.clone()))?;
            if current != w.name {
                rename(&current, &w.name)?;
                tracing::info!("renamed interface {current} ({}) to {}", w.mac, w.name);
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_names_and_rejects_bad_ones() {
        let r = parse_cmdline(
            "quiet vmsilo.ifname=wan,52:54:00:AB:cd:01 vmsilo.ifname=x vmsilo.ifname=a/b,52:54:00:00:00:01 vmsilo.ifname=lan,zz",
        );
        assert_eq!(
            r,
            vec![
                Ok(IfName {
                    name: "wan".into(),
                    mac: "52:54:00:ab:cd:01".into()
                }),
                Err(IfNameError::Malformed("x".into())),
                Err(IfNameError::BadName("a/b".into())),
                Err(IfNameError::Malformed("lan,zz".into())),
            ]
        );
    }

    #[test]
    fn finds_interfaces_by_mac_in_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for (n, mac) in [("eth0", "52:54:00:00:00:01"), ("eth1", "52:54:00:00:00:02")] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            find_by_mac(dir.path(), "52:54:00:00:00:02").as_deref(),
            Some("eth1")
        );
        assert_eq!(find_by_mac(dir.path(), "52:54:00:00:00:03"), None);
    }
}
