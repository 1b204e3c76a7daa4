//! `vm-run`: the host client of the command protocol.
//!
//! [`run_session`] drives one session over any stream (tests use socket pairs);
//! [`run_cli`] wires it to the process's stdio, terminal and signals for the binary.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use vmsilo_protocol::{
    ExecRequest, ExitStatus, FrameError, MAX_DATA_LEN, MAX_FRAME_LEN, Message, PROTOCOL_VERSION,
    WinSize, encode, read_message, write_message,
};

/// How long `vm-run` waits for the program to start: longer than the proxy's default 60 s agent
/// timeout, so a booting VM is waited for, but a peer that never answers cannot hang it forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit code for a command line `vm-run` rejects before connecting (like clap's usage errors).
pub const USAGE_EXIT: i32 = 2;

/// Exit code for `vm-run`'s own failures (like ssh), as opposed to the guest program's.
pub const FAILURE_EXIT: i32 = 255;

/// Something the local side wants the guest program to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Bytes read from our stdin.
    Stdin(Vec<u8>),
    /// Our stdin ended.
    StdinEof,
    /// Our terminal was resized.
    Resize(WinSize),
    /// We received a signal to pass on.
    Signal(i32),
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest program ended.
    Exited(ExitStatus),
    /// Detached request: the program was started with this guest pid.
    Detached(u32),
}

impl Outcome {
    /// Exit code for `vm-run`: the guest's code, 128+signal, or 0 once detached.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Exited(s) => s.shell_code(),
            Outcome::Detached(_) => 0,
        }
    }
}

/// Why `vm-run` failed (its own failures, as opposed to the guest program's).
#[derive(Debug, thiserror::Error)]
pub enum VmRunError {
    /// The command socket could not be reached.
    #[error("cannot connect to {path} (is VM {vm:?} configured?)")]
    Connect {
        /// VM name.
        vm: String,
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stream failed or the peer sent a malformed frame.
    #[error("connection to the guest agent failed")]
    Protocol(#[from] vmsilo_protocol::IoError),
    /// The agent or the proxy refused the request.
    #[error("{0}")]
    Refused(String),
    /// The agent speaks another protocol version.
    #[error("guest agent speaks protocol version {0}, vm-run speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The peer sent a message that makes no sense at this point.
    #[error("guest agent sent {0} during {1}")]
    Unexpected(String, &'static str),
    /// The connection ended before the exit status.
    #[error("guest agent closed the connection before reporting an exit status")]
    Closed,
    /// Writing the program's output locally failed.
    #[error("cannot write program output")]
    Output(#[source] io::Error),
    /// Cloning the socket failed.
    #[error("cannot duplicate the connection socket")]
    Clone(#[source] io::Error),
    /// The peer did not start the program in time.
    #[error(
        "the guest agent did not start the program within {}s (VM still booting, or a stuck proxy)",
        .0.as_secs()
    )]
    HandshakeTimeout(Duration),
    /// The VM name cannot name a configured VM.
    #[error(
        "{0:?} is not a valid VM name (lowercase letters, digits and '-', starting with a letter and not ending with '-')"
    )]
    BadName(String),
    /// The user's command does not fit in one protocol request.
    #[error("the command is too large to send: {0}")]
    TooLarge(String),
}

impl VmRunError {
    /// Exit code for this failure: [`USAGE_EXIT`] for a command line that can never work,
    /// [`FAILURE_EXIT`] otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmRunError::BadName(_) | VmRunError::TooLarge(_) => USAGE_EXIT,
            _ => FAILURE_EXIT,
        }
    }
}

/// Check `req` against the protocol limits the agent enforces, so an oversized command is
/// reported as the user's, not as a malformed frame from the guest.
pub fn check_request(req: &ExecRequest) -> Result<(), VmRunError> {
    let Err(e) = encode(&Message::Exec(req.clone())) else {
        return Ok(());
    };
    let text = match e {
        FrameError::TooLong {
            what: "argv",
            len,
            limit,
        } => format!("{len} words (program and arguments); at most {limit} are allowed"),
        FrameError::TooLong {
            what: "env",
            len,
            limit,
        } => format!("{len} environment variables; at most {limit} are allowed"),
        FrameError::TooLong {
            what: "cwd",
            len,
            limit,
        } => format!("the working directory is {len} bytes; at most {limit} are allowed"),
        FrameError::BadLength(len) => format!(
            "program, arguments, environment and working directory take {len} bytes encoded; \
             at most {MAX_FRAME_LEN} fit in one request"
        ),
        other => other.to_string(),
    };
    Err(VmRunError::TooLarge(text))
}

