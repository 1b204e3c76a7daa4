//! The crosvm command line of a VM, in current upstream syntax.
//!
//! Global options go before `run`, devices after it, the kernel last. Deprecated spellings
//! (`--cid`, `--tap-name`, `--tap-fd`, `width=`/`height=` on `--gpu`) are never emitted.
//!
//! Where the spec asks for something crosvm can't do as written:
//! - `pciDevices.*.iommu = "on"` becomes `iommu=viommu` (crosvm accepts off/viommu/coiommu/
//!   pkvm-pviommu, not "on");
//! - `sound` becomes a vhost-user sound device served by `vhost-device-sound` with the PipeWire
//!   (for `backend = "pulse"`), ALSA or null backend, because crosvm has no PulseAudio backend;
//! - `gpu.width`/`gpu.height` become `displays=[[mode=windowed[W,H]]]`.

use std::path::{Path, PathBuf};

use crate::config::{Config, Disk, OverlayType, Scalar, SharedHome, Vm, VsockTransport};
use crate::derive::{self, NetPort};
use crate::paths::Paths;

/// Queue size we ask crosvm to use for vm-switch ports; vm-switch accepts any size up to this.
pub const VHOST_USER_NET_QUEUE_SIZE: u16 = 1024;

/// The kernel, initramfs and root disk a VM boots, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootImages {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// Root disk (the read-only lower layer of the overlay root).
    pub root_disk: PathBuf,
}

impl BootImages {
    /// The images named in the document, else those the NixOS module links under
    /// `/etc/vmsilo/vms/<vm>/`.
    pub fn of(vm: &Vm, paths: &Paths) -> Self {
        let dir = paths.default_image_dir(&vm.name);
        Self {
            kernel: vm.kernel.clone().unwrap_or_else(|| dir.join("kernel")),
            initramfs: vm.initramfs.clone().unwrap_or_else(|| dir.join("initrd")),
            root_disk: vm
                .root_disk
                .as_ref()
                .map(|d| d.path.clone())
                .unwrap_or_else(|| dir.join("root.img")),
        }
    }
}

/// The host directory shared as the guest's /home/user, if any.
pub fn shared_home_dir(vm: &Vm, paths: &Paths) -> Option<PathBuf> {
    match &vm.shared_home {
        SharedHome::Disabled => None,
        SharedHome::Default => Some(paths.default_shared_home(&vm.name)),
        SharedHome::Path(p) => Some(p.clone()),
    }
}

fn kv(options: &std::collections::BTreeMap<String, Scalar>) -> impl Iterator<Item = String> + '_ {
    options.iter().map(|(k, v)| format!("{k}={v}"))
}

fn block_arg(path: &Path, options: &std::collections::BTreeMap<String, Scalar>) -> String {
    std::iter::once(path.display().to_string())
        .chain(kv(options))
        .collect::<Vec<_>>()
        .join(",")
}

fn root_block(vm: &Vm, images: &BootImages) -> String {
    let mut options = vm
        .root_disk
        .as_ref()
        .map(|d: &Disk| d.options.clone())
        .unwrap_or_default();
    options
        .entry("ro".to_owned())
        .or_insert(Scalar::Bool(vm.root_disk_readonly));
    block_arg(&images.root_disk, &options)
}

fn gpu_arg(options: &std::collections::BTreeMap<String, Scalar>) -> String {
    let mut parts: Vec<String> = options
        .iter()
        .filter(|(k, _)| *k != "width" && *k != "height")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !options.contains_key("context-types") {
        parts.insert(
            0,
            format!("context-types={}", crate::config::DEFAULT_GPU_CONTEXT_TYPES),
        );
    }
    if let (Some(w), Some(h)) = (options.get("width"), options.get("height"))
        && !options.contains_key("displays")
    {
        parts.push(format!("displays=[[mode=windowed[{w},{h}]]]"));
    }
    parts.join(",")
}

