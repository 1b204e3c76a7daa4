//! PCI passthrough checks before the VMM starts.
//!
//! VFIO hands a whole IOMMU group to one VM: a device can only be passed through when it is
//! bound to `vfio-pci` and every other endpoint in its group goes to the same VM. Checking this
//! up front turns the VMM's opaque `VFIO_GROUP_GET_STATUS` failure into an error that names the
//! device and says what to fix. The sysfs root is a parameter so tests can point it at a tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Why a PCI device cannot be passed through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// The configured address is not `[DDDD:]BB:DD.F`.
    #[error("PCI device {0:?} is not a valid address (expected BB:DD.F or DDDD:BB:DD.F)")]
    BadAddress(String),
    /// No such device under `/sys/bus/pci/devices`.
    #[error("PCI device {0} does not exist")]
    Missing(String),
    /// Bound to another driver (or none); the host still owns it.
    #[error(
        "PCI device {device} is bound to {driver}, not vfio-pci (list it in isolatedPciDevices)"
    )]
    NotVfio {
        /// The device.
        device: String,
        /// Its current driver, or `no driver`.
        driver: String,
    },
    /// No IOMMU group: the IOMMU is off.
    #[error("PCI device {0} has no IOMMU group (enable intel_iommu=on or amd_iommu=on)")]
    NoIommuGroup(String),
    /// Another endpoint shares the group but is not given to this VM.
    #[error(
        "PCI device {device} shares IOMMU group {group} with {other}, which is not passed to this VM; pass the whole group"
    )]
    GroupNotWhole {
        /// The configured device.
        device: String,
        /// The group number.
        group: String,
        /// The device left out.
        other: String,
    },
}

/// Normalise `BB:DD.F` / `DDDD:BB:DD.F` to sysfs's `dddd:bb:dd.f`.
pub fn normalize(addr: &str) -> Result<String, PciError> {
    let bad = || PciError::BadAddress(addr.to_owned());
    let full = match addr.matches(':').count() {
        1 => format!("0000:{addr}"),
        2 => addr.to_owned(),
        _ => return Err(bad()),
    };
    let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && hex(func, 1)) {
        return Err(bad());
    }
    let dev_n = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
    let func_n = u8::from_str_radix(func, 16).map_err(|_| bad())?;
    if dev_n > 0x1f || func_n > 7 {
        return Err(bad());
    }
    Ok(full.to_ascii_lowercase())
}

/// The sysfs directory of a normalised device.
pub fn device_dir(sysfs: &Path, bdf: &str) -> PathBuf {
    sysfs.join("bus/pci/devices").join(bdf)
}

/// Check every configured device (as written in the config) against the sysfs tree at `sysfs`.
pub fn check(sysfs: &Path, devices: &[String]) -> Result<(), PciError> {
    let wanted: BTreeSet<String> = devices
        .iter()
        .map(|d| normalize(d))
        .collect::<Result<_, _>>()?;
    for bdf in &wanted {
        let dir = device_dir(sysfs, bdf);
        if !dir.exists() {
            return Err(PciError::Missing(bdf.clone()));
        }
        let driver = fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(PciError::NotVfio {
                device: bdf.clone(),
                driver: driver.unwrap_or_else(|| "no driver".into()),
            });
        }
        let group = fs::read_link(dir.join("iommu_group"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| PciError::NoIommuGroup(bdf.clone()))?;
        let members = sysfs
            .join("kernel/iommu_groups")
            .join(&group)
            .join("devices");
        let entries = fs::read_dir(&members).map_err(|_| PciError::NoIommuGroup(bdf.clone()))?;
        let mut others: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|other| !wanted.contains(other))
            .filter(|other| !is_bridge(&device_dir(sysfs, other)))
            .collect();
        others.sort();
        if let Some(other) = others.into_iter().next() {
            return Err(PciError::GroupNotWhole {
                device: bdf.clone(),
                group,
                other,
            });
        }
    }
    Ok(())
}

/// PCI bridges may share a group without being passed: VFIO never gives them to a guest.
fn is_bridge(dir: &Path) -> bool {
    fs::read_to_string(dir.join("class")).is_ok_and(|class| class.trim().starts_with("0x0604"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    /// Build a fake sysfs: (bdf, driver, group, class).
    fn tree(devices: &[(&str, Option<&str>, Option<&str>, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        for (bdf, driver, group, class) in devices {
            let real = sys.join("devices/pci0000:00").join(bdf);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("class"), format!("{class}\n")).unwrap();
            fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
            symlink(&real, sys.join("bus/pci/devices").join(bdf)).unwrap();
            if let Some(driver) = driver {
                let d = sys.join("bus/pci/drivers").join(driver);
                fs::create_dir_all(&d).unwrap();
                symlink(&d, real.join("driver")).unwrap();
            }
            if let Some(group) = group {
                let g = sys.join("kernel/iommu_groups").join(group);
                fs::create_dir_all(g.join("devices")).unwrap();
                symlink(&real, g.join("devices").join(bdf)).unwrap();
                symlink(&g, real.join("iommu_group")).unwrap();
            }
        }
        root
    }

    #[test]
    fn normalizes_addresses() {
        assert_eq!(normalize("01:00.0").unwrap(), "0000:01:00.0");
        assert_eq!(normalize("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        for bad in ["1:00.0", "01:00", "01:20.0", "01:00.8", "x", "0:0:0:0.0"] {
            assert_eq!(
                normalize(bad),
                Err(PciError::BadAddress(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn accepts_a_whole_group_on_vfio() {
        let sys = tree(&[
            ("0000:01:00.0", Some("vfio-pci"), Some("7"), "0x0c0330"),
            ("0000:01:00.1", Some("vfio-pci"), Some("7"), "0x0c8000"),
            ("0000:00:01.0", Some("pcieport"), Some("7"), "0x060400"),
        ]);
        check(sys.path(), &["01:00.0".into(), "01:00.1".into()]).unwrap();
        check(sys.path(), &[]).unwrap();
    }

    #[test]
    fn names_the_offending_device() {
        let sys = tree(&[
            ("0000:01:00.0", Some("vfio-pci"), Some("7"), "0x0c0330"),
            ("0000:01:00.1", Some("vfio-pci"), Some("7"), "0x0c8000"),
            ("0000:02:00.0", Some("e1000e"), Some("8"), "0x020000"),
            ("0000:03:00.0", None, Some("9"), "0x020000"),
            ("0000:04:00.0", Some("vfio-pci"), None, "0x020000"),
        ]);
        let p = sys.path();
        assert_eq!(
            check(p, &["05:00.0".into()]),
            Err(PciError::Missing("0000:05:00.0".into()))
        );
        assert_eq!(
            check(p, &["02:00.0".into()]),
            Err(PciError::NotVfio {
                device: "0000:02:00.0".into(),
                driver: "e1000e".into()
            })
        );
        assert_eq!(
            check(p, &["03:00.0".into()]),
            Err(PciError::NotVfio {
                device: "0000:03:00.0".into(),
                driver: "no driver".into()
            })
        );
        assert_eq!(
            check(p, &["04:00.0".into()]),
            Err(PciError::NoIommuGroup("0000:04:00.0".into()))
        );
        let err = check(p, &["01:00.0".into()]).unwrap_err();
        assert_eq!(
            err,
            PciError::GroupNotWhole {
                device: "0000:01:00.0".into(),
                group: "7".into(),
                other: "0000:01:00.1".into()
            }
        );
        assert!(err.to_string().contains("0000:01:00.1"));
    }
}
