//! The main process: watches the config directory, keeps one listening vhost-user socket and one
//! forked child per peer file, and brokers ring exchange between children.
//!
//! Main is single-threaded (a `poll` loop over inotify, a signalfd and the children's control
//! sockets), which keeps `fork` safe. The listening socket belongs to main and is inherited by
//! each child, so a VMM that reconnects (after a reboot or after its child died) lands on a
//! fresh child without the socket ever disappearing.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::args::SeccompMode;
use crate::child::{self, ChildSpec};
use crate::control::{self, ControlError, Msg};
use crate::fq_codel::Params;
use crate::peer::{self, PeerConfig};

/// Settings main runs with (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Network name, for titles.
    pub net: String,
    /// The config directory.
    pub dir: PathBuf,
    /// FQ-CoDel parameters for every child.
    pub params: Params,
    /// Ring data size.
    pub buffer_size: usize,
    /// Seccomp mode for children (main's own filter is applied by the caller).
    pub seccomp: SeccompMode,
}

/// Errors that stop main.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Setting up inotify, signals or the directory failed.
    #[error("{step}")]
    Setup {
        /// What failed.
        step: String,
        /// errno.
        #[source]
        source: std::io::Error,
    },
}

fn setup(step: impl Into<String>) -> impl FnOnce(nix::Error) -> SupervisorError {
    let step = step.into();
    move |e| SupervisorError::Setup {
        step,
        source: std::io::Error::from(e),
    }
}

struct Child {
    pid: Pid,
    ctl: OwnedFd,
    /// Its VMM connected (the child said [`Msg::Serving`]): it takes part in ring exchange.
    serving: bool,
}

struct Peer {
    cfg: PeerConfig,
    listener: UnixListener,
    sock_path: PathBuf,
    /// (device, inode) of the socket we bound, so we only ever unlink our own.
    sock_id: Option<(u64, u64)>,
    child: Option<Child>,
    generation: u64,
    started: Instant,
    restart_at: Option<Instant>,
    spawns: u32,
}

/// The supervisor state.
pub struct Supervisor {
    settings: Settings,
    peers: BTreeMap<String, Peer>,
    next_generation: u64,
    reported: BTreeMap<PathBuf, String>,
}

impl Supervisor {
    /// A supervisor for `settings` (does nothing until [`Supervisor::run`]).
    pub fn new(settings: Settings) -> Self {
        Supervisor {
            settings,
            peers: BTreeMap::new(),
            next_generation: 1,
            reported: BTreeMap::new(),
        }
    }

