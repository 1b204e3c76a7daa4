//! Host→guest stream transports to the agent's vsock port.
//!
//! - [`Transport::Vsock`]: kernel `AF_VSOCK` to `(cid, port)`, as with crosvm's `--vsock`
//!   (needs `/dev/vhost-vsock` on the host).
//! - [`Transport::Hybrid`]: "hybrid vsock" over a unix socket served by a vhost-user-vsock
//!   backend (vhost-device-vsock): connect to the socket, write `CONNECT <port>\n`, read one
//!   `OK ...\n` line byte by byte, then raw bytes.
//!
//! vhost-device-vsock 0.3.0 panics if the host closes a stream after `CONNECT` but before the
//! reply, so a hybrid handshake is never abandoned: on timeout the stream is handed to a thread
//! that keeps it open until the backend answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

/// How to reach one guest's vsock port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Kernel AF_VSOCK.
    Vsock {
        /// Guest CID (the VM id).
        cid: u32,
        /// Guest port.
        port: u32,
    },
    /// Hybrid vsock over the backend's unix socket.
    Hybrid {
        /// The backend's host-side socket (`uds-path`).
        uds: PathBuf,
        /// Guest port.
        port: u32,
    },
}

/// Longest reply line accepted from a hybrid backend; anything longer is not a backend.
const MAX_REPLY_LINE: usize = 64;

/// Most unanswered hybrid handshakes kept open at once (each holds a thread and a socket).
pub const MAX_PENDING_HANDSHAKES: usize = 32;

