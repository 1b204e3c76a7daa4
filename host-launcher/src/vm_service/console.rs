//! The VM's serial console: two PTY pairs joined by a relay thread.
//!
//! The VMM opens the slave of the *guest* pair as an ordinary file (crosvm has no pty serial
//! type, QEMU takes a path too); users attach to the slave of the *user* pair through the
//! `<run_dir>/<vm>-console` symlink. The service holds both masters and copies bytes between
//! them. It also keeps both slaves open, so a master never reads EIO when a user detaches, and it
//! drops guest output when nobody drains it: the guest's UART never blocks on a missing reader.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::{pipe2, read, ttyname, write};

/// Bytes moved per read; the relay never buffers more than this.
const CHUNK: usize = 4096;

/// Errors while setting up the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// `openpty` failed (no /dev/ptmx or out of ptys).
    #[error("cannot open a pseudo-terminal")]
    OpenPty(#[source] Errno),
    /// The slave's terminal settings could not be read or set to raw.
    #[error("cannot set the pseudo-terminal to raw mode")]
    RawMode(#[source] Errno),
    /// The pts path of a slave could not be found.
    #[error("cannot find the path of the pseudo-terminal")]
    PtsName(#[source] Errno),
    /// A master could not be made non-blocking, or the stop pipe could not be created.
    #[error("cannot prepare the console relay")]
    Relay(#[source] Errno),
    /// The console symlink could not be created.
    #[error("cannot create the console link {path}")]
    Link {
        /// The symlink path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The users' pts could not be given to the user.
    #[error("cannot give the console to the user")]
    Owner(#[source] io::Error),
    /// The relay thread could not be started.
    #[error("cannot start the console relay thread")]
    Thread(#[source] io::Error),
}

/// One open PTY pair in raw mode.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    fn open() -> Result<Self, ConsoleError> {
        let pair = openpty(None, None).map_err(ConsoleError::OpenPty)?;
        let mut attrs = tcgetattr(&pair.slave).map_err(ConsoleError::RawMode)?;
        // Raw: no echo of guest output back into the guest, no line editing, 8-bit clean.
        cfmakeraw(&mut attrs);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &attrs).map_err(ConsoleError::RawMode)?;
        let path = ttyname(&pair.slave).map_err(ConsoleError::PtsName)?;
        set_nonblocking(&pair.master)?;
        // Children (the VMM above all) must not inherit either end: the VMM opens its slave by
        // path, and the users' side is none of its business.
        set_cloexec(&pair.master)?;
        set_cloexec(&pair.slave)?;
        Ok(Self {
            master: pair.master,
            slave: pair.slave,
            path,
        })
    }
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), ConsoleError> {
    fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(ConsoleError::Relay)?;
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), ConsoleError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(ConsoleError::Relay)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(ConsoleError::Relay)?;
    Ok(())
}

/// The running console: the pts path for the VMM, the user link, and the relay thread.
pub struct Console {
    guest_path: PathBuf,
    user_path: PathBuf,
    link: PathBuf,
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// Open both PTY pairs, link `link` to the user side and start relaying. With `mirror`,
    /// guest output is also copied there (`vm-start-debug` passes stdout). With `owner`, the
    /// users' pts belongs to that uid:gid, mode 0600, so `vm-shell` works without root; the
    /// VMM's pts stays root's.
    pub fn open(
        link: &Path,
        mirror: Option<OwnedFd>,
        owner: Option<(u32, u32)>,
    ) -> Result<Self, ConsoleError> {
        let guest = Pty::open()?;
        let user = Pty::open()?;
        if let Some((uid, gid)) = owner {
            let file = std::fs::File::from(user.slave.try_clone().map_err(ConsoleError::Owner)?);
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(ConsoleError::Owner)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(ConsoleError::Owner)?;
        }
        match fs::symlink_metadata(link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // A stale link from a crashed run; it points at a pts that is gone or reused.
                let _ = fs::remove_file(link);
            }
            _ => {}
        }
        symlink(&user.path, link).map_err(|source| ConsoleError::Link {
            path: link.to_path_buf(),
            source,
        })?;
        let (stop_rx, stop_tx) = pipe2(OFlag::O_CLOEXEC).map_err(ConsoleError::Relay)?;
        let guest_path = guest.path.clone();
        let user_path = user.path.clone();
        let thread = std::thread::Builder::new()
            .name("console-relay".into())
            .spawn(move || relay(guest, user, mirror, stop_rx))
            .map_err(|e| {
                let _ = fs::remove_file(link);
                ConsoleError::Thread(e)
            })?;
        Ok(Self {
            guest_path,
            user_path,
            link: link.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The pts the VMM opens for its serial port.
    pub fn guest_pts(&self) -> &Path {
        &self.guest_path
    }

    /// The pts users attach to (what the link points at).
    pub fn user_pts(&self) -> &Path {
        &self.user_path
    }

    /// Stop the relay, close the PTYs and remove the link.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the write end wakes the relay with POLLHUP.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if fs::symlink_metadata(&self.link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = fs::remove_file(&self.link);
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Copy guest → user and user → guest until `stop` closes. Writes that would block are dropped:
/// a full user side means nobody is reading, and the guest must not stall on that.
fn relay(guest: Pty, user: Pty, mirror: Option<OwnedFd>, stop: OwnedFd) {
    let mut buf = [0u8; CHUNK];
    // The slaves stay open for the relay's lifetime (see the module docs).
    let _keep = (&guest.slave, &user.slave);
    loop {
        let mut fds = [
            PollFd::new(guest.master.as_fd(), PollFlags::POLLIN),
            PollFd::new(user.master.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(error) => {
                tracing::error!(%error, "console relay poll failed");
                return;
            }
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        if !ready(2).is_empty() {
            // Last words of a guest that just powered off are still in the master: pass them on.
            while let Some(n) = pump(&guest.master, &user.master, &mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(mirror) = &mirror {
                    let _ = write_all(mirror, &buf[..n]);
                }
            }
            return;
        }
        let from_guest = ready(0).contains(PollFlags::POLLIN);
        let from_user = ready(1).contains(PollFlags::POLLIN);
        if from_guest {
            let n = pump(&guest.master, &user.master, &mut buf);
            if let (Some(mirror), Some(n)) = (&mirror, n) {
                let _ = write_all(mirror, &buf[..n]);
            }
        }
        if from_user {
            pump(&user.master, &guest.master, &mut buf);
        }
        if !from_guest && !from_user {
            // POLLHUP/POLLERR without data cannot happen while we hold the slaves; back off
            // rather than spin if it ever does.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Move one chunk; returns how many bytes were read (they stay at the start of `buf`).
fn pump(from: &OwnedFd, to: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    let n = match read(from, buf) {
        Ok(n) => n,
        Err(Errno::EAGAIN | Errno::EINTR) => return None,
        Err(error) => {
            tracing::debug!(%error, "console relay read failed");
            return None;
        }
    };
    // Nobody drains the other side when this fails: drop the rest.
    let _ = write_all(to, &buf[..n]);
    Some(n)
}

fn write_all(to: &OwnedFd, mut rest: &[u8]) -> Result<(), Errno> {
    while !rest.is_empty() {
        match write(to, rest) {
            Ok(written) => rest = &rest[written..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    fn open_raw(path: &Path) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_nonblock()
            .open(path)
            .unwrap()
    }

    trait NonBlock {
        fn custom_flags_nonblock(&mut self) -> &mut Self;
    }
    impl NonBlock for fs::OpenOptions {
        fn custom_flags_nonblock(&mut self) -> &mut Self {
            use std::os::unix::fs::OpenOptionsExt;
            self.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        }
    }

    fn read_until(file: &mut fs::File, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            match file.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("read: {e}"),
            }
            if got.windows(needle.len()).any(|w| w == needle) {
                return got;
            }
        }
        panic!("timed out waiting for {needle:?}, got {got:?}");
    }

    #[test]
    fn relays_both_ways_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("vm-console");
        let console = Console::open(&link, None, None).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), console.user_pts());

        let mut vmm = open_raw(console.guest_pts());
        let mut user = open_raw(&link);
        vmm.write_all(b"guest says hi\n").unwrap();
        read_until(&mut user, b"guest says hi\n");
        user.write_all(b"ls\r").unwrap();
        read_until(&mut vmm, b"ls\r");

        console.close();
        assert!(
            fs::symlink_metadata(&link).is_err(),
            "link removed on close"
        );
    }

    #[test]
    fn users_end_belongs_to_the_owner_and_the_vmm_end_does_not() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("vm-console");
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let owner = if nix::unistd::geteuid().is_root() {
            (4242, 4343)
        } else {
            me
        };
        let console = Console::open(&link, None, Some(owner)).unwrap();
        let user = fs::metadata(&link).unwrap();
        assert_eq!(
            (user.uid(), user.gid(), user.mode() & 0o777),
            (owner.0, owner.1, 0o600)
        );
        let vmm = fs::metadata(console.guest_pts()).unwrap();
        assert_eq!(vmm.uid(), me.0, "the VMM's pts is not given away");
        console.close();
    }

    #[test]
    fn guest_output_never_blocks_without_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("vm-console");
        let console = Console::open(&link, None, None).unwrap();
        let mut vmm = fs::OpenOptions::new()
            .write(true)
            .open(console.guest_pts())
            .unwrap();
        // Far more than any pty buffer holds; a blocking relay would stall this write forever.
        let line = [b'x'; 1024];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..2048 {
                vmm.write_all(&line).unwrap();
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("guest writes stalled although the service holds the master");
        // A user attaching afterwards still talks to the guest side.
        let mut vmm = open_raw(console.guest_pts());
        let mut user = open_raw(&link);
        user.write_all(b"ping\n").unwrap();
        read_until(&mut vmm, b"ping\n");
        console.close();
    }
}