    /// Run until SIGTERM/SIGINT; then stop children and remove sockets.
    pub fn run(mut self) -> Result<(), SupervisorError> {
        let dir = self.settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| SupervisorError::Setup {
            step: format!(
                "create config directory {}",
                crate::sandbox::shown(&dir).display()
            ),
            source,
        })?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(setup("block signals"))?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(setup("signalfd"))?;
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(setup("inotify_init"))?;
        ino.add_watch(
            &dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_ATTRIB,
        )
        .map_err(setup(format!(
            "watch {}",
            crate::sandbox::shown(&dir).display()
        )))?;
        tracing::info!(net = %self.settings.net, dir = %crate::sandbox::shown(&dir).display(), "vm-switch started");
        self.rescan();
        let mut last_scan = Instant::now();
        loop {
            let names: Vec<String> = self
                .peers
                .iter()
                .filter(|(_, p)| p.child.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            let mut pfds = vec![
                libc::pollfd {
                    fd: sfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: ino.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            for n in &names {
                if let Some(c) = self.peers.get(n).and_then(|p| p.child.as_ref()) {
                    pfds.push(libc::pollfd {
                        fd: c.ctl.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
            }
            let timeout = self.next_timeout();
            // SAFETY: `pfds` is a valid array of pollfd for the duration of the call.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "poll failed");
                }
                continue;
            }
            if pfds[0].revents != 0 {
                let mut stop = false;
                while let Ok(Some(si)) = sfd.read_signal() {
                    if si.ssi_signo == Signal::SIGTERM as u32
                        || si.ssi_signo == Signal::SIGINT as u32
                    {
                        stop = true;
                    }
                }
                self.reap();
                if stop {
                    break;
                }
            }
            if pfds[1].revents != 0 {
                let mut buf_events = false;
                while let Ok(evs) = ino.read_events() {
                    if evs.is_empty() {
                        break;
                    }
                    buf_events = true;
                }
                if buf_events {
                    self.rescan();
                    last_scan = Instant::now();
                }
            }
            for (i, n) in names.iter().enumerate() {
                if pfds[2 + i].revents != 0 {
                    self.on_child_ctl(n);
                }
            }
            // A periodic rescan covers lost inotify events (queue overflow).
            if last_scan.elapsed() > Duration::from_secs(5) {
                self.rescan();
                last_scan = Instant::now();
            }
            self.reap();
            self.restart_due();
        }
        self.shutdown();
        Ok(())
    }

    fn next_timeout(&self) -> i32 {
        let now = Instant::now();
        let due = self
            .peers
            .values()
            .filter_map(|p| p.restart_at)
            .map(|t| t.saturating_duration_since(now).as_millis() as i32)
            .min()
            .unwrap_or(1000);
        due.clamp(0, 1000)
    }

    /// Log `text` for `key` unless exactly this was already said about it.
    fn report(&mut self, key: &Path, text: String) {
        if self.reported.get(key) != Some(&text) {
            tracing::warn!("{text}");
            self.reported.insert(key.to_path_buf(), text);
        }
    }

    /// Compare the directory with what runs and converge.
    fn rescan(&mut self) {
        let dir = self.settings.dir.clone();
        let mut seen: BTreeMap<String, (PathBuf, PeerConfig)> = BTreeMap::new();
        let mut keep_reported: Vec<PathBuf> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %crate::sandbox::shown(&dir).display(), error = %e, "cannot list config directory");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = match peer::peer_file_name(&path) {
                None => continue,
                Some(Ok(name)) => name,
                Some(Err(why)) => {
                    keep_reported.push(path.clone());
                    self.report(
                        &path,
                        format!("{}: ignored: {why}", crate::sandbox::shown(&path).display()),
                    );
                    continue;
                }
            };
            match PeerConfig::load(&path) {
                Ok(cfg) => {
                    seen.insert(name, (path, cfg));
                }
                Err(e) => {
                    keep_reported.push(path.clone());
                    self.report(&path, e.to_string());
                    // Keep a running peer on its last good config rather than cutting it off.
                    if let Some(p) = self.peers.get(&name) {
                        seen.insert(name, (path, p.cfg.clone()));
                    }
                }
            }
        }
        // Peers already served keep their place; a changed or new config must not clash with
        // anything accepted so far (same MAC or interface address), else it is refused.
        let mut accepted: BTreeMap<String, PeerConfig> = self
            .peers
            .iter()
            .filter(|(n, _)| seen.contains_key(*n))
            .map(|(n, p)| (n.clone(), p.cfg.clone()))
            .collect();
        let (old, new): (Vec<_>, Vec<_>) = seen
            .into_iter()
            .partition(|(n, _)| accepted.contains_key(n));
        for (name, (path, cfg)) in old.into_iter().chain(new) {
            if accepted.get(&name) == Some(&cfg) {
                continue;
            }
            let clash = accepted
                .iter()
                .filter(|(n, _)| **n != name)
                .find_map(|(n, other)| cfg.conflict_with(other).map(|what| (n.clone(), what)));
            match clash {
                Some((other, what)) => {
                    keep_reported.push(path.clone());
                    let served = if accepted.contains_key(&name) {
                        "change not applied"
                    } else {
                        "not served"
                    };
                    self.report(
                        &path,
                        format!(
                            "{}: peer {name:?} uses {what}, which peer {other:?} already has; {served}",
                            crate::sandbox::shown(&path).display()
                        ),
                    );
                }
                None => {
                    accepted.insert(name, cfg);
                }
            }
        }
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !accepted.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.remove_peer(&n);
        }
        for (name, cfg) in accepted {
            match self.peers.get(&name).map(|p| p.cfg == cfg) {
                None => {
                    if let Err(text) = self.add_peer(cfg) {
                        let sock = dir.join(format!("{name}.sock"));
                        keep_reported.push(sock.clone());
                        self.report(&sock, text);
                    }
                }
                Some(true) => {}
                Some(false) => self.update_peer(cfg),
            }
        }
        // Forget what was said about entries that are fine or gone, so a recurrence is logged.
        self.reported.retain(|k, _| keep_reported.contains(k));
    }

