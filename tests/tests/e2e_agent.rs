//! End to end: `vm-run` → socket-activated `vmsilo proxy` → hybrid vsock (vhost-device-vsock) →
//! `vmsilo-agent` in a QEMU guest booted by `shared/vmtest/boot-guest.sh`.
//!
//! Needs qemu-system-x86, the vmtest kernel/initramfs prerequisites, binutils (strip) and
//! vhost-device-vsock 0.3.0 (see shared/vmtest/README.md). Guests run under TCG here, so the
//! timeouts are generous.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_tests::agent::{self, Tools};

const MAC: &str = "52:54:00:12:34:56";

struct GuestGuard<'a>(&'a Path, &'a str);
impl Drop for GuestGuard<'_> {
    fn drop(&mut self) {
        agent::kill_guest(self.0, self.1);
    }
}

/// A scratch directory, kept for inspection when VMSILO_E2E_KEEP is set.
fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmsilo-e2e-")
        .disable_cleanup(std::env::var_os("VMSILO_E2E_KEEP").is_some())
        .tempdir()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pid_alive(dir: &Path, vm: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(format!("{vm}.pid"))) else {
        return false;
    };
    // The boot script is the proxy's child: once it exits it stays a zombie until reaped.
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn signal_session(tools: &Tools, run: &Path, script: &str, sig: i32) -> (String, Option<i32>) {
    let mut child = Command::new(&tools.vm_run)
        .env("VMSILO_RUN_DIR", run)
        .args(["e2e", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    (rest, child.wait().unwrap().code())
}

#[test]
fn command_path_in_a_qemu_guest() {
    agent::require_guest_prerequisites();
    let tools = agent::build_tools();
    let dir = workdir();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = agent::write_config(dir.path(), &[("e2e", 3, 15)]);
    let script = agent::guest_agent_script(
        "--auto-shutdown-after 15 --poweroff-command 'echo VMSILO_POWEROFF; poweroff -f'",
    );
    let start = agent::boot_command(
        dir.path(),
        &run,
        "e2e",
        3,
        &tools.agent,
        &script,
        &format!("--netdev user --mac {MAC} --append vmsilo.ifname=wan,{MAC}"),
    );
    let _guest = GuestGuard(dir.path(), "e2e");
    let _proxy = agent::start_proxy(
        &tools.vmsilo,
        &run,
        &config,
        "e2e",
        &["--start-command", &start, "--agent-timeout", "180"],
        &dir.path().join("proxy.log"),
    );
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        format!(
            "proxy.log:\n{}\nboot.log:\n{}",
            read("proxy.log"),
            read("e2e.boot.log")
        )
    };

    // Cold start: the first vm-run boots the VM through the proxy.
    let out = agent::vm_run(
        &tools,
        &run,
        &[
            "e2e",
            "sh",
            "-c",
            "echo out; echo err >&2; tr a-z A-Z; exit 3",
        ],
        b"stdin data\n",
    );
    assert_eq!(
        text(&out.stdout),
        "out\nSTDIN DATA\n",
        "{}\n{}",
        text(&out.stderr),
        logs()
    );
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));

    // Runs as the guest user with the desktop environment.
    let out = agent::vm_run(
        &tools,
        &run,
        &[
            "e2e",
            "sh",
            "-c",
            "id -u; echo $HOME $XDG_RUNTIME_DIR $WAYLAND_DISPLAY $DISPLAY; pwd",
        ],
        b"",
    );
    assert_eq!(
        text(&out.stdout),
        "1000\n/home/user /run/user/1000 wayland-0 :0\n/home/user\n",
        "{}",
        text(&out.stderr)
    );

    // The agent renamed the NIC from the vmsilo.ifname kernel parameter.
    let out = agent::vm_run(
        &tools,
        &run,
        &["e2e", "cat", "/sys/class/net/wan/address"],
        b"",
    );
    assert_eq!(text(&out.stdout).trim(), MAC, "{}", text(&out.stderr));

    // A tty session.
    let out = agent::vm_run(
        &tools,
        &run,
        &[
            "-t",
            "e2e",
            "sh",
            "-c",
            "tty; stty size; test -t 1 && echo istty",
        ],
        b"",
    );
    let t = text(&out.stdout);
    assert!(
        t.contains("/dev/pts/") && t.contains("24 80") && t.contains("istty"),
        "{t}\n{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // Signals sent to vm-run reach the guest program.
    let (rest, code) = signal_session(
        &tools,
        &run,
        "trap 'echo got-term; exit 4' TERM; echo ready; while :; do sleep 1; done",
        libc::SIGTERM,
    );
    assert_eq!((rest.as_str(), code), ("got-term\n", Some(4)));
    let (_, code) = signal_session(&tools, &run, "echo ready; exec sleep 100", libc::SIGINT);
    assert_eq!(code, Some(128 + libc::SIGINT));

    // Ten concurrent sessions.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let (tools, run) = (tools.clone(), run.clone());
            std::thread::spawn(move || {
                agent::vm_run(
                    &tools,
                    &run,
                    &["e2e", "sh", "-c", &format!("sleep 1; echo s{i}; exit {i}")],
                    b"",
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("s{i}\n"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(i as i32));
    }

    // Detach returns once started; the program keeps running in the guest.
    let out = agent::vm_run(
        &tools,
        &run,
        &["-d", "e2e", "sh", "-c", "sleep 2; touch /tmp/detached"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    std::thread::sleep(Duration::from_secs(4));
    let out = agent::vm_run(&tools, &run, &["e2e", "ls", "/tmp/detached"], b"");
    assert_eq!(out.status.code(), Some(0), "detached program did not run");

    // autoShutdown: once idle for 15 s the guest powers itself off.
    let idle_from = Instant::now();
    wait_for("the guest to power off", Duration::from_secs(180), || {
        !pid_alive(dir.path(), "e2e")
    });
    let boot = std::fs::read_to_string(dir.path().join("e2e.boot.log")).unwrap();
    assert!(
        boot.contains("VMSILO_POWEROFF"),
        "guest ended without the watchdog's poweroff:\n{boot}"
    );
    assert!(
        idle_from.elapsed() >= Duration::from_secs(10),
        "powered off before the idle time"
    );

    // The next vm-run starts it again.
    let out = agent::vm_run(&tools, &run, &["e2e", "echo", "again"], b"");
    assert_eq!(
        text(&out.stdout),
        "again\n",
        "{}\n{}",
        text(&out.stderr),
        logs()
    );
}

#[test]
fn a_vm_whose_agent_never_comes_up_is_reported() {
    agent::require_guest_prerequisites();
    let tools = agent::build_tools();
    let dir = workdir();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = agent::write_config(dir.path(), &[("e2e", 3, 0)]);
    // The guest boots (vsock device and all) but never starts the agent.
    let start = agent::boot_command(dir.path(), &run, "e2e", 3, &tools.agent, "sleep 600", "");
    let _guest = GuestGuard(dir.path(), "e2e");
    let _proxy = agent::start_proxy(
        &tools.vmsilo,
        &run,
        &config,
        "e2e",
        &["--start-command", &start, "--agent-timeout", "20"],
        &dir.path().join("proxy.log"),
    );
    let t = Instant::now();
    let out = agent::vm_run(&tools, &run, &["e2e", "true"], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("VM \"e2e\" did not come up") && err.contains("within 20s"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
}
