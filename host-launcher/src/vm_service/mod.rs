//! The VM service: what `vmsilo-<vm>-vm.service` runs (`vmsilo vm run <vm>`).
//!
//! One run prepares everything the VM needs, starts the VMM, reports readiness to systemd, and
//! on SIGTERM powers the guest off and removes everything it created:
//!
//! 1. PCI passthrough checks ([`pci`]) — before anything is created, so a bad device costs nothing;
//! 2. the runtime dir `<run_dir>/<vm>/`;
//! 3. the root overlay ([`overlay`]), a fresh qcow2 per boot unless it is tmpfs;
//! 4. the shared home ([`home`]), seeded once from the home template;
//! 5. vm-switch peer files ([`peers`]), then a check that every vhost-user net backend the VMM
//!    will connect to is listening (vm-switch creates a VM's socket when its peer file appears):
//!    QEMU would otherwise hang before its main loop retrying the connection, and crosvm fail;
//! 6. the console PTY and its `<run_dir>/<vm>-console` link ([`console`]);
//! 7. `vhost-device-vsock` when the vsock transport is `vhost-user`;
//! 8. the Wayland security context (`vmsilo-wayland-context`, as the user) when the VM has a GPU
//!    and the user's compositor is there;
//! 9. the VMM (crosvm or QEMU), then `READY=1` once its control socket answers: for QEMU a
//!    completed QMP handshake (QEMU answers only from its main loop; its socket accepts
//!    connections long before), for crosvm a `SOCK_SEQPACKET` connection. A VMM that does not
//!    answer within the start timeout is killed and the error carries the tail of its stderr.
//!
//! Shutdown: crosvm gets `crosvm powerbtn`, then `crosvm stop` after the timeout; QEMU gets QMP
//! `system_powerdown`, then `quit`. Every control request has a deadline ([`control`]), so a VMM
//! that stopped answering cannot hang the stop. A second SIGTERM or SIGINT skips the wait and
//! kills the VMM. The guest powering itself off ends the service too (exit 0). Everything created
//! is removed on every exit path, including errors halfway through preparation, and the VMM and
//! every helper are killed and reaped before the service exits.
//!
//! ## What the unit must say
//!
//! `vmsilo-<vm>-vm.service` runs `vmsilo vm run <vm>` as root with `Type=notify` (readiness is
//! sent by the main process, so the default `NotifyAccess=main` is right) and
//! `KillMode=mixed`: systemd's SIGTERM must reach only this process, which then presses the
//! guest's power button; with the default `control-group` the VMM would be killed at the same
//! moment. `TimeoutStopSec` must exceed `--shutdown-timeout` (default 30 s) plus 20 s: 5 s for
//! the power-button request, 5 s for the stop request and 10 s for the VMM to exit before it is
//! killed. Children get no inherited descriptors, a clean signal mask, their own process group
//! and a parent-death signal ([`process`]).
//!
//! ## Exit status
//!
//! 0 when the guest powered off (by itself or on request), also when the stop came before the VM
//! was up; 1 with the whole error chain on stderr otherwise (bad config, PCI check, helper or VMM
//! failure, a VMM exiting non-zero, vhost-device-vsock dying under a running VM).

pub mod cli;
pub mod console;
pub mod control;
pub mod home;
pub mod notify;
pub mod overlay;
pub mod pci;
pub mod peers;
pub mod plan;
pub mod process;

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::SignalFd;

use crate::qemu::{self, QemuVm};
use control::SocketKind;
use process::DeathSignal;

pub use plan::{PlanError, build as plan};

/// The security-context listener's name inside `<run_dir>/<vm>/`.
pub const WAYLAND_SOCKET: &str = "wayland-0";

