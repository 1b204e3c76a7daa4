//! Peer files: what the VM service tells the switch about one VM on the network.
//!
//! One JSON document per VM, `<config-dir>/<vm>.json`, replaced atomically by its writer
//! (write `.<vm>.json.tmp`, fsync, rename). Example:
//!
//! ```json
//! {"name":"banking","mac":"52:54:00:12:34:56","ipv4":["10.1.0.1/24"],"ipv6":["fd00::1/64"],
//!  "routes":["0.0.0.0/0"],"receiveBroadcast":false}
//! ```
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `name` | string, required | VM name; must equal the file stem, names the socket `<vm>.sock` |
//! | `mac` | string, required | the guest NIC's unicast MAC; frames from the VM must carry it |
//! | `ipv4` | list of `a.b.c.d/len`, default `[]` | the interface's IPv4 addresses (valid sources, routed as /32) |
//! | `ipv6` | list of `x::y/len`, default `[]` | the interface's IPv6 addresses (valid sources, routed as /128) |
//! | `routes` | list of CIDRs (v4 or v6), default `[]` | prefixes this VM routes for others; also valid sources |
//! | `receiveBroadcast` | bool, default `false` | whether broadcast/multicast from other peers reaches this VM |
//!
//! Unknown keys are rejected so a typo is reported rather than silently ignored. `mac` is six
//! pairs of hex digits. `ipv4`, `ipv6` and `routes` hold at most [`MAX_LIST_ENTRIES`] entries
//! each, so that any accepted config fits in one control message. Only regular files (or
//! symlinks to them) of at most [`MAX_PEER_FILE_BYTES`] are read; a `.json` entry that is a
//! FIFO, device, directory or socket, or whose stem is not a valid VM name, is skipped with a
//! warning naming it. A peer whose MAC or one of whose interface addresses (`ipv4`/`ipv6`, prefix
//! length ignored) is already used by a peer being served is not served either (the switch warns,
//! naming both); it is picked up once the clash is gone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest peer file accepted; the files are tiny, anything bigger is a mistake or an attack.
pub const MAX_PEER_FILE_BYTES: u64 = 64 * 1024;

/// Most entries in each of `ipv4`, `ipv6` and `routes`: keeps every peer's config small enough
/// to travel in one control message ([`crate::control::MAX_MSG`]).
pub const MAX_LIST_ENTRIES: usize = 64;

/// Errors from reading and validating a peer file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PeerFileError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The peer file.
        file: PathBuf,
        /// The OS error text.
        message: String,
    },
    /// The file is not valid JSON for the peer schema.
    #[error("{file}: {message}")]
    Syntax {
        /// The peer file.
        file: PathBuf,
        /// serde's description, including line and column.
        message: String,
    },
    /// The path is not a regular file (a FIFO, device, directory, socket, or a symlink to one);
    /// it is never opened for reading, so it cannot block or trigger device side effects.
    #[error("{file}: not a regular file ({kind}); ignored")]
    NotRegular {
        /// The peer file.
        file: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A field has an invalid value.
    #[error("{file}: {field}: {message}")]
    Field {
        /// The peer file.
        file: PathBuf,
        /// JSON path of the offending field, e.g. `ipv4[1]`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// A MAC address; its own type so parsing and display live in one place.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The Ethernet broadcast address.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast/broadcast) addresses can never be a source.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want xx:xx:xx:xx:xx:xx)"
            ));
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{s:?} is not a MAC address (want xx:xx:xx:xx:xx:xx)"
                ));
            }
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (bad hex {part:?})"))?;
        }
        Ok(MacAddr(out))
    }
}

/// An IP prefix (`addr/len`); `addr` keeps host bits so an interface address and its subnet fit
/// in one value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Cidr {
    /// The address as written (host bits kept).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` falls inside this prefix (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match_v4(net, ip, self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match_v6(net, ip, self.len),
            _ => false,
        }
    }

    /// The IPv4 directed-broadcast address of this prefix, when it has one.
    pub fn broadcast_v4(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) if self.len < 31 => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                Some(Ipv4Addr::from(u32::from(a) | !mask))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} lacks a prefix length (want ADDRESS/LEN)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: prefix length {len:?} is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: prefix length {len} exceeds {max}"));
        }
        Ok(Cidr { addr, len })
    }
}

