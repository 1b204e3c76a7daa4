//! Asking the VMM to power the guest off, and forcing it to stop.
//!
//! crosvm is driven through its control socket with its own CLI (`crosvm powerbtn SOCKET`,
//! `crosvm stop SOCKET`); QEMU through QMP (`system_powerdown`, `quit`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Longest QMP line we accept; QEMU's replies and events are far shorter.
const MAX_QMP_LINE: usize = 64 * 1024;

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
        /// Exit status and stderr, or the spawn error.
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

/// Run `crosvm <command> <socket>` (`powerbtn`, `stop`).
pub fn crosvm(program: &Path, command: &'static str, socket: &Path) -> Result<(), ControlError> {
    let err = |detail: String| ControlError::Crosvm {
        program: program.to_path_buf(),
        command,
        socket: socket.to_path_buf(),
        detail,
    };
    let mut cmd = Command::new(program);
    cmd.arg(command).arg(socket);
    super::process::prepare(&mut cmd);
    let output = cmd.output().map_err(|e| err(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Send one QMP command (after the capabilities handshake) and wait for its `return`.
pub fn qmp(socket: &Path, command: &'static str) -> Result<(), ControlError> {
    qmp_exchange(socket, command).map_err(|source| ControlError::Qmp {
        command,
        socket: socket.to_path_buf(),
        source,
    })
}

fn qmp_exchange(socket: &Path, command: &str) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let greeting = read_message(&mut reader)?;
    if greeting.get("QMP").is_none() {
        return Err(io::Error::other(format!("not a QMP greeting: {greeting}")));
    }
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            let reply = read_message(&mut reader)?;
            if reply.get("return").is_some() {
                break;
            }
            if let Some(error) = reply.get("error") {
                return Err(io::Error::other(format!("{cmd}: {error}")));
            }
            // Events (e.g. POWERDOWN) may arrive before the reply; skip them.
        }
    }
    Ok(())
}

fn read_message(reader: &mut impl BufRead) -> io::Result<serde_json::Value> {
    let mut line = Vec::new();
    let n = Read::take(&mut *reader, MAX_QMP_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::other("QMP line too long"));
    }
    serde_json::from_slice(&line).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
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

    #[test]
    fn qmp_handshake_then_command() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qmp(&sock);
        qmp(&sock, "system_powerdown").unwrap();
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
        let err = qmp(&sock, "bogus").unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }

    #[test]
    fn qmp_without_server_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(qmp(&dir.path().join("none"), "quit").is_err());
    }
}