/// Errors of the VM service; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Signals could not be routed to the service loop.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The per-VM runtime directory could not be created.
    #[error("cannot create the runtime directory {path}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A PCI device cannot be passed through.
    #[error("PCI passthrough check failed")]
    Pci(#[from] pci::PciError),
    /// The overlay disk could not be created.
    #[error("cannot create the root overlay")]
    Overlay(#[from] overlay::OverlayError),
    /// The shared home could not be prepared.
    #[error("cannot prepare the shared home")]
    Home(#[from] home::HomeError),
    /// A vm-switch peer file could not be written.
    #[error("cannot publish the VM to vm-switch")]
    Peer(#[from] peers::PeerError),
    /// The console PTY could not be set up.
    #[error("cannot set up the serial console")]
    Console(#[from] console::ConsoleError),
    /// A helper process or the VMM could not be started.
    #[error("cannot start {what} ({program})")]
    Spawn {
        /// Which process.
        what: &'static str,
        /// Its program path.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A helper process did not come up.
    #[error("{what} did not become ready: {detail}")]
    NotReady {
        /// Which process.
        what: &'static str,
        /// What happened instead.
        detail: String,
    },
    /// A vhost-user net backend the VMM needs is not serving its socket.
    #[error("{}", net_backend_message(.network.as_deref(), .socket, .problem))]
    NetBackend {
        /// The vm-switch network, or `None` for a manual `vhostUser` net device.
        network: Option<String>,
        /// The socket the VMM would connect to.
        socket: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The VMM runs but its control socket never answered: it did not reach its main loop.
    #[error(
        "the VMM ({program}) did not reach its main loop: {detail}; it was killed. {}",
        stderr_tail_message(.stderr)
    )]
    VmmNotAnswering {
        /// The VMM binary.
        program: PathBuf,
        /// What was waited for, for how long, and the last answer.
        detail: String,
        /// The last lines the VMM wrote to stderr.
        stderr: String,
    },
    /// The VMM exited with a failure status.
    #[error("the VMM exited with {0}")]
    VmmFailed(ExitStatus),
    /// A helper the VM cannot work without died while the VM ran.
    #[error("{what} exited unexpectedly with {status}; the VM was stopped")]
    HelperDied {
        /// Which helper.
        what: &'static str,
        /// Its exit status.
        status: ExitStatus,
    },
    /// Waiting for children failed.
    #[error("cannot wait for child processes")]
    Wait(#[source] io::Error),
    /// The VM's control socket answers: another run of this VM is up.
    #[error("VM {0} is already running (its control socket answers)")]
    AlreadyRunning(String),
    /// A stop signal arrived while starting; [`run`] turns this into
    /// [`Outcome::StoppedWhileStarting`].
    #[error("stop requested while starting")]
    StopRequested,
}

fn net_backend_message(network: Option<&str>, socket: &Path, problem: &str) -> String {
    match network {
        Some(net) => format!(
            "vm-switch for network '{net}' is not running: {} {problem}; start \
             vm-switch-{net}.service (if it runs, its journal says why it does not serve this VM)",
            socket.display()
        ),
        None => format!(
            "the vhost-user net backend {} is not running: {problem}",
            socket.display()
        ),
    }
}

fn stderr_tail_message(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        "It wrote nothing to stderr.".to_owned()
    } else {
        format!("Its stderr ended with:\n{}", stderr.trim_end())
    }
}

/// Where the service finds its programs and host interfaces. Defaults are the production paths;
/// tests and `vm-start-debug` override them.
#[derive(Debug, Clone)]
pub struct Tools {
    /// crosvm binary.
    pub crosvm: PathBuf,
    /// QEMU system emulator.
    pub qemu: PathBuf,
    /// qemu-img, for overlays.
    pub qemu_img: PathBuf,
    /// vhost-device-vsock, for the `vhost-user` vsock transport.
    pub vhost_device_vsock: PathBuf,
    /// The security-context helper.
    pub wayland_context: PathBuf,
    /// Root of sysfs, for PCI checks.
    pub sysfs: PathBuf,
    /// The configured user's `XDG_RUNTIME_DIR`; `None` means `/run/user/<uid>`.
    pub user_runtime_dir: Option<PathBuf>,
    /// The compositor display (name under the runtime dir, or a path); `None` means
    /// `wayland-0`.
    pub wayland_display: Option<String>,
    /// QEMU accelerator; `None` detects it.
    pub accel: Option<qemu::Accel>,
    /// How long the guest gets to power off after the power button before it is stopped.
    pub shutdown_timeout: Duration,
    /// How long the VMM and helpers get to come up.
    pub start_timeout: Duration,
    /// Copy guest console output to stdout (`vm-start-debug`).
    pub mirror_console: bool,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            crosvm: "crosvm".into(),
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            vhost_device_vsock: "vhost-device-vsock".into(),
            wayland_context: "vmsilo-wayland-context".into(),
            sysfs: "/sys".into(),
            user_runtime_dir: None,
            wayland_display: None,
            accel: None,
            shutdown_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            mirror_console: false,
        }
    }
}

/// The root overlay's upper layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayPlan {
    /// A qcow2 file of this size (qemu-img syntax) under `<state_dir>/<vm>/`.
    Qcow2 {
        /// `<state_dir>/<vm>`.
        dir: PathBuf,
        /// `rootOverlay.size`.
        size: String,
    },
    /// RAM-backed inside the guest: no disk.
    Tmpfs,
}

/// The shared home to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomePlan {
    /// The host directory shared as the guest's home.
    pub path: PathBuf,
    /// `<state_dir>/home-template`.
    pub template: PathBuf,
    /// Owner uid (`userUid`).
    pub uid: u32,
    /// Owner gid (the user's primary group).
    pub gid: u32,
}

/// The security-context helper to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaylandPlan {
    /// Colour `#rrggbb`.
    pub color: String,
    /// The user it runs as.
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