fn describe(m: &Message) -> String {
    match m {
        Message::Stdout(d) | Message::Stderr(d) | Message::Stdin(d) => {
            format!("a data frame of {} bytes", d.len())
        }
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

/// Handshake, send `req`, then forward `events` to the guest and its output to `stdout`/`stderr`
/// until the exit status arrives. Memory stays bounded by one frame whatever the peer sends.
/// The program must be started within [`HANDSHAKE_TIMEOUT`].
pub fn run_session(
    stream: UnixStream,
    req: ExecRequest,
    events: Receiver<ClientEvent>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Outcome, VmRunError> {
    run_session_with(
        stream,
        req,
        events,
        stdout,
        stderr,
        HANDSHAKE_TIMEOUT,
        &mut || {},
    )
}

/// [`run_session`] with a custom handshake timeout and a hook called once the program has
/// started (before any output is copied), e.g. to enter raw mode only then.
pub fn run_session_with(
    stream: UnixStream,
    req: ExecRequest,
    events: Receiver<ClientEvent>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    handshake_timeout: Duration,
    on_started: &mut dyn FnMut(),
) -> Result<Outcome, VmRunError> {
    check_request(&req)?;
    let mut reader = stream.try_clone().map_err(VmRunError::Clone)?;
    let mut writer = stream;
    let deadline = Instant::now() + handshake_timeout;
    // Both directions are bounded until `Started`: a peer that neither reads nor answers must
    // not hold vm-run forever.
    let timed_out = |e: VmRunError| match e {
        VmRunError::Protocol(vmsilo_protocol::IoError::Io(ref io))
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            VmRunError::HandshakeTimeout(handshake_timeout)
        }
        other => other,
    };
    let arm = |s: &UnixStream| -> Result<(), VmRunError> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left))
            .and_then(|()| s.set_write_timeout(Some(left)))
            .map_err(|e| VmRunError::Protocol(e.into()))
    };
    arm(&writer)?;
    write_message(
        &mut writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(|e| timed_out(e.into()))?;
    arm(&reader)?;
    match read_message(&mut reader).map_err(|e| timed_out(e.into()))? {
        Some(Message::Hello { version }) if version == PROTOCOL_VERSION => {}
        Some(Message::Hello { version }) => return Err(VmRunError::Version(version)),
        Some(Message::Error(e)) => return Err(VmRunError::Refused(e)),
        Some(other) => return Err(VmRunError::Unexpected(describe(&other), "the handshake")),
        None => return Err(VmRunError::Closed),
    }
    let detach = req.detach;
    arm(&writer)?;
    write_message(&mut writer, &Message::Exec(req)).map_err(|e| timed_out(e.into()))?;
    arm(&reader)?;
    let pid = match read_message(&mut reader).map_err(|e| timed_out(e.into()))? {
        Some(Message::Started { pid }) => pid,
        Some(Message::Error(e)) => return Err(VmRunError::Refused(e)),
        Some(other) => return Err(VmRunError::Unexpected(describe(&other), "program start")),
        None => return Err(VmRunError::Closed),
    };
    // Reader and writer share one socket, so this clears both directions of both handles.
    reader
        .set_read_timeout(None)
        .and_then(|()| reader.set_write_timeout(None))
        .map_err(|e| VmRunError::Protocol(e.into()))?;
    on_started();
    if detach {
        return Ok(Outcome::Detached(pid));
    }
    std::thread::spawn(move || {
        for ev in events {
            let msg = match ev {
                ClientEvent::Stdin(d) => Message::Stdin(d),
                ClientEvent::StdinEof => Message::StdinEof,
                ClientEvent::Resize(ws) => Message::WindowSize(ws),
                ClientEvent::Signal(s) => Message::Signal(s),
            };
            if write_message(&mut writer, &msg).is_err() {
                break;
            }
        }
    });
    loop {
        match read_message(&mut reader)? {
            Some(Message::Stdout(d)) => stdout
                .write_all(&d)
                .and_then(|()| stdout.flush())
                .map_err(VmRunError::Output)?,
            Some(Message::Stderr(d)) => stderr
                .write_all(&d)
                .and_then(|()| stderr.flush())
                .map_err(VmRunError::Output)?,
            Some(Message::Exit(s)) => return Ok(Outcome::Exited(s)),
            Some(Message::Error(e)) => return Err(VmRunError::Refused(e)),
            Some(other) => return Err(VmRunError::Unexpected(describe(&other), "the session")),
            None => return Err(VmRunError::Closed),
        }
    }
}

