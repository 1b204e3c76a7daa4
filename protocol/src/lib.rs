//! The host↔guest command protocol of vmsilo, shared by `vm-run`/the command proxy (host) and
//! `vmsilo-agent` (guest).
//!
//! # Transport
//! Any reliable byte stream: vsock port [`AGENT_PORT`] in production, a unix socket in tests.
//!
//! # Framing
//! Every message is one frame: a 4-byte big-endian length `N`, then `N` bytes of body. The body
//! starts with a one-byte message type followed by the type's fields. `N` is at least 1 and at
//! most [`MAX_FRAME_LEN`]; a reader rejects a larger length *before* allocating anything, so a
//! hostile peer can make a reader hold at most `MAX_FRAME_LEN` bytes per connection.
//!
//! Field encodings: integers are big-endian; a byte string is a `u32` length then the bytes; a
//! list is a `u32` count then its items. Byte strings (argv, env, cwd) need not be UTF-8. Trailing
//! bytes after the last field are an error, as are unknown message types.
//!
//! # Ordering
//! 1. The host (client) sends [`Message::Hello`]; the agent answers [`Message::Hello`] with its
//!    own version, or [`Message::Error`] and closes if it cannot speak the client's version.
//! 2. The client sends exactly one [`Message::Exec`]. The agent answers [`Message::Started`] once
//!    the program runs, or [`Message::Error`] and closes if it could not start it.
//! 3. Then, in any order: client→agent [`Message::Stdin`], [`Message::StdinEof`] (at most once;
//!    no `Stdin` after it), [`Message::WindowSize`] (tty sessions only), [`Message::Signal`];
//!    agent→client [`Message::Stdout`], [`Message::Stderr`] (tty sessions send only `Stdout`).
//! 4. The agent sends [`Message::Exit`] last, after all output, then closes.
//!
//! A detached request (`ExecRequest::detach`) ends after step 2: the client may close once it
//! sees `Started`, and the program keeps running with its stdio on `/dev/null`.
//!
//! If the client goes away mid-session, the agent sends `SIGHUP` to the program's process group.
//! The command proxy may answer a client's `Hello` with [`Message::Error`] itself when it cannot
//! reach the agent (for example the VM did not come up).

use std::io::{self, Read, Write};

/// Protocol version spoken by this crate; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;

/// The vsock port the agent listens on, so host and guest agree without configuration.
pub const AGENT_PORT: u32 = 5000;

/// Largest frame body accepted, bounding what a hostile peer can make us buffer.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Largest payload of one stdio data frame; senders split larger writes.
pub const MAX_DATA_LEN: usize = 64 * 1024;

/// Most argv or env entries one request may carry, bounding per-request allocations.
pub const MAX_LIST_LEN: usize = 4096;

/// Longest working directory a request may name (the kernel's `PATH_MAX`).
pub const MAX_CWD_LEN: usize = 4096;

/// Largest error text a peer may send, so error messages cannot flood logs.
pub const MAX_ERROR_LEN: usize = 4096;

/// Terminal size, forwarded so full-screen programs in the guest lay out correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    /// Rows of text.
    pub rows: u16,
    /// Columns of text.
    pub cols: u16,
}

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the guest user's `PATH`.
    pub argv: Vec<Vec<u8>>,
    /// Variables set on top of the agent's desktop environment for the guest user.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; `None` means the guest user's home.
    pub cwd: Option<Vec<u8>>,
    /// Allocate a pseudo-terminal of this size instead of pipes.
    pub tty: Option<WinSize>,
    /// Return once started; stdio goes to `/dev/null` and no exit status is reported.
    pub detach: bool,
}

/// How the guest program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited normally with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Shell convention for a process exit code: the code itself, or 128 + signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c & 0xff,
            ExitStatus::Signal(s) => 128 + (s & 0x7f),
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Version handshake, sent first by each side.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u16,
    },
    /// Run a program (client → agent, once).
    Exec(ExecRequest),
    /// The program is running (agent → client).
    Started {
        /// Guest process id, for logs.
        pid: u32,
    },
    /// Bytes for the program's stdin.
    Stdin(Vec<u8>),
    /// The client's stdin reached end of file.
    StdinEof,
    /// Bytes the program wrote to stdout (or the tty).
    Stdout(Vec<u8>),
    /// Bytes the program wrote to stderr.
    Stderr(Vec<u8>),
    /// The client's terminal changed size.
    WindowSize(WinSize),
    /// Deliver this signal number to the program's process group.
    Signal(i32),
    /// The program ended; last message of a session.
    Exit(ExitStatus),
    /// The request failed; the sender closes after this.
    Error(String),
}

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const EXEC: u8 = 0x02;
    pub const STARTED: u8 = 0x03;
    pub const STDIN: u8 = 0x10;
    pub const STDIN_EOF: u8 = 0x11;
    pub const STDOUT: u8 = 0x12;
    pub const STDERR: u8 = 0x13;
    pub const WINDOW_SIZE: u8 = 0x20;
    pub const SIGNAL: u8 = 0x21;
    pub const EXIT_CODE: u8 = 0x30;
    pub const EXIT_SIGNAL: u8 = 0x31;
    pub const ERROR: u8 = 0x3f;
}