/// Which VMM runs the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmPlan {
    /// crosvm with this argv (after the program name), from [`crate::crosvm::command_line`];
    /// its `--serial` is pointed at the service's PTY at start.
    Crosvm(Vec<String>),
    /// QEMU; `console_pts` is filled in at start.
    Qemu(Box<QemuVm>),
}

/// vhost-device-vsock for the `vhost-user` vsock transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockBackendPlan {
    /// Guest CID (the VM id).
    pub cid: u32,
    /// vhost-user socket the VMM connects to.
    pub socket: PathBuf,
    /// Hybrid vsock socket the host side connects to.
    pub uds: PathBuf,
}

/// A vhost-user net backend the VMM connects to at start; it must be listening before the VMM
/// starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetBackendPlan {
    /// The vm-switch network serving it, or `None` for a manual `vhostUser` net device.
    pub network: Option<String>,
    /// The backend's socket.
    pub socket: PathBuf,
}

/// Everything the service does for one VM, decided up front from the config
/// (see [`plan::build`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// VM name.
    pub name: String,
    /// `<run_dir>/<vm>/`.
    pub vm_run_dir: PathBuf,
    /// `<run_dir>/<vm>-console`.
    pub console_link: PathBuf,
    /// Root overlay.
    pub overlay: OverlayPlan,
    /// Shared home, if enabled.
    pub home: Option<HomePlan>,
    /// (`<switch_dir>/<net>`, peer) per vm-switch interface.
    pub peers: Vec<(PathBuf, peers::Peer)>,
    /// vhost-user net sockets that must be listening before the VMM starts.
    pub net_backends: Vec<NetBackendPlan>,
    /// PCI devices (`dddd:bb:dd.f`).
    pub pci: Vec<String>,
    /// Security context, if the VM has a GPU.
    pub wayland: Option<WaylandPlan>,
    /// vhost-device-vsock, when the vsock transport is `vhost-user`.
    pub vsock_backend: Option<VsockBackendPlan>,
    /// The VMM's control socket (crosvm `--socket`, QEMU QMP).
    pub control_socket: PathBuf,
    /// The configured user: owns the console pts (for `vm-shell`).
    pub user_uid: u32,
    /// The configured user's primary group: it may create sockets in the runtime dir (the
    /// security-context helper runs as the user and listens on `<run_dir>/<vm>/wayland-0`).
    pub user_gid: u32,
    /// The VMM.
    pub vmm: VmmPlan,
}

/// Point crosvm's `--serial` at `pts` (the foundation's argv names the console link, which is
/// the users' end of the console, not the VMM's).
pub fn crosvm_serial_to(args: &[String], pts: &Path) -> Vec<String> {
    let serial = format!(
        "type=file,path={p},input={p},num=1,console=true",
        p = pts.display()
    );
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut replaced = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        out.push(arg.clone());
        if arg == "--serial" && !replaced {
            iter.next();
            out.push(serial.clone());
            replaced = true;
        }
    }
    if !replaced {
        // Devices go after `run`; add the serial right after it.
        if let Some(at) = out.iter().position(|a| a == "run") {
            out.splice(at + 1..at + 1, ["--serial".to_owned(), serial]);
        }
    }
    out
}

/// Why the service loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered itself off.
    GuestExited,
    /// We were asked to stop and the guest powered off after the power button.
    PoweredOff,
    /// We were asked to stop and had to force the VMM down.
    Forced,
    /// We were asked to stop before the VM was up; it was not started or was killed.
    StoppedWhileStarting,
    /// The guest asked for a reboot (crosvm exit 32; QEMU runs with `-no-reboot` and reports a
    /// reboot as a power-off). The VM starts afresh on its next activation.
    GuestRebooted,
}

/// crosvm's exit status when the guest requested a reboot.
const CROSVM_REBOOT_STATUS: i32 = 32;

/// How long one control request (power button, stop) may take before it counts as failed.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one readiness probe of the VMM's control socket may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long vm-switch gets to create a VM's socket after its peer file appears. It reacts within
/// milliseconds; this covers a loaded host. Never more than the start timeout.
const SWITCH_SOCKET_WAIT: Duration = Duration::from_secs(5);

/// How many of the VMM's last stderr lines an error quotes.
const STDERR_TAIL_LINES: usize = 15;