/// Path of a VM's command socket below `run_dir`.
pub fn command_socket(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}-command.socket"))
}

/// Connect to a VM's command socket.
pub fn connect(run_dir: &Path, vm: &str) -> Result<UnixStream, VmRunError> {
    let path = command_socket(run_dir, vm);
    UnixStream::connect(&path).map_err(|source| VmRunError::Connect {
        vm: vm.to_owned(),
        path,
        source,
    })
}

/// Terminal size of `fd`, if it is a terminal.
pub fn terminal_size(fd: impl AsFd) -> Option<WinSize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize struct into `ws`, which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
            libc::TIOCGWINSZ as _,
            &mut ws as *mut nix::pty::Winsize,
        )
    };
    (rc == 0 && ws.ws_row > 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts a terminal in raw mode and restores it on drop.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            io::stdin(),
            nix::sys::termios::SetArg::TCSADRAIN,
            &self.0,
        );
    }
}

/// Signals `vm-run` passes on to the guest program instead of dying from them.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Options of one `vm-run` invocation.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// VM name.
    pub vm: String,
    /// Program and arguments.
    pub argv: Vec<std::ffi::OsString>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    pub cwd: Option<PathBuf>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Return once started.
    pub detach: bool,
}

/// Run `vm-run` against real stdio: raw terminal for `--tty`, signal and resize forwarding.
/// Returns the exit code the process should end with.
pub fn run_cli(run_dir: &Path, r: &RunRequest) -> Result<i32, VmRunError> {
    use std::os::unix::ffi::OsStrExt;
    if !crate::config::is_vm_name(&r.vm) {
        return Err(VmRunError::BadName(r.vm.clone()));
    }
    let tty = r.tty.then(|| {
        terminal_size(io::stdout())
            .or_else(|| terminal_size(io::stdin()))
            .unwrap_or(WinSize { rows: 24, cols: 80 })
    });
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = r
        .env
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    if r.tty
        && let Ok(term) = std::env::var("TERM")
        && !env.iter().any(|(k, _)| k == b"TERM")
    {
        env.push((b"TERM".to_vec(), term.into_bytes()));
    }
    let req = ExecRequest {
        argv: r.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: r.cwd.as_ref().map(|c| c.as_os_str().as_bytes().to_vec()),
        tty,
        detach: r.detach,
    };
    check_request(&req)?;
    let stream = connect(run_dir, &r.vm)?;

    // Block forwarded signals in every thread; one thread collects them with sigwait.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let _ = set.thread_block();
    let (tx, rx) = sync_channel::<ClientEvent>(16);
    let started = Arc::new(AtomicBool::new(false));
    spawn_signal_forwarder(set, tx.clone(), r.tty, started.clone());
    if !r.detach {
        spawn_stdin_reader(tx);
    }
    // Raw mode only once the program runs: until then Ctrl+C must still raise SIGINT here.
    let mut raw = None;
    let want_raw = r.tty && nix::unistd::isatty(io::stdin()).unwrap_or(false);
    let outcome = run_session_with(
        stream,
        req,
        rx,
        &mut io::stdout().lock(),
        &mut io::stderr(),
        HANDSHAKE_TIMEOUT,
        &mut || {
            started.store(true, Ordering::SeqCst);
            if want_raw {
                raw = RawMode::enter();
            }
        },
    );
    drop(raw);
    Ok(outcome?.exit_code())
}

/// Signals that end `vm-run` while it still waits for the program to start.
const ENDS_BEFORE_START: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn spawn_signal_forwarder(
    set: SigSet,
    tx: SyncSender<ClientEvent>,
    tty: bool,
    started: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if !started.load(Ordering::SeqCst) && ENDS_BEFORE_START.contains(&sig) {
                // Nothing runs in the guest yet, so there is nothing to forward to: give up
                // like a process killed by the signal would, but say why.
                let _ = writeln!(
                    io::stderr(),
                    "vm-run: interrupted by {} before the program started",
                    sig.as_str()
                );
                std::process::exit(128 + sig as i32);
            }
            let ev = if sig == Signal::SIGWINCH {
                if !tty {
                    continue;
                }
                match terminal_size(io::stdout()).or_else(|| terminal_size(io::stdin())) {
                    Some(ws) => ClientEvent::Resize(ws),
                    None => continue,
                }
            } else {
                ClientEvent::Signal(sig as i32)
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
}

fn spawn_stdin_reader(tx: SyncSender<ClientEvent>) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; MAX_DATA_LEN];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(ClientEvent::StdinEof);
                    break;
                }
                Ok(n) => {
                    if tx.send(ClientEvent::Stdin(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
}
