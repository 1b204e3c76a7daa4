//! Reading a JSON document into the model: types, allowed keys, per-field ranges and defaults.
//!
//! Rules that relate several fields (uniqueness, references, exclusivity) live in `validate`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::model::*;
use crate::config::reader::{Issues, Obj, Scalar, kind, parse_at, scalar_options};
use crate::config::types::{Cidr, LogLevel, MacAddr, PciAddress, parse_size};
use crate::derive::Rgb;

const TOP_KEYS: &[&str] = &[
    "enable",
    "user",
    "userUid",
    "hostNetworking",
    "nixosVms",
    "enableBashIntegration",
    "crosvm",
    "vm-switch",
    "isolatedPciDevices",
];

const VM_KEYS: &[&str] = &[
    "id",
    "name",
    "memory",
    "cpus",
    "color",
    "network",
    "autoShutdown",
    "autoStart",
    "dependsOn",
    "additionalDisks",
    "rootDisk",
    "kernel",
    "initramfs",
    "rootDiskReadonly",
    "sharedHome",
    "kernelParams",
    "gpu",
    "sound",
    "sharedDirectories",
    "pciDevices",
    "guestPrograms",
    "guestConfig",
    "vhostUser",
    "crosvm",
    "rootOverlay",
    "waylandProxy",
    "vmm",
    "vsock",
];

const IFACE_KEYS: &[&str] = &[
    "type",
    "macAddress",
    "tap",
    "vmNetwork",
    "dhcp",
    "addresses",
    "routes",
    "v6Addresses",
    "v6Routes",
];

/// Options crosvm's `--block` takes besides the positional path.
pub const BLOCK_OPTIONS: &[&str] = &[
    "ro",
    "root",
    "sparse",
    "direct",
    "block-size",
    "id",
    "lock",
    "multiple-workers",
    "async-executor",
    "packed-queue",
    "bootindex",
    "pci-address",
];

/// Options crosvm's `--shared-dir` takes after `PATH:TAG`.
pub const SHARED_DIR_OPTIONS: &[&str] = &[
    "type",
    "uidmap",
    "gidmap",
    "uid",
    "gid",
    "cache",
    "timeout",
    "writeback",
    "rewrite-security-xattrs",
    "ascii_casefold",
    "dax",
    "posix_acl",
    "privileged_quota_uids",
    "max_dynamic_perm",
    "max_dynamic_xattr",
    "security_ctx",
];

/// Options crosvm's `--gpu` takes.
pub const GPU_OPTIONS: &[&str] = &[
    "backend",
    "context-types",
    "displays",
    "egl",
    "gles",
    "glx",
    "surfaceless",
    "vulkan",
    "wsi",
    "udmabuf",
    "cache-path",
    "cache-size",
    "pci-address",
    "fixed-blob-mapping",
    "implicit-render-server",
    "renderer-features",
    "snapshot-scratch-path",
    "width",
    "height",
];

/// Options crosvm's `--vfio` takes besides the device path.
pub const VFIO_OPTIONS: &[&str] = &["iommu", "guest-address", "dt-symbol"];

/// Options crosvm's `--vhost-user` takes besides type and socket.
pub const VHOST_USER_OPTIONS: &[&str] = &["max-queue-size", "pci-address"];

/// Device types crosvm's `--vhost-user` accepts.
pub const VHOST_USER_TYPES: &[&str] = &[
    "block",
    "console",
    "fs",
    "gpu",
    "input",
    "mac80211-hwsim",
    "net",
    "rng",
    "scmi",
    "sound",
    "video-decoder",
    "vsock",
    "wl",
];

/// Default `context-types` for `gpu = true`: Wayland forwarding plus virgl for GL.
pub const DEFAULT_GPU_CONTEXT_TYPES: &str = "cross-domain:virgl2";

