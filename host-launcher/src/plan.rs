//! Everything vmsilo would set up for each VM, computed from the configuration alone.
//!
//! `vmsilo plan` prints this so a user can see, before rebuilding, exactly which crosvm command,
//! kernel command line, TAPs, vm-switch ports, paths and units each VM gets. The JSON form is
//! stable and pinned by snapshot tests.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::types::{Cidr, MacAddr};
use crate::config::{Config, InterfaceType, OverlayType, Vm, Vmm, VsockTransport};
use crate::crosvm::{self, BootImages};
use crate::derive::{self, Rgb};
use crate::paths::{Paths, units};

/// The plan for a whole configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Which document this was computed from.
    pub source: String,
    /// User who owns the VMs.
    pub user: String,
    /// That user's UID.
    pub user_uid: Option<u32>,
    /// NAT uplink, when NAT is on.
    pub nat_interface: Option<String>,
    /// Per VM, in document order.
    pub vms: Vec<VmPlan>,
    /// One vm-switch daemon per network.
    pub switch_networks: Vec<SwitchPlan>,
}

/// What one VM gets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmPlan {
    /// VM name.
    pub name: String,
    /// VM id, also its vsock CID.
    pub cid: u32,
    /// The VMM that runs it.
    pub vmm: Vmm,
    /// Frame colour.
    pub color: Rgb,
    /// Title text colour on that frame.
    pub text_color: Rgb,
    /// Memory in MiB.
    pub memory: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Started at boot rather than on demand.
    pub auto_start: bool,
    /// Idle seconds before power-off, when auto-shutdown is on.
    pub auto_shutdown_after: Option<u64>,
    /// VMs started first.
    pub depends_on: Vec<String>,
    /// How the host reaches the agent.
    pub vsock: VsockTransport,
    /// systemd units.
    pub units: VmUnits,
    /// Runtime and state paths.
    pub paths: VmPaths,
    /// What it boots.
    pub images: BootImages,
    /// Kernel command line, one parameter per entry.
    pub kernel_params: Vec<String>,
    /// Host TAP interfaces.
    pub taps: Vec<TapPlan>,
    /// vm-switch ports.
    pub switch_ports: Vec<SwitchPortPlan>,
    /// DNS servers.
    pub nameservers: Vec<IpAddr>,
    /// The VMM command, as argv.
    pub command: Vec<String>,
}

/// Unit names of one VM.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmUnits {
    /// Listens on the command socket.
    pub socket: String,
    /// The command proxy.
    pub proxy: String,
    /// Runs the VM.
    pub vm: String,
}

/// Paths of one VM.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmPaths {
    /// `vm-run` connects here.
    pub command_socket: PathBuf,
    /// Serial console PTY link.
    pub console: PathBuf,
    /// Runtime directory.
    pub runtime_dir: PathBuf,
    /// Security-context Wayland socket (with a GPU).
    pub wayland_socket: Option<PathBuf>,
    /// VMM control socket.
    pub control_socket: PathBuf,
    /// Hybrid vsock socket (vhost-user transport).
    pub vsock_socket: Option<PathBuf>,
    /// qcow2 overlay (qcow2 overlays).
    pub overlay_disk: Option<PathBuf>,
    /// Overlay size limit.
    pub overlay_size: Option<String>,
    /// Shared home on the host.
    pub shared_home: Option<PathBuf>,
}

/// A host TAP.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TapPlan {
    /// Guest-visible name.
    pub interface: String,
    /// Host TAP name.
    pub tap: String,
    /// Guest MAC.
    pub mac: MacAddr,
    /// Guest PCI address.
    pub pci_address: String,
    /// Host-side address.
    pub host_address: Option<Cidr>,
    /// Bridge the TAP joins.
    pub bridge: Option<String>,
    /// Guest addresses.
    pub addresses: Vec<Cidr>,
    /// Guest IPv6 addresses.
    pub v6_addresses: Vec<Cidr>,
    /// Guest routes, `dest via gw`.
    pub routes: Vec<String>,
    /// Guest uses DHCP.
    pub dhcp: bool,
}

