//! Values derived from the configuration, computed in one place so every tool agrees on them.
//!
//! The MAC, PCI slot, TAP name and kernel parameters of an interface are seen by the host (TAP,
//! vm-switch peer file, crosvm argv) and by the guest (udev renaming): a second copy of any of
//! these rules would eventually disagree with the first.

use std::fmt;

use palette::{IntoColor, LinSrgb, Srgb};
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::config::types::MacAddr;

/// First PCI slot used for network interfaces; crosvm puts its own devices below it.
pub const FIRST_NET_PCI_SLOT: u8 = 22;
/// Last usable PCI slot on bus 0.
pub const LAST_PCI_SLOT: u8 = 31;
/// Longest Linux interface name (IFNAMSIZ minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// MAC address of `<vm>-<ifname>`: the first six bytes of its SHA-1, made locally administered
/// unicast so that it can never collide with a vendor-assigned address.
pub fn mac_address(vm: &str, ifname: &str) -> MacAddr {
    let digest = Sha1::digest(format!("{vm}-{ifname}").as_bytes());
    let mut bytes = [0u8; 6];
    bytes.copy_from_slice(&digest[..6]);
    bytes[0] = (bytes[0] & 0xfe) | 0x02;
    MacAddr(bytes)
}

/// PCI slot of the interface at `sorted_index` among the VM's interface names in sorted order.
pub fn pci_slot(sorted_index: usize) -> Option<u8> {
    let slot = usize::from(FIRST_NET_PCI_SLOT).checked_add(sorted_index)?;
    u8::try_from(slot).ok().filter(|s| *s <= LAST_PCI_SLOT)
}

/// crosvm's `pci-address=` form of a bus-0 slot (`22` → `00:16.0`).
pub fn pci_address(slot: u8) -> String {
    format!("00:{slot:02x}.0")
}

/// Default host TAP name for the interface at `sorted_index`: `<vm>-<index>`.
pub fn tap_name(vm: &str, sorted_index: usize) -> String {
    format!("{vm}-{sorted_index}")
}

/// Kernel parameter that tells the guest to name the NIC with `mac` as `ifname`.
pub fn ifname_param(ifname: &str, mac: MacAddr) -> String {
    format!("vmsilo.ifname={ifname},{mac}")
}

