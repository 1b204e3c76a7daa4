//! Listening sockets and the accept loop of the agent.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

use crate::{Args, session};

/// Why listening or accepting failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the unix socket failed.
    #[error("cannot listen on unix socket {path}")]
    Unix {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating, binding or listening on the vsock socket failed.
    #[error("cannot listen on vsock port {port} (is the vsock driver loaded?)")]
    Vsock {
        /// The port.
        port: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// LISTEN_FDS was set but malformed.
    #[error("LISTEN_FDS={0:?} is not a single inherited socket")]
    ListenFds(String),
    /// accept() failed for good.
    #[error("accept failed")]
    Accept(#[source] nix::Error),
}

/// Pick the listener: an inherited socket (LISTEN_FDS, for systemd socket activation), a unix
/// socket from `--listen-unix`, else vsock `--vsock-port` on any CID.
pub fn listener_from_args(args: &Args) -> Result<OwnedFd, ServerError> {
    if let Ok(fds) = std::env::var("LISTEN_FDS") {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        if for_us {
            if fds != "1" {
                return Err(ServerError::ListenFds(fds));
            }
            // SAFETY: systemd's socket-activation protocol hands this process fd 3 as its
            // listening socket (LISTEN_PID matched our pid); nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(3) });
        }
    }
    if let Some(path) = &args.listen_unix {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).map_err(|source| ServerError::Unix {
            path: path.clone(),
            source,
        })?;
        return Ok(l.into());
    }
    let err = |source| ServerError::Vsock {
        port: args.vsock_port,
        source,
    };
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_ANY, args.vsock_port),
    )
    .map_err(err)?;
    socket::listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    Ok(fd)
}

/// Accept connections forever, one thread per connection.
pub fn serve(listener: OwnedFd, ctx: Arc<session::Context>) -> Result<(), ServerError> {
    tracing::info!("vmsilo-agent ready");
    loop {
        let conn = match socket::accept4(&listener, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(
                nix::Error::EINTR
                | nix::Error::ECONNABORTED
                | nix::Error::EMFILE
                | nix::Error::ENFILE,
            ) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(ServerError::Accept(e)),
        };
        // Any stream socket (vsock or unix) behaves the same through UnixStream's
        // read/write/shutdown, which are family-independent syscalls.
        let stream = UnixStream::from(conn);
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            if let Err(e) = session::serve(stream, &ctx) {
                tracing::warn!("session failed: {}", crate::session::error_chain(&e));
            }
        });
    }
}
