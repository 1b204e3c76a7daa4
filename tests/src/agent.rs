//! Helpers for the command-path end-to-end tests (`e2e_agent`) and `tests/bench-agent.sh`:
//! build the host tools and a static `vmsilo-agent`, start `vmsilo proxy` the way systemd
//! socket activation does, and describe a QEMU guest (from `shared/vmtest`) that runs the agent
//! behind a vhost-user-vsock device served by vhost-device-vsock.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `vm-run`.
    pub vm_run: PathBuf,
    /// `vmsilo` (for `vmsilo proxy`).
    pub vmsilo: PathBuf,
    /// Static, stripped `vmsilo-agent` for the guest initramfs.
    pub agent: PathBuf,
}

fn cargo(args: &[&str], rustflags: Option<&str>) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::repo_root()).args(args);
    if let Some(f) = rustflags {
        cmd.env("RUSTFLAGS", f);
    }
    let status = cmd.status().expect("cannot run cargo");
    assert!(status.success(), "cargo {args:?} failed");
}

/// Build `vm-run`, `vmsilo` and a static `vmsilo-agent` (glibc `crt-static`, in its own target
/// triple directory so the host build cache is untouched), and strip the agent.
pub fn build_tools() -> Tools {
    let root = crate::repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    cargo(
        &[
            "build", "-p", "vmsilo", "--bin", "vm-run", "--bin", "vmsilo",
        ],
        None,
    );
    cargo(
        &[
            "build",
            "-p",
            "vmsilo-guest",
            "--bin",
            "vmsilo-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        Some("-C target-feature=+crt-static"),
    );
    let built = target.join("x86_64-unknown-linux-gnu/debug/vmsilo-agent");
    let agent = target.join("vmsilo-agent-static");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&agent)
        .arg(&built)
        .status()
        .expect("cannot run strip (install binutils)");
    assert!(status.success(), "strip failed");
    Tools {
        vm_run: target.join("debug/vm-run"),
        vmsilo: target.join("debug/vmsilo"),
        agent,
    }
}

/// vhost-device-vsock as the vmtest scripts find it, or a panic saying how to install it.
pub fn require_vhost_device_vsock() -> PathBuf {
    if let Some(p) = std::env::var_os("VHOST_DEVICE_VSOCK") {
        return PathBuf::from(p);
    }
    let opt = PathBuf::from("/opt/vhost-device/bin/vhost-device-vsock");
    if opt.is_file() {
        return opt;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("vhost-device-vsock"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "vhost-device-vsock not found; install it with `CARGO_INSTALL_ROOT=/opt/vhost-device \
                 cargo install vhost-device-vsock --version 0.3.0 --locked` (see shared/vmtest/README.md)"
            )
        })
}

/// Check every tool the QEMU guests need, panicking with install advice.
pub fn require_guest_prerequisites() {
    crate::require_tool("qemu-system-x86_64");
    crate::require_tool("strip");
    require_vhost_device_vsock();
    let vmtest = crate::shared_dir().join("vmtest/boot-guest.sh");
    assert!(
        vmtest.is_file(),
        "{} missing; set VMSILO_SHARED",
        vmtest.display()
    );
}

/// A running `vmsilo proxy`, killed on drop.
#[derive(Debug)]
pub struct ProxyProc(pub Child);

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `vmsilo proxy <vm>` the way systemd socket activation does: a listening socket at
/// `<run_dir>/<vm>-command.socket` passed as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the
/// proxy's own pid. Its stderr goes to `log`.
pub fn start_proxy(
    vmsilo: &Path,
    run_dir: &Path,
    config: &Path,
    vm: &str,
    extra: &[&str],
    log: &Path,
) -> ProxyProc {
    let listener = UnixListener::bind(run_dir.join(format!("{vm}-command.socket")))
        .expect("cannot bind the command socket");
    let fd = listener.as_raw_fd();
    let log = std::fs::File::create(log).expect("cannot create the proxy log");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"")
        .arg("sh")
        .arg(vmsilo)
        .arg("proxy")
        .arg("--config")
        .arg(config)
        .arg(vm)
        .args(extra)
        .env("VMSILO_RUN_DIR", run_dir)
        .env("VMSILO_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: dup2 and fcntl are async-signal-safe; they put the listener at fd 3 without
    // close-on-exec in the child, as systemd does.
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
    let child = cmd.spawn().expect("cannot start vmsilo proxy");
    drop(listener);
    ProxyProc(child)
}

