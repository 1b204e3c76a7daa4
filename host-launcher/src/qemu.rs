//! QEMU command line: the second VMM backend (`vmm = "qemu"`), for hosts without crosvm.
//!
//! The VM service fills a [`QemuVm`] from the config and the runtime paths it created; this
//! module only turns that into argv, so the mapping is pure and tested here. Choices worth
//! knowing:
//! - guest RAM is a shared memfd, because every vhost-user backend (vm-switch,
//!   vhost-device-vsock) maps guest memory;
//! - the QMP socket is how the service asks for an ACPI power-button press and, failing that,
//!   quits QEMU;
//! - under TCG, QEMU 7.2 crashes when a vhost-user NIC uses MSI-X, so NICs get `vectors=0`
//!   (legacy INTx) there; KVM keeps MSI-X.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` is usable hardware KVM, else TCG. KVM-PVM (module `kvm_pvm`) cannot
    /// run stock guest kernels, so it counts as no KVM.
    pub fn detect(dev_kvm: &Path, sys_module: &Path) -> Self {
        let writable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_kvm)
            .is_ok();
        if writable && !sys_module.join("kvm_pvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Disk image format, told to QEMU explicitly so a raw image is never probed as something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw image or block device.
    Raw,
    /// qcow2 image.
    Qcow2,
}

impl DiskFormat {
    /// qcow2 when the file starts with the qcow2 magic, raw otherwise (including devices).
    pub fn sniff(path: &Path) -> Self {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let is_qcow2 = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && &magic == b"QFI\xfb";
        if is_qcow2 {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image or device path.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Read-only to the guest.
    pub read_only: bool,
    /// Pass discard (TRIM) through.
    pub discard: bool,
    /// Bypass the host page cache.
    pub direct: bool,
    /// Logical block size reported to the guest, if not the default.
    pub block_size: Option<u32>,
    /// Serial visible in the guest (`/dev/disk/by-id/virtio-<serial>`).
    pub serial: Option<String>,
}

impl Disk {
    /// A plain writable disk with defaults.
    pub fn new(path: impl Into<PathBuf>, format: DiskFormat) -> Self {
        Self {
            path: path.into(),
            format,
            read_only: false,
            discard: false,
            direct: false,
            block_size: None,
            serial: None,
        }
    }
}

/// How a NIC reaches its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// vhost-user-net: QEMU is the frontend of the vm-switch socket.
    VhostUser {
        /// `<switch_dir>/<net>/<vm>.sock`.
        socket: PathBuf,
    },
    /// A host TAP device that already exists (the NixOS module creates it).
    Tap {
        /// Interface name.
        ifname: String,
    },
}

/// One virtio-net interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Guest-visible interface name (the config key), used for the QEMU ids.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// PCI slot number (22 + sorted index), so guests see the same slots as under crosvm.
    pub slot: u8,
    /// Where its frames go.
    pub backend: NicBackend,
}

/// How the guest's vsock device is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vsock {
    /// Kernel vhost-vsock (`/dev/vhost-vsock`); host reaches the guest at CID.
    Kernel {
        /// Guest CID.
        cid: u32,
    },
    /// vhost-user-vsock served by vhost-device-vsock on this socket (the CID is the backend's).
    VhostUser {
        /// `<run_dir>/<vm>/vhost-vsock.sock`.
        socket: PathBuf,
    },
}

/// Everything QEMU needs for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVm {
    /// VM name.
    pub name: String,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the serial console is ttyS0).
    pub params: String,
    /// Disks in guest order (root, overlay, additional).
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub nics: Vec<Nic>,
    /// vsock device.
    pub vsock: Vsock,
    /// PCI devices passed through with VFIO (`dddd:bb:dd.f`).
    pub vfio: Vec<String>,
    /// The pts QEMU's serial port opens (held by the service).
    pub console_pts: PathBuf,
    /// QMP socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
}

