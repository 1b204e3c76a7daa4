//! One committed `wp_security_context_v1` listener on one compositor connection.
//!
//! [`Listener::create`] binds a unix socket at the requested path, hands it to the compositor
//! together with the read end of a pipe (`close_fd`), sets the VM's metadata and commits. The
//! compositor then accepts clients on that socket itself and tags them with the metadata. We keep
//! the pipe's write end for as long as the [`Listener`] lives: dropping it (or this process dying)
//! makes the compositor stop accepting, and dropping the [`Listener`] also removes the socket path.
//!
//! Our own copy of the listening socket is closed right after the commit, so when the compositor
//! goes away nothing is left listening and a VM's connection attempt fails at once instead of
//! queueing on a socket nobody will ever accept from.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, warn};
use wayland_client::backend::WaylandError;
use wayland_client::backend::protocol::ProtocolError;
use wayland_client::protocol::{wl_callback, wl_registry};
use wayland_client::{Connection, Dispatch, DispatchError, EventQueue, QueueHandle};
use wayland_protocols::wp::security_context::v1::client::{
    wp_security_context_manager_v1::WpSecurityContextManagerV1,
    wp_security_context_v1::WpSecurityContextV1,
};

use crate::metadata::Metadata;

/// Interface name of the global this crate needs from the compositor.
pub const MANAGER_INTERFACE: &str = "wp_security_context_manager_v1";