/// Whether the first `len` bits of two IPv4 addresses agree.
pub fn prefix_match_v4(net: Ipv4Addr, ip: Ipv4Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(len.min(32)));
    (u32::from(net) ^ u32::from(ip)) & mask == 0
}

/// Whether the first `len` bits of two IPv6 addresses agree.
pub fn prefix_match_v6(net: Ipv6Addr, ip: Ipv6Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len.min(128)));
    (u128::from(net) ^ u128::from(ip)) & mask == 0
}

/// A validated peer: one VM's interface on this network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// VM name (the file stem).
    pub name: String,
    /// The guest NIC's MAC.
    pub mac: MacAddr,
    /// IPv4 interface addresses with prefix.
    pub ipv4: Vec<Cidr>,
    /// IPv6 interface addresses with prefix.
    pub ipv6: Vec<Cidr>,
    /// Prefixes this VM routes for others.
    pub routes: Vec<Cidr>,
    /// Whether broadcast and multicast reach this VM.
    pub receive_broadcast: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeer {
    name: String,
    mac: String,
    #[serde(default)]
    ipv4: Vec<String>,
    #[serde(default)]
    ipv6: Vec<String>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    receive_broadcast: bool,
}

/// Whether `name` is safe as a file stem and socket name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl PeerConfig {
    /// Parse and validate a peer document; `file` is used in error messages and for the
    /// name-matches-stem check.
    pub fn from_json(file: &Path, text: &str) -> Result<PeerConfig, PeerFileError> {
        let raw: RawPeer = serde_json::from_str(text).map_err(|e| PeerFileError::Syntax {
            file: crate::sandbox::shown(file),
            message: e.to_string(),
        })?;
        let field = |field: String, message: String| PeerFileError::Field {
            file: crate::sandbox::shown(file),
            field,
            message,
        };
        if !valid_name(&raw.name) {
            return Err(field(
                "name".into(),
                format!(
                    "{:?} is not a valid VM name (1-64 of A-Z a-z 0-9 - _ ., not starting with '.')",
                    raw.name
                ),
            ));
        }
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str())
            && file.extension().is_some_and(|e| e == "json")
            && stem != raw.name
        {
            return Err(field(
                "name".into(),
                format!("{:?} does not match the file name {stem:?}.json", raw.name),
            ));
        }
        let mac: MacAddr = raw.mac.parse().map_err(|m| field("mac".into(), m))?;
        if mac.is_multicast() || mac.0 == [0; 6] {
            return Err(field(
                "mac".into(),
                format!("{mac} is not a unicast address"),
            ));
        }
        let parse_list = |key: &str, items: &[String], want: Option<bool>| {
            if items.len() > MAX_LIST_ENTRIES {
                return Err(field(
                    key.to_string(),
                    format!(
                        "{} entries; at most {MAX_LIST_ENTRIES} are allowed",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let c: Cidr = s.parse().map_err(|m| field(format!("{key}[{i}]"), m))?;
                    match want {
                        Some(true) if !c.addr.is_ipv4() => Err(field(
                            format!("{key}[{i}]"),
                            format!("{s:?} is not an IPv4 address"),
                        )),
                        Some(false) if c.addr.is_ipv4() => Err(field(
                            format!("{key}[{i}]"),
                            format!("{s:?} is not an IPv6 address"),
                        )),
                        _ => Ok(c),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let ipv4 = parse_list("ipv4", &raw.ipv4, Some(true))?;
        let ipv6 = parse_list("ipv6", &raw.ipv6, Some(false))?;
        let routes = parse_list("routes", &raw.routes, None)?;
        for (i, c) in ipv4.iter().chain(ipv6.iter()).enumerate() {
            let bad = match c.addr {
                IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
                IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
            };
            if bad {
                let key = if i < ipv4.len() {
                    format!("ipv4[{i}]")
                } else {
                    format!("ipv6[{}]", i - ipv4.len())
                };
                return Err(field(key, format!("{c} is not a unicast address")));
            }
        }
        Ok(PeerConfig {
            name: raw.name,
            mac,
            ipv4,
            ipv6,
            routes,
            receive_broadcast: raw.receive_broadcast,
        })
    }

    /// Read and validate a peer file, refusing oversized files and anything that is not a
    /// regular file (a FIFO would block main forever, a device could have open side effects).
    pub fn load(file: &Path) -> Result<PeerConfig, PeerFileError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let read_err = |e: std::io::Error| PeerFileError::Read {
            file: crate::sandbox::shown(file),
            message: e.to_string(),
        };
        let not_regular = |m: &std::fs::Metadata| {
            (!m.is_file()).then(|| PeerFileError::NotRegular {
                file: crate::sandbox::shown(file),
                kind: file_kind(m),
            })
        };
        // Inside the sandbox the config directory is at /config: a link naming its real path is
        // followed there, a link leaving it cannot be followed at all.
        let target = crate::sandbox::link_target(file).map_err(|why| PeerFileError::Read {
            file: crate::sandbox::shown(file),
            message: why,
        })?;
        let path = target.as_deref().unwrap_or(file);
        // Checked before opening (follows symlinks) and again on the open descriptor (the path
        // may have been swapped in between); O_NONBLOCK keeps even that race from blocking.
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if let Some(e) = not_regular(&meta) {
            return Err(e);
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(read_err)?;
        if let Some(e) = not_regular(&f.metadata().map_err(read_err)?) {
            return Err(e);
        }
        let mut text = String::new();
        f.take(MAX_PEER_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_PEER_FILE_BYTES {
            return Err(PeerFileError::Read {
                file: crate::sandbox::shown(file),
                message: format!("larger than {MAX_PEER_FILE_BYTES} bytes"),
            });
        }
        Self::from_json(file, &text)
    }

    /// Why `self` and `other` cannot both be on one network (same MAC or a shared interface
    /// address: frames would be attributed or delivered to the wrong VM), if they clash.
    pub fn conflict_with(&self, other: &PeerConfig) -> Option<String> {
        if self.mac == other.mac {
            return Some(format!("mac {}", self.mac));
        }
        let mine = self.ipv4.iter().chain(&self.ipv6);
        for c in mine {
            if other
                .ipv4
                .iter()
                .chain(&other.ipv6)
                .any(|o| o.addr == c.addr)
            {
                let key = if c.addr.is_ipv4() { "ipv4" } else { "ipv6" };
                return Some(format!("{key} address {}", c.addr));
            }
        }
        None
    }

    /// Whether `ip` is a source this VM may use: one of its addresses or inside a route it
    /// advertises (a router forwards others' traffic).
    pub fn owns_source(&self, ip: IpAddr) -> bool {
        let host = |c: &Cidr| c.addr == ip;
        let own = match ip {
            IpAddr::V4(_) => self.ipv4.iter().any(host),
            IpAddr::V6(_) => self.ipv6.iter().any(host),
        };
        own || self.routes.iter().any(|r| r.contains(ip))
    }
}

/// A short word for a non-regular file type, for messages.
fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// The VM name a directory entry stands for: `None` for entries that are not peer files at all
/// (no `.json` suffix, e.g. sockets and `.<vm>.json.tmp`), `Some(Err(why))` for a `.json` file
/// whose stem is not a valid VM name (worth a warning), `Some(Ok(name))` otherwise.
pub fn peer_file_name(path: &Path) -> Option<Result<String, String>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = path.file_name()?.as_bytes();
    let stem = raw.strip_suffix(b".json")?;
    let Ok(stem) = std::str::from_utf8(stem) else {
        return Some(Err("the name is not valid UTF-8".into()));
    };
    if valid_name(stem) {
        return Some(Ok(stem.to_string()));
    }
    let why = if stem.is_empty() {
        "the VM name before .json is empty".to_string()
    } else if stem.len() > 64 {
        format!("the VM name is {} bytes long (at most 64)", stem.len())
    } else if stem.starts_with('.') {
        "the VM name starts with '.'".to_string()
    } else {
        format!("{stem:?} is not a valid VM name (only A-Z a-z 0-9 - _ .)")
    };
    Some(Err(why))
}

/// The peer-file path for a VM, and the stem check used by the directory watcher.
pub fn peer_name_from_path(path: &Path) -> Option<String> {
    peer_file_name(path)?.ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p() -> &'static Path {
        Path::new("/cfg/banking.json")
    }

    #[test]
    fn parses_the_documented_example() {
        let c = PeerConfig::from_json(
            p(),
            r#"{"name":"banking","mac":"52:54:00:12:34:56","ipv4":["10.1.0.1/24"],"ipv6":["fd00::1/64"],
                "routes":["0.0.0.0/0"],"receiveBroadcast":false}"#,
        )
        .unwrap();
        assert_eq!(c.mac, MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(c.ipv4[0].to_string(), "10.1.0.1/24");
        assert_eq!(c.ipv6[0].len, 64);
        assert!(c.owns_source("10.1.0.1".parse().unwrap()));
        assert!(
            c.owns_source("8.8.8.8".parse().unwrap()),
            "route 0/0 makes it a router"
        );
        assert!(!c.owns_source("fd00::2".parse().unwrap()));
    }

    #[test]
    fn errors_name_field_and_file() {
        let e = PeerConfig::from_json(
            p(),
            r#"{"name":"banking","mac":"52:54:00:12:34:56","ipv4":["10.1.0.1/24","10.1.0.300/24"]}"#,
        )
        .unwrap_err();
        match &e {
            PeerFileError::Field { file, field, .. } => {
                assert_eq!(file, p());
                assert_eq!(field, "ipv4[1]");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().starts_with("/cfg/banking.json: ipv4[1]:"));

        let e = PeerConfig::from_json(p(), r#"{"name":"banking","mac":"ff:ff:ff:ff:ff:ff"}"#)
            .unwrap_err();
        assert!(matches!(e, PeerFileError::Field { ref field, .. } if field == "mac"));
        let e = PeerConfig::from_json(p(), r#"{"name":"other","mac":"52:54:00:12:34:56"}"#)
            .unwrap_err();
        assert!(matches!(e, PeerFileError::Field { ref field, .. } if field == "name"));
        let e = PeerConfig::from_json(
            p(),
            r#"{"name":"banking","mac":"52:54:00:12:34:56","ipv6":["10.0.0.1/8"]}"#,
        )
        .unwrap_err();
        assert!(matches!(e, PeerFileError::Field { ref field, .. } if field == "ipv6[0]"));
        let e = PeerConfig::from_json(
            p(),
            r#"{"name":"banking","mac":"52:54:00:12:34:56","routes":["10.0.0.0/33"]}"#,
        )
        .unwrap_err();
        assert!(matches!(e, PeerFileError::Field { ref field, .. } if field == "routes[0]"));
        let e = PeerConfig::from_json(
            p(),
            r#"{"name":"banking","mac":"52:54:00:12:34:56","recieveBroadcast":true}"#,
        )
        .unwrap_err();
        assert!(matches!(e, PeerFileError::Syntax { .. }));
        assert!(e.to_string().contains("recieveBroadcast"));
    }

    #[test]
    fn stem_helper() {
        assert_eq!(
            peer_name_from_path(Path::new("/x/a-b.json")).as_deref(),
            Some("a-b")
        );
        assert_eq!(peer_name_from_path(Path::new("/x/.a.json.tmp")), None);
        assert_eq!(peer_name_from_path(Path::new("/x/a.sock")), None);
    }

    #[test]
    fn broadcast_address() {
        let c: Cidr = "10.1.0.7/24".parse().unwrap();
        assert_eq!(c.broadcast_v4(), Some(Ipv4Addr::new(10, 1, 0, 255)));
        assert!(c.contains("10.1.0.200".parse().unwrap()));
        assert!(!c.contains("10.1.1.1".parse().unwrap()));
    }

    #[test]
    fn mac_octets_are_exactly_two_hex_digits() {
        for bad in [
            "+2:54:00:00:00:06",
            "52:54:00:00:00:+6",
            "52:54:00:00:00:-6",
            "2:54:00:00:00:06",
            " 2:54:00:00:00:06",
        ] {
            let e = PeerConfig::from_json(p(), &format!(r#"{{"name":"banking","mac":"{bad}"}}"#))
                .unwrap_err();
            assert!(
                matches!(e, PeerFileError::Field { ref field, .. } if field == "mac"),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(
            "02:aB:00:00:00:06".parse::<MacAddr>().unwrap(),
            MacAddr([2, 0xab, 0, 0, 0, 6])
        );
    }

    #[test]
    fn address_lists_are_capped_with_the_field_named() {
        let list = |n: usize, f: &dyn Fn(usize) -> String| {
            (0..n)
                .map(|i| format!("{:?}", f(i)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let v4 = |i: usize| format!("10.{}.{}.1/24", i / 256, i % 256);
        let v6 = |i: usize| format!("fd00::{i:x}/64");
        for (key, f) in [
            ("ipv4", &v4 as &dyn Fn(usize) -> String),
            ("ipv6", &v6),
            ("routes", &v4),
        ] {
            let ok = format!(
                r#"{{"name":"banking","mac":"52:54:00:12:34:56","{key}":[{}]}}"#,
                list(MAX_LIST_ENTRIES, f)
            );
            PeerConfig::from_json(p(), &ok).unwrap();
            let text = format!(
                r#"{{"name":"banking","mac":"52:54:00:12:34:56","{key}":[{}]}}"#,
                list(3000, f)
            );
            assert!(text.len() < MAX_PEER_FILE_BYTES as usize);
            let e = PeerConfig::from_json(p(), &text).unwrap_err();
            assert!(
                matches!(e, PeerFileError::Field { ref field, .. } if field == key),
                "{e:?}"
            );
            assert!(e.to_string().contains("3000 entries"), "{e}");
        }
    }

    #[test]
    fn odd_json_names_are_reported_not_silently_skipped() {
        let long = format!("/x/{}.json", "a".repeat(200));
        for (path, why) in [
            ("/x/n o.json", "not a valid VM name"),
            ("/x/\u{dc}.json", "not a valid VM name"),
            ("/x/.json", "empty"),
            ("/x/.hidden.json", "starts with '.'"),
            (long.as_str(), "200 bytes"),
        ] {
            match peer_file_name(Path::new(path)) {
                Some(Err(m)) => assert!(m.contains(why), "{path}: {m}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        use std::os::unix::ffi::OsStrExt;
        let non_utf8 = std::ffi::OsStr::from_bytes(b"/x/\xff.json");
        assert!(matches!(peer_file_name(Path::new(non_utf8)), Some(Err(_))));
        assert_eq!(peer_file_name(Path::new("/x/a.sock")), None);
        assert_eq!(peer_file_name(Path::new("/x/.a.json.tmp")), None);
        assert_eq!(peer_file_name(Path::new("/x/a.json")), Some(Ok("a".into())));
    }

    /// Loads `path` on another thread so a blocking open fails the test instead of hanging it.
    fn load_with_timeout(path: PathBuf) -> Result<PeerConfig, PeerFileError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(PeerConfig::load(&path));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("PeerConfig::load blocked")
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("u.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = tmp.path().join("v.json");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let sub = tmp.path().join("w.json");
        std::fs::create_dir(&sub).unwrap();
        for (path, kind) in [(fifo, "FIFO"), (link, "FIFO"), (sub, "directory")] {
            let e = load_with_timeout(path.clone()).unwrap_err();
            assert_eq!(
                e,
                PeerFileError::NotRegular {
                    file: path.clone(),
                    kind
                }
            );
            assert!(e.to_string().contains(&path.display().to_string()));
        }
        // A symlink to a regular file is still followed.
        let real = tmp.path().join("real");
        std::fs::write(&real, r#"{"name":"z","mac":"52:54:00:12:34:56"}"#).unwrap();
        let z = tmp.path().join("z.json");
        std::os::unix::fs::symlink(&real, &z).unwrap();
        assert_eq!(load_with_timeout(z).unwrap().name, "z");
    }

    #[test]
    fn clashing_mac_or_address_is_detected() {
        let mk = |name: &str, mac: &str, v4: &str, v6: &str| {
            PeerConfig::from_json(
                Path::new(name),
                &format!(
                    r#"{{"name":"{name}","mac":"{mac}","ipv4":["{v4}"],"ipv6":["{v6}"],"routes":["0.0.0.0/0"]}}"#
                ),
            )
            .unwrap()
        };
        let a = mk("a", "52:54:00:00:00:01", "10.0.0.1/24", "fd00::1/64");
        let same_mac = mk("b", "52:54:00:00:00:01", "10.0.0.2/24", "fd00::2/64");
        let same_v4 = mk("c", "52:54:00:00:00:03", "10.0.0.1/16", "fd00::3/64");
        let same_v6 = mk("d", "52:54:00:00:00:04", "10.0.0.4/24", "fd00::1/128");
        let fine = mk("e", "52:54:00:00:00:05", "10.0.0.5/24", "fd00::5/64");
        assert_eq!(
            same_mac.conflict_with(&a).as_deref(),
            Some("mac 52:54:00:00:00:01")
        );
        assert_eq!(
            same_v4.conflict_with(&a).as_deref(),
            Some("ipv4 address 10.0.0.1")
        );
        assert_eq!(
            same_v6.conflict_with(&a).as_deref(),
            Some("ipv6 address fd00::1")
        );
        assert_eq!(fine.conflict_with(&a), None, "shared routes are allowed");
    }
}