/// Unanswered hybrid handshakes currently held open in the background.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Why connecting to the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// AF_VSOCK socket creation or connect failed.
    #[error("vsock connect to cid {cid} port {port} failed")]
    Vsock {
        /// Guest CID.
        cid: u32,
        /// Guest port.
        port: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The backend's unix socket is absent or refused.
    #[error("cannot connect to hybrid vsock socket {path}")]
    Uds {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend closed the stream: nothing listens on the guest port (yet).
    #[error("no listener on guest port {port} (backend closed the connection)")]
    NoListener {
        /// Guest port.
        port: u32,
    },
    /// The backend answered something other than `OK`.
    #[error("hybrid vsock backend answered {reply:?} instead of OK")]
    BadReply {
        /// The reply, lossily decoded and cut to the line limit.
        reply: String,
    },
    /// No reply within the deadline; the stream is kept open in the background (see module docs).
    #[error("no hybrid vsock handshake reply within {0:?}")]
    HandshakeTimeout(Duration),
    /// Too many earlier handshakes are still unanswered; the backend is stuck.
    #[error("{0} hybrid vsock handshakes are still unanswered")]
    TooManyPending(usize),
    /// Reading or writing the handshake failed.
    #[error("hybrid vsock handshake I/O failed")]
    Io(#[source] std::io::Error),
}

impl TransportError {
    /// True when retrying later may succeed (VM still booting, agent not listening yet).
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Vsock { source, .. } => matches!(
                source,
                nix::Error::ECONNREFUSED
                    | nix::Error::ECONNRESET
                    | nix::Error::ENODEV
                    | nix::Error::EHOSTUNREACH
                    | nix::Error::ETIMEDOUT
                    | nix::Error::EINTR
            ),
            TransportError::Uds { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            TransportError::NoListener { .. }
            | TransportError::HandshakeTimeout(_)
            | TransportError::TooManyPending(_) => true,
            // The backend accepts and drops connections while no VM is attached to it yet.
            TransportError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            TransportError::BadReply { .. } => false,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Vsock { cid, port } => write!(f, "vsock cid {cid} port {port}"),
            Transport::Hybrid { uds, port } => {
                write!(f, "hybrid vsock {} port {port}", uds.display())
            }
        }
    }
}

impl Transport {
    /// Connect once; a hybrid handshake waits at most `handshake_timeout` for the reply.
    ///
    /// The returned stream is a `UnixStream` for both kinds: its read/write/shutdown are plain
    /// fd syscalls that work on any stream socket, AF_VSOCK included.
    pub fn connect(&self, handshake_timeout: Duration) -> Result<UnixStream, TransportError> {
        match self {
            Transport::Vsock { cid, port } => {
                let err = |source| TransportError::Vsock {
                    cid: *cid,
                    port: *port,
                    source,
                };
                let fd = socket::socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(err)?;
                socket::connect(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &VsockAddr::new(*cid, *port),
                )
                .map_err(err)?;
                Ok(UnixStream::from(fd))
            }
            Transport::Hybrid { uds, port } => {
                let pending = PENDING.load(Ordering::SeqCst);
                if pending >= MAX_PENDING_HANDSHAKES {
                    return Err(TransportError::TooManyPending(pending));
                }
                let mut stream =
                    UnixStream::connect(uds).map_err(|source| TransportError::Uds {
                        path: uds.clone(),
                        source,
                    })?;
                stream
                    .write_all(format!("CONNECT {port}\n").as_bytes())
                    .map_err(TransportError::Io)?;
                let reader = stream.try_clone().map_err(TransportError::Io)?;
                let (tx, rx) = mpsc::channel();
                let port = *port;
                // The reply is read in a thread so that on timeout the thread, not we, owns the
                // stream and closes it only after the backend has answered (see module docs).
                std::thread::spawn(move || {
                    let _ = tx.send(read_reply(reader, port));
                });
                match rx.recv_timeout(handshake_timeout) {
                    Ok(Ok(_)) => Ok(stream),
                    Ok(Err(e)) => Err(e),
                    Err(_) => {
                        // Keep our copy alive in the background too until the reader finishes.
                        PENDING.fetch_add(1, Ordering::SeqCst);
                        std::thread::spawn(move || {
                            let _ = rx.recv();
                            drop(stream);
                            PENDING.fetch_sub(1, Ordering::SeqCst);
                        });
                        Err(TransportError::HandshakeTimeout(handshake_timeout))
                    }
                }
            }
        }
    }

    /// Retry [`Transport::connect`] on transient errors until `deadline`, pausing `interval`.
    pub fn connect_until(
        &self,
        deadline: Instant,
        interval: Duration,
    ) -> Result<UnixStream, TransportError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.connect(left.max(Duration::from_millis(100))) {
                Ok(s) => return Ok(s),
                Err(e) if e.is_transient() && Instant::now() + interval < deadline => {
                    tracing::debug!("{self}: {e}; retrying");
                    std::thread::sleep(interval);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn read_reply(mut reader: UnixStream, port: u32) -> Result<UnixStream, TransportError> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => return Err(TransportError::NoListener { port }),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_REPLY_LINE {
                    return Err(TransportError::BadReply {
                        reply: String::from_utf8_lossy(&line).into_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(TransportError::NoListener { port });
            }
            Err(e) => return Err(TransportError::Io(e)),
        }
    }
    if line.starts_with(b"OK ") || line == b"OK" {
        Ok(reader)
    } else {
        Err(TransportError::BadReply {
            reply: String::from_utf8_lossy(&line).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::net::UnixListener;

    fn fake_backend(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 {
                got.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            s.write_all(reply).unwrap();
            let mut rest = [0u8; 5];
            if !reply.is_empty() && reply.starts_with(b"OK") {
                s.read_exact(&mut rest).unwrap();
                got.extend_from_slice(&rest);
            }
            got
        });
        (dir, path, h)
    }

    #[test]
    fn hybrid_handshake_keeps_payload_after_ok() {
        let (_d, path, h) = fake_backend(b"OK 5000\npayload");
        let t = Transport::Hybrid {
            uds: path,
            port: 5000,
        };
        let mut s = t.connect(Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
        s.write_all(b"hello").unwrap();
        assert_eq!(h.join().unwrap(), b"CONNECT 5000\nhello");
    }

    #[test]
    fn hybrid_errors_are_classified() {
        let (_d, path, _h) = fake_backend(b"");
        let t = Transport::Hybrid {
            uds: path,
            port: 5000,
        };
        let e = t.connect(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(e, TransportError::NoListener { port: 5000 }),
            "{e}"
        );
        assert!(e.is_transient());

        let (_d, path, _h) = fake_backend(b"NOPE\n");
        let e = Transport::Hybrid {
            uds: path,
            port: 5000,
        }
        .connect(Duration::from_secs(5))
        .unwrap_err();
        assert!(
            matches!(&e, TransportError::BadReply { reply } if reply == "NOPE"),
            "{e}"
        );
        assert!(!e.is_transient());

        let e = Transport::Hybrid {
            uds: "/nonexistent/x.sock".into(),
            port: 5000,
        }
        .connect(Duration::from_secs(1))
        .unwrap_err();
        assert!(matches!(e, TransportError::Uds { .. }) && e.is_transient());
    }

    #[test]
    fn hybrid_reply_line_is_bounded() {
        static LONG: [u8; 200] = [b'A'; 200];
        let (_d, path, _h) = fake_backend(&LONG);
        let e = Transport::Hybrid {
            uds: path,
            port: 5000,
        }
        .connect(Duration::from_secs(5))
        .unwrap_err();
        assert!(
            matches!(&e, TransportError::BadReply { reply } if reply.len() == MAX_REPLY_LINE + 1)
        );
    }

    /// Serialises the tests that leave handshakes pending (the pending count is process-wide).
    static PENDING_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn unanswered_handshakes_are_capped() {
        let _g = PENDING_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = Transport::Hybrid {
            uds: path,
            port: 5000,
        };
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING_HANDSHAKES {
            let e = t.connect(Duration::from_millis(10)).unwrap_err();
            assert!(matches!(e, TransportError::HandshakeTimeout(_)), "{e}");
            held.push(l.accept().unwrap().0);
        }
        let e = t.connect(Duration::from_millis(10)).unwrap_err();
        assert!(
            matches!(e, TransportError::TooManyPending(n) if n == MAX_PENDING_HANDSHAKES),
            "{e}"
        );
        assert!(e.is_transient());
        // Once the backend answers (here: closes), the slots free up.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while PENDING.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "pending handshakes never released"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn hybrid_timeout_does_not_close_the_pending_stream() {
        let _g = PENDING_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = Transport::Hybrid {
            uds: path,
            port: 5000,
        };
        let e = t.connect(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, TransportError::HandshakeTimeout(_)));
        let (mut s, _) = l.accept().unwrap();
        let mut line = [0u8; 13];
        s.read_exact(&mut line).unwrap();
        // The host side must still be open: a write succeeds and is not met by EOF/EPIPE.
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = s.read(&mut b);
        assert!(r.is_err(), "host closed the pending handshake: {r:?}");
        s.write_all(b"OK 5000\n").unwrap();
    }
}