/// Read a whole document. Never fails: problems become issues and defaults fill the gaps.
pub(crate) fn config(issues: &Issues, doc: &Value) -> Config {
    let top = Obj::new(issues, "", Some(doc), TOP_KEYS);
    let host = top.obj("hostNetworking", &["nat"]);
    let nat = host.obj("nat", &["enable", "interface"]);
    let crosvm = top.obj("crosvm", &["logLevel", "extraArgs", "extraRunArgs"]);
    let switch = top.obj("vm-switch", &["logLevel", "extraArgs"]);
    let user = top.required_string(
        "user",
        "the user who runs the VMs (must have an explicit UID)",
    );
    let user_uid = top
        .opt_uint("userUid", 1, u64::from(u32::MAX - 1))
        .and_then(|n| u32::try_from(n).ok());
    Config {
        enable: top.bool("enable", false),
        user,
        user_uid,
        host_networking: HostNetworking {
            nat: Nat {
                enable: nat.bool("enable", false),
                interface: nat.opt_string("interface").unwrap_or_default(),
            },
        },
        nixos_vms: top
            .list("nixosVms")
            .into_iter()
            .map(|(path, value)| vm(issues, path, value))
            .collect(),
        enable_bash_integration: top.bool("enableBashIntegration", true),
        crosvm: CrosvmGlobal {
            log_level: crosvm
                .parsed("logLevel", LogLevel::parse)
                .unwrap_or(LogLevel::Info),
            extra_args: crosvm.strings("extraArgs"),
            extra_run_args: crosvm.strings("extraRunArgs"),
        },
        vm_switch: VmSwitchGlobal {
            log_level: switch
                .parsed("logLevel", LogLevel::parse)
                .unwrap_or(LogLevel::Info),
            extra_args: switch.strings("extraArgs"),
        },
        isolated_pci_devices: top
            .list("isolatedPciDevices")
            .into_iter()
            .filter_map(|(path, value)| string_at(issues, &path, value))
            .filter_map(|(path, text)| parse_at(issues, &path, &text, PciAddress::parse))
            .collect(),
    }
}