/// The VMM's stderr, passed through to the service's own (the journal) as it comes, with its last
/// lines kept for error messages.
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrTail {
    fn capture(child: &mut Child) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let reader = child.stderr.take().map(|pipe| {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    // Bounded lines: a VMM printing without newlines cannot grow this.
                    match (&mut reader).take(4096).read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let _ = io::stderr().write_all(&line);
                    if let Ok(mut tail) = lines.lock() {
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(String::from_utf8_lossy(&line).trim_end().to_owned());
                    }
                }
            })
        });
        Self { lines, reader }
    }

    /// The kept lines; after the VMM exited, waits briefly for the reader to take in the rest.
    fn text(&mut self) -> String {
        if let Some(reader) = &self.reader {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.lines
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// The running VMM. Dropping it kills and reaps it if it still runs, whichever way the service
/// leaves.
struct Vmm {
    child: Child,
    program: PathBuf,
    stderr: StderrTail,
}

impl Vmm {
    fn spawn(program: &Path, argv: &[OsString]) -> Result<Self, ServiceError> {
        let mut cmd = Command::new(program);
        cmd.args(argv).stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = spawn_with("the VMM", &mut cmd, DeathSignal::Kill)?;
        let stderr = StderrTail::capture(&mut child);
        Ok(Self {
            child,
            program: program.to_path_buf(),
            stderr,
        })
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            tracing::warn!(pid = self.child.id(), "stopping the VMM");
            process::terminate(&mut self.child, Duration::from_secs(2));
        }
    }
}

/// Everything created so far; dropping it removes all of it, in reverse order.
#[derive(Default)]
struct Created {
    vm_dir: Option<PathBuf>,
    overlay: Option<overlay::Overlay>,
    peer_files: Vec<PathBuf>,
    console: Option<console::Console>,
    wayland: Option<Child>,
    vsock_backend: Option<Child>,
}

impl Drop for Created {
    fn drop(&mut self) {
        let grace = Duration::from_secs(5);
        if let Some(mut child) = self.vsock_backend.take() {
            process::terminate(&mut child, grace);
        }
        if let Some(mut child) = self.wayland.take() {
            // The helper removes its listener on SIGTERM.
            process::terminate(&mut child, grace);
        }
        if let Some(console) = self.console.take() {
            console.close();
        }
        for path in self.peer_files.drain(..).rev() {
            peers::remove(&path);
        }
        if let Some(overlay) = self.overlay.take() {
            overlay.remove();
        }
        if let Some(dir) = self.vm_dir.take()
            && let Err(error) = fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove runtime dir");
        }
    }
}

/// Signals routed to the service loop through a signalfd.
struct Signals {
    fd: SignalFd,
    old_mask: SigSet,
}

impl Signals {
    fn block() -> Result<Self, ServiceError> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        let mut old_mask = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))
            .map_err(ServiceError::Signals)?;
        let fd = SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(ServiceError::Signals)?;
        Ok(Self { fd, old_mask })
    }

    /// Wait up to `timeout` for a signal; returns whether a stop signal arrived (SIGCHLD only
    /// wakes the caller up).
    fn wait(&self, timeout: Duration) -> Result<bool, ServiceError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ServiceError::Signals(e)),
        }
        let mut stop = false;
        while let Some(info) = self.fd.read_signal().map_err(ServiceError::Signals)? {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            if signo != libc::SIGCHLD {
                tracing::info!(signal = signo, "stop requested");
                stop = true;
            }
        }
        Ok(stop)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

fn spawn(what: &'static str, cmd: &mut Command) -> Result<Child, ServiceError> {
    spawn_with(what, cmd, DeathSignal::Term)
}

fn spawn_with(
    what: &'static str,
    cmd: &mut Command,
    death: DeathSignal,
) -> Result<Child, ServiceError> {
    process::prepare(cmd, death);
    let program = PathBuf::from(cmd.get_program());
    cmd.spawn().map_err(|source| ServiceError::Spawn {
        what,
        program,
        source,
    })
}

/// Wait until `ready()` holds, failing if `child` exits first, a stop signal arrives, or the
/// timeout passes.
fn wait_ready(
    what: &'static str,
    child: &mut Child,
    signals: &Signals,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), ServiceError> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(ServiceError::Wait)? {
            return Err(ServiceError::NotReady {
                what,
                detail: format!("exited with {status}"),
            });
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::NotReady {
                what,
                detail: format!("no sign of life within {}s", timeout.as_secs()),
            });
        }
        if signals.wait(Duration::from_millis(50))? {
            return Err(ServiceError::StopRequested);
        }
    }
}

/// The VMM's control socket type.
fn control_kind(plan: &Plan) -> SocketKind {
    match plan.vmm {
        VmmPlan::Crosvm(_) => SocketKind::SeqPacket,
        VmmPlan::Qemu(_) => SocketKind::Stream,
    }
}

/// What is at a vhost-user backend's socket path.
enum BackendState {
    /// A live stream socket is bound there.
    Listening,
    /// Nothing yet.
    Missing,
    /// A socket file nobody serves (its owner exited).
    Stale,
    /// Something that can never become the backend.
    Wrong(String),
}

