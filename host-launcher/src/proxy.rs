//! `vmsilo proxy <vm>`: the socket-activated command proxy behind `vmsilo-<vm>.socket`.
//!
//! For every client connection it makes sure the VM runs (dependsOn VMs first), waits until the
//! guest agent answers on its vsock port, and then copies bytes both ways. It does not parse the
//! session (the agent and `vm-run` do, with the protocol's limits); copying uses fixed buffers, so
//! a hostile guest cannot make the proxy buffer more than that. When the VM does not come up in
//! time the client gets a protocol `Error` frame saying so.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmsilo_protocol::{Message, read_message, write_message};

use crate::vsock::{Transport, TransportError};

/// How long one hybrid-vsock handshake attempt may take while waiting for a booting VM.
const HANDSHAKE_ATTEMPT: Duration = Duration::from_secs(1);

/// Pause between connection attempts while a VM boots; short, since every attempt is cheap.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// How the proxy starts a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Starter {
    /// systemd `StartUnit("vmsilo-<vm>-vm.service", "replace")` over the system bus.
    Systemd,
    /// Run this argv (each `{vm}` replaced by the VM name) unless the previous run still lives.
    Command(Vec<String>),
}

/// One VM the proxy may have to start and reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// VM name.
    pub name: String,
    /// How to reach its agent.
    pub transport: Transport,
}

/// Everything `vmsilo proxy <vm>` needs, built from the config file (or by tests).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The VM this proxy serves.
    pub vm: Target,
    /// VMs to start (and wait for) before it, in order.
    pub depends_on: Vec<Target>,
    /// How to start VMs.
    pub starter: Starter,
    /// How long to wait for an agent after starting its VM.
    pub agent_timeout: Duration,
}

/// Why the proxy could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No usable listening socket.
    #[error("LISTEN_FDS={0:?}: expected exactly one socket passed by systemd for this process")]
    ListenFds(String),
    /// LISTEN_FDS promised fd 3 but it is not open.
    #[error("LISTEN_FDS=1 but fd 3 is not open")]
    ListenFdMissing,
    /// accept() failed.
    #[error("accept on the command socket failed")]
    Accept(#[source] std::io::Error),
    /// The start command could not be run.
    #[error("cannot run start command {argv:?} for VM {vm:?}")]
    StartCommand {
        /// VM name.
        vm: String,
        /// The command.
        argv: Vec<String>,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// systemd refused or was unreachable.
    #[error("cannot start unit {unit} through systemd")]
    StartUnit {
        /// Unit name.
        unit: String,
        /// The cause.
        #[source]
        source: crate::units::UnitError,
    },
    /// The agent did not answer in time.
    #[error("VM {vm:?} did not come up: no agent on {transport} within {}s (last error: {last})", timeout.as_secs())]
    AgentTimeout {
        /// VM name.
        vm: String,
        /// Where we tried.
        transport: Transport,
        /// How long we waited.
        timeout: Duration,
        /// The last connection error.
        last: String,
    },
    /// The start command exited before the agent answered: the VM died or never booted.
    #[error(
        "VM {vm:?} did not come up: its start command exited ({status}) before the agent answered (last error: {last})"
    )]
    StartCommandEnded {
        /// VM name.
        vm: String,
        /// How the command ended.
        status: std::process::ExitStatus,
        /// The last connection error.
        last: String,
    },
    /// The agent connection failed for a non-transient reason.
    #[error("cannot reach the agent of VM {vm:?}")]
    Agent {
        /// VM name.
        vm: String,
        /// The cause.
        #[source]
        source: TransportError,
    },
}

/// Why a proxy configuration could not be built from the config document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyConfigError {
    /// The VM (or a dependency) is not in the document.
    #[error("no VM named {0:?} in the configuration")]
    UnknownVm(String),
}

/// How to reach a VM's agent, from its `vsock.transport` option.
pub fn transport_for(vm: &crate::config::Vm, paths: &crate::paths::Paths) -> Transport {
    match vm.vsock.transport {
        crate::config::VsockTransport::VhostVsock => Transport::Vsock {
            cid: vm.id,
            port: crate::paths::AGENT_VSOCK_PORT,
        },
        crate::config::VsockTransport::VhostUser => Transport::Hybrid {
            uds: paths.vsock_uds(&vm.name),
            port: crate::paths::AGENT_VSOCK_PORT,
        },
    }
}