    /// Serve a new peer: create its socket and fork its child. Refuses (with a message naming
    /// the path) to replace anything at the socket path but a stale socket: a regular file there
    /// is someone's data, a socket someone still listens on is someone's service.
    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), String> {
        let sock_path = self.settings.dir.join(format!("{}.sock", cfg.name));
        clear_stale_socket(&sock_path)?;
        let listener = UnixListener::bind(&sock_path).map_err(|e| {
            format!(
                "{}: cannot create the vhost-user socket for peer {:?}: {e}",
                crate::sandbox::shown(&sock_path).display(),
                cfg.name
            )
        })?;
        let sock_id = file_id(&sock_path);
        tracing::info!(vm = %cfg.name, socket = %crate::sandbox::shown(&sock_path).display(), "peer added");
        let name = cfg.name.clone();
        self.peers.insert(
            name.clone(),
            Peer {
                cfg,
                listener,
                sock_path,
                sock_id,
                child: None,
                generation: 0,
                started: Instant::now(),
                restart_at: None,
                spawns: 0,
            },
        );
        self.spawn(&name);
        Ok(())
    }

    fn update_peer(&mut self, cfg: PeerConfig) {
        tracing::info!(vm = %cfg.name, "peer changed");
        let name = cfg.name.clone();
        if let Some(p) = self.peers.get_mut(&name) {
            p.cfg = cfg.clone();
            if let Some(c) = &p.child {
                let _ = control::send(c.ctl.as_fd(), &Msg::SetSelf { me: cfg.clone() }, &[]);
            }
        }
        self.broadcast_except(&name, &Msg::UpdatePeer { peer: cfg });
    }

    fn remove_peer(&mut self, name: &str) {
        let Some(p) = self.peers.remove(name) else {
            return;
        };
        tracing::info!(vm = %name, "peer removed");
        if let Some(c) = p.child {
            let _ = nix::sys::signal::kill(c.pid, Signal::SIGKILL);
            let _ = waitpid(c.pid, None);
        }
        remove_own_socket(&p.sock_path, p.sock_id);
        self.broadcast_except(
            name,
            &Msg::RemovePeer {
                peer: name.to_string(),
            },
        );
    }

    fn broadcast_except(&self, name: &str, msg: &Msg) {
        for (n, p) in &self.peers {
            if n == name {
                continue;
            }
            if let Some(c) = &p.child {
                let _ = control::send(c.ctl.as_fd(), msg, &[]);
            }
        }
    }

    fn spawn(&mut self, name: &str) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let Some(p) = self.peers.get(name) else {
            return;
        };
        let (main_end, child_end) = match socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "socketpair failed");
                return;
            }
        };
        let title = format!("vm-switch({}): {}", self.settings.net, name);
        // SAFETY: main is single-threaded, so the child may run arbitrary code after fork.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let keep = [0, 1, 2, p.listener.as_raw_fd(), child_end.as_raw_fd()];
                close_all_except(&keep);
                // SAFETY: plain prctl; kill this child if main dies so no orphan keeps serving.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                let _ = SigSet::all().thread_unblock();
                crate::title::set(&title);
                let listener = match p.listener.try_clone() {
                    Ok(l) => l,
                    // SAFETY: leave the forked child without running main's destructors.
                    Err(_) => unsafe { libc::_exit(1) },
                };
                let spec = ChildSpec {
                    me: p.cfg.clone(),
                    listener,
                    ctl: child_end,
                    params: self.settings.params,
                    buffer_size: self.settings.buffer_size,
                    seccomp: self.settings.seccomp,
                    incarnation: p.spawns,
                };
                let code = match child::run(spec) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!(vm = %p.cfg.name, "{}", crate::error_chain(&e));
                        1
                    }
                };
                // SAFETY: end the child here; never return into main's loop.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(child_end);
                tracing::info!(vm = %name, pid = child.as_raw(), generation, "child started");
                if let Some(p) = self.peers.get_mut(name) {
                    p.child = Some(Child {
                        pid: child,
                        ctl: main_end,
                        serving: false,
                    });
                    p.generation = generation;
                    p.spawns += 1;
                    p.started = Instant::now();
                    p.restart_at = None;
                }
            }
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "fork failed");
                if let Some(p) = self.peers.get_mut(name) {
                    p.restart_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }

    /// Ask for rings in both directions between `name` and every other serving child.
    fn exchange_with(&self, name: &str) {
        let Some(newp) = self.peers.get(name) else {
            return;
        };
        let Some(newc) = newp.child.as_ref().filter(|c| c.serving) else {
            return;
        };
        for (n, p) in &self.peers {
            if n == name {
                continue;
            }
            let Some(c) = p.child.as_ref().filter(|c| c.serving) else {
                continue;
            };
            // `n` receives from `name`.
            let _ = control::send(
                c.ctl.as_fd(),
                &Msg::GetBuffer {
                    peer: newp.cfg.clone(),
                    generation: newp.generation,
                },
                &[],
            );
            // `name` receives from `n`.
            let _ = control::send(
                newc.ctl.as_fd(),
                &Msg::GetBuffer {
                    peer: p.cfg.clone(),
                    generation: p.generation,
                },
                &[],
            );
        }
    }

    fn on_child_ctl(&mut self, from: &str) {
        loop {
            let Some(ctl) = self
                .peers
                .get(from)
                .and_then(|p| p.child.as_ref())
                .map(|c| c.ctl.as_raw_fd())
            else {
                return;
            };
            // SAFETY: the descriptor is owned by `self.peers[from]` and outlives this borrow.
            let ctl = unsafe { BorrowedFd::borrow_raw(ctl) };
            match control::recv(ctl) {
                Ok((Msg::BufferReady { peer, generation }, fds)) => {
                    self.forward_ring(from, &peer, generation, fds);
                }
                Ok((Msg::Serving, _)) => {
                    let newly = self
                        .peers
                        .get_mut(from)
                        .and_then(|p| p.child.as_mut())
                        .is_some_and(|c| !std::mem::replace(&mut c.serving, true));
                    if newly {
                        tracing::debug!(vm = %from, "child serving; exchanging rings");
                        self.exchange_with(from);
                    }
                }
                Ok((other, _)) => {
                    tracing::warn!(vm = %from, ?other, "unexpected message from child");
                }
                Err(ControlError::WouldBlock) => return,
                Err(ControlError::Closed) => {
                    // The child is exiting; reap() does the rest.
                    self.reap();
                    return;
                }
                Err(e) => {
                    tracing::warn!(vm = %from, error = %e, "bad message from child");
                    return;
                }
            }
        }
    }

    /// `receiver`'s child made a ring for frames from `sender`: hand it to `sender`'s child.
    fn forward_ring(&self, receiver: &str, sender: &str, generation: u64, fds: Vec<OwnedFd>) {
        let (Some(r), Some(s)) = (self.peers.get(receiver), self.peers.get(sender)) else {
            return;
        };
        let Some(sc) = &s.child else { return };
        if s.generation != generation {
            tracing::debug!(receiver, sender, "stale ring dropped");
            return;
        }
        let Some(ring) = control::ring_fds(fds) else {
            return;
        };
        if let Err(e) = control::send_ring(
            sc.ctl.as_fd(),
            &Msg::PutBuffer {
                peer: r.cfg.clone(),
            },
            &ring,
        ) {
            tracing::warn!(receiver, sender, error = %crate::error_chain(&e), "cannot pass ring");
        }
    }

    /// Collect exited children; tell the others; schedule restarts.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let Some(name) = self
                        .peers
                        .iter()
                        .find(|(_, p)| p.child.as_ref().is_some_and(|c| c.pid == pid))
                        .map(|(n, _)| n.clone())
                    else {
                        continue;
                    };
                    match status {
                        WaitStatus::Exited(_, 0) => {
                            tracing::info!(vm = %name, "child exited (VMM disconnected)")
                        }
                        other => tracing::warn!(vm = %name, status = ?other, "child died"),
                    }
                    if let Some(p) = self.peers.get_mut(&name) {
                        p.child = None;
                        // Back off if it dies right after starting (e.g. a crash loop).
                        let delay = if p.started.elapsed() < Duration::from_secs(1) {
                            Duration::from_millis(500)
                        } else {
                            Duration::ZERO
                        };
                        p.restart_at = Some(Instant::now() + delay);
                    }
                    self.broadcast_except(&name, &Msg::RemovePeer { peer: name.clone() });
                }
            }
        }
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.child.is_none() && p.restart_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.spawn(&n);
        }
    }

    fn shutdown(&mut self) {
        tracing::info!("stopping");
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for n in names {
            if let Some(p) = self.peers.remove(&n) {
                if let Some(c) = p.child {
                    let _ = nix::sys::signal::kill(c.pid, Signal::SIGKILL);
                    let _ = waitpid(c.pid, None);
                }
                remove_own_socket(&p.sock_path, p.sock_id);
            }
        }
    }
}

