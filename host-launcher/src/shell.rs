//! `vm-shell` and `vm-start`/`vm-stop`: the serial console (leave with Ctrl+]), SSH over vsock,
//! and systemd start/stop of VM units.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::tools_cli::{VmShellArgs, VmStartArgs, VmStopArgs};

/// The byte Ctrl+] sends; it ends a console session like telnet's escape.
pub const ESCAPE: u8 = 0x1d;

/// Why a shell or start/stop command failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The config document could not be read.
    #[error("cannot load the configuration")]
    Config(#[from] crate::config::ConfigError),
    /// The VM is not configured.
    #[error("no VM named {0:?} in the configuration")]
    UnknownVm(String),
    /// The console PTY could not be opened.
    #[error("cannot open the serial console {path} (is VM {vm:?} running?)")]
    Console {
        /// VM name.
        vm: String,
        /// The console symlink.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Copying between the terminal and the console or vsock failed.
    #[error("console I/O failed")]
    Io(#[source] io::Error),
    /// vsock connection failed.
    #[error("cannot reach port {port} of VM {vm:?}")]
    Vsock {
        /// VM name.
        vm: String,
        /// Guest port.
        port: u32,
        /// The cause.
        #[source]
        source: crate::vsock::TransportError,
    },
    /// ssh could not be executed.
    #[error("cannot run ssh")]
    Ssh(#[source] io::Error),
    /// systemd refused.
    #[error("cannot {action} {unit}")]
    Unit {
        /// start or stop.
        action: &'static str,
        /// The unit.
        unit: String,
        /// The cause.
        #[source]
        source: crate::units::UnitError,
    },
}

/// Open a VM's serial console for reading and writing.
pub fn open_console(console: &Path, vm: &str) -> Result<std::fs::File, ShellError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(console)
        .map_err(|source| ShellError::Console {
            vm: vm.to_owned(),
            path: console.to_owned(),
            source,
        })
}

/// Copy `input` to the console and the console to `output` until `input` sends [`ESCAPE`] or
/// ends. The console reader runs in a detached thread (a PTY read cannot be interrupted), which
/// ends with the process.
pub fn console_session(
    console: &Path,
    vm: &str,
    input: &mut dyn Read,
    output: Box<dyn Write + Send>,
) -> Result<(), ShellError> {
    console_session_on(open_console(console, vm)?, input, output)
}

/// [`console_session`] on a console already opened with [`open_console`].
pub fn console_session_on(
    mut tx: std::fs::File,
    input: &mut dyn Read,
    mut output: Box<dyn Write + Send>,
) -> Result<(), ShellError> {
    let mut rx = tx.try_clone().map_err(ShellError::Io)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rx.read(&mut buf) {
            if n == 0
                || output
                    .write_all(&buf[..n])
                    .and_then(|()| output.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ShellError::Io(e)),
        };
        let (data, done) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        tx.write_all(data).map_err(ShellError::Io)?;
        if done {
            return Ok(());
        }
    }
}

/// `vm-shell`: console, `--ssh`, or the hidden `--vsock-bridge` used as ssh's ProxyCommand.
pub fn vm_shell(args: &VmShellArgs) -> Result<i32, ShellError> {
    if let Some(port) = args.vsock_bridge {
        return vsock_bridge(args, port).map(|()| 0);
    }
    if args.ssh {
        return ssh(args);
    }
    let paths = run_paths(&args.run_dir.run_dir);
    let console = open_console(&paths.console(&args.vm), &args.vm)?;
    let _ = writeln!(
        io::stderr(),
        "vm-shell: connected to the serial console of {}; press Ctrl+] to leave",
        args.vm
    );
    let raw = RawTerminal::enter();
    let result = console_session_on(console, &mut io::stdin(), Box::new(io::stdout()));
    drop(raw);
    let _ = writeln!(io::stderr());
    result.map(|()| 0)
}

fn run_paths(run_dir: &Path) -> crate::paths::Paths {
    let mut paths = crate::paths::Paths::system();
    paths.run_dir = run_dir.to_owned();
    paths
}

fn load_vm(
    config: &Path,
    vm: &str,
) -> Result<(crate::config::Config, crate::config::Vm), ShellError> {
    let cfg = crate::config::load(config)?;
    let v = cfg
        .vm(vm)
        .cloned()
        .ok_or_else(|| ShellError::UnknownVm(vm.to_owned()))?;
    Ok((cfg, v))
}

fn vsock_bridge(args: &VmShellArgs, port: u32) -> Result<(), ShellError> {
    let (_, vm) = load_vm(&args.config, &args.vm)?;
    let mut transport = crate::proxy::transport_for(&vm, &run_paths(&args.run_dir.run_dir));
    match &mut transport {
        crate::vsock::Transport::Vsock { port: p, .. }
        | crate::vsock::Transport::Hybrid { port: p, .. } => *p = port,
    }
    let stream = transport
        .connect(std::time::Duration::from_secs(30))
        .map_err(|source| ShellError::Vsock {
            vm: args.vm.clone(),
            port,
            source,
        })?;
    let mut up = stream.try_clone().map_err(ShellError::Io)?;
    let mut down = stream;
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    io::copy(&mut down, &mut io::stdout()).map_err(ShellError::Io)?;
    drop(t);
    Ok(())
}

fn ssh(args: &VmShellArgs) -> Result<i32, ShellError> {
    use std::os::unix::process::CommandExt;
    load_vm(&args.config, &args.vm)?;
    let me = std::env::current_exe().map_err(ShellError::Ssh)?;
    let proxy = format!(
        "{} --config {} --run-dir {} --vsock-bridge 22 {}",
        sh_quote(me.as_os_str().as_bytes()),
        sh_quote(args.config.as_os_str().as_bytes()),
        sh_quote(args.run_dir.run_dir.as_os_str().as_bytes()),
        sh_quote(args.vm.as_bytes()),
    );
    let user = if args.root { "root" } else { "user" };
    let err = std::process::Command::new("ssh")
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-o")
        .arg(format!("HostKeyAlias=vmsilo-{}", args.vm))
        .arg(format!("{user}@{}", args.vm))
        .exec();
    Err(ShellError::Ssh(err))
}

fn sh_quote(b: &[u8]) -> String {
    format!("'{}'", String::from_utf8_lossy(b).replace('\'', r"'\''"))
}

/// `vm-start`: start the dependsOn VMs, then the VM, through systemd.
pub fn vm_start(args: &VmStartArgs) -> Result<(), ShellError> {
    let cfg = crate::config::load(&args.config)?;
    let proxy_cfg = crate::proxy::config_for(
        &cfg,
        &crate::paths::Paths::system(),
        &args.vm,
        crate::proxy::Starter::Systemd,
        std::time::Duration::ZERO,
    )
    .map_err(|_| ShellError::UnknownVm(args.vm.clone()))?;
    for t in proxy_cfg.depends_on.iter().chain([&proxy_cfg.vm]) {
        let unit = crate::paths::units::vm_service(&t.name);
        crate::units::start_unit(&unit).map_err(|source| ShellError::Unit {
            action: "start",
            unit,
            source,
        })?;
    }
    Ok(())
}

/// `vm-stop`: stop the VM's unit through systemd, once the configuration knows the VM.
pub fn vm_stop(args: &VmStopArgs) -> Result<(), ShellError> {
    load_vm(&args.config, &args.vm)?;
    let unit = crate::paths::units::vm_service(&args.vm);
    crate::units::stop_unit(&unit).map_err(|source| ShellError::Unit {
        action: "stop",
        unit,
        source,
    })
}

/// Raw mode on stdin while it lives, when stdin is a terminal.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let Ok(saved) = tcgetattr(io::stdin()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(io::stdin(), SetArg::TCSADRAIN, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ =
                nix::sys::termios::tcsetattr(io::stdin(), nix::sys::termios::SetArg::TCSADRAIN, t);
        }
    }
}