fn string_at(issues: &Issues, path: &str, value: &Value) -> Option<(String, String)> {
    match value {
        Value::String(s) => Some((path.to_owned(), s.clone())),
        other => {
            issues.push(path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

fn vm(issues: &Issues, path: String, value: &Value) -> Vm {
    let o = Obj::new(issues, path, Some(value), VM_KEYS);
    let id = match o.opt_uint_as(
        "id",
        0,
        u64::from(u32::MAX),
        "an odd whole number from 3 to 255",
    ) {
        None if !o.has("id") => {
            issues.push(o.at("id"), "required: an odd number from 3 to 255");
            0
        }
        other => other.unwrap_or(0) as u32,
    };
    let name = o.required_string("name", "a name for paths, units and commands");
    let shutdown = o.obj("autoShutdown", &["enable", "after"]);
    let crosvm = o.obj("crosvm", &["logLevel", "extraArgs", "extraRunArgs"]);
    let overlay = o.obj("rootOverlay", &["type", "size"]);
    let size = overlay
        .opt_string("size")
        .unwrap_or_else(|| "10G".to_owned());
    if overlay.has("size") {
        parse_at(issues, &overlay.at("size"), &size, parse_size);
    }
    let vsock = o.obj("vsock", &["transport"]);
    Vm {
        id,
        name,
        memory: o.uint("memory", 1024, 64, 1 << 22) as u32,
        cpus: o.uint("cpus", 2, 1, 255) as u32,
        color: o.parsed("color", Rgb::parse).unwrap_or(Rgb([0xff, 0, 0])),
        network: network(&o),
        auto_shutdown: AutoShutdown {
            enable: shutdown.bool("enable", false),
            after: shutdown.uint("after", 60, 1, 7 * 24 * 3600),
        },
        auto_start: o.bool("autoStart", false),
        depends_on: o.strings("dependsOn"),
        additional_disks: o
            .list("additionalDisks")
            .into_iter()
            .filter_map(|(path, value)| disk(issues, &path, value))
            .collect(),
        root_disk: o
            .raw("rootDisk")
            .and_then(|v| disk(issues, &o.at("rootDisk"), v)),
        kernel: o.parsed("kernel", absolute_path),
        initramfs: o.parsed("initramfs", absolute_path),
        root_disk_readonly: o.bool("rootDiskReadonly", true),
        shared_home: shared_home(&o),
        kernel_params: o.strings("kernelParams"),
        gpu: gpu(&o),
        sound: sound(&o),
        shared_directories: o
            .list("sharedDirectories")
            .into_iter()
            .filter_map(|(path, value)| shared_directory(issues, &path, value))
            .collect(),
        pci_devices: o
            .list("pciDevices")
            .into_iter()
            .filter_map(|(path, value)| pci_device(issues, &path, value))
            .collect(),
        guest_programs: o
            .list("guestPrograms")
            .into_iter()
            .filter_map(|(path, value)| string_at(issues, &path, value))
            .filter_map(|(path, text)| parse_at(issues, &path, &text, absolute_path))
            .collect(),
        vhost_user: o
            .list("vhostUser")
            .into_iter()
            .filter_map(|(path, value)| vhost_user(issues, &path, value))
            .collect(),
        crosvm: CrosvmVm {
            log_level: crosvm.parsed("logLevel", LogLevel::parse),
            extra_args: crosvm.strings("extraArgs"),
            extra_run_args: crosvm.strings("extraRunArgs"),
        },
        root_overlay: RootOverlay {
            kind: overlay
                .choice(
                    "type",
                    "an overlay type",
                    &[("qcow2", OverlayType::Qcow2), ("tmpfs", OverlayType::Tmpfs)],
                )
                .unwrap_or(OverlayType::Qcow2),
            size,
        },
        wayland_proxy: o
            .choice(
                "waylandProxy",
                "a Wayland proxy",
                &[
                    ("wayland-proxy-virtwl", WaylandProxy::Virtwl),
                    ("sommelier", WaylandProxy::Sommelier),
                ],
            )
            .unwrap_or(WaylandProxy::Virtwl),
        vmm: o
            .choice(
                "vmm",
                "a VMM",
                &[("crosvm", Vmm::Crosvm), ("qemu", Vmm::Qemu)],
            )
            .unwrap_or(Vmm::Crosvm),
        vsock: Vsock {
            transport: vsock
                .choice(
                    "transport",
                    "a vsock transport",
                    &[
                        ("vhost-vsock", VsockTransport::VhostVsock),
                        ("vhost-user", VsockTransport::VhostUser),
                    ],
                )
                .unwrap_or(VsockTransport::VhostVsock),
        },
    }
}

fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.starts_with('/') && !text.contains('\0') {
        Ok(PathBuf::from(text))
    } else {
        Err(format!("{text:?} must be an absolute path"))
    }
}

fn network(vm: &Obj<'_>) -> Network {
    let net = vm.obj("network", &["nameservers", "interfaces"]);
    let nameservers = net
        .list("nameservers")
        .into_iter()
        .filter_map(|(path, value)| string_at(net.issues(), &path, value))
        .filter_map(|(path, text)| {
            parse_at(net.issues(), &path, &text, |t| {
                t.parse::<IpAddr>()
                    .map_err(|_| format!("{t:?} is not an IP address"))
            })
        })
        .collect();
    let interfaces = net
        .entries("interfaces")
        .into_iter()
        .map(|(name, path, value)| {
            let iface = interface(&Obj::new(net.issues(), path, Some(value), IFACE_KEYS));
            (name, iface)
        })
        .collect();
    Network {
        nameservers,
        interfaces,
    }
}

fn interface(o: &Obj<'_>) -> Interface {
    let tap = o.obj("tap", &["name", "hostAddress", "bridge"]);
    let vm_network = o.has("vmNetwork").then(|| {
        let n = o.obj("vmNetwork", &["name", "receiveBroadcast", "routes"]);
        VmNetwork {
            name: n.required_string("name", "the vm-switch network this interface joins"),
            receive_broadcast: n.bool("receiveBroadcast", false),
            routes: cidrs(&n, "routes", None),
        }
    });
    Interface {
        kind: o
            .choice(
                "type",
                "an interface type",
                &[
                    ("tap", InterfaceType::Tap),
                    ("vm-switch", InterfaceType::VmSwitch),
                ],
            )
            .unwrap_or(InterfaceType::VmSwitch),
        mac_address: o.parsed("macAddress", MacAddr::parse),
        tap: Tap {
            name: tap.opt_string("name"),
            host_address: tap.parsed("hostAddress", Cidr::parse),
            bridge: tap.opt_string("bridge"),
        },
        vm_network,
        dhcp: o.bool("dhcp", false),
        addresses: cidrs(o, "addresses", Some(4)),
        routes: routes(o, "routes", 4),
        v6_addresses: cidrs(o, "v6Addresses", Some(6)),
        v6_routes: routes(o, "v6Routes", 6),
    }
}

fn family_ok(addr: IpAddr, family: u8) -> bool {
    (family == 4) == addr.is_ipv4()
}

fn cidrs(o: &Obj<'_>, key: &str, family: Option<u8>) -> Vec<Cidr> {
    o.list(key)
        .into_iter()
        .filter_map(|(path, value)| string_at(o.issues(), &path, value))
        .filter_map(|(path, text)| {
            parse_at(o.issues(), &path, &text, |t| {
                let c = Cidr::parse(t)?;
                match family {
                    Some(f) if !family_ok(c.addr, f) => {
                        Err(format!("{t:?} is not an IPv{f} address with prefix"))
                    }
                    _ => Ok(c),
                }
            })
        })
        .collect()
}

fn routes(o: &Obj<'_>, key: &str, family: u8) -> BTreeMap<Cidr, IpAddr> {
    let mut out = BTreeMap::new();
    for (dest, path, value) in o.entries(key) {
        let route = Obj::new(o.issues(), path.clone(), Some(value), &["via"]);
        let dest = parse_at(o.issues(), &path, &dest, |t| {
            let c = Cidr::parse(t)?;
            if family_ok(c.addr, family) {
                Ok(c)
            } else {
                Err(format!("{t:?} is not an IPv{family} destination prefix"))
            }
        });
        if !route.has("via") {
            o.issues()
                .push(route.at("via"), "required: the gateway address");
        }
        let via = route.parsed("via", |t| match t.parse::<IpAddr>() {
            Ok(a) if family_ok(a, family) => Ok(a),
            _ => Err(format!("{t:?} is not an IPv{family} gateway address")),
        });
        if let (Some(dest), Some(via)) = (dest, via) {
            out.insert(dest, via);
        }
    }
    out
}

/// The object form of a free-form crosvm attrset, or an issue.
fn free_form<'a>(
    issues: &Issues,
    path: &str,
    value: &'a Value,
) -> Option<&'a serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => {
            issues.push(
                path,
                format!("expected an attribute set, found {}", kind(other)),
            );
            None
        }
    }
}

