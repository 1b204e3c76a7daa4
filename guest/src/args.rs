//! Command-line options of `vmsilo-agent`.

use std::path::PathBuf;

/// Options; the defaults suit a vmsilo NixOS guest, tests override them.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vmsilo-agent", version, about = "vmsilo guest command agent")]
pub struct Args {
    /// Listen on this unix socket path instead of vsock (tests, development).
    #[arg(long, value_name = "PATH", conflicts_with = "vsock_port")]
    pub listen_unix: Option<PathBuf>,
    /// vsock port to listen on when no socket is inherited via LISTEN_FDS.
    #[arg(long, default_value_t = vmsilo_protocol::AGENT_PORT)]
    pub vsock_port: u32,
    /// Guest user that runs every command (only switched to when the agent runs as root).
    #[arg(long, default_value = "user")]
    pub user: String,
    /// PATH given to commands (the request's env may extend it).
    #[arg(
        long,
        default_value = "/run/wrappers/bin:/etc/profiles/per-user/user/bin:/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin"
    )]
    pub path: String,
    /// WAYLAND_DISPLAY given to commands.
    #[arg(long, default_value = "wayland-0")]
    pub wayland_display: String,
    /// DISPLAY given to commands (Xwayland).
    #[arg(long, default_value = ":0")]
    pub x_display: String,
    /// Power the guest off once no command has run for this many seconds (autoShutdown).
    #[arg(long, value_name = "SECONDS")]
    pub auto_shutdown_after: Option<u64>,
    /// Shell command the idle watchdog runs to power off.
    #[arg(long, default_value = "systemctl poweroff")]
    pub poweroff_command: String,
    /// Kernel command line to read `vmsilo.ifname=<name>,<mac>` from.
    #[arg(long, default_value = "/proc/cmdline")]
    pub ifname_cmdline: PathBuf,
    /// Do not rename network interfaces (tests on a host).
    #[arg(long)]
    pub no_ifname: bool,
    /// Where network interfaces are listed (sysfs), for interface renaming.
    #[arg(long, default_value = "/sys/class/net", hide = true)]
    pub sysfs_net: PathBuf,
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definition_is_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
