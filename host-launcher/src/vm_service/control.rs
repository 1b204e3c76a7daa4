//! Asking the VMM to power the guest off, and forcing it to stop.
//!
//! crosvm is driven through its control socket with its own CLI (`crosvm powerbtn SOCKET`,
//! `crosvm stop SOCKET`); QEMU through QMP (`system_powerdown`, `quit`).
//!
//! Nothing here may hang the service: a VMM that never reached its main loop still has its
//! control socket bound and listening, so a blocking `connect()` waits forever once the listen
//! backlog is full, and a read waits forever for an answer that never comes. Every connect is
//! non-blocking and retried until a deadline, every read and write has a timeout, the crosvm CLI
//! is killed when it overruns, and every wait also gives up as soon as `interrupted` says so (a
//! second stop request).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};

/// Longest QMP line we accept; QEMU's replies and events are far shorter.
const MAX_QMP_LINE: usize = 64 * 1024;

/// How often a wait looks at `interrupted` and retries a refused-for-now connect.
const SLICE: Duration = Duration::from_millis(50);

/// Errors while talking to the VMM's control interface.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `crosvm <command> <socket>` could not be run or failed.
    #[error("`{program} {command} {socket}` failed: {detail}")]
    Crosvm {
        /// The crosvm binary.
        program: PathBuf,
        /// `powerbtn` or `stop`.
        command: &'static str,
        /// The control socket.
        socket: PathBuf,
        /// Exit status and stderr, the spawn error, or the timeout.
        detail: String,
    },
    /// The QMP conversation failed.
    #[error("QMP {command} on {socket} failed")]
    Qmp {
        /// The QMP command.
        command: &'static str,
        /// The QMP socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl ControlError {
    /// Whether the exchange was cut short by `interrupted` rather than failing on its own.
    pub fn was_interrupted(&self) -> bool {
        match self {
            ControlError::Qmp { source, .. } => source.kind() == io::ErrorKind::Interrupted,
            ControlError::Crosvm { detail, .. } => detail == INTERRUPTED,
        }
    }
}

const INTERRUPTED: &str = "interrupted by a stop request";

/// Socket type of a control socket: QMP is a stream socket, crosvm's is `SOCK_SEQPACKET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
}

impl SocketKind {
    fn sock_type(self) -> SockType {
        match self {
            SocketKind::Stream => SockType::Stream,
            SocketKind::SeqPacket => SockType::SeqPacket,
        }
    }
}

/// Connect to the unix socket at `path` without ever blocking: a listener whose backlog is full
/// (its owner stopped accepting) answers `EAGAIN`, which is retried until `deadline`; every other
/// error is returned at once. The descriptor is close-on-exec and non-blocking.
pub fn connect(
    path: &Path,
    kind: SocketKind,
    deadline: Instant,
    interrupted: &mut dyn FnMut() -> bool,
) -> io::Result<OwnedFd> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    loop {
        let fd = socket(
            AddressFamily::Unix,
            kind.sock_type(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "its listen backlog stays full: the owner accepts no connections",
            ));
        }
        if interrupted() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, INTERRUPTED));
        }
        std::thread::sleep(SLICE);
    }
}

/// Whether something is bound and listening at `path` (a connect succeeds or only the backlog
/// is full): used to refuse a second run of a VM that is up.
pub fn in_use(path: &Path, kind: SocketKind) -> bool {
    match connect(path, kind, Instant::now(), &mut || false) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::TimedOut,
    }
}

/// Run `crosvm <command> <socket>` (`powerbtn`, `stop`), killing it after `timeout` or when
/// `interrupted` says so.
pub fn crosvm(
    program: &Path,
    command: &'static str,
    socket: &Path,
    timeout: Duration,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<(), ControlError> {
    let err = |detail: String| ControlError::Crosvm {
        program: program.to_path_buf(),
        command,
        socket: socket.to_path_buf(),
        detail,
    };
    let mut cmd = Command::new(program);
    cmd.arg(command)
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    super::process::prepare(&mut cmd, super::process::DeathSignal::Kill);
    let mut child = cmd.spawn().map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                super::process::kill(&mut child);
                return Err(err(e.to_string()));
            }
        }
        if Instant::now() >= deadline {
            super::process::kill(&mut child);
            return Err(err(format!("no answer within {}s", timeout.as_secs())));
        }
        if interrupted() {
            super::process::kill(&mut child);
            return Err(err(INTERRUPTED.to_owned()));
        }
        std::thread::sleep(SLICE);
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        // It has exited: this reads what it left in the pipe and stops at the limit.
        let _ = pipe.take(64 * 1024).read_to_string(&mut stderr);
    }
    Err(err(format!("{status}: {}", stderr.trim())))
}

