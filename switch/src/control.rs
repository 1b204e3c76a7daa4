//! Control channel between the main process and a child: `SOCK_SEQPACKET` + `SCM_RIGHTS`.
//!
//! Each datagram is one JSON-encoded [`Msg`] of at most [`MAX_MSG`] bytes; messages that carry a
//! ring carry exactly three descriptors (memfd, data eventfd, space eventfd, see [`crate::ring`]).
//!
//! A child sends [`Msg::Serving`] once its VMM connected and its worker reads the control
//! socket. Main brokers rings only between serving children: a VM that is not running holds no
//! rings, and no descriptors pile up in flight waiting for a child that is not reading (with
//! many peers that ran into the kernel's per-user limit on descriptors in flight,
//! `ETOOMANYREFS`).
//!
//! Buffer exchange, for every ordered pair of serving children (A receives from B):
//! 1. main → A: [`Msg::GetBuffer`] naming B (with B's peer config and child generation);
//! 2. A creates the ring, keeps the consumer end, and answers [`Msg::BufferReady`] + 3 fds;
//! 3. main → B: [`Msg::PutBuffer`] naming A + the same 3 fds; B maps A's ring as an egress target.
//!
//! From then on B writes frames for A straight into A's memory; main is not on the data path.
//! When a child dies or its peer file goes away, main sends [`Msg::RemovePeer`] to the others.
//! Main checks that a `BufferReady` answers a request it made (name and generation) before
//! forwarding it, so a compromised child cannot inject rings for arbitrary peers.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::peer::PeerConfig;
use crate::ring::RingFds;

/// Largest control message.
pub const MAX_MSG: usize = 16 * 1024;

/// Control messages. `gen` identifies one incarnation of a peer's child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// main → child: create an ingress ring for frames from `peer`.
    GetBuffer {
        /// The sending peer.
        peer: PeerConfig,
        /// Its child generation.
        generation: u64,
    },
    /// child → main (+3 fds): the ring for frames from `peer` is ready.
    BufferReady {
        /// The sending peer the ring is for.
        peer: String,
        /// Generation copied from the request.
        generation: u64,
    },
    /// main → child (+3 fds): an egress ring into `peer`'s memory.
    PutBuffer {
        /// The receiving peer.
        peer: PeerConfig,
    },
    /// main → child: a peer's config changed.
    UpdatePeer {
        /// The new config.
        peer: PeerConfig,
    },
    /// main → child: this VM's own config changed.
    SetSelf {
        /// The new config.
        me: PeerConfig,
    },
    /// child → main: the VMM connected and this child reads its control socket now.
    Serving,
    /// main → child: forget a peer and its rings.
    RemovePeer {
        /// Peer name.
        peer: String,
    },
}

/// Errors on the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// sendmsg/recvmsg failed.
    #[error("control socket {op} failed")]
    Io {
        /// The call.
        op: &'static str,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// The peer closed the socket.
    #[error("control socket closed")]
    Closed,
    /// Would block (non-blocking socket, nothing queued).
    #[error("no message")]
    WouldBlock,
    /// A malformed message (bad JSON, truncation, wrong number of fds).
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// Send a message with optional descriptors.
pub fn send(sock: BorrowedFd<'_>, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), ControlError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_MSG {
        return Err(ControlError::Malformed(format!("{} bytes", bytes.len())));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&bytes)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => {
                return Err(ControlError::Closed);
            }
            Err(source) => {
                return Err(ControlError::Io {
                    op: "sendmsg",
                    source,
                });
            }
        }
    }
}

/// Send a message carrying a ring's three descriptors.
pub fn send_ring(sock: BorrowedFd<'_>, msg: &Msg, ring: &RingFds) -> Result<(), ControlError> {
    send(sock, msg, &ring.as_fds())
}

