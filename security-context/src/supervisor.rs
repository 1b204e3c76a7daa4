//! Keep one VM's listener alive across compositor restarts.
//!
//! The VM outlives any one KWin process (a crash, a logout and login, an upgrade), so the
//! supervisor connects, creates the [`Listener`], waits until the compositor goes away and then
//! reconnects with exponential backoff, re-creating the listener at the same path each time. Only
//! errors a retry cannot fix end it: the compositor lacks the protocol, rejects our metadata, or
//! the listen path is unusable.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{debug, info, warn};
use wayland_client::{ConnectError, Connection};

use crate::listener::{Listener, ListenerError, MANAGER_INTERFACE};
use crate::metadata::Metadata;

/// Display name libwayland falls back to when `WAYLAND_DISPLAY` is unset.
pub const DEFAULT_DISPLAY: &str = "wayland-0";

/// Why the supervisor gave up.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A relative display name needs `XDG_RUNTIME_DIR`, which is unset or empty.
    #[error("display {display:?} is not an absolute path and XDG_RUNTIME_DIR is not set")]
    NoRuntimeDir {
        /// The display name that needed resolving.
        display: String,
    },
    /// The listen path is the compositor's own socket: binding there would unlink the desktop's
    /// display socket and give every new host client the VM's restricted context.
    #[error(
        "listen path {listen} is the compositor socket {display}; refusing to replace the display \
         socket with a VM listener"
    )]
    ListenIsDisplay {
        /// The listen path as given.
        listen: PathBuf,
        /// The resolved compositor socket.
        display: PathBuf,
    },
    /// Creating the listener failed in a way retrying cannot fix.
    #[error("cannot create the security-context listener on {display}")]
    Listener {
        /// The compositor socket.
        display: PathBuf,
        /// What went wrong.
        #[source]
        source: ListenerError,
    },
    /// Waiting on the stop descriptor during backoff failed.
    #[error("poll on the stop descriptor failed")]
    Poll(#[source] nix::Error),
}

/// Resolve the compositor socket like libwayland does: `display` (an explicit name or path) or
/// else `WAYLAND_DISPLAY` or else `wayland-0`; a relative name lives under `XDG_RUNTIME_DIR`.
///
/// Takes the environment as arguments so the rule is testable without touching process state.
pub fn display_path(
    display: Option<&OsStr>,
    wayland_display: Option<&OsStr>,
    runtime_dir: Option<&OsStr>,
) -> Result<PathBuf, SupervisorError> {
    fn nonempty(v: Option<&OsStr>) -> Option<&OsStr> {
        v.filter(|s| !s.is_empty())
    }
    let name = Path::new(
        nonempty(display)
            .or(nonempty(wayland_display))
            .unwrap_or(OsStr::new(DEFAULT_DISPLAY)),
    );
    if name.is_absolute() {
        return Ok(name.to_owned());
    }
    match nonempty(runtime_dir) {
        Some(dir) => Ok(Path::new(dir).join(name)),
        None => Err(SupervisorError::NoRuntimeDir {
            display: name.to_string_lossy().into_owned(),
        }),
    }
}

/// Whether `a` and `b` name the same file: the same device and inode if both exist (catching hard
/// links and symlinks), else the same path once `.`/`..` and symlinks in the directories are
/// resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return (ma.dev(), ma.ino()) == (mb.dev(), mb.ino());
    }
    normalise(a) == normalise(b)
}

/// `path` made absolute with its directory canonicalised where it exists; lexical otherwise.
fn normalise(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_owned())
            .join(name),
        _ => absolute,
    }
}

/// How quickly to retry, and how long a compositor may take to announce the manager global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// First delay after a failed connection.
    pub initial: Duration,
    /// Longest delay between attempts; the delay doubles up to this.
    pub max: Duration,
    /// How long a reachable compositor may go without the manager global before that is fatal;
    /// covers compositors that open their socket before registering every global.
    pub protocol_grace: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            protocol_grace: Duration::from_secs(2),
        }
    }
}

/// Keeps the listener for one VM at one path for as long as [`Supervisor::run`] runs.
#[derive(Debug, Clone)]
pub struct Supervisor {
    display: PathBuf,
    metadata: Metadata,
    listen: PathBuf,
    retry: Retry,
}

impl Supervisor {
    /// A supervisor that connects to the compositor socket `display` and listens at `listen`.
    pub fn new(display: PathBuf, metadata: Metadata, listen: PathBuf) -> Self {
        Self {
            display,
            metadata,
            listen,
            retry: Retry::default(),
        }
    }

