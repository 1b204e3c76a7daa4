//! One command connection: handshake, spawn as the guest user, forward stdio, report the exit.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmsilo_protocol::{
    ExecRequest, ExitStatus, MAX_DATA_LEN, Message, PROTOCOL_VERSION, WinSize, read_message,
    write_message,
};

use crate::user::{self, UserInfo};
use crate::watchdog::Activity;

/// What every session shares: who runs commands and with which desktop environment.
#[derive(Debug)]
pub struct Context {
    /// Guest user name (switched to only when the agent runs as root).
    pub user: String,
    /// PATH for commands.
    pub base_path: String,
    /// WAYLAND_DISPLAY for commands.
    pub wayland_display: String,
    /// DISPLAY for commands.
    pub x_display: String,
    /// Idle tracking for autoShutdown.
    pub activity: Arc<Activity>,
}

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing the connection failed or the peer sent a malformed frame.
    #[error("protocol failure")]
    Protocol(#[from] vmsilo_protocol::IoError),
    /// Cloning the connection socket failed.
    #[error("cannot duplicate the connection socket")]
    Clone(#[source] io::Error),
    /// The client speaks another protocol version.
    #[error("client speaks protocol version {0}, agent speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The client sent a message out of order.
    #[error("client sent {0} where {1} was expected")]
    Unexpected(String, &'static str),
    /// The guest user could not be resolved.
    #[error("cannot resolve the guest user")]
    User(#[from] user::UserError),
    /// Creating the pty failed.
    #[error("cannot allocate a pty")]
    Pty(#[source] nix::Error),
    /// The program could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Render an error with its whole `source()` chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

type SharedWriter = Arc<Mutex<UnixStream>>;

fn send(w: &SharedWriter, msg: &Message) -> Result<(), vmsilo_protocol::IoError> {
    let mut guard = w.lock().unwrap_or_else(|e| e.into_inner());
    write_message(&mut *guard, msg)
}

/// Serve one connection to its end.
pub fn serve(stream: UnixStream, ctx: &Context) -> Result<(), SessionError> {
    let mut reader = stream.try_clone().map_err(SessionError::Clone)?;
    let writer: SharedWriter = Arc::new(Mutex::new(stream));
    let first = read_message(&mut reader).inspect_err(|e| report_malformed(&writer, e))?;
    match first {
        None => return Ok(()),
        Some(Message::Hello { version }) if version == PROTOCOL_VERSION => {}
        Some(Message::Hello { version }) => {
            let e = SessionError::Version(version);
            let _ = send(&writer, &Message::Error(e.to_string()));
            return Err(e);
        }
        Some(other) => return Err(SessionError::Unexpected(format!("{other:?}"), "Hello")),
    }
    send(
        &writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    let second = read_message(&mut reader).inspect_err(|e| report_malformed(&writer, e))?;
    let req = match second {
        None => return Ok(()),
        Some(Message::Exec(req)) => req,
        Some(other) => {
            let e = SessionError::Unexpected(short(&other), "Exec");
            let _ = send(&writer, &Message::Error(e.to_string()));
            return Err(e);
        }
    };
    let spawned = match spawn(&req, ctx) {
        Ok(s) => s,
        Err(e) => {
            let _ = send(&writer, &Message::Error(error_chain(&e)));
            return Err(e);
        }
    };
    let Spawned {
        mut child,
        stdin,
        outputs,
        master,
    } = spawned;
    let pid = child.id();
    let guard = ctx.activity.begin();
    tracing::info!(pid, argv0 = %String::from_utf8_lossy(&req.argv[0]), tty = req.tty.is_some(), detach = req.detach, "started");
    let started = send(&writer, &Message::Started { pid });
    if req.detach {
        std::thread::spawn(move || {
            let _ = child.wait();
            drop(guard);
        });
        return started.map_err(Into::into);
    }
    if started.is_err() {
        kill_group(pid, libc::SIGHUP);
    }
    let exited = Arc::new(AtomicBool::new(false));
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(src, is_err)| {
            let w = writer.clone();
            std::thread::spawn(move || pump_output(src, &w, is_err))
        })
        .collect();
    {
        let exited = exited.clone();
        let tty = req.tty.is_some();
        std::thread::spawn(move || pump_input(reader, stdin, master, pid, &exited, tty));
    }
    let status = child.wait();
    exited.store(true, Ordering::SeqCst);
    for p in pumps {
        let _ = p.join();
    }
    let status = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(255),
        },
        Err(e) => {
            tracing::error!("waiting for pid {pid} failed: {e}");
            ExitStatus::Code(255)
        }
    };
    tracing::info!(pid, ?status, "exited");
    let result = send(&writer, &Message::Exit(status));
    let w = writer.lock().unwrap_or_else(|e| e.into_inner());
    let _ = w.shutdown(std::net::Shutdown::Both);
    drop(guard);
    result.map_err(Into::into)
}

/// Tell a client whose frame we could not parse why we hang up.
fn report_malformed(w: &SharedWriter, e: &vmsilo_protocol::IoError) {
    if matches!(e, vmsilo_protocol::IoError::Frame(_)) {
        let _ = send(w, &Message::Error(error_chain(e)));
    }
}

fn short(m: &Message) -> String {
    let s = format!("{m:?}");
    s.chars().take(40).collect()
}

struct Spawned {
    child: std::process::Child,
    stdin: Option<Box<dyn Write + Send>>,
    outputs: Vec<(Box<dyn Read + Send>, bool)>,
    master: Option<OwnedFd>,
}

fn current_user() -> UserInfo {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    UserInfo {
        name: std::env::var("USER").unwrap_or_else(|_| uid.to_string()),
        uid,
        gid,
        groups: vec![gid],
        home: std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/".into()),
        shell: "/bin/sh".into(),
    }
}

fn spawn(req: &ExecRequest, ctx: &Context) -> Result<Spawned, SessionError> {
    let as_root = nix::unistd::geteuid().is_root();
    let user = if as_root {
        user::lookup(&ctx.user, Path::new("/etc/passwd"), Path::new("/etc/group"))?
    } else {
        current_user()
    };
    let program = OsStr::from_bytes(&req.argv[0]);
    let mut cmd = Command::new(program);
    cmd.args(req.argv[1..].iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &user.shell)
        .env("PATH", &ctx.base_path)
        .env("XDG_RUNTIME_DIR", format!("/run/user/{}", user.uid))
        .env("WAYLAND_DISPLAY", &ctx.wayland_display)
        .env("DISPLAY", &ctx.x_display);
    if req.tty.is_some() {
        cmd.env("TERM", "xterm-256color");
    }
    for (k, v) in &req.env {
        cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
    }
    let cwd = match &req.cwd {
        Some(c) => PathBuf::from(OsStr::from_bytes(c)),
        None if user.home.is_dir() => user.home.clone(),
        None => PathBuf::from("/"),
    };
    cmd.current_dir(cwd);

    let mut stdin: Option<Box<dyn Write + Send>> = None;
    let mut outputs: Vec<(Box<dyn Read + Send>, bool)> = Vec::new();
    let mut master = None;
    let tty = req.tty.is_some() && !req.detach;
    if req.detach {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    } else if let Some(ws) = req.tty {
        let pty = nix::pty::openpty(&winsize(ws), None).map_err(SessionError::Pty)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| {
                SessionError::Pty(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })
        };
        cmd.stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        stdin = Some(Box::new(File::from(dup(&pty.master)?)));
        outputs.push((Box::new(File::from(dup(&pty.master)?)), false));
        master = Some(pty.master);
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let switch = as_root.then(|| {
        (
            nix::unistd::Uid::from_raw(user.uid),
            nix::unistd::Gid::from_raw(user.gid),
            user.groups
                .iter()
                .map(|g| nix::unistd::Gid::from_raw(*g))
                .collect::<Vec<_>>(),
        )
    });
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, setgroups, setgid, setuid) on data
    // prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &switch {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SessionError::Spawn {
        program: String::from_utf8_lossy(&req.argv[0]).into_owned(),
        source,
    })?;
    // Drop the parent's copies of the pty slave so reading the master ends when the child does.
    drop(cmd);
    if let Some(s) = child.stdin.take() {
        stdin = Some(Box::new(s));
    }
    if let Some(s) = child.stdout.take() {
        outputs.push((Box::new(s), false));
    }
    if let Some(s) = child.stderr.take() {
        outputs.push((Box::new(s), true));
    }
    Ok(Spawned {
        child,
        stdin,
        outputs,
        master,
    })
}

