//! Value types that appear in the configuration: addresses, prefixes, MACs, PCI addresses, sizes.
//!
//! Each parses from the text users write in Nix and prints back in the canonical form tools expect.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// An IP address with a prefix length, e.g. `10.0.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address as written (host bits may be set: it is an interface address).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Parse `A.B.C.D/N` or `X::Y/N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not an address with prefix (like 10.0.0.1/24)"))?;
        let addr = IpAddr::from_str(addr)
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: prefix must be a number from 0 to {max}"))?;
        Ok(Self { addr, prefix })
    }

    /// Whether `other` lies inside this prefix.
    pub fn contains(&self, other: IpAddr) -> bool {
        match (self.addr, other) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }

    /// The network address (host bits cleared), for comparing route destinations.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Self {
            addr,
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parse `52:ab:cd:ef:12:34` (colons, either case); rejects multicast addresses, which no
    /// NIC may use as its own.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || format!("{text:?} is not a MAC address like 52:ab:cd:ef:12:34");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut bytes = [0u8; 6];
        for (byte, part) in bytes.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if bytes[0] & 1 == 1 {
            return Err(format!(
                "{text:?} is a multicast address; a NIC needs a unicast MAC (first byte even)"
            ));
        }
        if bytes == [0; 6] {
            return Err(format!("{text:?} is the all-zero address"));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A PCI device address (domain:bus:device.function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment), usually 0.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0 to 31.
    pub device: u8,
    /// Function number, 0 to 7.
    pub function: u8,
}

impl PciAddress {
    /// Parse `01:00.0` or `0000:01:00.0` as `lspci` prints them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a PCI address like 01:00.0 or 0000:01:00.0 (see lspci -D)");
        let (rest, function) = text.rsplit_once('.').ok_or_else(bad)?;
        let fields: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match fields.as_slice() {
            [bus, device] => ("0", *bus, *device),
            [domain, bus, device] => (*domain, *bus, *device),
            _ => return Err(bad()),
        };
        let hex = |s: &str, width: usize| {
            (s.len() <= width && !s.is_empty())
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
                .ok_or_else(bad)
        };
        let domain = hex(domain, 4)?;
        let bus = hex(bus, 2)?;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(format!("{text:?}: device must be 00-1f and function 0-7"));
        }
        // The widths checked above bound every value to its field's size.
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }

    /// The device's directory in sysfs, with the trailing slash crosvm's `--vfio` expects.
    pub fn sysfs_path(&self) -> String {
        format!("/sys/bus/pci/devices/{self}/")
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Log verbosity shared by crosvm and vm-switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    Info,
    /// Developer detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Parse one of the five level names.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "{text:?} is not a log level; allowed: error, warn, info, debug, trace"
                ));
            }
        })
    }

    /// The name crosvm and vm-switch accept on their command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Parse a disk size as qemu-img accepts it (`10G`, `512M`, `1T`, `1048576`) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a size; use a number with an optional suffix k, M, G or T (e.g. 10G)"
        )
    };
    let text_trim = text.trim();
    let (digits, unit) = match text_trim.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text_trim.split_at(i),
        None => (text_trim, ""),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{text:?} is smaller than 1M; the overlay needs room to work"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_parses_and_contains() {
        let c = Cidr::parse("10.1.0.254/24").unwrap();
        assert!(c.contains("10.1.0.7".parse().unwrap()));
        assert!(!c.contains("10.1.1.7".parse().unwrap()));
        assert_eq!(c.network().to_string(), "10.1.0.0/24");
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::1/64")
                .unwrap()
                .contains("fd00::99".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.1").is_err());
        assert!(Cidr::parse("10.0.0.1/33").is_err());
        assert!(Cidr::parse("10.0.0/24").is_err());
    }

    #[test]
    fn mac_rejects_multicast_and_garbage() {
        assert_eq!(
            MacAddr::parse("52:AB:cd:ef:12:34").unwrap().to_string(),
            "52:ab:cd:ef:12:34"
        );
        assert!(MacAddr::parse("01:00:5e:00:00:01").is_err());
        assert!(MacAddr::parse("52:ab:cd:ef:12").is_err());
        assert!(MacAddr::parse("52:ab:cd:ef:12:3g").is_err());
    }

    #[test]
    fn pci_address_forms() {
        assert_eq!(
            PciAddress::parse("01:00.0").unwrap().to_string(),
            "0000:01:00.0"
        );
        assert_eq!(
            PciAddress::parse("0000:3b:1f.7").unwrap().sysfs_path(),
            "/sys/bus/pci/devices/0000:3b:1f.7/"
        );
        assert!(PciAddress::parse("01:20.0").is_err());
        assert!(PciAddress::parse("01:00.8").is_err());
        assert!(PciAddress::parse("0100.0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert!(parse_size("10Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1k").is_err());
    }
}
