//! A child process: serves one VM over vhost-user until it disconnects, then exits so that main
//! forks a fresh child for the next connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::args::SeccompMode;
use crate::backend::NetBackend;
use crate::datapath::Datapath;
use crate::fq_codel::Params;
use crate::peer::PeerConfig;
use crate::relay;
use crate::sandbox;

/// Errors that end a child.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The vhost-user daemon could not be created or failed.
    #[error("vhost-user daemon for {vm}: {message}")]
    Daemon {
        /// VM name.
        vm: String,
        /// The daemon's error text.
        message: String,
    },
    /// Registering descriptors with the worker failed.
    #[error("cannot watch control socket")]
    Watch(#[source] std::io::Error),
    /// The seccomp filter could not be installed.
    #[error("seccomp")]
    Seccomp(#[source] sandbox::SandboxError),
}

/// What a child needs, inherited across fork.
pub struct ChildSpec {
    /// This VM's peer config.
    pub me: PeerConfig,
    /// The vhost-user listening socket (owned by main, inherited).
    pub listener: UnixListener,
    /// Control socket to main.
    pub ctl: OwnedFd,
    /// FQ-CoDel parameters.
    pub params: Params,
    /// Ring data size.
    pub buffer_size: usize,
    /// Seccomp mode for the child filter.
    pub seccomp: SeccompMode,
    /// How many children were forked for this peer before this one.
    pub incarnation: u32,
}

/// Test hook: `VM_SWITCH_TEST_SECCOMP_PROBE=<vm>` makes the first child of `<vm>` attempt a
/// forbidden `socket()` call on its first frame from the guest, so tests can prove that the
/// seccomp policy kills only that child and that main brings the peer back.
pub const SECCOMP_PROBE_ENV: &str = "VM_SWITCH_TEST_SECCOMP_PROBE";

/// Serve one vhost-user connection for `spec.me`, then return.
pub fn run(spec: ChildSpec) -> Result<(), ChildError> {
    let vm = spec.me.name.clone();
    let daemon_err = |e: vhost_user_backend::Error| ChildError::Daemon {
        vm: vm.clone(),
        message: e.to_string(),
    };
    let ctl_fd = spec.ctl.as_raw_fd();
    let probe =
        spec.incarnation == 0 && std::env::var(SECCOMP_PROBE_ENV).is_ok_and(|v| v == spec.me.name);
    let dp = Datapath::new(spec.me.clone(), spec.params, spec.buffer_size);
    let mut nb = NetBackend::new(dp, spec.ctl);
    nb.seccomp_probe = probe;
    let backend = Arc::new(Mutex::new(nb));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(format!("vm-switch-{vm}"), backend.clone(), mem)
        .map_err(daemon_err)?;
    let handler = daemon
        .get_epoll_handlers()
        .into_iter()
        .next()
        .ok_or_else(|| ChildError::Daemon {
            vm: vm.clone(),
            message: "no worker thread".into(),
        })?;
    backend
        .lock()
        .map_err(|_| ChildError::Daemon {
            vm: vm.clone(),
            message: "backend lock poisoned".into(),
        })?
        .attach_handler(handler)
        .map_err(ChildError::Watch)?;
    tracing::debug!(vm = %vm, ctl_fd, "child ready, waiting for the VMM");
    let io_err = |what: &'static str| {
        let vm = vm.clone();
        move |e: std::io::Error| ChildError::Daemon {
            vm,
            message: format!("{what}: {e}"),
        }
    };
    let (vmm, _) = spec.listener.accept().map_err(io_err("accept"))?;
    tracing::info!(vm = %vm, "VMM connected");
    // The daemon talks to the VMM through the relay (see `relay`), over a private abstract
    // socket that exists only until the daemon accepted it.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("vm-switch-relay-{}-{nonce}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io_err("relay address"))?;
    let inner = UnixListener::bind_addr(&addr).map_err(io_err("relay bind"))?;
    let client = UnixStream::connect_addr(&addr).map_err(io_err("relay connect"))?;
    let mut listener = Listener::from(inner);
    daemon.start(&mut listener).map_err(daemon_err)?;
    drop(listener);
    drop(spec.listener);
    relay::spawn(vmm, client).map_err(io_err("relay threads"))?;
    // The worker now reads the control socket: ask main for rings with the serving peers.
    // SAFETY: `ctl_fd` belongs to the backend, which lives until this function returns.
    let ctl = unsafe { std::os::fd::BorrowedFd::borrow_raw(ctl_fd) };
    if let Err(e) = crate::control::send(ctl, &crate::control::Msg::Serving, &[]) {
        tracing::warn!(vm = %vm, error = %crate::error_chain(&e), "cannot tell main we serve");
    }
    // Everything that needs files or sockets is done: lock the process down (all threads).
    sandbox::apply_seccomp(sandbox::Role::Child, spec.seccomp).map_err(ChildError::Seccomp)?;
    match daemon.wait() {
        Ok(()) => tracing::info!(vm = %vm, "VMM disconnected"),
        Err(e) => tracing::info!(vm = %vm, error = %e, "vhost-user session ended"),
    }
    if let Ok(b) = backend.lock() {
        let dp = b.datapath();
        let drops: Vec<String> = crate::forward::ALL_DROP_REASONS
            .iter()
            .map(|r| format!("{}={}", r.name(), dp.forwarder().drops[*r as usize]))
            .collect();
        tracing::info!(
            vm = %vm,
            counters = ?dp.counters,
            guest_errors = ?b.guest_errors,
            drops = %drops.join(" "),
            "session counters"
        );
    }
    // The worker threads never stop on their own (no exit event): leave them to process exit
    // instead of joining them in the daemon's destructor.
    std::mem::forget(daemon);
    Ok(())
}