fn winsize(ws: WinSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: ws.rows,
        ws_col: ws.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn kill_group(pid: u32, sig: i32) {
    // SAFETY: kill() has no memory-safety preconditions; a negative pid addresses the process
    // group the child leads (it called setsid).
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

fn pump_output(mut src: Box<dyn Read + Send>, w: &SharedWriter, is_err: bool) {
    let mut buf = vec![0u8; MAX_DATA_LEN];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let msg = if is_err {
                    Message::Stderr(data)
                } else {
                    Message::Stdout(data)
                };
                if send(w, &msg).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO is how a pty master reports that every slave fd is closed.
            Err(_) => break,
        }
    }
}

fn pump_input(
    mut reader: UnixStream,
    mut stdin: Option<Box<dyn Write + Send>>,
    master: Option<OwnedFd>,
    pid: u32,
    exited: &AtomicBool,
    tty: bool,
) {
    loop {
        match read_message(&mut reader) {
            Ok(Some(Message::Stdin(data))) => {
                if let Some(w) = stdin.as_mut()
                    && w.write_all(&data).and_then(|()| w.flush()).is_err()
                {
                    stdin = None;
                }
            }
            Ok(Some(Message::StdinEof)) => {
                if tty {
                    // The terminal's EOF character: what a local user's Ctrl-D would send.
                    if let Some(w) = stdin.as_mut() {
                        let _ = w.write_all(&[4]);
                    }
                } else {
                    stdin = None;
                }
            }
            Ok(Some(Message::WindowSize(ws))) => {
                if let Some(m) = &master {
                    let ws = winsize(ws);
                    // SAFETY: TIOCSWINSZ reads one winsize struct, which lives across the call.
                    unsafe {
                        libc::ioctl(
                            m.as_raw_fd(),
                            libc::TIOCSWINSZ as _,
                            &ws as *const nix::pty::Winsize,
                        );
                    }
                }
            }
            Ok(Some(Message::Signal(sig))) => {
                if !exited.load(Ordering::SeqCst) {
                    kill_group(pid, sig);
                }
            }
            Ok(Some(other)) => {
                tracing::warn!(
                    "ignoring out-of-place message from client: {}",
                    short(&other)
                );
            }
            Ok(None) | Err(_) => {
                if !exited.load(Ordering::SeqCst) {
                    tracing::info!(pid, "client went away, sending SIGHUP");
                    kill_group(pid, libc::SIGHUP);
                }
                break;
            }
        }
    }
}