fn backend_state(path: &Path) -> BackendState {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return BackendState::Missing,
        Err(e) => return BackendState::Wrong(format!("cannot be inspected: {e}")),
        Ok(m) if !m.file_type().is_socket() => {
            return BackendState::Wrong("exists but is not a socket".to_owned());
        }
        Ok(_) => {}
    }
    // Probe with the wrong socket type: the kernel answers EPROTOTYPE when a live SOCK_STREAM
    // socket is bound there and ECONNREFUSED when nobody is, and the backend never sees a
    // connection (a vm-switch child would take the first one for its VMM). A socket bound but
    // not (yet) listening passes too; the VMM's readiness timeout covers that.
    match control::connect(path, SocketKind::SeqPacket, Instant::now(), &mut || false) {
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => BackendState::Listening,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => BackendState::Stale,
        Err(e) if e.kind() == io::ErrorKind::NotFound => BackendState::Missing,
        Ok(_) => BackendState::Wrong("is a SOCK_SEQPACKET socket, not a vhost-user backend".into()),
        Err(e) => BackendState::Wrong(format!("cannot be checked: {e}")),
    }
}

/// Wait until every vhost-user net backend listens, or fail naming the socket and the network.
fn check_net_backends(
    backends: &[NetBackendPlan],
    signals: &Signals,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let wait = timeout.min(SWITCH_SOCKET_WAIT);
    let deadline = Instant::now() + wait;
    let mut pending: Vec<&NetBackendPlan> = backends.iter().collect();
    loop {
        let mut still = Vec::new();
        for backend in pending {
            let problem = match backend_state(&backend.socket) {
                BackendState::Listening => continue,
                BackendState::Wrong(problem) => Some(problem),
                BackendState::Missing => {
                    (Instant::now() >= deadline).then(|| format!("is missing (waited {wait:?})"))
                }
                BackendState::Stale => (Instant::now() >= deadline).then(|| {
                    format!("exists but nobody listens on it (waited {wait:?}; left by a stopped vm-switch?)")
                }),
            };
            if let Some(problem) = problem {
                return Err(ServiceError::NetBackend {
                    network: backend.network.clone(),
                    socket: backend.socket.clone(),
                    problem,
                });
            }
            still.push(backend);
        }
        if still.is_empty() {
            return Ok(());
        }
        pending = still;
        if signals.wait(Duration::from_millis(50))? {
            return Err(ServiceError::StopRequested);
        }
    }
}

/// Wait until the VMM's control socket answers (see the module docs), failing with the tail of
/// its stderr if it exits or stays silent past the start timeout.
fn wait_vmm_ready(
    plan: &Plan,
    tools: &Tools,
    vmm: &mut Vmm,
    signals: &Signals,
) -> Result<(), ServiceError> {
    let socket = &plan.control_socket;
    let deadline = Instant::now() + tools.start_timeout;
    let mut last = format!("{} never appeared", socket.display());
    loop {
        let stop = Cell::new(false);
        let mut interrupted = || {
            if signals.wait(Duration::ZERO).unwrap_or(false) {
                stop.set(true);
            }
            stop.get()
        };
        let probe = match plan.vmm {
            VmmPlan::Qemu(_) => control::qmp_handshake(socket, PROBE_TIMEOUT, &mut interrupted)
                .map_err(|e| crate::error_chain(&e)),
            VmmPlan::Crosvm(_) => control::connect(
                socket,
                SocketKind::SeqPacket,
                Instant::now() + PROBE_TIMEOUT,
                &mut interrupted,
            )
            .map(drop)
            .map_err(|e| format!("{}: {e}", socket.display())),
        };
        if stop.get() {
            return Err(ServiceError::StopRequested);
        }
        match probe {
            Ok(()) => return Ok(()),
            Err(why) if socket.exists() => last = why,
            Err(_) => {}
        }
        if let Some(status) = vmm.child.try_wait().map_err(ServiceError::Wait)? {
            return Err(ServiceError::NotReady {
                what: "the VMM",
                detail: format!(
                    "exited with {status} before its control socket answered. {}",
                    stderr_tail_message(&vmm.stderr.text())
                ),
            });
        }
        if Instant::now() >= deadline {
            process::kill(&mut vmm.child);
            return Err(ServiceError::VmmNotAnswering {
                program: vmm.program.clone(),
                detail: format!(
                    "its control socket did not answer within {}s (last try: {last})",
                    tools.start_timeout.as_secs()
                ),
                stderr: vmm.stderr.text(),
            });
        }
        if signals.wait(Duration::from_millis(50))? {
            return Err(ServiceError::StopRequested);
        }
    }
}

