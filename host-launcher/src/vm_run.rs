//! `vm-run`: the host client of the command protocol.
//!
//! [`run_session`] drives one session over any stream (tests use socket pairs);
//! [`run_cli`] wires it to the process's stdio, terminal and signals for the binary.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use nix::sys::signal::{SigSet, Signal};
use vmsilo_protocol::{
    ExecRequest, ExitStatus, MAX_DATA_LEN, Message, PROTOCOL_VERSION, WinSize, read_message,
    write_message,
};

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
pub fn run_session(
    stream: UnixStream,
    req: ExecRequest,
    events: Receiver<ClientEvent>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Outcome, VmRunError> {
    let mut reader = stream.try_clone().map_err(VmRunError::Clone)?;
    let mut writer = stream;
    write_message(
        &mut writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    match read_message(&mut reader)? {
        Some(Message::Hello { version }) if version == PROTOCOL_VERSION => {}
        Some(Message::Hello { version }) => return Err(VmRunError::Version(version)),
        Some(Message::Error(e)) => return Err(VmRunError::Refused(e)),
        Some(other) => return Err(VmRunError::Unexpected(describe(&other), "the handshake")),
        None => return Err(VmRunError::Closed),
    }
    let detach = req.detach;
    write_message(&mut writer, &Message::Exec(req))?;
    let pid = match read_message(&mut reader)? {
        Some(Message::Started { pid }) => pid,
        Some(Message::Error(e)) => return Err(VmRunError::Refused(e)),
        Some(other) => return Err(VmRunError::Unexpected(describe(&other), "program start")),
        None => return Err(VmRunError::Closed),
    };
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
    let stream = connect(run_dir, &r.vm)?;

    // Block forwarded signals in every thread; one thread collects them with sigwait.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let _ = set.thread_block();
    let (tx, rx) = sync_channel::<ClientEvent>(16);
    if !r.detach {
        spawn_signal_forwarder(set, tx.clone(), r.tty);
        spawn_stdin_reader(tx);
    }
    let _raw = if r.tty && nix::unistd::isatty(io::stdin()).unwrap_or(false) {
        RawMode::enter()
    } else {
        None
    };
    let outcome = run_session(stream, req, rx, &mut io::stdout().lock(), &mut io::stderr())?;
    Ok(outcome.exit_code())
}

fn spawn_signal_forwarder(set: SigSet, tx: SyncSender<ClientEvent>, tty: bool) {
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
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