/// A vm-switch port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchPortPlan {
    /// Guest-visible name.
    pub interface: String,
    /// vm-switch network.
    pub network: String,
    /// Guest MAC, which the switch enforces as source.
    pub mac: MacAddr,
    /// Guest PCI address.
    pub pci_address: String,
    /// vhost-user socket the VMM connects to.
    pub socket: PathBuf,
    /// Peer file the VM service writes.
    pub peer_file: PathBuf,
    /// Addresses the switch accepts as source and routes to this peer.
    pub addresses: Vec<Cidr>,
    /// IPv6 addresses, likewise.
    pub v6_addresses: Vec<Cidr>,
    /// Prefixes this peer advertises (it routes for them).
    pub advertised_routes: Vec<Cidr>,
    /// Broadcasts are delivered to this peer.
    pub receive_broadcast: bool,
    /// Guest routes, `dest via gw`.
    pub routes: Vec<String>,
}

/// One vm-switch daemon.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchPlan {
    /// Network name.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// Its config directory.
    pub config_dir: PathBuf,
    /// VMs on it.
    pub peers: Vec<String>,
    /// Its command line.
    pub command: Vec<String>,
}

fn routes(map: &std::collections::BTreeMap<Cidr, IpAddr>) -> Vec<String> {
    map.iter()
        .map(|(d, via)| format!("{d} via {via}"))
        .collect()
}

impl Plan {
    /// Compute the plan; `source` says where the configuration came from.
    pub fn new(config: &Config, paths: &Paths, source: &str) -> Self {
        let vms: Vec<VmPlan> = config
            .nixos_vms
            .iter()
            .map(|vm| vm_plan(config, vm, paths))
            .collect();
        let mut nets: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for vm in &vms {
            for port in &vm.switch_ports {
                nets.entry(port.network.clone())
                    .or_default()
                    .push(vm.name.clone());
            }
        }
        let switch_networks = nets
            .into_iter()
            .map(|(name, peers)| {
                let dir = paths.switch_net_dir(&name);
                let mut command = vec![
                    "vm-switch".to_owned(),
                    "--name".to_owned(),
                    name.clone(),
                    "--config-dir".to_owned(),
                    dir.display().to_string(),
                    "--log-level".to_owned(),
                    config.vm_switch.log_level.as_str().to_owned(),
                ];
                command.extend(config.vm_switch.extra_args.iter().cloned());
                SwitchPlan {
                    unit: units::switch_service(&name),
                    config_dir: dir,
                    name,
                    peers,
                    command,
                }
            })
            .collect();
        Self {
            source: source.to_owned(),
            user: config.user.clone(),
            user_uid: config.user_uid,
            nat_interface: config
                .host_networking
                .nat
                .enable
                .then(|| config.host_networking.nat.interface.clone()),
            vms,
            switch_networks,
        }
    }

    /// Keep only the VM called `name`, and the networks it is on.
    pub fn only_vm(mut self, name: &str) -> Option<Self> {
        self.vms.retain(|vm| vm.name == name);
        let vm = self.vms.first()?;
        let nets: Vec<String> = vm.switch_ports.iter().map(|p| p.network.clone()).collect();
        self.switch_networks.retain(|n| nets.contains(&n.name));
        Some(self)
    }
}