/// Receive one message and the descriptors that came with it (at most 3).
pub fn recv(sock: BorrowedFd<'_>) -> Result<(Msg, Vec<OwnedFd>), ControlError> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 4]);
    let (n, fds, flags) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => {
                let mut fds = Vec::new();
                for c in r.cmsgs().map_err(|source| ControlError::Io {
                    op: "cmsgs",
                    source,
                })? {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        for fd in list {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                break (r.bytes, fds, r.flags);
            }
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => return Err(ControlError::WouldBlock),
            Err(nix::Error::ECONNRESET) => return Err(ControlError::Closed),
            Err(source) => {
                return Err(ControlError::Io {
                    op: "recvmsg",
                    source,
                });
            }
        }
    };
    if n == 0 && fds.is_empty() {
        return Err(ControlError::Closed);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(ControlError::Malformed("truncated".into()));
    }
    let msg: Msg =
        serde_json::from_slice(&buf[..n]).map_err(|e| ControlError::Malformed(e.to_string()))?;
    let want = match msg {
        Msg::BufferReady { .. } | Msg::PutBuffer { .. } => 3,
        _ => 0,
    };
    if fds.len() != want {
        return Err(ControlError::Malformed(format!(
            "expected {want} descriptors, got {}",
            fds.len()
        )));
    }
    Ok((msg, fds))
}

/// Turn three received descriptors into [`RingFds`].
pub fn ring_fds(mut fds: Vec<OwnedFd>) -> Option<RingFds> {
    if fds.len() != 3 {
        return None;
    }
    let space = fds.pop()?;
    let data = fds.pop()?;
    let memfd = fds.pop()?;
    Some(RingFds { memfd, data, space })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;
    use std::path::Path;

    #[test]
    fn ring_fds_travel_and_work() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (mut consumer, fds) = crate::ring::create(4096).unwrap();
        send_ring(
            a.as_fd(),
            &Msg::BufferReady {
                peer: "x".into(),
                generation: 7,
            },
            &fds,
        )
        .unwrap();
        drop(fds);
        let (msg, got) = recv(b.as_fd()).unwrap();
        assert_eq!(
            msg,
            Msg::BufferReady {
                peer: "x".into(),
                generation: 7
            }
        );
        let mut p = crate::ring::Producer::attach(ring_fds(got).unwrap()).unwrap();
        assert!(p.push(&[b"hello"]).unwrap());
        let mut buf = Vec::new();
        assert!(consumer.pop(&mut buf).unwrap());
        assert_eq!(buf, b"hello");
    }

    #[test]
    fn wrong_descriptor_count_and_garbage_are_rejected() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let cfg =
            PeerConfig::from_json(Path::new("x"), r#"{"name":"x","mac":"02:00:00:00:00:01"}"#)
                .unwrap();
        send(a.as_fd(), &Msg::PutBuffer { peer: cfg }, &[]).unwrap();
        assert!(matches!(recv(b.as_fd()), Err(ControlError::Malformed(_))));
        nix::unistd::write(&a, b"{not json").unwrap();
        assert!(matches!(recv(b.as_fd()), Err(ControlError::Malformed(_))));
        assert!(matches!(recv(b.as_fd()), Err(ControlError::WouldBlock)));
        drop(a);
        assert!(matches!(recv(b.as_fd()), Err(ControlError::Closed)));
    }

    #[test]
    fn the_largest_valid_peer_fits_every_message() {
        use crate::peer::MAX_LIST_ENTRIES;
        let name = "n".repeat(64);
        let v6 = |i: usize| {
            format!(
                "\"fdff:ffff:ffff:ffff:ffff:ffff:ffff:{:04x}/128\"",
                0xf000 + i
            )
        };
        let v4 = |i: usize| format!("\"255.255.{i}.254/32\"");
        let list = |f: &dyn Fn(usize) -> String| {
            (0..MAX_LIST_ENTRIES).map(f).collect::<Vec<_>>().join(",")
        };
        let text = format!(
            r#"{{"name":"{name}","mac":"fe:ff:ff:ff:ff:ff","ipv4":[{}],"ipv6":[{}],"routes":[{}],"receiveBroadcast":false}}"#,
            list(&v4),
            list(&v6),
            list(&v6)
        );
        let peer = PeerConfig::from_json(Path::new("x"), &text).unwrap();
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        for msg in [
            Msg::GetBuffer {
                peer: peer.clone(),
                generation: u64::MAX,
            },
            Msg::UpdatePeer { peer: peer.clone() },
            Msg::SetSelf { me: peer.clone() },
        ] {
            send(a.as_fd(), &msg, &[]).unwrap();
            assert_eq!(recv(b.as_fd()).unwrap().0, msg);
        }
        let (_consumer, fds) = crate::ring::create(4096).unwrap();
        let msg = Msg::PutBuffer { peer };
        send_ring(a.as_fd(), &msg, &fds).unwrap();
        assert_eq!(recv(b.as_fd()).unwrap().0, msg);
    }
}