/// Build the proxy's view of VM `name`: its transport and its dependsOn closure, dependencies
/// of dependencies first (the config validator has already ruled out cycles).
pub fn config_for(
    config: &crate::config::Config,
    paths: &crate::paths::Paths,
    name: &str,
    starter: Starter,
    agent_timeout: Duration,
) -> Result<ProxyConfig, ProxyConfigError> {
    fn visit(
        config: &crate::config::Config,
        paths: &crate::paths::Paths,
        name: &str,
        out: &mut Vec<Target>,
        seen: &mut Vec<String>,
    ) -> Result<(), ProxyConfigError> {
        if seen.iter().any(|s| s == name) {
            return Ok(());
        }
        seen.push(name.to_owned());
        let vm = config
            .vm(name)
            .ok_or_else(|| ProxyConfigError::UnknownVm(name.to_owned()))?;
        for dep in &vm.depends_on {
            visit(config, paths, dep, out, seen)?;
        }
        out.push(Target {
            name: name.to_owned(),
            transport: transport_for(vm, paths),
        });
        Ok(())
    }
    let mut order = Vec::new();
    visit(config, paths, name, &mut order, &mut Vec::new())?;
    let vm = order
        .pop()
        .ok_or_else(|| ProxyConfigError::UnknownVm(name.to_owned()))?;
    Ok(ProxyConfig {
        vm,
        depends_on: order,
        starter,
        agent_timeout,
    })
}

/// The listening socket systemd passed (`LISTEN_FDS=1`, `LISTEN_PID` = us).
pub fn listener_from_env() -> Result<UnixListener, ProxyError> {
    let fds = std::env::var("LISTEN_FDS").unwrap_or_default();
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if fds != "1" || !pid_ok {
        return Err(ProxyError::ListenFds(fds));
    }
    // Make sure fd 3 is really open before taking ownership, and keep it from leaking into the
    // VMs' start commands.
    // SAFETY: F_GETFD/F_SETFD on a raw fd number touch no memory.
    let open = unsafe { libc::fcntl(3, libc::F_GETFD) } >= 0
        // SAFETY: as above.
        && unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) } >= 0;
    if !open {
        return Err(ProxyError::ListenFdMissing);
    }
    // SAFETY: the socket-activation protocol passes this process (LISTEN_PID matched) exactly
    // one socket (LISTEN_FDS=1) as fd 3, which is open (checked above) and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    // SAFETY: removing the variables before any thread exists, so no concurrent getenv.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    Ok(UnixListener::from(fd))
}

/// Build a command that receives `listener` the way systemd socket activation hands it over: as
/// fd 3, with `LISTEN_FDS=1` and `LISTEN_PID` set to the new process's own pid (a `/bin/sh`
/// wrapper learns that pid and execs `program`). For running the proxy without systemd: the demo
/// and the tests.
pub fn socket_activated(
    program: &std::path::Path,
    listener: &UnixListener,
) -> std::process::Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"")
        .arg("sh")
        .arg(program);
    // SAFETY: only dup2/fcntl, which are async-signal-safe, run between fork and exec; they put
    // the listener at fd 3 without close-on-exec, as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The proxy's state: config plus the start commands it has running.
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    /// Serialises starting, and remembers start-command children per VM.
    started: Mutex<HashMap<String, Child>>,
}