/// QEMU's `,` inside option values is escaped by doubling it.
fn esc(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The argv after the program name.
pub fn command_line(vm: &QemuVm) -> Vec<OsString> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    let accel = match vm.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let cpu = match vm.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let mem = format!("{}M", vm.memory_mib);
    push(&["-name", &format!("{},debug-threads=on", vm.name)]);
    push(&["-machine", &format!("pc,accel={accel}")]);
    push(&["-cpu", cpu, "-smp", &vm.cpus.to_string(), "-m", &mem]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-numa",
        "node,memdev=mem",
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        &format!("serial,id=con0,path={}", esc(&vm.console_pts)),
        "-serial",
        "chardev:con0",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", esc(&vm.qmp_socket)),
    ]);
    push(&["-kernel", &vm.kernel.to_string_lossy()]);
    if let Some(initrd) = &vm.initrd {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    if !vm.params.is_empty() {
        push(&["-append", &vm.params]);
    }
    for (i, disk) in vm.disks.iter().enumerate() {
        let mut drive = format!(
            "if=none,id=disk{i},file={},format={},readonly={}",
            esc(&disk.path),
            disk.format.as_str(),
            if disk.read_only { "on" } else { "off" }
        );
        if disk.discard {
            drive.push_str(",discard=unmap");
        }
        if disk.direct {
            drive.push_str(",cache.direct=on");
        }
        let mut device = format!("virtio-blk-pci,drive=disk{i}");
        if let Some(size) = disk.block_size {
            device.push_str(&format!(
                ",logical_block_size={size},physical_block_size={size}"
            ));
        }
        if let Some(serial) = &disk.serial {
            device.push_str(&format!(",serial={}", serial.replace(',', ",,")));
        }
        push(&["-drive", &drive, "-device", &device]);
    }
    for nic in &vm.nics {
        let id = format!("net-{}", nic.name);
        match &nic.backend {
            NicBackend::VhostUser { socket } => {
                // reconnect=1: a vm-switch restart under a running VM is survived (QEMU connects
                // again). At start QEMU then retries forever before its main loop instead of
                // failing, so the service checks the socket listens first and kills a QEMU
                // whose QMP never answers.
                push(&[
                    "-chardev",
                    &format!("socket,id={id},path={},reconnect=1", esc(socket)),
                    "-netdev",
                    &format!("vhost-user,id={id},chardev={id}"),
                ]);
            }
            NicBackend::Tap { ifname } => {
                push(&[
                    "-netdev",
                    &format!("tap,id={id},ifname={ifname},script=no,downscript=no"),
                ]);
            }
        }
        let mut device = format!(
            "virtio-net-pci,netdev={id},mac={},addr={:#x}",
            nic.mac, nic.slot
        );
        if vm.accel == Accel::Tcg && matches!(nic.backend, NicBackend::VhostUser { .. }) {
            device.push_str(",vectors=0");
        }
        push(&["-device", &device]);
    }
    match &vm.vsock {
        Vsock::Kernel { cid } => push(&["-device", &format!("vhost-vsock-pci,guest-cid={cid}")]),
        Vsock::VhostUser { socket } => push(&[
            "-chardev",
            &format!("socket,id=vsock,path={}", esc(socket)),
            "-device",
            "vhost-user-vsock-pci,chardev=vsock",
        ]),
    }
    for host in &vm.vfio {
        push(&["-device", &format!("vfio-pci,host={host}")]);
    }
    a.extend(vm.extra_args.iter().cloned());
    a.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vm() -> QemuVm {
        QemuVm {
            name: "banking".into(),
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            kernel: "/nix/store/k/bzImage".into(),
            initrd: Some("/nix/store/i/initrd".into()),
            params: "console=ttyS0 vmsilo.ifname=internal,52:54:00:12:34:56".into(),
            disks: vec![
                Disk {
                    read_only: true,
                    ..Disk::new("/nix/store/r/root.img", DiskFormat::Raw)
                },
                Disk::new("/var/lib/vmsilo/banking/overlay.qcow2", DiskFormat::Qcow2),
            ],
            nics: vec![Nic {
                name: "internal".into(),
                mac: "52:54:00:12:34:56".into(),
                slot: 22,
                backend: NicBackend::VhostUser {
                    socket: "/run/vm-switch/internal/banking.sock".into(),
                },
            }],
            vsock: Vsock::VhostUser {
                socket: "/run/vmsilo/banking/vhost-vsock.sock".into(),
            },
            vfio: vec![],
            console_pts: "/dev/pts/7".into(),
            qmp_socket: "/run/vmsilo/banking/qmp.sock".into(),
            extra_args: vec![],
        }
    }

    fn args(vm: &QemuVm) -> Vec<String> {
        command_line(vm)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    /// The value following `flag` for each occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn full_vm_under_tcg() {
        let a = args(&vm());
        assert_eq!(values(&a, "-machine"), ["pc,accel=tcg"]);
        assert_eq!(values(&a, "-cpu"), ["max"]);
        assert_eq!(values(&a, "-m"), ["1024M"]);
        assert_eq!(values(&a, "-smp"), ["2"]);
        assert_eq!(
            values(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=1024M,share=on"]
        );
        assert_eq!(values(&a, "-numa"), ["node,memdev=mem"]);
        assert_eq!(values(&a, "-serial"), ["chardev:con0"]);
        assert_eq!(
            values(&a, "-qmp"),
            ["unix:/run/vmsilo/banking/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            values(&a, "-append"),
            ["console=ttyS0 vmsilo.ifname=internal,52:54:00:12:34:56"]
        );
        assert_eq!(
            values(&a, "-drive"),
            [
                "if=none,id=disk0,file=/nix/store/r/root.img,format=raw,readonly=on",
                "if=none,id=disk1,file=/var/lib/vmsilo/banking/overlay.qcow2,format=qcow2,readonly=off",
            ]
        );
        assert_eq!(
            values(&a, "-chardev"),
            [
                "serial,id=con0,path=/dev/pts/7",
                "socket,id=net-internal,path=/run/vm-switch/internal/banking.sock,reconnect=1",
                "socket,id=vsock,path=/run/vmsilo/banking/vhost-vsock.sock",
            ]
        );
        assert_eq!(
            values(&a, "-device"),
            [
                "virtio-blk-pci,drive=disk0",
                "virtio-blk-pci,drive=disk1",
                "virtio-net-pci,netdev=net-internal,mac=52:54:00:12:34:56,addr=0x16,vectors=0",
                "vhost-user-vsock-pci,chardev=vsock",
            ]
        );
        assert!(a.contains(&"-nodefaults".to_owned()) && a.contains(&"-no-reboot".to_owned()));
    }

    #[test]
    fn kvm_keeps_msix_and_kernel_vsock_uses_the_cid() {
        let mut v = vm();
        v.accel = Accel::Kvm;
        v.vsock = Vsock::Kernel { cid: 3 };
        v.initrd = None;
        v.params.clear();
        v.nics.push(Nic {
            name: "wan".into(),
            mac: "52:54:00:00:00:01".into(),
            slot: 23,
            backend: NicBackend::Tap {
                ifname: "banking-1".into(),
            },
        });
        let a = args(&v);
        assert_eq!(values(&a, "-cpu"), ["host"]);
        assert!(!a.contains(&"-initrd".to_owned()));
        assert!(!a.contains(&"-append".to_owned()));
        let devices = values(&a, "-device");
        assert!(
            devices.contains(&"virtio-net-pci,netdev=net-internal,mac=52:54:00:12:34:56,addr=0x16")
        );
        assert!(devices.contains(&"virtio-net-pci,netdev=net-wan,mac=52:54:00:00:00:01,addr=0x17"));
        assert!(devices.contains(&"vhost-vsock-pci,guest-cid=3"));
        assert!(
            values(&a, "-netdev")
                .contains(&"tap,id=net-wan,ifname=banking-1,script=no,downscript=no")
        );
    }

    #[test]
    fn disk_options_and_comma_escaping() {
        let mut v = vm();
        v.disks = vec![Disk {
            discard: true,
            direct: true,
            block_size: Some(4096),
            serial: Some("data".into()),
            ..Disk::new("/tmp/a,b.qcow2", DiskFormat::Qcow2)
        }];
        v.extra_args = vec!["-s".into()];
        v.vfio = vec!["0000:01:00.0".into()];
        let a = args(&v);
        assert_eq!(
            values(&a, "-drive"),
            [
                "if=none,id=disk0,file=/tmp/a,,b.qcow2,format=qcow2,readonly=off,discard=unmap,cache.direct=on"
            ]
        );
        assert!(values(&a, "-device").contains(
            &"virtio-blk-pci,drive=disk0,logical_block_size=4096,physical_block_size=4096,serial=data"
        ));
        assert!(values(&a, "-device").contains(&"vfio-pci,host=0000:01:00.0"));
        assert_eq!(a.last().unwrap(), "-s");
    }

    #[test]
    fn accel_detection_refuses_kvm_pvm_and_missing_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        let modules = dir.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_intel")).unwrap();
        assert_eq!(Accel::detect(&kvm, &modules), Accel::Kvm);
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        assert_eq!(Accel::detect(&kvm, &modules), Accel::Tcg);
        assert_eq!(
            Accel::detect(&dir.path().join("none"), dir.path()),
            Accel::Tcg
        );
    }

    #[test]
    fn sniffs_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let r = dir.path().join("r");
        std::fs::write(&r, b"\0\0\0\0\0").unwrap();
        assert_eq!(DiskFormat::sniff(&q), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::sniff(&r), DiskFormat::Raw);
        assert_eq!(DiskFormat::sniff(&dir.path().join("none")), DiskFormat::Raw);
    }
}
