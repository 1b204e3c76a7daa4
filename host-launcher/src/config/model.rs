//! The configuration model: `programs.vmsilo` as typed Rust values, defaults already applied.
//!
//! Field names are the spec's option names in snake_case. Values that the tools act on are parsed
//! (addresses, MACs, colours); free-form crosvm attrsets keep their scalar options in order.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::reader::Scalar;
use crate::config::types::{Cidr, LogLevel, MacAddr, PciAddress};
use crate::derive::Rgb;

/// Everything under `programs.vmsilo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Whether the module is switched on (the Rust tools run either way).
    pub enable: bool,
    /// User who owns the VMs' sockets, TAPs and shared homes.
    pub user: String,
    /// That user's UID, which only Nix knows at build time.
    pub user_uid: Option<u32>,
    /// Host-side networking.
    pub host_networking: HostNetworking,
    /// The VMs, in document order.
    pub nixos_vms: Vec<Vm>,
    /// Whether bash completion for the vm-* commands is installed.
    pub enable_bash_integration: bool,
    /// crosvm options shared by every VM.
    pub crosvm: CrosvmGlobal,
    /// Options of the vm-switch daemons.
    pub vm_switch: VmSwitchGlobal,
    /// PCI devices claimed by vfio-pci at boot.
    pub isolated_pci_devices: Vec<PciAddress>,
}

impl Config {
    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.nixos_vms.iter().find(|vm| vm.name == name)
    }

    /// VM names in document order, for completion and error messages.
    pub fn vm_names(&self) -> impl Iterator<Item = &str> {
        self.nixos_vms.iter().map(|vm| vm.name.as_str())
    }
}

/// `hostNetworking`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetworking {
    /// NAT from TAP networks to an uplink.
    pub nat: Nat,
}

/// `hostNetworking.nat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nat {
    /// Masquerade VM traffic.
    pub enable: bool,
    /// Uplink interface.
    pub interface: String,
}

/// Global `crosvm` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrosvmGlobal {
    /// `--log-level`.
    pub log_level: LogLevel,
    /// Arguments before `run`.
    pub extra_args: Vec<String>,
    /// Arguments after `run`.
    pub extra_run_args: Vec<String>,
}

/// Global `vm-switch` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSwitchGlobal {
    /// `--log-level` of every vm-switch daemon.
    pub log_level: LogLevel,
    /// Extra daemon arguments.
    pub extra_args: Vec<String>,
}

/// One VM (`nixosVms` item).
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Odd number 3-255; also the vsock CID.
    pub id: u32,
    /// Name used in paths, units and commands.
    pub name: String,
    /// Memory in MiB.
    pub memory: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Window frame colour.
    pub color: Rgb,
    /// Guest networking.
    pub network: Network,
    /// Power off when idle.
    pub auto_shutdown: AutoShutdown,
    /// Start at boot instead of on demand.
    pub auto_start: bool,
    /// VMs started before this one.
    pub depends_on: Vec<String>,
    /// Extra `--block` devices.
    pub additional_disks: Vec<Disk>,
    /// Root disk; `None` means the image Nix built for this VM.
    pub root_disk: Option<Disk>,
    /// Kernel image; `None` means the one Nix built.
    pub kernel: Option<PathBuf>,
    /// Initramfs; `None` means the one Nix built.
    pub initramfs: Option<PathBuf>,
    /// Attach the root disk read-only.
    pub root_disk_readonly: bool,
    /// Host directory shared as /home/user.
    pub shared_home: SharedHome,
    /// Extra kernel command line parameters.
    pub kernel_params: Vec<String>,
    /// Virtual GPU (needed for Wayland windows).
    pub gpu: Option<BTreeMap<String, Scalar>>,
    /// Sound device.
    pub sound: Option<Sound>,
    /// Extra `--shared-dir` mounts.
    pub shared_directories: Vec<SharedDirectory>,
    /// Passed-through PCI devices.
    pub pci_devices: Vec<PciDevice>,
    /// Store paths of the guest's packages (for desktop entries).
    pub guest_programs: Vec<PathBuf>,
    /// Manual `--vhost-user` devices.
    pub vhost_user: Vec<VhostUser>,
    /// Per-VM crosvm overrides.
    pub crosvm: CrosvmVm,
    /// Upper layer of the guest's overlay root.
    pub root_overlay: RootOverlay,
    /// Wayland proxy run in the guest.
    pub wayland_proxy: WaylandProxy,
    /// Which VMM runs this VM.
    pub vmm: Vmm,
    /// How the host reaches the guest agent.
    pub vsock: Vsock,
}

/// `autoShutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoShutdown {
    /// Power off when idle.
    pub enable: bool,
    /// Idle seconds before powering off.
    pub after: u64,
}