impl Proxy {
    /// A proxy for `cfg`.
    pub fn new(cfg: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            started: Mutex::new(HashMap::new()),
        })
    }

    /// Accept clients forever, one thread each.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> Result<(), ProxyError> {
        tracing::info!(vm = %self.cfg.vm.name, "command proxy ready");
        loop {
            let (client, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ECONNABORTED)
                    ) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(ProxyError::Accept(e)),
            };
            let me = self.clone();
            std::thread::spawn(move || me.handle(client));
        }
    }

    /// Serve one client: reach the agent (starting the VM if needed), then copy bytes.
    pub fn handle(&self, client: UnixStream) {
        match self.agent() {
            Ok(agent) => forward(client, agent),
            Err(e) => {
                let text = crate::tools_cli::error_text(&e);
                tracing::error!("{text}");
                refuse(client, &text);
            }
        }
    }

    /// A connection to this VM's agent, starting dependencies and the VM when it is not up.
    pub fn agent(&self) -> Result<UnixStream, ProxyError> {
        if let Ok(s) = self.cfg.vm.transport.connect(Duration::from_secs(2)) {
            return Ok(s);
        }
        for dep in &self.cfg.depends_on {
            drop(self.ensure_up(dep)?);
        }
        self.ensure_up(&self.cfg.vm)
    }

    fn ensure_up(&self, t: &Target) -> Result<UnixStream, ProxyError> {
        if let Ok(s) = t.transport.connect(Duration::from_secs(2)) {
            return Ok(s);
        }
        self.start(&t.name)?;
        let deadline = Instant::now() + self.cfg.agent_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A CONNECT that reaches vhost-device-vsock before the guest's device is running
            // can go unanswered, so each attempt waits a few seconds and then tries afresh (the
            // unanswered stream stays open in the background, see `vsock`).
            let wait = left.min(HANDSHAKE_ATTEMPT).max(Duration::from_millis(100));
            match t.transport.connect(wait) {
                Ok(s) => return Ok(s),
                Err(e) if !e.is_transient() => {
                    return Err(ProxyError::Agent {
                        vm: t.name.clone(),
                        source: e,
                    });
                }
                Err(e) if Instant::now() + Duration::from_millis(50) >= deadline => {
                    return Err(ProxyError::AgentTimeout {
                        vm: t.name.clone(),
                        transport: t.transport.clone(),
                        timeout: self.cfg.agent_timeout,
                        last: crate::tools_cli::error_text(&e),
                    });
                }
                Err(e) => {
                    if let Some(status) = self.start_command_ended(&t.name) {
                        return Err(ProxyError::StartCommandEnded {
                            vm: t.name.clone(),
                            status,
                            last: crate::tools_cli::error_text(&e),
                        });
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                }
            }
        }
    }

    /// The exit status of the VM's start command if it has already ended (command starter only).
    fn start_command_ended(&self, vm: &str) -> Option<std::process::ExitStatus> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started
            .get_mut(vm)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn start(&self, vm: &str) -> Result<(), ProxyError> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match &self.cfg.starter {
            Starter::Systemd => {
                let unit = format!("vmsilo-{vm}-vm.service");
                tracing::info!("starting {unit}");
                crate::units::start_unit(&unit)
                    .map_err(|source| ProxyError::StartUnit { unit, source })
            }
            Starter::Command(argv) => {
                if let Some(child) = started.get_mut(vm)
                    && matches!(child.try_wait(), Ok(None))
                {
                    return Ok(());
                }
                let argv: Vec<String> = argv.iter().map(|a| a.replace("{vm}", vm)).collect();
                tracing::info!(?argv, "starting VM {vm}");
                let child = argv
                    .split_first()
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty start command")
                    })
                    .and_then(|(p, rest)| Command::new(p).args(rest).spawn())
                    .map_err(|source| ProxyError::StartCommand {
                        vm: vm.to_owned(),
                        argv: argv.clone(),
                        source,
                    })?;
                started.insert(vm.to_owned(), child);
                Ok(())
            }
        }
    }
}

/// Tell a client why its VM is unreachable, as a protocol error frame.
///
/// The client's `Hello` is read first so that closing does not reset the connection (a unix
/// socket closed with unread data makes the peer's read fail with ECONNRESET).
fn refuse(mut client: UnixStream, text: &str) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = read_message(&mut client);
    let _ = write_message(&mut client, &Message::Error(text.to_owned()));
    let _ = client.shutdown(std::net::Shutdown::Write);
}

/// Copy bytes both ways until both directions end; each direction uses one fixed buffer.
pub fn forward(client: UnixStream, agent: UnixStream) {
    let (Ok(mut c2), Ok(mut a2)) = (client.try_clone(), agent.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut c = client;
        let mut a = agent;
        let _ = std::io::copy(&mut c, &mut a);
        let _ = a.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut a2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Write);
    // The guest ended the session: stop reading the client too.
    let _ = c2.shutdown(std::net::Shutdown::Read);
    let _ = up.join();
}

/// Quote a string for /bin/sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