/// Why a frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`] (or is zero).
    #[error("frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    BadLength(usize),
    /// The first body byte names no known message.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The body ended in the middle of a field.
    #[error("message type {0:#04x} is truncated")]
    Truncated(u8),
    /// The body has bytes after the last field.
    #[error("message type {0:#04x} has {1} trailing bytes")]
    Trailing(u8, usize),
    /// A list or string exceeds its own limit.
    #[error("{what} has {len} entries/bytes, limit {limit}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The length the peer claimed.
        len: usize,
        /// The allowed maximum.
        limit: usize,
    },
    /// A field has a value that makes no sense (e.g. empty argv).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Why a message could not be read from or written to a stream.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The stream failed.
    #[error("stream I/O failed")]
    Io(#[from] io::Error),
    /// The peer sent a malformed frame.
    #[error("peer sent a malformed frame")]
    Frame(#[from] FrameError),
    /// The peer closed the stream inside a frame.
    #[error("peer closed the stream in the middle of a frame")]
    UnexpectedEof,
}

struct Cursor<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated(self.tag));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self, what: &'static str, limit: usize) -> Result<Vec<u8>, FrameError> {
        let len = self.u32()? as usize;
        if len > limit {
            return Err(FrameError::TooLong { what, len, limit });
        }
        Ok(self.take(len)?.to_vec())
    }
    fn count(&mut self, what: &'static str) -> Result<usize, FrameError> {
        let len = self.u32()? as usize;
        // Each entry needs at least 4 bytes, so a count beyond the remaining body is a lie.
        if len > MAX_LIST_LEN || len > self.buf.len() / 4 {
            return Err(FrameError::TooLong {
                what,
                len,
                limit: MAX_LIST_LEN.min(self.buf.len() / 4),
            });
        }
        Ok(len)
    }
    fn winsize(&mut self) -> Result<WinSize, FrameError> {
        Ok(WinSize {
            rows: self.u16()?,
            cols: self.u16()?,
        })
    }
}

/// Decode one frame body (type byte + fields, without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    let (&tag, rest) = body.split_first().ok_or(FrameError::BadLength(0))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(body.len()));
    }
    let mut c = Cursor { buf: rest, tag };
    let msg = match tag {
        tag::HELLO => Message::Hello { version: c.u16()? },
        tag::EXEC => {
            let n = c.count("argv")?;
            if n == 0 {
                return Err(FrameError::Invalid("argv is empty"));
            }
            let mut argv = Vec::with_capacity(n);
            for _ in 0..n {
                argv.push(c.bytes("argv entry", MAX_FRAME_LEN)?);
            }
            let n = c.count("env")?;
            let mut env = Vec::with_capacity(n);
            for _ in 0..n {
                let k = c.bytes("env name", MAX_FRAME_LEN)?;
                if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
                    return Err(FrameError::Invalid(
                        "env name is empty or contains '=' or NUL",
                    ));
                }
                let v = c.bytes("env value", MAX_FRAME_LEN)?;
                env.push((k, v));
            }
            let cwd = match c.u8()? {
                0 => None,
                1 => Some(c.bytes("cwd", MAX_CWD_LEN)?),
                _ => return Err(FrameError::Invalid("cwd flag is not 0 or 1")),
            };
            let tty = match c.u8()? {
                0 => None,
                1 => Some(c.winsize()?),
                _ => return Err(FrameError::Invalid("tty flag is not 0 or 1")),
            };
            let detach = match c.u8()? {
                0 => false,
                1 => true,
                _ => return Err(FrameError::Invalid("detach flag is not 0 or 1")),
            };
            if argv.iter().chain(cwd.iter()).any(|a| a.contains(&0)) {
                return Err(FrameError::Invalid("argv or cwd contains NUL"));
            }
            Message::Exec(ExecRequest {
                argv,
                env,
                cwd,
                tty,
                detach,
            })
        }
        tag::STARTED => Message::Started { pid: c.u32()? },
        tag::STDIN | tag::STDOUT | tag::STDERR => {
            let data = c.take(c.buf.len())?.to_vec();
            if data.len() > MAX_DATA_LEN {
                return Err(FrameError::TooLong {
                    what: "data",
                    len: data.len(),
                    limit: MAX_DATA_LEN,
                });
            }
            match tag {
                tag::STDIN => Message::Stdin(data),
                tag::STDOUT => Message::Stdout(data),
                _ => Message::Stderr(data),
            }
        }
        tag::STDIN_EOF => Message::StdinEof,
        tag::WINDOW_SIZE => Message::WindowSize(c.winsize()?),
        tag::SIGNAL => {
            let s = c.u8()? as i32;
            if s == 0 || s > 64 {
                return Err(FrameError::Invalid("signal number is not 1..=64"));
            }
            Message::Signal(s)
        }
        tag::EXIT_CODE => Message::Exit(ExitStatus::Code(c.u32()? as i32)),
        tag::EXIT_SIGNAL => Message::Exit(ExitStatus::Signal(c.u8()? as i32)),
        tag::ERROR => {
            let text = c.take(c.buf.len())?;
            if text.len() > MAX_ERROR_LEN {
                return Err(FrameError::TooLong {
                    what: "error text",
                    len: text.len(),
                    limit: MAX_ERROR_LEN,
                });
            }
            Message::Error(String::from_utf8_lossy(text).into_owned())
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    if !c.buf.is_empty() {
        return Err(FrameError::Trailing(tag, c.buf.len()));
    }
    Ok(msg)
}