/// Let the user's security-context helper create (and re-create) its listener in the runtime
/// dir: group = the user's primary group, group-writable, sticky. Sticky keeps the root-made
/// sockets already there (vhost-device-vsock's) from being renamed or deleted by the user; names
/// the VMM creates later are unlinked and re-bound by QEMU, and a user who squats crosvm's can
/// only stop their own VM from starting. Done only when the helper runs, after the vsock backend
/// is up. If the user's primary group is shared with other users, they get the same access.
fn open_to_user(dir: &Path, gid: u32) -> Result<(), ServiceError> {
    let result = (|| {
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o1770))
    })();
    result.map_err(|source| ServiceError::RuntimeDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Start the security-context helper as the user and wait for its `READY <path>` line.
/// `open_dir` runs only when a compositor is there and the helper is about to start.
fn start_wayland(
    plan: &WaylandPlan,
    vm: &str,
    listen: &Path,
    tools: &Tools,
    signals: &Signals,
    open_dir: impl FnOnce() -> Result<(), ServiceError>,
) -> Result<Option<Child>, ServiceError> {
    let runtime_dir = tools
        .user_runtime_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", plan.uid)));
    let display = tools
        .wayland_display
        .clone()
        .unwrap_or_else(|| "wayland-0".into());
    let display_path = if display.starts_with('/') {
        PathBuf::from(&display)
    } else {
        runtime_dir.join(&display)
    };
    if !display_path.exists() {
        // Nobody is logged in to a compositor: the VM still runs, its windows cannot show.
        tracing::warn!(display = %display_path.display(),
            "no Wayland compositor; starting the VM without a security context");
        return Ok(None);
    }
    open_dir()?;
    let mut cmd = Command::new(&tools.wayland_context);
    cmd.args(["--vm", vm, "--color", &plan.color, "--listen"])
        .arg(listen)
        .arg("--display")
        .arg(&display)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .env("WAYLAND_DISPLAY", &display)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if nix::unistd::geteuid().is_root() {
        // std drops supplementary groups when it switches the uid.
        cmd.uid(plan.uid).gid(plan.gid);
    }
    let mut child = spawn("the Wayland security context", &mut cmd)?;
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    let vm_name = vm.to_owned();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        // Bounded lines; the helper is ours but its output still goes to the journal.
        let mut reader = BufReader::new(stdout.take(1 << 20));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let trimmed = line.trim_end();
            if trimmed.starts_with("READY ") {
                if tx.send(trimmed.to_owned()).is_err() {
                    // Again after a compositor restart: the listener is back at the same path.
                    tracing::info!(vm = %vm_name, "wayland-context: {trimmed}");
                }
            } else {
                tracing::info!(vm = %vm_name, "wayland-context: {trimmed}");
            }
            line.clear();
        }
    });
    let want = format!("READY {}", listen.display());
    let deadline = Instant::now() + tools.start_timeout;
    loop {
        match rx.try_recv() {
            Ok(line) if line == want => return Ok(Some(child)),
            Ok(line) => {
                process::terminate(&mut child, Duration::from_secs(2));
                return Err(ServiceError::NotReady {
                    what: "the Wayland security context",
                    detail: format!("printed {line:?}, expected {want:?}"),
                });
            }
            Err(_) => {}
        }
        if let Some(status) = child.try_wait().map_err(ServiceError::Wait)? {
            return Err(ServiceError::NotReady {
                what: "the Wayland security context",
                detail: format!("exited with {status}"),
            });
        }
        if signals.wait(Duration::from_millis(50))? {
            process::terminate(&mut child, Duration::from_secs(2));
            return Err(ServiceError::StopRequested);
        }
        if Instant::now() >= deadline {
            process::terminate(&mut child, Duration::from_secs(2));
            return Err(ServiceError::NotReady {
                what: "the Wayland security context",
                detail: format!("no READY line within {}s", tools.start_timeout.as_secs()),
            });
        }
    }
}

/// Prepare, run and tear down one VM. Returns how it ended; errors are after cleanup.
pub fn run(plan: Plan, tools: &Tools) -> Result<Outcome, ServiceError> {
    let signals = Signals::block()?;
    match run_with(plan, tools, &signals) {
        Err(ServiceError::StopRequested) => Ok(Outcome::StoppedWhileStarting),
        other => other,
    }
}