/// `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// DNS servers written to the guest's resolv.conf.
    pub nameservers: Vec<IpAddr>,
    /// Interfaces by guest-visible name, sorted (the sort order fixes PCI slots).
    pub interfaces: BTreeMap<String, Interface>,
}

/// `network.interfaces.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// TAP to the host or a vm-switch network.
    pub kind: InterfaceType,
    /// Explicit MAC; derived from the names when `None`.
    pub mac_address: Option<MacAddr>,
    /// TAP settings (type = "tap").
    pub tap: Tap,
    /// vm-switch settings (type = "vm-switch").
    pub vm_network: Option<VmNetwork>,
    /// Configure the interface by DHCP.
    pub dhcp: bool,
    /// Static IPv4 addresses.
    pub addresses: Vec<Cidr>,
    /// IPv4 routes: destination → gateway.
    pub routes: BTreeMap<Cidr, IpAddr>,
    /// Static IPv6 addresses.
    pub v6_addresses: Vec<Cidr>,
    /// IPv6 routes: destination → gateway.
    pub v6_routes: BTreeMap<Cidr, IpAddr>,
}

/// Interface `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterfaceType {
    /// A host TAP device.
    Tap,
    /// A port on a vm-switch network.
    VmSwitch,
}

/// `tap`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tap {
    /// Host TAP name; `<vm>-<index>` when `None`.
    pub name: Option<String>,
    /// Host-side address of the TAP.
    pub host_address: Option<Cidr>,
    /// Bridge to enslave the TAP to.
    pub bridge: Option<String>,
}

/// `vmNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    /// vm-switch network name.
    pub name: String,
    /// Deliver broadcasts to this peer.
    pub receive_broadcast: bool,
    /// Prefixes this peer routes for others.
    pub routes: Vec<Cidr>,
}

/// A `--block` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image or block device path (crosvm's positional argument).
    pub path: PathBuf,
    /// Further crosvm `--block` options.
    pub options: BTreeMap<String, Scalar>,
}

/// `sharedHome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedHome {
    /// Guest /home/user lives on the overlay.
    Disabled,
    /// `/shared/<vm>`.
    Default,
    /// A custom host directory.
    Path(PathBuf),
}

/// `sound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sound {
    /// Host audio backend for vhost-device-sound.
    pub backend: SoundBackend,
    /// Whether the guest may record.
    pub capture: bool,
}

/// Host audio backends vhost-device-sound offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SoundBackend {
    /// PipeWire (also what the spec's `pulse` means on a modern desktop).
    Pipewire,
    /// ALSA directly.
    Alsa,
    /// Silence; for testing.
    Null,
}

/// A `sharedDirectories` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDirectory {
    /// Host directory.
    pub path: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
    /// Further crosvm `--shared-dir` options (`type` defaults to `fs`).
    pub options: BTreeMap<String, Scalar>,
}

/// A `pciDevices` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// The device.
    pub address: PciAddress,
    /// Further crosvm `--vfio` options (`iommu = "on"` already mapped to `viommu`).
    pub options: BTreeMap<String, Scalar>,
}

/// A `vhostUser` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUser {
    /// Device type (`net`, `block`, ...).
    pub kind: String,
    /// Backend socket.
    pub socket: PathBuf,
    /// Further crosvm `--vhost-user` options.
    pub options: BTreeMap<String, Scalar>,
}

/// Per-VM `crosvm` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrosvmVm {
    /// Overrides the global log level.
    pub log_level: Option<LogLevel>,
    /// Appended to the global args before `run`.
    pub extra_args: Vec<String>,
    /// Appended to the global args after `run`.
    pub extra_run_args: Vec<String>,
}

/// `rootOverlay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootOverlay {
    /// Disk-backed or RAM-backed upper layer.
    pub kind: OverlayType,
    /// Maximum size of the qcow2 upper layer, as written (qemu-img syntax).
    pub size: String,
}

/// `rootOverlay.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayType {
    /// A fresh qcow2 each boot.
    Qcow2,
    /// RAM.
    Tmpfs,
}

/// `waylandProxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WaylandProxy {
    /// Thomas Leonard's wayland-proxy-virtwl (the default).
    #[serde(rename = "wayland-proxy-virtwl")]
    Virtwl,
    /// ChromeOS sommelier.
    #[serde(rename = "sommelier")]
    Sommelier,
}

/// `vmm`: which virtual machine monitor runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// crosvm, the default.
    Crosvm,
    /// QEMU, for hosts without crosvm.
    Qemu,
}

/// `vsock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vsock {
    /// How the host reaches the guest's vsock ports.
    pub transport: VsockTransport,
}

/// `vsock.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VsockTransport {
    /// Kernel AF_VSOCK through /dev/vhost-vsock (crosvm `--vsock cid=`).
    VhostVsock,
    /// Hybrid vsock over a unix socket served by a vhost-user-vsock backend.
    VhostUser,
}