/// Why a listener could not be created or stopped being served.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The compositor does not advertise `wp_security_context_manager_v1` to us.
    #[error(
        "the compositor does not offer {MANAGER_INTERFACE} (needs e.g. KWin >= 6.0; or this \
         process itself runs inside a security context)"
    )]
    ProtocolMissing,
    /// Something other than a unix socket already sits at the listen path; we never delete it.
    #[error("listen path {path} exists and is not a unix socket; refusing to replace it")]
    PathOccupied {
        /// The listen path.
        path: PathBuf,
    },
    /// A socket at the listen path accepts connections: another listener (most likely another
    /// instance serving some VM) owns it, and replacing it would hand its clients to this VM.
    #[error(
        "listen path {path} is a live socket (something accepts connections on it); refusing to \
         replace it — is another vmsilo-wayland-context already serving it?"
    )]
    PathInUse {
        /// The listen path.
        path: PathBuf,
    },
    /// Inspecting, removing or binding the listen path failed.
    #[error("cannot bind the listener socket at {path}")]
    Bind {
        /// The listen path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Creating the `close_fd` pipe failed.
    #[error("cannot create the close_fd pipe")]
    Pipe(#[source] nix::Error),
    /// Waiting for the compositor or the stop signal failed.
    #[error("poll on the compositor connection failed")]
    Poll(#[source] nix::Error),
    /// The compositor refused a request with a protocol error (for example invalid metadata).
    #[error("the compositor rejected the security context")]
    Rejected(#[source] ProtocolError),
    /// The connection to the compositor broke: it exited, crashed or closed us.
    #[error("lost the connection to the compositor")]
    ConnectionLost(#[source] WaylandError),
    /// The compositor sent a message this client cannot decode.
    #[error("bad message from the compositor")]
    Dispatch(#[source] DispatchError),
    /// The stop descriptor became readable while we were waiting for the compositor.
    #[error("stopped while waiting for the compositor")]
    Stopped,
}

impl ListenerError {
    /// Whether a fresh connection to a (restarted) compositor may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::ConnectionLost(_) | Self::Dispatch(_))
    }

    fn from_wayland(error: WaylandError) -> Self {
        match error {
            WaylandError::Protocol(p) => Self::Rejected(p),
            io @ WaylandError::Io(_) => Self::ConnectionLost(io),
        }
    }

    fn from_dispatch(error: DispatchError) -> Self {
        match error {
            DispatchError::Backend(w) => Self::from_wayland(w),
            other => Self::Dispatch(other),
        }
    }
}

/// A committed security-context listener; dropping it removes the socket and stops the listener.
#[derive(Debug)]
pub struct Listener {
    path: PathBuf,
    /// Device and inode of the socket we bound, so drop never removes someone else's file.
    inode: (u64, u64),
    /// An `O_PATH` handle on the socket file we bound. Holding it keeps that inode allocated even
    /// if someone unlinks the path, so its number cannot be reused by a socket another instance
    /// creates there later and drop's inode comparison stays exact.
    _anchor: OwnedFd,
    /// Write end of the `close_fd` pipe; the compositor stops listening when it closes.
    close_fd: Option<OwnedFd>,
    session: Session,
}

impl Listener {
    /// Bind a socket at `path` and register it with the compositor on `conn` under `metadata`.
    ///
    /// A stale unix socket at `path` (from a previous run or a previous compositor: nothing accepts
    /// on it any more) is replaced; a live socket ([`ListenerError::PathInUse`]) or any other kind
    /// of file is an error. Returns once the compositor has processed the commit,
    /// so clients may connect as soon as this returns. While waiting, a readable `stop` aborts with
    /// [`ListenerError::Stopped`], so a hung compositor cannot block shutdown.
    pub fn create(
        conn: &Connection,
        metadata: &Metadata,
        path: &Path,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<Self, ListenerError> {
        let mut session = Session::new(conn);
        session.roundtrip(stop)?;
        let manager = session.bind_manager()?;

        let socket = bind_socket(path)?;
        let (anchor, inode) = anchor_socket(path).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
        // From here on a failure must not leave our socket behind.
        let mut listener = Self {
            path: path.to_owned(),
            inode,
            _anchor: anchor,
            close_fd: None,
            session,
        };
        let (close_read, close_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ListenerError::Pipe)?;
        listener.close_fd = Some(close_write);

        let qh = listener.session.queue.handle();
        let context = manager.create_listener(socket.as_fd(), close_read.as_fd(), &qh, ());
        context.set_sandbox_engine(metadata.sandbox_engine().to_owned());
        context.set_app_id(metadata.app_id());
        context.set_instance_id(metadata.instance_id());
        context.commit();
        // The listener outlives these objects (the protocol says so, and KWin 6.3 behaves so).
        context.destroy();
        manager.destroy();
        listener.session.roundtrip(stop)?;
        // The compositor holds its own duplicates now; ours would only keep a dead socket open.
        drop(socket);
        drop(close_read);
        debug!(path = %listener.path.display(), app_id = %metadata.app_id(), "security context committed");
        Ok(listener)
    }

    /// The socket path clients (the VMM's Wayland device) connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve events until `stop` becomes readable (`Ok`) or the compositor connection ends (`Err`).
    ///
    /// The compositor does all the accepting; this only notices when the compositor goes away,
    /// which is the caller's cue to drop this listener and create a new one on a new connection.
    pub fn watch(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<(), ListenerError> {
        loop {
            match self.session.wait(stop) {
                Ok(()) => {}
                Err(ListenerError::Stopped) => return Ok(()),
                Err(e) => return Err(e),
            }
            self.session.dispatch()?;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the path first so nobody connects in the window before the compositor notices
        // the closed pipe; only remove it if it is still the socket we bound.
        match socket_inode(&self.path) {
            Ok(inode) if inode == self.inode => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), "cannot remove listener socket: {e}");
                }
            }
            Ok(_) => debug!(path = %self.path.display(), "listen path was replaced; leaving it"),
            Err(_) => {}
        }
        drop(self.close_fd.take());
    }
}

/// Remove a stale socket at `path` and bind a fresh one; never replace a live one.
fn bind_socket(path: &Path) -> Result<UnixListener, ListenerError> {
    let bind_err = |source| ListenerError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match probe_socket(path) {
            Probe::Live => {
                return Err(ListenerError::PathInUse {
                    path: path.to_owned(),
                });
            }
            Probe::Gone => {}
            Probe::Stale => {
                debug!(path = %path.display(), "replacing stale socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(bind_err(e)),
                    _ => {}
                }
            }
            Probe::Failed(e) => return Err(bind_err(e)),
        },
        Ok(_) => {
            return Err(ListenerError::PathOccupied {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    UnixListener::bind(path).map_err(bind_err)
}

/// What a connection attempt says about the socket file at a path.
#[derive(Debug)]
enum Probe {
    /// Something listens on it (the connection was accepted, is pending, or the backlog is full).
    Live,
    /// Nobody listens on it: safe to replace.
    Stale,
    /// The file vanished meanwhile.
    Gone,
    /// We cannot tell (for example no permission); leave it alone.
    Failed(io::Error),
}

/// Connect to the socket at `path` without blocking, so a listener that never accepts (or has a
/// full backlog) cannot hang us; the connection is closed again at once.
fn probe_socket(path: &Path) -> Probe {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let addr = match UnixAddr::new(path) {
        Ok(addr) => addr,
        Err(e) => return Probe::Failed(e.into()),
    };
    let fd = match socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return Probe::Failed(e.into()),
    };
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Probe::Live,
        Err(Errno::ECONNREFUSED) => Probe::Stale,
        Err(Errno::ENOENT) => Probe::Gone,
        Err(e) => Probe::Failed(e.into()),
    }
}

/// Open an `O_PATH` handle on the socket file just bound at `path`, and its device and inode.
fn anchor_socket(path: &Path) -> Result<(OwnedFd, (u64, u64)), ListenerError> {
    let err = |e: nix::Error| ListenerError::Bind {
        path: path.to_owned(),
        source: e.into(),
    };
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err)?;
    let stat = nix::sys::stat::fstat(&fd).map_err(err)?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        // Replaced between bind and open: not ours.
        return Err(ListenerError::PathOccupied {
            path: path.to_owned(),
        });
    }
    Ok((fd, (stat.st_dev, stat.st_ino)))
}

fn socket_inode(path: &Path) -> Result<(u64, u64), ListenerError> {
    std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| ListenerError::Bind {
            path: path.to_owned(),
            source,
        })
}

/// A private event queue on the compositor connection, with just enough state for our needs.
#[derive(Debug)]
struct Session {
    conn: Connection,
    queue: EventQueue<State>,
    state: State,
    registry: wl_registry::WlRegistry,
}

#[derive(Debug, Default)]
struct State {
    /// (name, interface, version) of every global currently advertised to us.
    globals: Vec<(u32, String, u32)>,
    /// Highest `wl_display.sync` serial the compositor has answered.
    synced: u64,
    /// Serial of the last sync request sent.
    sent: u64,
}

impl Session {
    fn new(conn: &Connection) -> Self {
        let queue = conn.new_event_queue();
        let registry = conn.display().get_registry(&queue.handle(), ());
        Self {
            conn: conn.clone(),
            queue,
            state: State::default(),
            registry,
        }
    }

    fn bind_manager(&self) -> Result<WpSecurityContextManagerV1, ListenerError> {
        let (name, _, _) = self
            .state
            .globals
            .iter()
            .find(|(_, interface, _)| interface == MANAGER_INTERFACE)
            .ok_or(ListenerError::ProtocolMissing)?;
        Ok(self.registry.bind::<WpSecurityContextManagerV1, _, _>(
            *name,
            1,
            &self.queue.handle(),
            (),
        ))
    }

    /// Send a sync and dispatch until the compositor answers it.
    fn roundtrip(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<(), ListenerError> {
        self.state.sent += 1;
        let serial = self.state.sent;
        self.conn.display().sync(&self.queue.handle(), serial);
        loop {
            self.dispatch()?;
            if self.state.synced >= serial {
                return Ok(());
            }
            self.wait(stop)?;
        }
    }

    fn dispatch(&mut self) -> Result<(), ListenerError> {
        self.queue
            .dispatch_pending(&mut self.state)
            .map(drop)
            .map_err(ListenerError::from_dispatch)
    }

    /// Flush, then block until the compositor sends something (read into the queue) or `stop`
    /// becomes readable.
    fn wait(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<(), ListenerError> {
        match self.queue.flush() {
            Err(WaylandError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => other.map_err(ListenerError::from_wayland)?,
        }
        let Some(guard) = self.queue.prepare_read() else {
            return Ok(()); // events already queued
        };
        let (conn_ready, stop_ready) = {
            let mut fds = vec![PollFd::new(guard.connection_fd(), PollFlags::POLLIN)];
            if let Some(stop) = stop {
                fds.push(PollFd::new(stop, PollFlags::POLLIN));
            }
            loop {
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => break,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(ListenerError::Poll(e)),
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if stop_ready {
            return Err(ListenerError::Stopped);
        }
        if conn_ready {
            match guard.read() {
                Ok(_) => {}
                Err(WaylandError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ListenerError::from_wayland(e)),
            }
        }
        Ok(())
    }
}

impl Dispatch<wl_registry::WlRegistry, ()> for State {
    fn event(
        state: &mut Self,
        _registry: &wl_registry::WlRegistry,
        event: wl_registry::Event,
        _data: &(),
        _conn: &Connection,
        _qh: &QueueHandle<Self>,
    ) {
        match event {
            wl_registry::Event::Global {
                name,
                interface,
                version,
            } => state.globals.push((name, interface, version)),
            wl_registry::Event::GlobalRemove { name } => {
                state.globals.retain(|(n, _, _)| *n != name);
            }
            _ => {}
        }
    }
}

impl Dispatch<wl_callback::WlCallback, u64> for State {
    fn event(
        state: &mut Self,
        _callback: &wl_callback::WlCallback,
        event: wl_callback::Event,
        serial: &u64,
        _conn: &Connection,
        _qh: &QueueHandle<Self>,
    ) {
        if let wl_callback::Event::Done { .. } = event {
            state.synced = state.synced.max(*serial);
        }
    }
}

wayland_client::delegate_noop!(State: WpSecurityContextManagerV1);
wayland_client::delegate_noop!(State: WpSecurityContextV1);