fn run_with(plan: Plan, tools: &Tools, signals: &Signals) -> Result<Outcome, ServiceError> {
    pci::check(&tools.sysfs, &plan.pci)?;

    let mut created = Created::default();
    let vm_dir = plan.vm_run_dir.clone();
    if control::in_use(&plan.control_socket, control_kind(&plan)) {
        // Another `vmsilo vm run` (the service, or vm-start-debug) has this VM up: clearing its
        // runtime dir would cut it off from everything.
        return Err(ServiceError::AlreadyRunning(plan.name.clone()));
    }
    if fs::symlink_metadata(&vm_dir).is_ok() {
        // Left over from a run that was killed; nothing in it is valid any more.
        fs::remove_dir_all(&vm_dir).map_err(|source| ServiceError::RuntimeDir {
            path: vm_dir.clone(),
            source,
        })?;
    }
    // Parents as usual; the VM's own dir starts root-only (see `open_to_user`).
    vm_dir
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::DirBuilder::new().mode(0o755).create(&vm_dir))
        .and_then(|()| fs::set_permissions(&vm_dir, fs::Permissions::from_mode(0o755)))
        .map_err(|source| ServiceError::RuntimeDir {
            path: vm_dir.clone(),
            source,
        })?;
    created.vm_dir = Some(vm_dir.clone());

    if let OverlayPlan::Qcow2 { dir, size } = &plan.overlay {
        created.overlay = Some(overlay::Overlay::create(&tools.qemu_img, dir, size)?);
    }
    if let Some(h) = &plan.home
        && home::ensure(&h.path, &h.template, h.uid, h.gid)?
    {
        tracing::info!(home = %h.path.display(), "seeded shared home");
    }
    for (net_dir, peer) in &plan.peers {
        created.peer_files.push(peers::write(net_dir, peer)?);
    }
    check_net_backends(&plan.net_backends, signals, tools.start_timeout)?;
    let mirror = if tools.mirror_console {
        std::io::stdout().as_fd().try_clone_to_owned().ok()
    } else {
        None
    };
    let owner = nix::unistd::geteuid()
        .is_root()
        .then_some((plan.user_uid, plan.user_gid));
    let console = console::Console::open(&plan.console_link, mirror, owner)?;
    let console_pts = console.guest_pts().to_path_buf();
    created.console = Some(console);

    if let Some(v) = &plan.vsock_backend {
        let mut cmd = Command::new(&tools.vhost_device_vsock);
        cmd.arg("--guest-cid")
            .arg(v.cid.to_string())
            .arg("--socket")
            .arg(&v.socket)
            .arg("--uds-path")
            .arg(&v.uds)
            .stdin(Stdio::null());
        let child = created
            .vsock_backend
            .insert(spawn("vhost-device-vsock", &mut cmd)?);
        // QEMU cannot wait for a vhost-user-vsock backend: the socket must exist first.
        let socket = v.socket.clone();
        wait_ready(
            "vhost-device-vsock",
            child,
            signals,
            tools.start_timeout,
            || socket.exists(),
        )?;
    }

    if let Some(w) = &plan.wayland {
        let listen = vm_dir.join(WAYLAND_SOCKET);
        created.wayland = start_wayland(w, &plan.name, &listen, tools, signals, || {
            open_to_user(&vm_dir, plan.user_gid)
        })?;
    }

    let (program, argv): (PathBuf, Vec<OsString>) = match &plan.vmm {
        VmmPlan::Crosvm(args) => (
            tools.crosvm.clone(),
            crosvm_serial_to(args, &console_pts)
                .into_iter()
                .map(OsString::from)
                .collect(),
        ),
        VmmPlan::Qemu(template) => {
            let mut vm = (**template).clone();
            vm.console_pts = console_pts.clone();
            (tools.qemu.clone(), qemu::command_line(&vm))
        }
    };
    tracing::info!(vm = %plan.name, program = %program.display(), ?argv, "starting VMM");
    // Declared after `created`, so on every early return it is killed before the files it uses
    // are removed.
    let mut vmm = Vmm::spawn(&program, &argv)?;
    wait_vmm_ready(&plan, tools, &mut vmm, signals)?;
    if let Err(error) = notify::notify("READY=1") {
        tracing::warn!(%error, "sd_notify READY=1 failed");
    }
    tracing::info!(vm = %plan.name, "VM is up");

    let outcome = supervise(&plan, tools, &mut vmm, &mut created, signals);
    let _ = notify::notify("STOPPING=1");
    drop(vmm);
    drop(created);
    outcome
}

/// Run until the guest exits or a stop signal arrives; then shut down.
fn supervise(
    plan: &Plan,
    tools: &Tools,
    vmm: &mut Vmm,
    created: &mut Created,
    signals: &Signals,
) -> Result<Outcome, ServiceError> {
    loop {
        let stop = signals.wait(Duration::from_secs(1))?;
        if let Some(status) = vmm.child.try_wait().map_err(ServiceError::Wait)? {
            tracing::info!(vm = %plan.name, %status, "VMM exited");
            let rebooted = matches!(plan.vmm, VmmPlan::Crosvm(_))
                && status.code() == Some(CROSVM_REBOOT_STATUS);
            return if status.success() {
                Ok(Outcome::GuestExited)
            } else if rebooted {
                Ok(Outcome::GuestRebooted)
            } else {
                Err(ServiceError::VmmFailed(status))
            };
        }
        let backend_exit = match created.vsock_backend.as_mut() {
            Some(backend) => backend.try_wait().map_err(ServiceError::Wait)?,
            None => None,
        };
        if let Some(status) = backend_exit {
            // The VMM cannot reconnect to a new backend: without vsock the VM is unreachable,
            // so stop it and let the next activation start it afresh.
            tracing::error!(vm = %plan.name, %status, "vhost-device-vsock died; stopping the VM");
            created.vsock_backend = None;
            shutdown(plan, tools, vmm, signals)?;
            return Err(ServiceError::HelperDied {
                what: "vhost-device-vsock",
                status,
            });
        }
        let helper_exit = match created.wayland.as_mut() {
            Some(helper) => helper.try_wait().map_err(ServiceError::Wait)?,
            None => None,
        };
        if let Some(status) = helper_exit {
            tracing::warn!(vm = %plan.name, %status,
                "the Wayland security context exited; new guest windows cannot open");
            created.wayland = None;
        }
        if stop {
            return shutdown(plan, tools, vmm, signals);
        }
    }
}