    /// Replace the retry timing (tests shorten it).
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Run until `stop` becomes readable, calling `on_ready` each time a listener is committed.
    ///
    /// Returns `Ok` after a stop, with the socket removed and the listener closed. The compositor
    /// being absent or going away is never an error: it is retried with backoff for as long as
    /// this runs.
    pub fn run(
        &self,
        stop: BorrowedFd<'_>,
        mut on_ready: impl FnMut(&Path),
    ) -> Result<(), SupervisorError> {
        let mut delay = self.retry.initial;
        let mut failing = false;
        let mut missing_since: Option<Instant> = None;
        loop {
            // Checked before every attempt: the display socket may only appear later.
            self.check_listen_is_not_display()?;
            match self.attempt(stop, &mut missing_since) {
                Attempt::Ready(mut listener) => {
                    if std::mem::take(&mut failing) {
                        info!(display = %self.display.display(), "compositor is back");
                    }
                    missing_since = None;
                    delay = self.retry.initial;
                    info!(path = %listener.path().display(), "listener ready");
                    on_ready(listener.path());
                    match listener.watch(Some(stop)) {
                        Ok(()) => return Ok(()),
                        Err(e) if e.is_transient() => {
                            warn!("{}; re-creating the listener when it returns", Chain(&e));
                        }
                        Err(e) => return Err(self.fatal(e)),
                    }
                    // Dropping removes the socket; it comes back with the compositor.
                    drop(listener);
                    failing = true;
                }
                Attempt::Retry(reason) => {
                    if std::mem::replace(&mut failing, true) {
                        debug!(display = %self.display.display(), "still not usable: {reason}");
                    } else {
                        warn!(display = %self.display.display(), "compositor not usable: {reason}; retrying");
                    }
                }
                Attempt::Fatal(e) => return Err(self.fatal(e)),
                Attempt::Stopped => return Ok(()),
            }
            if wait_stop(stop, delay)? {
                return Ok(());
            }
            delay = (delay * 2).min(self.retry.max);
        }
    }

    /// One connection and listener attempt, classified.
    fn attempt(&self, stop: BorrowedFd<'_>, missing_since: &mut Option<Instant>) -> Attempt {
        let conn = match self.connect() {
            Ok(conn) => conn,
            Err(e) => {
                *missing_since = None;
                return Attempt::Retry(e.to_string());
            }
        };
        match Listener::create(&conn, &self.metadata, &self.listen, Some(stop)) {
            Ok(listener) => Attempt::Ready(listener),
            Err(ListenerError::Stopped) => Attempt::Stopped,
            Err(e) if e.is_transient() => Attempt::Retry(Chain(&e).to_string()),
            Err(ListenerError::ProtocolMissing) => {
                let since = *missing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.retry.protocol_grace {
                    Attempt::Fatal(ListenerError::ProtocolMissing)
                } else {
                    Attempt::Retry(format!("{MANAGER_INTERFACE} not advertised (yet)"))
                }
            }
            Err(e) => Attempt::Fatal(e),
        }
    }

    fn check_listen_is_not_display(&self) -> Result<(), SupervisorError> {
        if same_file(&self.listen, &self.display) {
            Err(SupervisorError::ListenIsDisplay {
                listen: self.listen.clone(),
                display: self.display.clone(),
            })
        } else {
            Ok(())
        }
    }

    fn fatal(&self, source: ListenerError) -> SupervisorError {
        SupervisorError::Listener {
            display: self.display.clone(),
            source,
        }
    }

    fn connect(&self) -> Result<Connection, ConnectFailure> {
        let stream = UnixStream::connect(&self.display).map_err(ConnectFailure::Socket)?;
        Connection::from_socket(stream).map_err(ConnectFailure::Wayland)
    }
}

/// Outcome of one connection attempt.
enum Attempt {
    Ready(Listener),
    Retry(String),
    Fatal(ListenerError),
    Stopped,
}

#[derive(Debug, thiserror::Error)]
enum ConnectFailure {
    #[error("cannot connect: {0}")]
    Socket(io::Error),
    #[error("cannot start the Wayland connection: {0}")]
    Wayland(ConnectError),
}

/// Sleep for `delay` unless `stop` becomes readable first; true means stop.
fn wait_stop(stop: BorrowedFd<'_>, delay: Duration) -> Result<bool, SupervisorError> {
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(stop, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(SupervisorError::Poll(e)),
        }
    }
}

/// Formats an error with its sources, for log lines.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn display_resolution_follows_libwayland() {
        let rt = os("/run/user/1000");
        assert_eq!(
            display_path(os("wayland-1"), os("wayland-9"), rt).unwrap(),
            Path::new("/run/user/1000/wayland-1")
        );
        assert_eq!(
            display_path(None, os("wayland-9"), rt).unwrap(),
            Path::new("/run/user/1000/wayland-9")
        );
        assert_eq!(
            display_path(os(""), None, rt).unwrap(),
            Path::new("/run/user/1000/wayland-0")
        );
        assert_eq!(
            display_path(os("/tmp/kwin/sock"), None, None).unwrap(),
            Path::new("/tmp/kwin/sock")
        );
        assert!(matches!(
            display_path(None, os("wayland-9"), os("")),
            Err(SupervisorError::NoRuntimeDir { display }) if display == "wayland-9"
        ));
    }

    #[test]
    fn same_file_sees_through_spelling_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("wayland-1");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        std::fs::hard_link(&sock, dir.path().join("hard")).unwrap();
        for same in [
            sock.clone(),
            sub.join("../wayland-1"),
            dir.path().join("./wayland-1"),
            dir.path().join("link/wayland-1"),
            dir.path().join("hard"),
        ] {
            assert!(same_file(&same, &sock), "{}", same.display());
        }
        assert!(!same_file(&sub.join("wayland-1"), &sock));
        // Neither exists yet: compared by resolved path.
        let absent = dir.path().join("wayland-9");
        assert!(same_file(&sub.join("../wayland-9"), &absent));
        assert!(same_file(&dir.path().join("link/wayland-9"), &absent));
        assert!(!same_file(&sub.join("wayland-9"), &absent));
    }

    #[test]
    fn wait_stop_sees_a_readable_stop_fd() {
        let (read, write) = nix::unistd::pipe().unwrap();
        assert!(!wait_stop(read.as_fd(), Duration::from_millis(1)).unwrap());
        nix::unistd::write(&write, b"x").unwrap();
        assert!(wait_stop(read.as_fd(), Duration::from_secs(60)).unwrap());
    }
}