fn required_str<'a>(
    issues: &Issues,
    path: &str,
    map: &'a serde_json::Map<String, Value>,
    key: &str,
    what: &str,
) -> Option<&'a str> {
    let at = crate::config::reader::join(path, key);
    match map.get(key) {
        None | Some(Value::Null) => {
            issues.push(at, format!("required: {what}"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            issues.push(at, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

/// A required absolute path in a free-form crosvm attrset, which must not contain `separator`
/// (crosvm splits the flag's value on it).
fn required_path(
    issues: &Issues,
    path: &str,
    map: &serde_json::Map<String, Value>,
    key: &str,
    what: &str,
    separator: char,
    flag: &str,
) -> Option<PathBuf> {
    let at = crate::config::reader::join(path, key);
    let text = required_str(issues, path, map, key, what)?;
    if text.contains(separator) {
        issues.push(
            at,
            format!("{text:?} contains {separator:?}, which separates crosvm's {flag} fields"),
        );
        return None;
    }
    parse_at(issues, &at, text, absolute_path)
}

fn disk(issues: &Issues, path: &str, value: &Value) -> Option<Disk> {
    let map = free_form(issues, path, value)?;
    let options = scalar_options(issues, path, map, BLOCK_OPTIONS, &["path"], "--block");
    let file = required_path(
        issues,
        path,
        map,
        "path",
        "the disk image or block device",
        ',',
        "--block",
    )?;
    if let Some(Scalar::Str(id)) = options.get("id")
        && id.len() > 20
    {
        issues.push(
            crate::config::reader::join(path, "id"),
            format!("{id:?} is longer than the 20 characters a virtio-blk id holds"),
        );
    }
    Some(Disk {
        path: file,
        options,
    })
}

fn shared_home(o: &Obj<'_>) -> SharedHome {
    match o.raw("sharedHome") {
        None | Some(Value::Bool(true)) => SharedHome::Default,
        Some(Value::Bool(false)) => SharedHome::Disabled,
        Some(Value::String(s)) => parse_at(o.issues(), &o.at("sharedHome"), s, absolute_path)
            .map(SharedHome::Path)
            .unwrap_or(SharedHome::Default),
        Some(other) => {
            o.issues().push(
                o.at("sharedHome"),
                format!(
                    "expected true, false or an absolute path, found {}",
                    kind(other)
                ),
            );
            SharedHome::Default
        }
    }
}

fn gpu(o: &Obj<'_>) -> Option<BTreeMap<String, Scalar>> {
    let path = o.at("gpu");
    match o.raw("gpu") {
        None | Some(Value::Bool(true)) => Some(BTreeMap::from([(
            "context-types".to_owned(),
            Scalar::Str(DEFAULT_GPU_CONTEXT_TYPES.to_owned()),
        )])),
        Some(Value::Bool(false)) => None,
        Some(Value::Object(map)) => {
            let options = scalar_options(o.issues(), &path, map, GPU_OPTIONS, &[], "--gpu");
            for key in ["width", "height"] {
                if let Some(v) = options.get(key)
                    && !matches!(v, Scalar::Int(n) if (1..=16384).contains(n))
                {
                    o.issues().push(
                        crate::config::reader::join(&path, key),
                        format!("{v} is not a pixel count from 1 to 16384"),
                    );
                }
            }
            if options.contains_key("width") != options.contains_key("height") {
                o.issues()
                    .push(path, "width and height must be given together");
            }
            Some(options)
        }
        Some(other) => {
            o.issues().push(
                path,
                format!(
                    "expected true, false or an attribute set, found {}",
                    kind(other)
                ),
            );
            None
        }
    }
}

fn sound(o: &Obj<'_>) -> Option<Sound> {
    let path = o.at("sound");
    match o.raw("sound") {
        None | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(Sound {
            backend: SoundBackend::Pipewire,
            capture: false,
        }),
        Some(value @ Value::Object(_)) => {
            let s = Obj::new(o.issues(), path, Some(value), &["backend", "capture"]);
            Some(Sound {
                backend: s
                    .parsed("backend", |t| match t {
                        "pulse" | "pipewire" => Ok(SoundBackend::Pipewire),
                        "alsa" => Ok(SoundBackend::Alsa),
                        "null" => Ok(SoundBackend::Null),
                        _ => Err(format!(
                            "{t:?} is not a sound backend; allowed: \"pulse\" (served by PipeWire), \"pipewire\", \"alsa\", \"null\""
                        )),
                    })
                    .unwrap_or(SoundBackend::Pipewire),
                capture: s.bool("capture", false),
            })
        }
        Some(other) => {
            o.issues().push(
                path,
                format!(
                    "expected true, false or an attribute set, found {}",
                    kind(other)
                ),
            );
            None
        }
    }
}

fn shared_directory(issues: &Issues, path: &str, value: &Value) -> Option<SharedDirectory> {
    let map = free_form(issues, path, value)?;
    let mut options = scalar_options(
        issues,
        path,
        map,
        SHARED_DIR_OPTIONS,
        &["path", "tag", "id"],
        "--shared-dir",
    );
    let dir = required_path(
        issues,
        path,
        map,
        "path",
        "the host directory to share",
        ':',
        "--shared-dir",
    )?;
    let tag_key = match (map.contains_key("tag"), map.contains_key("id")) {
        (true, true) => {
            issues.push(path, "give the mount tag as `tag` or `id`, not both");
            return None;
        }
        (false, true) => "id",
        _ => "tag",
    };
    let tag = required_str(issues, path, map, tag_key, "the mount tag the guest uses")?;
    let tag_ok = !tag.is_empty()
        && tag.len() <= 36
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !tag_ok {
        issues.push(
            crate::config::reader::join(path, tag_key),
            format!("{tag:?} is not a mount tag; use up to 36 letters, digits, '-', '_' or '.'"),
        );
        return None;
    }
    if let Some(kind) = options.get("type")
        && !matches!(kind, Scalar::Str(k) if k == "fs" || k == "p9")
    {
        issues.push(
            crate::config::reader::join(path, "type"),
            format!("{kind} is not a shared-dir type; allowed: \"fs\" (virtiofs), \"p9\""),
        );
    }
    options
        .entry("type".to_owned())
        .or_insert_with(|| Scalar::Str("fs".to_owned()));
    Some(SharedDirectory {
        path: dir,
        tag: tag.to_owned(),
        options,
    })
}

fn pci_device(issues: &Issues, path: &str, value: &Value) -> Option<PciDevice> {
    let map = free_form(issues, path, value)?;
    let mut options = scalar_options(issues, path, map, VFIO_OPTIONS, &["path"], "--vfio");
    let bdf = required_str(
        issues,
        path,
        map,
        "path",
        "the device's PCI address, e.g. 01:00.0",
    )?;
    let address = parse_at(
        issues,
        &crate::config::reader::join(path, "path"),
        bdf,
        PciAddress::parse,
    )?;
    if let Some(iommu) = options.get("iommu").cloned() {
        let mapped = match &iommu {
            Scalar::Str(s) if s == "on" || s == "viommu" => Some("viommu"),
            Scalar::Bool(true) => Some("viommu"),
            Scalar::Str(s) if s == "off" => Some("off"),
            Scalar::Bool(false) => Some("off"),
            Scalar::Str(s) if s == "coiommu" || s == "pkvm-pviommu" => None,
            _ => {
                issues.push(
                    crate::config::reader::join(path, "iommu"),
                    format!("{iommu} is not an IOMMU mode; allowed: \"on\" (= viommu), \"off\", \"viommu\", \"coiommu\", \"pkvm-pviommu\""),
                );
                None
            }
        };
        if let Some(mapped) = mapped {
            options.insert("iommu".to_owned(), Scalar::Str(mapped.to_owned()));
        }
    }
    Some(PciDevice { address, options })
}

fn vhost_user(issues: &Issues, path: &str, value: &Value) -> Option<VhostUser> {
    let map = free_form(issues, path, value)?;
    let options = scalar_options(
        issues,
        path,
        map,
        VHOST_USER_OPTIONS,
        &["type", "socket"],
        "--vhost-user",
    );
    let kind = required_str(issues, path, map, "type", "the device type, e.g. \"net\"")?;
    if !VHOST_USER_TYPES.contains(&kind) {
        issues.push(
            crate::config::reader::join(path, "type"),
            format!(
                "{kind:?} is not a vhost-user device type; allowed: {}",
                VHOST_USER_TYPES.join(", ")
            ),
        );
        return None;
    }
    let socket = required_path(
        issues,
        path,
        map,
        "socket",
        "the backend's unix socket",
        ',',
        "--vhost-user",
    )?;
    Some(VhostUser {
        kind: kind.to_owned(),
        socket,
        options,
    })
}