/// Connect, read QEMU's greeting and finish the capabilities handshake: QEMU answers only from
/// its main loop, so this is the proof that it got there.
pub fn qmp_handshake(
    socket: &Path,
    timeout: Duration,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<(), ControlError> {
    Qmp::open(socket, Instant::now() + timeout, interrupted)
        .map(drop)
        .map_err(|source| ControlError::Qmp {
            command: "qmp_capabilities",
            socket: socket.to_path_buf(),
            source,
        })
}

/// Send one QMP command (after the capabilities handshake) and wait for its `return`, all within
/// `timeout`.
pub fn qmp(
    socket: &Path,
    command: &'static str,
    timeout: Duration,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<(), ControlError> {
    let deadline = Instant::now() + timeout;
    Qmp::open(socket, deadline, interrupted)
        .and_then(|mut q| q.execute(command, interrupted))
        .map_err(|source| ControlError::Qmp {
            command,
            socket: socket.to_path_buf(),
            source,
        })
}

/// One QMP connection with a deadline for everything done on it.
struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Qmp {
    fn open(
        socket: &Path,
        deadline: Instant,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> io::Result<Self> {
        let stream = UnixStream::from(connect(socket, SocketKind::Stream, deadline, interrupted)?);
        stream.set_nonblocking(false)?;
        let mut q = Self {
            stream,
            buf: Vec::new(),
            deadline,
        };
        let greeting = q.read_message(interrupted).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                io::Error::new(
                    e.kind(),
                    "the socket accepted the connection but no QMP greeting came",
                )
            } else {
                e
            }
        })?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::other(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", interrupted)?;
        Ok(q)
    }

    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
        } else {
            Ok(left)
        }
    }

    fn execute(&mut self, cmd: &str, interrupted: &mut dyn FnMut() -> bool) -> io::Result<()> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        writeln!(self.stream, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            let reply = self.read_message(interrupted)?;
            if reply.get("return").is_some() {
                return Ok(());
            }
            if let Some(error) = reply.get("error") {
                return Err(io::Error::other(format!("{cmd}: {error}")));
            }
            // Events (e.g. POWERDOWN) may arrive before the reply; skip them.
        }
    }

    /// One JSON line, waiting at most until the deadline, in slices so `interrupted` is heard.
    fn read_message(
        &mut self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> io::Result<serde_json::Value> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line).map_err(io::Error::other);
            }
            if self.buf.len() > MAX_QMP_LINE {
                return Err(io::Error::other("QMP line too long"));
            }
            let left = self.remaining()?;
            if interrupted() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, INTERRUPTED));
            }
            self.stream.set_read_timeout(Some(left.min(SLICE)))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    /// A tiny QMP server: greeting, then replies `{"return":{}}` to everything (emitting an
    /// event first for `system_powerdown`), recording the commands it saw.
    fn fake_qmp(path: &Path) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                if cmd == "system_powerdown" {
                    writeln!(w, r#"{{"event": "POWERDOWN", "data": {{}}}}"#).unwrap();
                }
                if cmd == "bogus" {
                    writeln!(w, r#"{{"error": {{"class": "CommandNotFound"}}}}"#).unwrap();
                } else {
                    writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
                }
                seen.push(cmd);
                line.clear();
            }
            seen
        })
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn qmp_handshake_then_command() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qmp(&sock);
        qmp(&sock, "system_powerdown", T, &mut || false).unwrap();
        assert_eq!(
            server.join().unwrap(),
            ["qmp_capabilities", "system_powerdown"]
        );
    }

    #[test]
    fn qmp_error_reply_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let _server = fake_qmp(&sock);
        let err = qmp(&sock, "bogus", T, &mut || false).unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }

    #[test]
    fn qmp_without_server_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(qmp(&dir.path().join("none"), "quit", T, &mut || false).is_err());
    }

    /// QEMU stuck before its main loop: the QMP socket listens but nobody accepts. Each attempt
    /// gives up at its deadline, also once the backlog is full and connect() itself would block.
    #[test]
    fn qmp_to_a_listener_that_never_accepts_gives_up_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        // Backlog 1, as QEMU listens on its QMP socket.
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::bind(listener.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).unwrap();
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(1).unwrap()).unwrap();
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let begun = Instant::now();
            let err = qmp_handshake(&sock, Duration::from_millis(300), &mut || false).unwrap_err();
            assert!(begun.elapsed() < Duration::from_secs(2), "{err}");
            let ControlError::Qmp { source, .. } = &err else {
                panic!("{err}")
            };
            assert_eq!(source.kind(), io::ErrorKind::TimedOut, "{source}");
            kinds.push(source.to_string());
        }
        assert!(kinds[0].contains("no QMP greeting"), "{kinds:?}");
        assert!(
            kinds.last().unwrap().contains("backlog"),
            "the backlog filled up: {kinds:?}"
        );
    }

    #[test]
    fn interrupted_qmp_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let begun = Instant::now();
        let err = qmp(
            &sock,
            "system_powerdown",
            Duration::from_secs(30),
            &mut || true,
        )
        .unwrap_err();
        assert!(err.was_interrupted(), "{err}");
        assert!(begun.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn crosvm_cli_that_hangs_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("crosvm");
        let pidfile = dir.path().join("pid");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let begun = Instant::now();
        let err = crosvm(
            &prog,
            "stop",
            &dir.path().join("s"),
            Duration::from_secs(1),
            &mut || false,
        )
        .unwrap_err();
        assert!(begun.elapsed() < Duration::from_secs(4), "{err}");
        assert!(err.to_string().contains("no answer within 1s"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(Errno::ESRCH),
            "killed and reaped"
        );
    }
}
