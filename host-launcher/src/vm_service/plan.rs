//! From the config to a [`Plan`]: what the service will create and run for one VM.
//!
//! Pure: nothing is touched on disk here, so `vmsilo vm run` can reject a bad request before it
//! creates anything, and tests can check the mapping directly.

use std::path::PathBuf;

use crate::config::{Config, InterfaceType, OverlayType, Scalar, Vm, Vmm, VsockTransport};
use crate::crosvm::{self, BootImages};
use crate::derive;
use crate::paths::Paths;
use crate::qemu::{self, Accel, Disk, DiskFormat, Nic, NicBackend, QemuVm};

use super::{
    HomePlan, NetBackendPlan, OverlayPlan, Plan, Tools, VmmPlan, VsockBackendPlan, WaylandPlan,
    peers,
};

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The config has no VM of that name.
    #[error("no VM is named {name:?}; VMs: {known}")]
    UnknownVm {
        /// The requested name.
        name: String,
        /// The configured names.
        known: String,
    },
    /// The user's uid is unknown: `userUid` unset and the name not in the user database.
    #[error("userUid is not set and user {0:?} does not exist on this host")]
    UnknownUser(String),
}

/// The uid and primary gid of the configured user.
fn user_ids(config: &Config) -> Result<(u32, u32), PlanError> {
    let by_name = nix::unistd::User::from_name(&config.user).ok().flatten();
    match (config.user_uid, by_name) {
        (Some(uid), Some(user)) if user.uid.as_raw() == uid => Ok((uid, user.gid.as_raw())),
        (Some(uid), _) => {
            // Nix knows the uid; the group is the user's primary one when the uid is known here.
            let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or(uid, |u| u.gid.as_raw());
            Ok((uid, gid))
        }
        (None, Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        (None, None) => Err(PlanError::UnknownUser(config.user.clone())),
    }
}

/// Build the plan for `name`.
pub fn build(config: &Config, name: &str, paths: &Paths, tools: &Tools) -> Result<Plan, PlanError> {
    let vm = config.vm(name).ok_or_else(|| PlanError::UnknownVm {
        name: name.to_owned(),
        known: config.vm_names().collect::<Vec<_>>().join(", "),
    })?;
    let (uid, gid) = user_ids(config)?;
    let overlay = match vm.root_overlay.kind {
        OverlayType::Qcow2 => OverlayPlan::Qcow2 {
            dir: paths.vm_state_dir(name),
            size: vm.root_overlay.size.clone(),
        },
        OverlayType::Tmpfs => OverlayPlan::Tmpfs,
    };
    let home = crosvm::shared_home_dir(vm, paths).map(|path| HomePlan {
        path,
        template: paths.home_template(),
        uid,
        gid,
    });
    let peers = derive::net_ports(vm)
        .into_iter()
        .filter_map(|port| {
            let net = port.network.clone()?;
            let iface = vm.network.interfaces.get(&port.name)?;
            let vm_network = iface.vm_network.as_ref()?;
            Some((
                paths.switch_net_dir(&net),
                peers::Peer {
                    name: name.to_owned(),
                    mac: port.mac.to_string(),
                    ipv4: iface.addresses.iter().map(ToString::to_string).collect(),
                    ipv6: iface.v6_addresses.iter().map(ToString::to_string).collect(),
                    routes: vm_network.routes.iter().map(ToString::to_string).collect(),
                    receive_broadcast: vm_network.receive_broadcast,
                },
            ))
        })
        .collect();
    // Every vhost-user net socket the VMM connects to at start: vm-switch's for each vm-switch
    // interface, and (crosvm only; QEMU leaves manual devices out) manual `net` devices.
    let mut net_backends: Vec<NetBackendPlan> = derive::net_ports(vm)
        .into_iter()
        .filter(|port| port.kind == InterfaceType::VmSwitch)
        .filter_map(|port| {
            let net = port.network?;
            Some(NetBackendPlan {
                socket: paths.switch_socket(&net, name),
                network: Some(net),
            })
        })
        .collect();
    if vm.vmm == Vmm::Crosvm {
        net_backends.extend(vm.vhost_user.iter().filter(|d| d.kind == "net").map(|d| {
            NetBackendPlan {
                network: None,
                socket: d.socket.clone(),
            }
        }));
    }
    let vsock_backend =
        (vm.vsock.transport == VsockTransport::VhostUser).then(|| VsockBackendPlan {
            cid: vm.id,
            socket: paths.vhost_vsock_socket(name),
            uds: paths.vsock_uds(name),
        });
    let vmm = match vm.vmm {
        Vmm::Crosvm => VmmPlan::Crosvm(
            crosvm::command_line(config, vm, paths)
                .into_iter()
                .skip(1)
                .collect(),
        ),
        Vmm::Qemu => VmmPlan::Qemu(Box::new(qemu_vm(vm, paths, tools))),
    };
    Ok(Plan {
        name: name.to_owned(),
        vm_run_dir: paths.vm_run_dir(name),
        console_link: paths.console(name),
        overlay,
        home,
        peers,
        net_backends,
        pci: vm
            .pci_devices
            .iter()
            .map(|d| d.address.to_string())
            .collect(),
        wayland: vm.gpu.as_ref().map(|_| WaylandPlan {
            color: vm.color.to_string(),
            uid,
            gid,
        }),
        vsock_backend,
        control_socket: paths.control_socket(name),
        user_uid: uid,
        user_gid: gid,
        vmm,
    })
}

fn flag(options: &std::collections::BTreeMap<String, Scalar>, key: &str) -> Option<bool> {
    match options.get(key)? {
        Scalar::Bool(b) => Some(*b),
        Scalar::Str(s) => Some(s == "true"),
        Scalar::Int(n) => Some(*n != 0),
    }
}

fn disk(path: PathBuf, options: &std::collections::BTreeMap<String, Scalar>, ro: bool) -> Disk {
    let format = DiskFormat::sniff(&path);
    Disk {
        read_only: flag(options, "ro").unwrap_or(ro),
        discard: flag(options, "sparse").unwrap_or(false),
        direct: flag(options, "direct").unwrap_or(false),
        block_size: match options.get("block-size") {
            Some(Scalar::Int(n)) => u32::try_from(*n).ok(),
            Some(Scalar::Str(s)) => s.parse().ok(),
            _ => None,
        },
        serial: options.get("id").map(ToString::to_string),
        ..Disk::new(path, format)
    }
}

/// The QEMU machine for `vm`: the same disks (root, overlay, extra), NIC slots, kernel command
/// line and vsock as under crosvm. Not available under QEMU and left out with a warning at
/// start: the virtio-gpu cross-domain Wayland path, virtiofs shares (they need virtiofsd), sound
/// and manual vhost-user devices other than `net`.
pub fn qemu_vm(vm: &Vm, paths: &Paths, tools: &Tools) -> QemuVm {
    let images = BootImages::of(vm, paths);
    let name = vm.name.as_str();
    let mut disks = vec![disk(
        images.root_disk.clone(),
        &vm.root_disk
            .as_ref()
            .map(|d| d.options.clone())
            .unwrap_or_default(),
        vm.root_disk_readonly,
    )];
    if vm.root_overlay.kind == OverlayType::Qcow2 {
        disks.push(Disk {
            discard: true,
            ..Disk::new(paths.overlay_disk(name), DiskFormat::Qcow2)
        });
    }
    disks.extend(
        vm.additional_disks
            .iter()
            .map(|d| disk(d.path.clone(), &d.options, false)),
    );
    let nics = derive::net_ports(vm)
        .into_iter()
        .filter_map(|port| {
            let backend = match port.kind {
                InterfaceType::Tap => NicBackend::Tap {
                    ifname: port.tap.clone()?,
                },
                InterfaceType::VmSwitch => NicBackend::VhostUser {
                    socket: paths.switch_socket(port.network.as_deref()?, name),
                },
            };
            Some(Nic {
                name: port.name.clone(),
                mac: port.mac.to_string(),
                slot: port.pci_slot,
                backend,
            })
        })
        .collect();
    QemuVm {
        name: name.to_owned(),
        memory_mib: vm.memory,
        cpus: vm.cpus,
        accel: tools
            .accel
            .unwrap_or_else(|| Accel::detect("/dev/kvm".as_ref(), "/sys/module".as_ref())),
        kernel: images.kernel,
        initrd: Some(images.initramfs),
        params: derive::kernel_params(vm).join(" "),
        disks,
        nics,
        vsock: match vm.vsock.transport {
            VsockTransport::VhostVsock => qemu::Vsock::Kernel { cid: vm.id },
            VsockTransport::VhostUser => qemu::Vsock::VhostUser {
                socket: paths.vhost_vsock_socket(name),
            },
        },
        vfio: vm
            .pci_devices
            .iter()
            .map(|d| d.address.to_string())
            .collect(),
        console_pts: PathBuf::new(),
        qmp_socket: paths.control_socket(name),
        extra_args: Vec::new(),
    }
}

/// What a QEMU VM asks for that the QEMU backend does not provide, for a start-up warning.
pub fn qemu_unsupported(vm: &Vm) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if vm.gpu.is_some() {
        missing.push("gpu (Wayland windows need crosvm's cross-domain GPU)");
    }
    if crosvm::shared_home_dir(vm, &Paths::system()).is_some() || !vm.shared_directories.is_empty()
    {
        missing.push("sharedHome/sharedDirectories (virtiofs needs virtiofsd)");
    }
    if vm.sound.is_some() {
        missing.push("sound");
    }
    if !vm.vhost_user.is_empty() {
        missing.push("vhostUser devices");
    }
    missing
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = r##"{
      "user": "nobody", "userUid": 4242, "isolatedPciDevices": ["01:00.0"],
      "nixosVms": [
        { "id": 3, "name": "router", "color": "#2ecc71",
          "rootOverlay": { "size": "2G" },
          "network": { "interfaces": {
            "wan": { "type": "tap", "tap": { "hostAddress": "10.0.0.254/24" }, "addresses": ["10.0.0.1/24"] },
            "internal": { "type": "vm-switch", "addresses": ["10.1.0.254/24"], "v6Addresses": ["fd00::1/64"],
              "vmNetwork": { "name": "internal", "receiveBroadcast": true, "routes": ["0.0.0.0/0"] } } } },
          "pciDevices": [ { "path": "01:00.0" } ],
          "vhostUser": [ { "type": "net", "socket": "/ext/net.sock" },
                         { "type": "block", "socket": "/ext/blk.sock" } ] },
        { "id": 5, "name": "banking", "vmm": "qemu", "gpu": false, "sharedHome": false,
          "rootOverlay": { "type": "tmpfs" }, "vsock": { "transport": "vhost-user" },
          "network": { "interfaces": {
            "internal": { "type": "vm-switch", "addresses": ["10.1.0.1/24"], "vmNetwork": { "name": "internal" } } } } }
      ] }"##;

    fn setup() -> (Config, Paths, Tools) {
        let config = crate::config::from_json_str(DOC).unwrap();
        let paths = Paths::under(std::path::Path::new("/r"));
        let tools = Tools {
            accel: Some(Accel::Tcg),
            ..Tools::default()
        };
        (config, paths, tools)
    }

    #[test]
    fn crosvm_vm_with_everything() {
        let (config, paths, tools) = setup();
        let plan = build(&config, "router", &paths, &tools).unwrap();
        assert_eq!(plan.vm_run_dir, PathBuf::from("/r/run/vmsilo/router"));
        assert_eq!(
            plan.console_link,
            PathBuf::from("/r/run/vmsilo/router-console")
        );
        assert_eq!(
            plan.control_socket,
            PathBuf::from("/r/run/vmsilo/router/crosvm.sock")
        );
        assert_eq!(
            plan.overlay,
            OverlayPlan::Qcow2 {
                dir: "/r/var/lib/vmsilo/router".into(),
                size: "2G".into()
            }
        );
        let home = plan.home.as_ref().unwrap();
        assert_eq!(home.path, PathBuf::from("/r/shared/router"));
        assert_eq!(
            home.template,
            PathBuf::from("/r/var/lib/vmsilo/home-template")
        );
        assert_eq!(home.uid, 4242);
        assert_eq!(
            plan.peers.len(),
            1,
            "only the vm-switch interface gets a peer file"
        );
        let (dir, peer) = &plan.peers[0];
        assert_eq!(dir, &PathBuf::from("/r/run/vm-switch/internal"));
        assert_eq!(peer.name, "router");
        assert_eq!(
            peer.mac,
            derive::mac_address("router", "internal").to_string()
        );
        assert_eq!(peer.ipv4, ["10.1.0.254/24"]);
        assert_eq!(peer.ipv6, ["fd00::1/64"]);
        assert_eq!(peer.routes, ["0.0.0.0/0"]);
        assert!(peer.receive_broadcast);
        assert_eq!(plan.pci, ["0000:01:00.0"]);
        assert_eq!(
            plan.net_backends,
            [
                NetBackendPlan {
                    network: Some("internal".into()),
                    socket: "/r/run/vm-switch/internal/router.sock".into()
                },
                NetBackendPlan {
                    network: None,
                    socket: "/ext/net.sock".into()
                },
            ],
            "vm-switch and manual net sockets are checked; the TAP and the block device not"
        );
        assert_eq!(plan.wayland.as_ref().unwrap().color, "#2ecc71");
        assert!(plan.vsock_backend.is_none());
        let VmmPlan::Crosvm(args) = &plan.vmm else {
            panic!("crosvm expected")
        };
        assert_eq!(args[0], "--log-level");
        assert!(args.contains(&"run".to_owned()));
    }

    #[test]
    fn qemu_vm_with_vhost_user_vsock_and_tmpfs() {
        let (config, paths, tools) = setup();
        let plan = build(&config, "banking", &paths, &tools).unwrap();
        assert_eq!(plan.overlay, OverlayPlan::Tmpfs);
        assert_eq!(
            plan.net_backends,
            [NetBackendPlan {
                network: Some("internal".into()),
                socket: "/r/run/vm-switch/internal/banking.sock".into()
            }]
        );
        assert!(plan.home.is_none());
        assert!(plan.wayland.is_none());
        assert_eq!(
            plan.vsock_backend,
            Some(VsockBackendPlan {
                cid: 5,
                socket: "/r/run/vmsilo/banking/vhost-vsock.sock".into(),
                uds: "/r/run/vmsilo/banking/vsock.sock".into(),
            })
        );
        let VmmPlan::Qemu(vm) = &plan.vmm else {
            panic!("qemu expected")
        };
        assert_eq!(vm.disks.len(), 1, "tmpfs overlay: root disk only");
        assert_eq!(
            vm.disks[0].path,
            PathBuf::from("/r/etc/vmsilo/vms/banking/root.img")
        );
        assert!(vm.disks[0].read_only);
        assert_eq!(
            vm.nics,
            [Nic {
                name: "internal".into(),
                mac: derive::mac_address("banking", "internal").to_string(),
                slot: 22,
                backend: NicBackend::VhostUser {
                    socket: "/r/run/vm-switch/internal/banking.sock".into()
                },
            }]
        );
        assert_eq!(
            vm.vsock,
            qemu::Vsock::VhostUser {
                socket: "/r/run/vmsilo/banking/vhost-vsock.sock".into()
            }
        );
        assert_eq!(
            vm.qmp_socket,
            PathBuf::from("/r/run/vmsilo/banking/crosvm.sock")
        );
        assert!(vm.params.starts_with("console=ttyS0"));
        assert!(qemu_unsupported(config.vm("banking").unwrap()).is_empty());
        // gpu, sharedHome and the vhostUser devices.
        assert_eq!(qemu_unsupported(config.vm("router").unwrap()).len(), 3);
    }

    #[test]
    fn unknown_vm_lists_the_known_ones() {
        let (config, paths, tools) = setup();
        let err = build(&config, "nope", &paths, &tools).unwrap_err();
        assert_eq!(
            err,
            PlanError::UnknownVm {
                name: "nope".into(),
                known: "router, banking".into()
            }
        );
    }
}
