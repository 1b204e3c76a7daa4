//! Arguments and entry point of `vmsilo-wayland-context`, the process the VM service keeps running
//! next to each VM.
//!
//! Contract with the VM service: prints exactly `READY <PATH>` on stdout each time the listener is
//! committed (again after every compositor restart), removes PATH and exits 0 on SIGTERM/SIGINT,
//! exits non-zero with a message on stderr when it cannot work at all (for example the compositor
//! lacks the protocol).
//!
//! It never takes over a path that is in use: the listen path must not be the compositor socket
//! (after resolving `--display`/`$WAYLAND_DISPLAY` under `$XDG_RUNTIME_DIR`, compared by inode),
//! and an existing socket there is only replaced when nothing accepts on it any more, so a second
//! instance for the same path exits 1 instead of stealing a live VM's listener.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::warn;

use crate::metadata::{Color, Metadata, VmName};
use crate::supervisor::{Supervisor, SupervisorError, display_path};

/// Open a VM's Wayland security-context listener on the user's compositor and keep it open.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vmsilo-wayland-context", version)]
pub struct Args {
    /// VM name as in the vmsilo config (lowercase letter, then lowercase letters, digits or '-',
    /// at most 12); the app id becomes `org.vmsilo.<NAME>`.
    #[arg(long, value_name = "NAME")]
    pub vm: VmName,
    /// The VM's colour, `#rrggbb`; sent as the instance id.
    #[arg(long, value_name = "#RRGGBB")]
    pub color: Color,
    /// Where to create the listener socket the VM's Wayland clients connect to.
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// Compositor socket: a name under `$XDG_RUNTIME_DIR` or an absolute path
    /// [default: `$WAYLAND_DISPLAY`, else `wayland-0`].
    #[arg(long, value_name = "NAME_OR_PATH")]
    pub display: Option<OsString>,
}

/// Why the binary stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Blocking SIGTERM/SIGINT or opening the signalfd failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The supervisor gave up.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Run the listener for `args` until SIGTERM or SIGINT (then `Ok`) or a fatal error.
pub fn run(args: &Args) -> Result<(), RunError> {
    // Block the stop signals before anything else so they queue on the signalfd instead of
    // killing us between checks; the supervisor polls the signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(RunError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(RunError::Signals)?;

    let display = display_path(
        args.display.as_deref(),
        std::env::var_os("WAYLAND_DISPLAY").as_deref(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )?;
    let metadata = Metadata::new(args.vm.clone(), args.color);
    Supervisor::new(display, metadata, args.listen.clone()).run(signals.as_fd(), announce)?;
    Ok(())
}

/// Tell the VM service the listener is usable. A closed stdout is only logged: the service may
/// have stopped reading, and the listener must stay up regardless.
fn announce(path: &Path) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "READY {}", path.display()).and_then(|()| out.flush()) {
        warn!("cannot write READY to stdout: {e}");
    }
}