fn net_arg(port: &NetPort, paths: &Paths, vm: &str) -> Option<(&'static str, String)> {
    if let Some(tap) = &port.tap {
        return Some((
            "--net",
            format!(
                "tap-name={tap},mac={},pci-address={}",
                port.mac, port.pci_address
            ),
        ));
    }
    let net = port.network.as_ref()?;
    Some((
        "--vhost-user",
        format!(
            "type=net,socket={},pci-address={},max-queue-size={VHOST_USER_NET_QUEUE_SIZE}",
            paths.switch_socket(net, vm).display(),
            port.pci_address
        ),
    ))
}

/// The full argv, `crosvm` first, for running `vm` under `config`.
pub fn command_line(config: &Config, vm: &Vm, paths: &Paths) -> Vec<String> {
    let images = BootImages::of(vm, paths);
    let name = vm.name.as_str();
    let mut args: Vec<String> = vec!["crosvm".into()];
    let level = vm.crosvm.log_level.unwrap_or(config.crosvm.log_level);
    args.extend(["--log-level".into(), level.as_str().into()]);
    args.extend(config.crosvm.extra_args.iter().cloned());
    args.extend(vm.crosvm.extra_args.iter().cloned());
    args.push("run".into());

    let mut push = |flag: &str, value: String| {
        args.push(flag.to_owned());
        args.push(value);
    };
    push("--mem", vm.memory.to_string());
    push("--cpus", vm.cpus.to_string());
    match vm.vsock.transport {
        VsockTransport::VhostVsock => push("--vsock", format!("cid={}", vm.id)),
        VsockTransport::VhostUser => push(
            "--vhost-user",
            format!(
                "type=vsock,socket={}",
                paths.vhost_vsock_socket(name).display()
            ),
        ),
    }
    push("--block", root_block(vm, &images));
    if vm.root_overlay.kind == OverlayType::Qcow2 {
        push(
            "--block",
            format!(
                "{},ro=false,sparse=true",
                paths.overlay_disk(name).display()
            ),
        );
    }
    for disk in &vm.additional_disks {
        push("--block", block_arg(&disk.path, &disk.options));
    }
    for (flag, value) in derive::net_ports(vm)
        .iter()
        .filter_map(|port| net_arg(port, paths, name))
    {
        push(flag, value);
    }
    for dev in &vm.pci_devices {
        let value = std::iter::once(dev.address.sysfs_path())
            .chain(kv(&dev.options))
            .collect::<Vec<_>>()
            .join(",");
        push("--vfio", value);
    }
    if let Some(home) = shared_home_dir(vm, paths) {
        push("--shared-dir", format!("{}:home:type=fs", home.display()));
    }
    for dir in &vm.shared_directories {
        let value = [dir.path.display().to_string(), dir.tag.clone()]
            .into_iter()
            .chain(kv(&dir.options))
            .collect::<Vec<_>>()
            .join(":");
        push("--shared-dir", value);
    }
    if let Some(gpu) = &vm.gpu {
        push("--gpu", gpu_arg(gpu));
        push(
            "--wayland-sock",
            paths.wayland_socket(name).display().to_string(),
        );
    }
    if vm.sound.is_some() {
        push(
            "--vhost-user",
            format!("type=sound,socket={}", paths.sound_socket(name).display()),
        );
    }
    for dev in &vm.vhost_user {
        let value = [
            format!("type={}", dev.kind),
            format!("socket={}", dev.socket.display()),
        ]
        .into_iter()
        .chain(kv(&dev.options))
        .collect::<Vec<_>>()
        .join(",");
        push("--vhost-user", value);
    }
    let console = paths.console(name).display().to_string();
    push(
        "--serial",
        format!("type=file,path={console},input={console},num=1,console=true"),
    );
    push("--socket", paths.control_socket(name).display().to_string());
    push("--params", derive::kernel_params(vm).join(" "));
    push("--initrd", images.initramfs.display().to_string());
    args.extend(config.crosvm.extra_run_args.iter().cloned());
    args.extend(vm.crosvm.extra_run_args.iter().cloned());
    args.push(images.kernel.display().to_string());
    args
}

/// Quote one argument for a POSIX shell, only when it needs it.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// An argv as one shell-pasteable line.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}
