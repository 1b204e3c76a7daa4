//! vmsilo guest agent (`vmsilo-agent`): runs the host's command requests inside the VM.
//!
//! - [`args`] — command-line options of the binary.
//! - [`server`] — listeners (vsock port 5000, a unix socket, or an inherited `LISTEN_FDS` socket)
//!   and the accept loop, one thread per connection.
//! - [`session`] — one connection of the command protocol (`vmsilo-protocol`): handshake, spawn as
//!   the guest user with pipes or a pty, stdio/signal/window-size forwarding, exit status.
//! - [`user`] — guest user lookup from `/etc/passwd` and `/etc/group` (no NSS, so the static
//!   binary works in any guest).
//! - [`watchdog`] — idle tracking and the autoShutdown poweroff.
//! - [`ifname`] — renames network interfaces from `vmsilo.ifname=<name>,<mac>` kernel parameters.

pub mod args;
pub mod ifname;
pub mod server;
pub mod session;
pub mod user;
pub mod watchdog;

use std::sync::Arc;

pub use args::Args;

/// Why the agent as a whole failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The listening socket could not be set up.
    #[error("cannot listen for commands")]
    Listen(#[source] server::ServerError),
}

/// Run the agent until its listener fails: rename interfaces, start the watchdog, serve.
pub fn run(args: &Args) -> Result<(), AgentError> {
    let cmdline = &args.ifname_cmdline;
    if !args.no_ifname {
        match std::fs::read_to_string(cmdline) {
            Ok(text) => ifname::apply_from_cmdline(&text, &args.sysfs_net),
            Err(e) => tracing::warn!("cannot read {}: {e}", cmdline.display()),
        }
    }
    let activity = Arc::new(watchdog::Activity::new());
    if let Some(after) = args.auto_shutdown_after {
        watchdog::spawn(
            activity.clone(),
            std::time::Duration::from_secs(after),
            args.poweroff_command.clone(),
        );
    }
    let ctx = Arc::new(session::Context {
        user: args.user.clone(),
        base_path: args.path.clone(),
        wayland_display: args.wayland_display.clone(),
        x_display: args.x_display.clone(),
        activity,
    });
    let listener = server::listener_from_args(args).map_err(AgentError::Listen)?;
    server::serve(listener, ctx).map_err(AgentError::Listen)
}
