//! Where vmsilo keeps things at runtime, below roots that tests can move.
//!
//! The layout is a contract between the VM service, the command proxy, vm-switch, the tray and
//! the NixOS module: every part asks this module instead of formatting paths itself.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The roots of every path vmsilo uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Paths {
    /// Sockets, consoles and per-VM runtime directories.
    pub run_dir: PathBuf,
    /// Persistent state: overlays, the home template.
    pub state_dir: PathBuf,
    /// vm-switch config directories, one per network.
    pub switch_dir: PathBuf,
    /// Parent of the default shared homes.
    pub shared_root: PathBuf,
    /// The configuration document.
    pub config_file: PathBuf,
}

impl Paths {
    /// The production layout.
    pub fn system() -> Self {
        Self {
            run_dir: "/run/vmsilo".into(),
            state_dir: "/var/lib/vmsilo".into(),
            switch_dir: "/run/vm-switch".into(),
            shared_root: "/shared".into(),
            config_file: crate::config::SYSTEM_CONFIG.into(),
        }
    }

    /// The same layout below `root`, for tests and unprivileged trials.
    pub fn under(root: &Path) -> Self {
        Self {
            run_dir: root.join("run/vmsilo"),
            state_dir: root.join("var/lib/vmsilo"),
            switch_dir: root.join("run/vm-switch"),
            shared_root: root.join("shared"),
            config_file: root.join("etc/vmsilo/config.json"),
        }
    }

    /// The socket `vm-run` connects to; systemd listens on it and starts the proxy.
    pub fn command_socket(&self, vm: &str) -> PathBuf {
        self.run_dir.join(format!("{vm}-command.socket"))
    }

    /// Symlink to the serial console PTY the VM service holds.
    pub fn console(&self, vm: &str) -> PathBuf {
        self.run_dir.join(format!("{vm}-console"))
    }

    /// The VM's runtime directory.
    pub fn vm_run_dir(&self, vm: &str) -> PathBuf {
        self.run_dir.join(vm)
    }

    /// Security-context Wayland socket crosvm forwards guest windows to.
    pub fn wayland_socket(&self, vm: &str) -> PathBuf {
        self.vm_run_dir(vm).join("wayland-0")
    }

    /// The VMM's control socket (crosvm `--socket`, QEMU QMP).
    pub fn control_socket(&self, vm: &str) -> PathBuf {
        self.vm_run_dir(vm).join("crosvm.sock")
    }

    /// Host side of hybrid vsock (`CONNECT <port>` protocol) when vsock goes over vhost-user.
    pub fn vsock_uds(&self, vm: &str) -> PathBuf {
        self.vm_run_dir(vm).join("vsock.sock")
    }

    /// vhost-user socket of the vsock backend, which the VMM connects to.
    pub fn vhost_vsock_socket(&self, vm: &str) -> PathBuf {
        self.vm_run_dir(vm).join("vhost-vsock.sock")
    }

    /// vhost-user socket of the sound backend.
    pub fn sound_socket(&self, vm: &str) -> PathBuf {
        self.vm_run_dir(vm).join("sound.sock")
    }

    /// The VM's persistent state directory.
    pub fn vm_state_dir(&self, vm: &str) -> PathBuf {
        self.state_dir.join(vm)
    }

    /// The qcow2 upper layer of the root overlay, recreated each boot.
    pub fn overlay_disk(&self, vm: &str) -> PathBuf {
        self.vm_state_dir(vm).join("overlay.qcow2")
    }

    /// Template copied into a shared home the first time it is used.
    pub fn home_template(&self) -> PathBuf {
        self.state_dir.join("home-template")
    }

    /// Default shared home of a VM.
    pub fn default_shared_home(&self, vm: &str) -> PathBuf {
        self.shared_root.join(vm)
    }

    /// Config directory of a vm-switch network.
    pub fn switch_net_dir(&self, net: &str) -> PathBuf {
        self.switch_dir.join(net)
    }

    /// Peer file the VM service writes for one VM on one network.
    pub fn switch_peer_file(&self, net: &str, vm: &str) -> PathBuf {
        self.switch_net_dir(net).join(format!("{vm}.json"))
    }

    /// vhost-user socket vm-switch serves for one VM on one network.
    pub fn switch_socket(&self, net: &str, vm: &str) -> PathBuf {
        self.switch_net_dir(net).join(format!("{vm}.sock"))
    }

    /// Where a VM's default kernel, initramfs and root image are when the document doesn't say.
    pub fn default_image_dir(&self, vm: &str) -> PathBuf {
        self.config_file
            .parent()
            .unwrap_or(Path::new("/etc/vmsilo"))
            .join("vms")
            .join(vm)
    }
}

/// systemd unit names, which the proxy, the tray and the NixOS module must agree on.
pub mod units {
    /// Socket unit that listens on the command socket.
    pub fn command_socket(vm: &str) -> String {
        format!("vmsilo-{vm}.socket")
    }

    /// The command proxy, started by the socket unit.
    pub fn proxy_service(vm: &str) -> String {
        format!("vmsilo-{vm}.service")
    }

    /// The service that runs the VM.
    pub fn vm_service(vm: &str) -> String {
        format!("vmsilo-{vm}-vm.service")
    }

    /// The vm-switch daemon of one network.
    pub fn switch_service(net: &str) -> String {
        format!("vm-switch-{net}.service")
    }

    /// The tray, a user unit.
    pub const TRAY: &str = "vmsilo-tray.service";
}

/// vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 5000;
