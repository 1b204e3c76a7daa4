//! Arguments of the `vmsilo` command. The doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Qubes-style VMs on NixOS and KDE Plasma: inspect the configuration and run vmsilo's services.
#[derive(Debug, Parser)]
#[command(name = "vmsilo", version, propagate_version = true)]
pub struct Cli {
    /// Log verbosity: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, global = true, env = "VMSILO_LOG", default_value = "warn")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `vmsilo` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration document; list every problem with its JSON path.
    ///
    /// Exits 0 when the document is valid and 1 otherwise.
    Check(ConfigArg),
    /// Show what vmsilo sets up for each VM: crosvm command, kernel command line, network,
    /// runtime paths and systemd units.
    Plan(PlanArgs),
    /// Bring the bundled quick-start example up for real as tiny VMs (QEMU backend, vm-switch
    /// network, socket-activated command proxies) and walk through using it, with timings.
    Demo(crate::demo::DemoArgs),
    /// Serve a VM's command socket (run by `vmsilo-<vm>.service` with the socket from
    /// `vmsilo-<vm>.socket`): start the VM and its dependencies on demand, forward each
    /// connection to the guest agent.
    Proxy(ProxyCommand),
    /// Print shell completion for vm-run, vm-start, vm-stop, vm-shell and vm-start-debug,
    /// completing VM names from the configuration.
    Completions(CompletionsCommand),
    /// Generate host desktop entries, VM-coloured icons and a menu folder per VM from each VM's
    /// guest program packages (run at build time).
    Desktop(DesktopArgs),
    /// Run and manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
}

/// `vmsilo vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Prepare and run one VM until it powers off or the service is stopped (SIGTERM powers
    /// the guest off, then removes everything the run created). This is what
    /// vmsilo-VM-vm.service runs.
    Run(Box<VmRunArgs>),
}

/// Arguments of `vmsilo vm run`.
#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// The VM to run.
    pub vm: String,

    /// Debugging run from a terminal: copy the guest's serial console output to stdout and say
    /// where the console is (vm-start-debug adds this and info-level logs).
    #[arg(long)]
    pub foreground: bool,

    /// The configuration document; default ROOT/etc/vmsilo/config.json (--root), else /etc/vmsilo/config.json.
    #[arg(long, env = "VMSILO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Put every runtime path (run, state, switch, shared dirs) below this directory instead of
    /// /, to run without root or in tests.
    #[arg(long, env = "VMSILO_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// crosvm binary.
    #[arg(long, env = "VMSILO_CROSVM", default_value = "crosvm")]
    pub crosvm: PathBuf,

    /// QEMU binary, for VMs with vmm = "qemu".
    #[arg(long, env = "VMSILO_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,

    /// qemu-img binary, to create the root overlay.
    #[arg(long, env = "VMSILO_QEMU_IMG", default_value = "qemu-img")]
    pub qemu_img: PathBuf,

    /// vhost-device-vsock binary, for vsock.transport = "vhost-user".
    #[arg(
        long,
        env = "VMSILO_VHOST_DEVICE_VSOCK",
        default_value = "vhost-device-vsock"
    )]
    pub vhost_device_vsock: PathBuf,

    /// The Wayland security-context helper.
    #[arg(
        long,
        env = "VMSILO_WAYLAND_CONTEXT",
        default_value = "vmsilo-wayland-context"
    )]
    pub wayland_context: PathBuf,

    /// The user's XDG_RUNTIME_DIR; default /run/user/UID (userUid).
    #[arg(long, env = "VMSILO_USER_RUNTIME_DIR", value_name = "DIR")]
    pub user_runtime_dir: Option<PathBuf>,

    /// The compositor's Wayland display (name in the runtime dir, or a path); default wayland-0.
    #[arg(long, env = "VMSILO_WAYLAND_DISPLAY", value_name = "NAME")]
    pub wayland_display: Option<String>,

    /// Where sysfs is mounted, for the PCI passthrough checks.
    #[arg(long, env = "VMSILO_SYSFS", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// QEMU accelerator; default kvm when /dev/kvm is usable hardware KVM, else tcg.
    #[arg(long, env = "VMSILO_ACCEL", value_parser = ["kvm", "tcg"])]
    pub accel: Option<String>,

    /// Seconds the guest gets to power off after the power button before the VMM is stopped.
    #[arg(long, env = "VMSILO_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Seconds the VMM and helpers get to come up.
    #[arg(long, env = "VMSILO_START_TIMEOUT", default_value_t = 60)]
    pub start_timeout: u64,
}

/// Arguments of `vmsilo proxy`.
#[derive(Debug, Args)]
pub struct ProxyCommand {
    /// Which configuration document to read.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Proxy options.
    #[command(flatten)]
    pub proxy: crate::tools_cli::ProxyArgs,
}

/// Arguments of `vmsilo completions`.
#[derive(Debug, Args)]
pub struct CompletionsCommand {
    /// Which configuration document to read VM names from.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Shell options.
    #[command(flatten)]
    pub completions: crate::tools_cli::CompletionsArgs,
}

/// Which configuration document to read.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The document; default /etc/vmsilo/config.json if it exists, else the bundled
    /// quick-start example.
    pub config: Option<PathBuf>,
}

/// Arguments of `vmsilo plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Which configuration document to read.
    #[command(flatten)]
    pub config: ConfigArg,

    /// Only this VM (and the vm-switch networks it is on).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Compute paths below this directory instead of /, to try things without root.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Arguments of `vmsilo desktop`.
#[derive(Debug, Args)]
pub struct DesktopArgs {
    /// The configuration document whose VMs' guestPrograms are read.
    #[arg(long, value_name = "CONFIG")]
    pub config: PathBuf,

    /// Output directory; gets share/applications, share/icons, share/desktop-directories and
    /// etc/xdg/menus/applications-merged.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The vm-run program entries launch (a name on PATH or an absolute path).
    #[arg(long, value_name = "PATH", default_value = "vm-run")]
    pub vm_run: String,

    /// Host terminal command that runs the rest of its arguments, for Terminal=true entries.
    #[arg(long, value_name = "COMMAND", default_value = "konsole -e")]
    pub terminal: String,

    /// Extra directory searched for icons a package names but doesn't ship (repeatable).
    #[arg(long, value_name = "DIR")]
    pub icon_dir: Vec<PathBuf>,
}
