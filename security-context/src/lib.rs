//! A `wp_security_context_v1` listener per VM, kept alive for the VM's lifetime.
//!
//! Wayland clients inside a VM reach the host compositor through one unix socket per VM. This
//! crate registers that socket with the compositor as a security context, so every client behind
//! it is tagged with the VM's identity: sandbox engine `org.vmsilo`, app id `org.vmsilo.<vm>` and
//! the VM's colour as instance id. The (patched) compositor uses those tags to frame the VM's
//! windows in its colour and to hide privileged globals from it.
//!
//! - [`metadata`]: VM name and colour validation, and the three strings sent to the compositor.
//! - [`listener`]: one committed listener on one compositor connection ([`Listener::create`]).
//! - [`supervisor`]: reconnect with backoff and re-create the listener when the compositor
//!   restarts ([`Supervisor::run`]).
//! - [`cli`]: the `vmsilo-wayland-context` binary's arguments and entry point.
//!
//! The VM service normally spawns the binary as the desktop user; embedding looks like this
//! (`stop` is any descriptor that becomes readable on shutdown, e.g. a signalfd or a pipe):
//!
//! ```no_run
//! # use std::os::fd::AsFd;
//! # use vmsilo_security_context::{Metadata, Supervisor};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metadata = Metadata::new("banking".parse()?, "#2ecc71".parse()?);
//! let (stop, _stop_writer) = nix::unistd::pipe()?;
//! Supervisor::new("/run/user/1000/wayland-0".into(), metadata, "/run/vmsilo/banking/wayland-0".into())
//!     .run(stop.as_fd(), |path| println!("READY {}", path.display()))?;
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod listener;
pub mod metadata;
pub mod supervisor;

pub use listener::{Listener, ListenerError};
pub use metadata::{Color, Metadata, MetadataError, VmName};
pub use supervisor::{Retry, Supervisor, SupervisorError};
