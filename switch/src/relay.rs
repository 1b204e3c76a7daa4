//! A message-aware relay between the VMM and the vhost-user daemon, for one interop rule.
//!
//! QEMU's virtio-net sends `SET_VRING_ENABLE` when the driver sets up its queue pairs, which is
//! before `SET_FEATURES` (QEMU 7.2 sends the real enable again from `vhost_dev_start`, after
//! `SET_FEATURES`). The `vhost` crate rejects `SET_VRING_ENABLE` until
//! `VHOST_USER_F_PROTOCOL_FEATURES` has been acked through `SET_FEATURES`, and drops the
//! connection. The relay forwards every message unchanged, except that it holds such an early
//! `SET_VRING_ENABLE` (acknowledging it when asked) and replays the last state per queue right
//! after forwarding `SET_FEATURES`.
//!
//! Frames never pass through here: the relay carries only control messages; kicks, calls and
//! guest memory are shared by descriptor.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

const HDR: usize = 12;
const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload accepted (the vhost-user maximum is well below).
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;

struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn read_message(sock: &UnixStream) -> std::io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < HDR {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut hdr[got..])];
        let r = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for c in r.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(list) = c {
                for fd in list {
                    // SAFETY: the kernel just installed this descriptor for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if r.bytes == 0 {
            return Ok(None);
        }
        got += r.bytes;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("vhost-user payload of {size} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(HDR + size);
    bytes.extend_from_slice(&hdr);
    bytes.resize(HDR + size, 0);
    (&*sock).read_exact(&mut bytes[HDR..])?;
    Ok(Some(Message { bytes, fds }))
}

fn write_message(sock: &UnixStream, m: &Message) -> std::io::Result<()> {
    if m.fds.is_empty() {
        return (&*sock).write_all(&m.bytes);
    }
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let mut sent = loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&m.bytes)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    while sent < m.bytes.len() {
        sent += (&*sock).write(&m.bytes[sent..])?;
    }
    Ok(())
}

/// Relay between `frontend` (the VMM) and `backend` (the daemon) until either side closes.
/// Returns the two thread handles.
pub fn spawn(
    frontend: UnixStream,
    backend: UnixStream,
) -> std::io::Result<(std::thread::JoinHandle<()>, std::thread::JoinHandle<()>)> {
    let front_w = Arc::new(Mutex::new(frontend.try_clone()?));
    let back_r = backend.try_clone()?;
    let front_w2 = front_w.clone();
    let socks = Arc::new((frontend.try_clone()?, backend.try_clone()?));
    let socks2 = socks.clone();
    let down = move || {
        let _ = socks.0.shutdown(std::net::Shutdown::Both);
        let _ = socks.1.shutdown(std::net::Shutdown::Both);
    };
    let down2 = move || {
        let _ = socks2.0.shutdown(std::net::Shutdown::Both);
        let _ = socks2.1.shutdown(std::net::Shutdown::Both);
    };
    let to_backend = std::thread::Builder::new()
        .name("vhost-relay-in".into())
        .spawn(move || {
            let mut features_set = false;
            let mut pending: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
            loop {
                let m = match read_message(&frontend) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay: frontend read ended");
                        break;
                    }
                };
                let req = u32::from_le_bytes([m.bytes[0], m.bytes[1], m.bytes[2], m.bytes[3]]);
                let flags = u32::from_le_bytes([m.bytes[4], m.bytes[5], m.bytes[6], m.bytes[7]]);
                if req == REQ_SET_VRING_ENABLE && !features_set {
                    tracing::debug!("relay: early SET_VRING_ENABLE held until SET_FEATURES");
                    if m.bytes.len() >= HDR + 8 {
                        let index = u32::from_le_bytes([
                            m.bytes[12],
                            m.bytes[13],
                            m.bytes[14],
                            m.bytes[15],
                        ]);
                        pending.insert(index, m.bytes[HDR..HDR + 8].to_vec());
                    }
                    if flags & FLAG_NEED_REPLY != 0 {
                        let mut reply = Vec::with_capacity(HDR + 8);
                        reply.extend_from_slice(&req.to_le_bytes());
                        reply.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                        reply.extend_from_slice(&8u32.to_le_bytes());
                        reply.extend_from_slice(&0u64.to_le_bytes());
                        let w = front_w.lock().map(|w| (&*w).write_all(&reply));
                        if !matches!(w, Ok(Ok(()))) {
                            break;
                        }
                    }
                    continue;
                }
                if let Err(e) = write_message(&backend, &m) {
                    tracing::debug!(error = %e, "relay: backend write failed");
                    break;
                }
                if req == REQ_SET_FEATURES && !features_set {
                    features_set = true;
                    // Replay the held enable states, now that the backend accepts them.
                    let mut failed = false;
                    for body in std::mem::take(&mut pending).into_values() {
                        let mut bytes = Vec::with_capacity(HDR + 8);
                        bytes.extend_from_slice(&REQ_SET_VRING_ENABLE.to_le_bytes());
                        bytes.extend_from_slice(&FLAG_VERSION.to_le_bytes());
                        bytes.extend_from_slice(&8u32.to_le_bytes());
                        bytes.extend_from_slice(&body);
                        let msg = Message {
                            bytes,
                            fds: Vec::new(),
                        };
                        failed |= write_message(&backend, &msg).is_err();
                    }
                    if failed {
                        break;
                    }
                }
            }
            down();
        })?;
    let to_frontend = std::thread::Builder::new()
        .name("vhost-relay-out".into())
        .spawn(move || {
            loop {
                let m = match read_message(&back_r) {
                    Ok(Some(m)) => m,
                    _ => break,
                };
                let ok = front_w2.lock().map(|w| write_message(&w, &m).is_ok());
                if !matches!(ok, Ok(true)) {
                    break;
                }
            }
            down2();
        })?;
    Ok((to_backend, to_frontend))
}