fn vm_plan(config: &Config, vm: &Vm, paths: &Paths) -> VmPlan {
    let name = vm.name.as_str();
    let ports = derive::net_ports(vm);
    let mut taps = Vec::new();
    let mut switch_ports = Vec::new();
    for port in &ports {
        let Some(iface) = vm.network.interfaces.get(&port.name) else {
            continue;
        };
        match (iface.kind, &port.tap, &port.network) {
            (InterfaceType::Tap, Some(tap), _) => taps.push(TapPlan {
                interface: port.name.clone(),
                tap: tap.clone(),
                mac: port.mac,
                pci_address: port.pci_address.clone(),
                host_address: iface.tap.host_address,
                bridge: iface.tap.bridge.clone(),
                addresses: iface.addresses.clone(),
                v6_addresses: iface.v6_addresses.clone(),
                routes: routes(&iface.routes)
                    .into_iter()
                    .chain(routes(&iface.v6_routes))
                    .collect(),
                dhcp: iface.dhcp,
            }),
            (InterfaceType::VmSwitch, _, Some(net)) => switch_ports.push(SwitchPortPlan {
                interface: port.name.clone(),
                network: net.clone(),
                mac: port.mac,
                pci_address: port.pci_address.clone(),
                socket: paths.switch_socket(net, name),
                peer_file: paths.switch_peer_file(net, name),
                addresses: iface.addresses.clone(),
                v6_addresses: iface.v6_addresses.clone(),
                advertised_routes: iface
                    .vm_network
                    .as_ref()
                    .map(|n| n.routes.clone())
                    .unwrap_or_default(),
                receive_broadcast: iface
                    .vm_network
                    .as_ref()
                    .is_some_and(|n| n.receive_broadcast),
                routes: routes(&iface.routes)
                    .into_iter()
                    .chain(routes(&iface.v6_routes))
                    .collect(),
            }),
            _ => {}
        }
    }
    let qcow2 = vm.root_overlay.kind == OverlayType::Qcow2;
    VmPlan {
        name: vm.name.clone(),
        cid: vm.id,
        vmm: vm.vmm,
        color: vm.color,
        text_color: vm.color.text_color(),
        memory: vm.memory,
        cpus: vm.cpus,
        auto_start: vm.auto_start,
        auto_shutdown_after: vm.auto_shutdown.enable.then_some(vm.auto_shutdown.after),
        depends_on: vm.depends_on.clone(),
        vsock: vm.vsock.transport,
        units: VmUnits {
            socket: units::command_socket(name),
            proxy: units::proxy_service(name),
            vm: units::vm_service(name),
        },
        paths: VmPaths {
            command_socket: paths.command_socket(name),
            console: paths.console(name),
            runtime_dir: paths.vm_run_dir(name),
            wayland_socket: vm.gpu.as_ref().map(|_| paths.wayland_socket(name)),
            control_socket: paths.control_socket(name),
            vsock_socket: (vm.vsock.transport == VsockTransport::VhostUser)
                .then(|| paths.vsock_uds(name)),
            overlay_disk: qcow2.then(|| paths.overlay_disk(name)),
            overlay_size: qcow2.then(|| vm.root_overlay.size.clone()),
            shared_home: crosvm::shared_home_dir(vm, paths),
        },
        images: BootImages::of(vm, paths),
        kernel_params: derive::kernel_params(vm),
        taps,
        switch_ports,
        nameservers: vm.network.nameservers.clone(),
        command: crosvm::command_line(config, vm, paths),
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# vmsilo plan for {}", self.source)?;
        let uid = self
            .user_uid
            .map(|u| u.to_string())
            .unwrap_or_else(|| "?".into());
        writeln!(f, "user: {} (uid {uid})", self.user)?;
        if let Some(nat) = &self.nat_interface {
            writeln!(f, "NAT: masquerade VM traffic out of {nat}")?;
        }
        for vm in &self.vms {
            writeln!(f)?;
            write!(f, "{vm}")?;
        }
        for net in &self.switch_networks {
            writeln!(f)?;
            writeln!(f, "== vm-switch network {} ({})", net.name, net.unit)?;
            writeln!(f, "  config dir: {}", net.config_dir.display())?;
            writeln!(f, "  peers: {}", net.peers.join(", "))?;
            writeln!(f, "  command: {}", crosvm::shell_line(&net.command))?;
        }
        Ok(())
    }
}