/// A config document with one VM using hybrid vsock (what vhost-device-vsock serves).
pub fn write_config(dir: &Path, vms: &[(&str, u32, u64)]) -> PathBuf {
    let vms: Vec<String> = vms
        .iter()
        .map(|(name, id, after)| {
            format!(
                r#"{{"id":{id},"name":"{name}","vsock":{{"transport":"vhost-user"}},
                   "autoShutdown":{{"enable":{},"after":{after}}}}}"#,
                *after > 0,
                after = (*after).max(1)
            )
        })
        .collect();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"user":"user","userUid":1000,"nixosVms":[{}]}}"#,
            vms.join(",")
        ),
    )
    .expect("cannot write config");
    path
}

/// The guest script that sets up the guest user and runs the agent in the foreground.
pub fn guest_agent_script(agent_args: &str) -> String {
    format!(
        "mkdir -p /dev/pts && (mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts); \
         echo 'user:x:1000:1000:Guest:/home/user:/bin/sh' >> /etc/passwd; \
         echo 'user:x:1000:' >> /etc/group; \
         mkdir -p /home/user /run/user/1000 && chown 1000:1000 /home/user /run/user/1000; \
         echo AGENT_START uptime=$(cut -d' ' -f1 /proc/uptime); \
         vmsilo-agent --user user --path /usr/bin:/bin:/usr/sbin:/sbin {agent_args}"
    )
}

/// Shell command (for `vmsilo proxy --start-command`) that boots a vmtest QEMU guest whose
/// hybrid vsock socket is `<run_dir>/<vm>/vsock.sock`, running `script`. It writes its pid to
/// `<dir>/<vm>.pid` (for cleanup) and its output to `<dir>/<vm>.boot.log`.
pub fn boot_command(
    dir: &Path,
    run_dir: &Path,
    vm: &str,
    cid: u32,
    agent: &Path,
    script: &str,
    extra: &str,
) -> String {
    let boot = crate::shared_dir().join("vmtest/boot-guest.sh");
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    format!(
        "mkdir -p {rd} && echo $$ > {pid} && exec setsid {boot} --name {name} --vsock-uds {uds} --cid {cid} \
         --add-file {agent}:/usr/bin/vmsilo-agent --timeout 900 --log {log} {extra} --run {script} > {out} 2>&1",
        rd = q(&run_dir.join(vm)),
        pid = q(&dir.join(format!("{vm}.pid"))),
        boot = q(&boot),
        name = shell_quote(&format!("vmsilo-e2e-{vm}-{}", std::process::id())),
        uds = q(&run_dir.join(vm).join("vsock.sock")),
        agent = q(agent),
        log = q(&dir.join(format!("{vm}.console.log"))),
        script = shell_quote(script),
        out = q(&dir.join(format!("{vm}.boot.log"))),
    )
}

/// Quote for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Kill the boot script group recorded by [`boot_command`], if it still runs.
pub fn kill_guest(dir: &Path, vm: &str) {
    if let Ok(pid) = std::fs::read_to_string(dir.join(format!("{vm}.pid")))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: kill has no memory-safety preconditions; the negative pid addresses the
        // process group `setsid` gave the boot script.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
}

/// Run `vm-run` with `args`, feeding `stdin`.
pub fn vm_run(tools: &Tools, run_dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(&tools.vm_run)
        .env("VMSILO_RUN_DIR", run_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run vm-run");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    child.wait_with_output().expect("vm-run wait failed")
}