/// Decode the first frame of `buf` (length prefix included).
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, otherwise the message and the number
/// of bytes it used. Rejects an oversized length as soon as the prefix is complete.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, 4 + len)))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Encode `msg` as one frame (length prefix included), checking every limit the decoder checks.
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    match msg {
        Message::Hello { version } => {
            out.push(tag::HELLO);
            out.extend_from_slice(&version.to_be_bytes());
        }
        Message::Exec(req) => {
            out.push(tag::EXEC);
            if req.argv.is_empty() {
                return Err(FrameError::Invalid("argv is empty"));
            }
            for (what, len) in [("argv", req.argv.len()), ("env", req.env.len())] {
                if len > MAX_LIST_LEN {
                    return Err(FrameError::TooLong {
                        what,
                        len,
                        limit: MAX_LIST_LEN,
                    });
                }
            }
            out.extend_from_slice(&(req.argv.len() as u32).to_be_bytes());
            for a in &req.argv {
                put_bytes(&mut out, a);
            }
            out.extend_from_slice(&(req.env.len() as u32).to_be_bytes());
            for (k, v) in &req.env {
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
            }
            match &req.cwd {
                None => out.push(0),
                Some(cwd) => {
                    if cwd.len() > MAX_CWD_LEN {
                        return Err(FrameError::TooLong {
                            what: "cwd",
                            len: cwd.len(),
                            limit: MAX_CWD_LEN,
                        });
                    }
                    out.push(1);
                    put_bytes(&mut out, cwd);
                }
            }
            match req.tty {
                None => out.push(0),
                Some(ws) => {
                    out.push(1);
                    out.extend_from_slice(&ws.rows.to_be_bytes());
                    out.extend_from_slice(&ws.cols.to_be_bytes());
                }
            }
            out.push(u8::from(req.detach));
        }
        Message::Started { pid } => {
            out.push(tag::STARTED);
            out.extend_from_slice(&pid.to_be_bytes());
        }
        Message::Stdin(d) | Message::Stdout(d) | Message::Stderr(d) => {
            out.push(match msg {
                Message::Stdin(_) => tag::STDIN,
                Message::Stdout(_) => tag::STDOUT,
                _ => tag::STDERR,
            });
            if d.len() > MAX_DATA_LEN {
                return Err(FrameError::TooLong {
                    what: "data",
                    len: d.len(),
                    limit: MAX_DATA_LEN,
                });
            }
            out.extend_from_slice(d);
        }
        Message::StdinEof => out.push(tag::STDIN_EOF),
        Message::WindowSize(ws) => {
            out.push(tag::WINDOW_SIZE);
            out.extend_from_slice(&ws.rows.to_be_bytes());
            out.extend_from_slice(&ws.cols.to_be_bytes());
        }
        Message::Signal(s) => {
            if !(1..=64).contains(s) {
                return Err(FrameError::Invalid("signal number is not 1..=64"));
            }
            out.push(tag::SIGNAL);
            out.push(*s as u8);
        }
        Message::Exit(ExitStatus::Code(c)) => {
            out.push(tag::EXIT_CODE);
            out.extend_from_slice(&(*c as u32).to_be_bytes());
        }
        Message::Exit(ExitStatus::Signal(s)) => {
            out.push(tag::EXIT_SIGNAL);
            out.push((*s & 0xff) as u8);
        }
        Message::Error(text) => {
            out.push(tag::ERROR);
            // Cut on a char boundary so the limit holds and the text stays valid UTF-8.
            let mut end = text.len().min(MAX_ERROR_LEN);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&text.as_bytes()[..end]);
        }
    }
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Write `msg` as one frame (a single `write_all`, so frames from threads sharing a locked writer
/// never interleave).
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), IoError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Read one message; `Ok(None)` on a clean end of stream between frames.
///
/// Allocates at most the announced length, after checking it against [`MAX_FRAME_LEN`].
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, IoError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(IoError::UnexpectedEof),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            IoError::UnexpectedEof
        } else {
            IoError::Io(e)
        }
    })?;
    Ok(Some(decode_body(&body)?))
}

#[cfg(test)]
mod tests;