/// (device, inode) of the entry at `path` itself (not following symlinks).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Unlink `path` only if it is still the socket we bound there (`id`); whatever replaced it
/// belongs to someone else.
fn remove_own_socket(path: &Path, id: Option<(u64, u64)>) {
    use std::os::unix::fs::FileTypeExt;
    let ours = id.is_some()
        && file_id(path) == id
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if ours {
        let _ = std::fs::remove_file(path);
    } else {
        tracing::warn!(path = %crate::sandbox::shown(path).display(), "socket was replaced by something else; left in place");
    }
}

/// Make room for a new listening socket at `path`: nothing there is fine; a socket nobody
/// listens on (left by a vm-switch that was killed) is removed; anything else is an error
/// naming the path. The directory lock (see [`lock_dir`]) rules out a live vm-switch here.
fn clear_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(format!(
                "{}: cannot inspect: {e}; peer not served",
                crate::sandbox::shown(path).display()
            ));
        }
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{}: exists and is not a socket; not removing it, peer not served",
            crate::sandbox::shown(path).display()
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "{}: another process is listening on this socket; peer not served",
            crate::sandbox::shown(path).display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %crate::sandbox::shown(path).display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|e| {
                format!(
                    "{}: cannot remove stale socket: {e}",
                    crate::sandbox::shown(path).display()
                )
            })
        }
        Err(e) => Err(format!(
            "{}: cannot check whether the socket is in use: {e}; peer not served",
            crate::sandbox::shown(path).display()
        )),
    }
}

/// Name of the lock file in the config directory.
pub const LOCK_FILE: &str = ".vm-switch.lock";

/// Take an exclusive lock on `<dir>/.vm-switch.lock` so a second vm-switch on the same
/// directory refuses to start instead of taking over (and later deleting) the first one's
/// sockets. The lock lives as long as the returned file (and its copies across fork).
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            format!(
                "cannot open lock file {}: {e}",
                crate::sandbox::shown(&path).display()
            )
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "another vm-switch is already serving {} (it holds the lock {})",
                crate::sandbox::shown(dir).display(),
                crate::sandbox::shown(&path).display()
            )
        } else {
            format!(
                "cannot lock {}: {e}",
                crate::sandbox::shown(&path).display()
            )
        });
    }
    Ok(f)
}

/// Close every descriptor except `keep` (used right after fork).
fn close_all_except(keep: &[i32]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut lo: u32 = 0;
    for &k in &keep {
        let k = k as u32;
        if k > lo {
            // SAFETY: close_range on descriptors of our own process; nothing else uses them
            // (single-threaded child right after fork).
            unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0) };
        }
        lo = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
}

/// The default network name: the config directory's last component.
pub fn default_net_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("vm-switch")
        .to_string()
}