/// An sRGB colour, printed as `#rrggbb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb(pub [u8; 3]);

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl Serialize for Rgb {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Black and white, the two text colours a frame can carry.
pub const BLACK: Rgb = Rgb([0, 0, 0]);
/// See [`BLACK`].
pub const WHITE: Rgb = Rgb([0xff, 0xff, 0xff]);

impl Rgb {
    /// Parse a CSS colour name, `#rgb`, `#rrggbb` or `rgb(r, g, b)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "{text:?} is not a colour; use a CSS name (\"red\"), \"#rgb\", \"#rrggbb\" or \"rgb(r,g,b)\""
            )
        };
        if let Some(hex) = t.strip_prefix('#') {
            let digits: Vec<u8> = hex
                .chars()
                .map(|c| c.to_digit(16).map(|d| d as u8))
                .collect::<Option<_>>()
                .ok_or_else(bad)?;
            return match digits.as_slice() {
                [r, g, b] => Ok(Self([r * 17, g * 17, b * 17])),
                [r1, r2, g1, g2, b1, b2] => Ok(Self([r1 * 16 + r2, g1 * 16 + g2, b1 * 16 + b2])),
                _ => Err(bad()),
            };
        }
        let lower = t.to_ascii_lowercase();
        if let Some(inner) = lower
            .strip_prefix("rgb(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let parts: Vec<u8> = inner
                .split(',')
                .map(|p| p.trim().parse::<u8>().ok())
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{text:?}: rgb() takes three numbers from 0 to 255"))?;
            return match parts.as_slice() {
                [r, g, b] => Ok(Self([*r, *g, *b])),
                _ => Err(format!("{text:?}: rgb() takes three numbers from 0 to 255")),
            };
        }
        palette::named::from_str(&lower)
            .map(|c: Srgb<u8>| Self([c.red, c.green, c.blue]))
            .ok_or_else(bad)
    }

    /// WCAG 2.1 relative luminance.
    pub fn luminance(self) -> f32 {
        let [r, g, b] = self.0;
        let linear: LinSrgb<f32> = Srgb::new(r, g, b).into_format::<f32>().into_color();
        0.2126 * linear.red + 0.7152 * linear.green + 0.0722 * linear.blue
    }

    /// WCAG contrast ratio between two colours (1 to 21).
    pub fn contrast(self, other: Rgb) -> f32 {
        let (a, b) = (self.luminance(), other.luminance());
        let (hi, lo) = if a > b { (a, b) } else { (b, a) };
        (hi + 0.05) / (lo + 0.05)
    }

    /// Black or white, whichever reads better on this background.
    pub fn text_color(self) -> Rgb {
        if self.contrast(BLACK) >= self.contrast(WHITE) {
            BLACK
        } else {
            WHITE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mac_is_sha1_prefix_made_local_unicast() {
        let digest = Sha1::digest(b"banking-wan");
        let mac = mac_address("banking", "wan");
        assert_eq!(mac.0[1..], digest[1..6]);
        assert_eq!(mac.0[0] & 0x03, 0x02);
        assert_ne!(
            mac_address("banking", "wan"),
            mac_address("shopping", "wan")
        );
        // Values computed independently: python3 hashlib.sha1(b"router-internal").
        assert_eq!(
            mac_address("router", "internal").to_string(),
            "ba:b6:16:7b:0e:e7"
        );
        assert_eq!(
            mac_address("router", "wan").to_string(),
            "12:d6:5c:23:9b:1c"
        );
    }

    #[test]
    fn pci_slots_follow_sorted_index() {
        assert_eq!(pci_slot(0), Some(22));
        assert_eq!(pci_address(pci_slot(0).unwrap()), "00:16.0");
        assert_eq!(pci_address(pci_slot(1).unwrap()), "00:17.0");
        assert_eq!(pci_slot(9), Some(31));
        assert_eq!(pci_slot(10), None);
    }

    #[test]
    fn names_and_params() {
        assert_eq!(tap_name("banking", 0), "banking-0");
        let mac = MacAddr::parse("52:ab:cd:ef:12:34").unwrap();
        assert_eq!(
            ifname_param("wan", mac),
            "vmsilo.ifname=wan,52:ab:cd:ef:12:34"
        );
    }

    #[test]
    fn colours_normalise() {
        assert_eq!(Rgb::parse("red").unwrap().to_string(), "#ff0000");
        assert_eq!(Rgb::parse("RebeccaPurple").unwrap().to_string(), "#663399");
        assert_eq!(Rgb::parse("#2ECC71").unwrap().to_string(), "#2ecc71");
        assert_eq!(Rgb::parse("#abc").unwrap().to_string(), "#aabbcc");
        assert_eq!(Rgb::parse("rgb(255, 0,0)").unwrap().to_string(), "#ff0000");
        for bad in ["", "#12345", "#ggg", "rgb(1,2)", "rgb(256,0,0)", "reddish"] {
            assert!(Rgb::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn text_colour_by_wcag_contrast() {
        assert_eq!(Rgb::parse("red").unwrap().text_color(), BLACK);
        assert_eq!(Rgb::parse("#2ecc71").unwrap().text_color(), BLACK);
        assert_eq!(Rgb::parse("navy").unwrap().text_color(), WHITE);
        assert_eq!(Rgb::parse("#3498db").unwrap().text_color(), BLACK);
        assert_eq!(Rgb::parse("black").unwrap().text_color(), WHITE);
        assert_eq!(Rgb::parse("white").unwrap().text_color(), BLACK);
        let c = BLACK.contrast(WHITE);
        assert!((c - 21.0).abs() < 0.01, "{c}");
    }
}

/// One guest NIC with everything derived for it: the host and the guest both build on this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetPort {
    /// Guest-visible interface name (the attrset key).
    pub name: String,
    /// TAP or vm-switch.
    #[serde(rename = "type")]
    pub kind: crate::config::InterfaceType,
    /// Explicit or derived MAC.
    pub mac: MacAddr,
    /// PCI slot on bus 0.
    pub pci_slot: u8,
    /// crosvm's `pci-address=` form of the slot.
    pub pci_address: String,
    /// Host TAP name (TAP interfaces only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// vm-switch network (vm-switch interfaces only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The VM's NICs in PCI-slot order (sorted by name). Configs that passed validation always
/// have a slot for each; an interface past the last slot is left out rather than mis-slotted.
pub fn net_ports(vm: &crate::config::Vm) -> Vec<NetPort> {
    vm.network
        .interfaces
        .iter()
        .enumerate()
        .filter_map(|(index, (name, iface))| {
            let slot = pci_slot(index)?;
            let kind = iface.kind;
            Some(NetPort {
                name: name.clone(),
                kind,
                mac: iface
                    .mac_address
                    .unwrap_or_else(|| mac_address(&vm.name, name)),
                pci_slot: slot,
                pci_address: pci_address(slot),
                tap: (kind == crate::config::InterfaceType::Tap).then(|| {
                    iface
                        .tap
                        .name
                        .clone()
                        .unwrap_or_else(|| tap_name(&vm.name, index))
                }),
                network: (kind == crate::config::InterfaceType::VmSwitch)
                    .then(|| iface.vm_network.as_ref().map(|n| n.name.clone()))
                    .flatten(),
            })
        })
        .collect()
}

/// The guest kernel command line: the serial console and NIC names, then the user's own
/// parameters (for a NixOS guest, `init=` among them) last so they can override ours.
///
/// Only what the guest reads belongs here: the root and overlay disks are found by label and
/// position by the guest's own configuration, and the agent gets its settings from that too.
pub fn kernel_params(vm: &crate::config::Vm) -> Vec<String> {
    let mut params = vec!["console=ttyS0".to_owned()];
    params.extend(net_ports(vm).iter().map(|p| ifname_param(&p.name, p.mac)));
    params.extend(vm.kernel_params.iter().cloned());
    params
}