/// Power button, wait, then force; a second stop request kills the VMM at once.
fn shutdown(
    plan: &Plan,
    tools: &Tools,
    vmm: &mut Vmm,
    signals: &Signals,
) -> Result<Outcome, ServiceError> {
    tracing::info!(vm = %plan.name, "powering the guest off");
    let sock = &plan.control_socket;
    let again = Cell::new(false);
    let mut interrupted = || {
        if !again.get() && signals.wait(Duration::ZERO).unwrap_or(false) {
            again.set(true);
        }
        again.get()
    };
    let asked = match plan.vmm {
        VmmPlan::Crosvm(_) => control::crosvm(
            &tools.crosvm,
            "powerbtn",
            sock,
            CONTROL_TIMEOUT,
            &mut interrupted,
        ),
        VmmPlan::Qemu(_) => {
            control::qmp(sock, "system_powerdown", CONTROL_TIMEOUT, &mut interrupted)
        }
    };
    match &asked {
        Ok(()) => {
            let deadline = Instant::now() + tools.shutdown_timeout;
            while Instant::now() < deadline && !again.get() {
                if vmm.child.try_wait().map_err(ServiceError::Wait)?.is_some() {
                    return Ok(Outcome::PoweredOff);
                }
                if signals.wait(Duration::from_millis(100))? {
                    again.set(true);
                }
            }
            if !again.get() {
                tracing::warn!(vm = %plan.name, "guest did not power off in time; stopping the VMM");
            }
        }
        Err(error) if !error.was_interrupted() => {
            tracing::warn!(error = %crate::error_chain(error), "power button failed; stopping the VMM");
        }
        Err(_) => {}
    }
    if !again.get() {
        let forced = match plan.vmm {
            VmmPlan::Crosvm(_) => control::crosvm(
                &tools.crosvm,
                "stop",
                sock,
                CONTROL_TIMEOUT,
                &mut interrupted,
            ),
            VmmPlan::Qemu(_) => control::qmp(sock, "quit", CONTROL_TIMEOUT, &mut interrupted),
        };
        if let Err(error) = &forced
            && !error.was_interrupted()
        {
            tracing::warn!(error = %crate::error_chain(error), "stop request failed");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !again.get() {
            if vmm.child.try_wait().map_err(ServiceError::Wait)?.is_some() {
                return Ok(Outcome::Forced);
            }
            if signals.wait(Duration::from_millis(100))? {
                again.set(true);
            }
        }
    }
    if again.get() {
        tracing::info!(vm = %plan.name, "second stop request; killing the VMM");
    } else {
        tracing::warn!(vm = %plan.name, "VMM ignored the stop request; killing it");
    }
    process::kill(&mut vmm.child);
    Ok(Outcome::Forced)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn crosvm_serial_is_pointed_at_the_vmm_pty() {
        let args = strings(&[
            "--log-level",
            "info",
            "run",
            "--serial",
            "type=file,path=/run/vmsilo/a-console,input=/run/vmsilo/a-console,num=1,console=true",
            "--socket",
            "/run/vmsilo/a/crosvm.sock",
            "/kernel",
        ]);
        let out = crosvm_serial_to(&args, Path::new("/dev/pts/9"));
        assert_eq!(
            out,
            strings(&[
                "--log-level",
                "info",
                "run",
                "--serial",
                "type=file,path=/dev/pts/9,input=/dev/pts/9,num=1,console=true",
                "--socket",
                "/run/vmsilo/a/crosvm.sock",
                "/kernel",
            ])
        );
        // No --serial in the argv: one is added after `run`.
        let out = crosvm_serial_to(&strings(&["run", "/kernel"]), Path::new("/dev/pts/9"));
        assert_eq!(
            out,
            strings(&[
                "run",
                "--serial",
                "type=file,path=/dev/pts/9,input=/dev/pts/9,num=1,console=true",
                "/kernel",
            ])
        );
    }
}