impl fmt::Display for VmPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = if self.auto_start {
            "at boot"
        } else {
            "on demand"
        }
        .to_owned();
        if !self.depends_on.is_empty() {
            let _ = write!(start, ", after {}", self.depends_on.join(", "));
        }
        writeln!(
            f,
            "== VM {} (cid {}, {}, {} MiB, {} vCPU)",
            self.name,
            self.cid,
            serde_plain(&self.vmm),
            self.memory,
            self.cpus
        )?;
        writeln!(f, "  colour: {} with {} text", self.color, self.text_color)?;
        writeln!(f, "  starts: {start}")?;
        match self.auto_shutdown_after {
            Some(s) => writeln!(f, "  auto-shutdown: after {s} s idle")?,
            None => writeln!(f, "  auto-shutdown: off")?,
        }
        writeln!(
            f,
            "  units: {}, {}, {}",
            self.units.socket, self.units.proxy, self.units.vm
        )?;
        writeln!(
            f,
            "  command socket: {}",
            self.paths.command_socket.display()
        )?;
        writeln!(f, "  console: {}", self.paths.console.display())?;
        writeln!(f, "  runtime dir: {}", self.paths.runtime_dir.display())?;
        if let Some(s) = &self.paths.vsock_socket {
            writeln!(f, "  vsock: hybrid over {}", s.display())?;
        } else {
            writeln!(f, "  vsock: kernel AF_VSOCK, cid {}", self.cid)?;
        }
        match (&self.paths.overlay_disk, &self.paths.overlay_size) {
            (Some(disk), Some(size)) => {
                writeln!(f, "  root overlay: qcow2 {} (max {size})", disk.display())?
            }
            _ => writeln!(f, "  root overlay: tmpfs")?,
        }
        match &self.paths.shared_home {
            Some(home) => writeln!(f, "  shared home: {}", home.display())?,
            None => writeln!(f, "  shared home: none")?,
        }
        writeln!(f, "  kernel: {}", self.images.kernel.display())?;
        writeln!(f, "  kernel command line: {}", self.kernel_params.join(" "))?;
        if self.taps.is_empty() && self.switch_ports.is_empty() {
            writeln!(f, "  network: offline")?;
        }
        for tap in &self.taps {
            let host = match (&tap.host_address, &tap.bridge) {
                (Some(a), _) => format!("host {a}"),
                (_, Some(b)) => format!("bridge {b}"),
                _ => "unconfigured".to_owned(),
            };
            writeln!(
                f,
                "  tap {} -> guest {} (mac {}, pci {}), {host}",
                tap.tap, tap.interface, tap.mac, tap.pci_address
            )?;
            write_addresses(f, &tap.addresses, &tap.v6_addresses, &tap.routes, tap.dhcp)?;
        }
        for port in &self.switch_ports {
            writeln!(
                f,
                "  vm-switch {} -> guest {} (mac {}, pci {}), socket {}",
                port.network,
                port.interface,
                port.mac,
                port.pci_address,
                port.socket.display()
            )?;
            write_addresses(f, &port.addresses, &port.v6_addresses, &port.routes, false)?;
            if !port.advertised_routes.is_empty() {
                let list: Vec<String> = port
                    .advertised_routes
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                writeln!(f, "    advertises: {}", list.join(", "))?;
            }
            if port.receive_broadcast {
                writeln!(f, "    receives broadcast")?;
            }
        }
        if !self.nameservers.is_empty() {
            let list: Vec<String> = self.nameservers.iter().map(ToString::to_string).collect();
            writeln!(f, "  nameservers: {}", list.join(", "))?;
        }
        writeln!(f, "  command: {}", crosvm::shell_line(&self.command))
    }
}

fn write_addresses(
    f: &mut fmt::Formatter<'_>,
    v4: &[Cidr],
    v6: &[Cidr],
    routes: &[String],
    dhcp: bool,
) -> fmt::Result {
    let list: Vec<String> = v4.iter().chain(v6).map(ToString::to_string).collect();
    if dhcp {
        writeln!(
            f,
            "    addresses: DHCP{}",
            if list.is_empty() {
                String::new()
            } else {
                format!(" + {}", list.join(", "))
            }
        )?;
    } else if !list.is_empty() {
        writeln!(f, "    addresses: {}", list.join(", "))?;
    }
    for route in routes {
        writeln!(f, "    route: {route}")?;
    }
    Ok(())
}

fn serde_plain<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
