//! The host command path through its real interfaces, without QEMU: the `vm-run` binary, the
//! `vmsilo proxy` binary (socket-activated via LISTEN_FDS), a fake hybrid-vsock backend and the
//! agent's session code, all over unix sockets in a temporary directory.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmsilo_guest::session::{self, Context};
use vmsilo_guest::watchdog::Activity;
use vmsilo_protocol::{Message, PROTOCOL_VERSION, read_message, write_message};

const VM_RUN: &str = env!("CARGO_BIN_EXE_vm-run");
const VMSILO: &str = env!("CARGO_BIN_EXE_vmsilo");

fn agent_ctx() -> Arc<Context> {
    Arc::new(Context {
        user: "root".into(),
        base_path: "/usr/local/bin:/usr/bin:/bin".into(),
        wayland_display: "wayland-0".into(),
        x_display: ":0".into(),
        activity: Arc::new(Activity::new()),
    })
}

/// Serve the agent's protocol directly on `path` (what the proxy forwards to).
fn plain_agent(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    let ctx = agent_ctx();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let ctx = ctx.clone();
            std::thread::spawn(move || session::serve(s, &ctx));
        }
    });
}

/// A hybrid vsock backend stand-in on `uds`: answers `CONNECT 5000` with `OK 5000`, then runs
/// an agent session on the stream.
fn hybrid_backend(uds: &Path) {
    let l = UnixListener::bind(uds).unwrap();
    let ctx = agent_ctx();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 5000");
                s.write_all(b"OK 5000\n").unwrap();
                let _ = session::serve(s, &ctx);
            });
        }
    });
}

fn vm_run(run_dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(VM_RUN)
        .env("VMSILO_RUN_DIR", run_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn vm_run_round_trips_stdio_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    plain_agent(&dir.path().join("t-command.socket"));
    let out = vm_run(
        dir.path(),
        &["t", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 42"],
        b"from stdin\n",
    );
    assert_eq!(out.stdout, b"FROM STDIN\n");
    assert_eq!(out.stderr, b"to-stderr\n");
    assert_eq!(out.status.code(), Some(42));

    let out = vm_run(dir.path(), &["t", "sh", "-c", "kill -KILL $$"], b"");
    assert_eq!(out.status.code(), Some(128 + 9));

    let out = vm_run(dir.path(), &["-d", "t", "sleep", "5"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());

    let out = vm_run(dir.path(), &["t", "/no/such/program"], b"");
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start \"/no/such/program\""), "{err}");

    let out = vm_run(dir.path(), &["nosuchvm", "true"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchvm-command.socket"));
}

#[test]
fn vm_run_forwards_signals_it_receives() {
    let dir = tempfile::tempdir().unwrap();
    plain_agent(&dir.path().join("t-command.socket"));
    let mut child = Command::new(VM_RUN)
        .env("VMSILO_RUN_DIR", dir.path())
        .args([
            "t",
            "sh",
            "-c",
            "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(5));
}

/// A fake agent that answers with `reply` after reading the client's first frame.
fn hostile_agent(path: &Path, reply: fn(&mut UnixStream)) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = read_message(&mut s);
                reply(&mut s);
            });
        }
    });
}

fn max_child_rss_kib() -> i64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it and keeps no pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss
}

#[test]
fn hostile_agent_bytes_end_vm_run_cleanly_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (&'static str, fn(&mut UnixStream), &'static str);
    let cases: [Case; 5] = [
        (
            "huge",
            |s| {
                s.write_all(&u32::MAX.to_be_bytes()).unwrap();
                let _ = s.write_all(&vec![0u8; 1 << 20]);
            },
            "frame length 4294967295",
        ),
        (
            "random",
            |s| {
                let junk: Vec<u8> = (0..100_000u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                let _ = s.write_all(&junk);
            },
            "malformed frame",
        ),
        (
            "badtype",
            |s| {
                write_message(
                    s,
                    &Message::Hello {
                        version: PROTOCOL_VERSION,
                    },
                )
                .unwrap();
                let _ = read_message(s);
                s.write_all(&[0, 0, 0, 2, 0x99, 0]).unwrap();
            },
            "unknown message type 0x99",
        ),
        (
            "truncated",
            |s| {
                s.write_all(&[0, 0, 0, 100, 1]).unwrap();
            },
            "closed the stream in the middle of a frame",
        ),
        (
            "outoforder",
            |s| {
                write_message(
                    s,
                    &Message::Hello {
                        version: PROTOCOL_VERSION,
                    },
                )
                .unwrap();
                let _ = read_message(s);
                write_message(s, &Message::Stdout(vec![b'x'; 10])).unwrap();
            },
            "during program start",
        ),
    ];
    for (name, reply, expect) in cases {
        hostile_agent(&dir.path().join(format!("{name}-command.socket")), reply);
        let out = vm_run(dir.path(), &[name, "true"], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{name}: {err}");
        assert!(err.contains(expect), "{name}: {err}");
    }
    // A flood of well-formed output is streamed, not accumulated: 256 MiB through vm-run.
    hostile_agent(&dir.path().join("flood-command.socket"), |s| {
        write_message(
            s,
            &Message::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let _ = read_message(s);
        write_message(s, &Message::Started { pid: 1 }).unwrap();
        let frame =
            vmsilo_protocol::encode(&Message::Stdout(vec![b'y'; vmsilo_protocol::MAX_DATA_LEN]))
                .unwrap();
        for _ in 0..4096 {
            if s.write_all(&frame).is_err() {
                return;
            }
        }
        write_message(s, &Message::Exit(vmsilo_protocol::ExitStatus::Code(0))).unwrap();
    });
    let child = Command::new(VM_RUN)
        .env("VMSILO_RUN_DIR", dir.path())
        .args(["flood", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(child.code(), Some(0));
    let rss = max_child_rss_kib();
    assert!(rss < 64 * 1024, "vm-run peaked at {rss} KiB");
}

/// `vmsilo proxy` started the way systemd would: the listening socket as fd 3,
/// LISTEN_FDS=1 and LISTEN_PID set to the proxy's own pid.
struct ProxyProc(Child);
impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(run_dir: &Path, config: &Path, vm: &str, extra: &[&str]) -> ProxyProc {
    start_proxy_env(run_dir, config, vm, extra, &[])
}

fn start_proxy_env(
    run_dir: &Path,
    config: &Path,
    vm: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> ProxyProc {
    let listener = UnixListener::bind(run_dir.join(format!("{vm}-command.socket"))).unwrap();
    let mut cmd = vmsilo::proxy::socket_activated(Path::new(VMSILO), &listener);
    cmd.arg("proxy")
        .arg("--config")
        .arg(config)
        .arg(vm)
        .args(extra)
        .env("VMSILO_RUN_DIR", run_dir)
        .env("VMSILO_LOG", "info")
        .envs(env.iter().copied());
    let child = cmd.spawn().unwrap();
    drop(listener);
    ProxyProc(child)
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{"user":"u","userUid":1000,"nixosVms":[
            {"id":3,"name":"work","vsock":{"transport":"vhost-user"},"dependsOn":["net"]},
            {"id":5,"name":"net","vsock":{"transport":"vhost-user"}},
            {"id":7,"name":"dead","vsock":{"transport":"vhost-user"}}]}"#,
    )
    .unwrap();
    path
}

#[test]
fn proxy_starts_dependencies_then_the_vm_and_forwards_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = write_config(dir.path());
    let log = dir.path().join("starts.log");
    // Like a VM service, the start command keeps running while the VM is up.
    let start = format!("echo {{vm}} >> {}; exec sleep 30", log.display());
    let _p = start_proxy(
        &run,
        &config,
        "work",
        &["--start-command", &start, "--agent-timeout", "30"],
    );

    // Play the VM services: bring a VM's "guest" up once its start command has run.
    let watcher = {
        let (run, log) = (run.clone(), log.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut up = Vec::new();
            while up.len() < 2 && Instant::now() < deadline {
                let started = std::fs::read_to_string(&log).unwrap_or_default();
                for vm in started.lines() {
                    if !up.iter().any(|u| u == vm) {
                        std::fs::create_dir_all(run.join(vm)).unwrap();
                        hybrid_backend(&run.join(vm).join("vsock.sock"));
                        up.push(vm.to_owned());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = vm_run(
        &run,
        &["work", "sh", "-c", "cat; echo done"],
        b"via proxy\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via proxy\ndone\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    watcher.join().unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "net\nwork\n",
        "dependency must start first"
    );

    // Ten concurrent sessions through the running proxy; the VM is not started again.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let run = run.clone();
            std::thread::spawn(move || {
                vm_run(
                    &run,
                    &["work", "sh", "-c", &format!("echo {i}; exit {i}")],
                    b"",
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        assert_eq!(out.status.code(), Some(i as i32));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "net\nwork\n");
}

#[test]
fn proxy_reports_a_vm_that_never_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = write_config(dir.path());
    // The "VM" keeps running but its agent never answers: the timeout applies.
    let _p = start_proxy(
        &run,
        &config,
        "dead",
        &["--start-command", "sleep 30", "--agent-timeout", "2"],
    );
    let t = Instant::now();
    let out = vm_run(&run, &["dead", "true"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("VM \"dead\" did not come up"), "{err}");
    assert!(err.contains("within 2s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn proxy_reports_a_vm_whose_start_command_dies() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = write_config(dir.path());
    let _p = start_proxy(
        &run,
        &config,
        "dead",
        &["--start-command", "exit 3", "--agent-timeout", "60"],
    );
    let t = Instant::now();
    let out = vm_run(&run, &["dead", "true"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("did not come up: its start command exited (exit status: 3)"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "waited for the timeout instead"
    );
}

#[test]
fn vm_run_tty_uses_raw_mode_and_forwards_resizes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    plain_agent(&dir.path().join("t-command.socket"));
    let ws = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).unwrap();
    let mut cmd = Command::new(VM_RUN);
    cmd.env("VMSILO_RUN_DIR", dir.path())
        .args(["-t", "t", "sh", "-c", "stty size; read x; stty size"])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty vm-run's controlling
    // terminal so resizing it sends vm-run SIGWINCH, as in a terminal emulator.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let read_until = |master: &mut std::fs::File, seen: &mut Vec<u8>, want: &str| {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(seen).contains(want) {
            let n = master.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "pty closed before {want:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut master, &mut seen, "40 120");
    // vm-run put our terminal into raw mode.
    let t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    assert!(
        !t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO),
        "terminal not raw"
    );
    let ws = nix::pty::Winsize {
        ws_row: 50,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
    assert_eq!(rc, 0);
    // Let the SIGWINCH reach vm-run before the input that ends `read`.
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"go\r").unwrap();
    read_until(&mut master, &mut seen, "50 132");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    assert!(
        t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO),
        "terminal mode not restored"
    );
}

// ---- systemd over D-Bus: a private dbus-daemon with a fake org.freedesktop.systemd1 ----------

/// A private bus (Debian `dbus`) standing in for the system bus; killed on drop.
struct Bus(Child, String);

impl Bus {
    fn start() -> Self {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon is needed (Debian package dbus)");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        Self(child, line.trim().to_owned())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Records StartUnit/StopUnit calls; "starting" a `-vm.service` brings that VM's guest up.
struct FakeManager {
    calls: Arc<std::sync::Mutex<Vec<String>>>,
    run: PathBuf,
}

#[zbus::interface(interface = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    fn start_unit(&self, name: String, mode: String) -> zbus::fdo::Result<zbus::OwnedObjectPath> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("StartUnit {name} {mode}"));
        let vm = name
            .strip_prefix("vmsilo-")
            .and_then(|n| n.strip_suffix("-vm.service"))
            .ok_or_else(|| zbus::fdo::Error::Failed(format!("Unit {name} not found.")))?;
        if vm == "dead" {
            return Err(zbus::fdo::Error::Failed(format!("Unit {name} not found.")));
        }
        let uds = self.run.join(vm).join("vsock.sock");
        if !uds.exists() {
            std::fs::create_dir_all(self.run.join(vm)).unwrap();
            hybrid_backend(&uds);
        }
        Ok(zbus::OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap())
    }

    fn stop_unit(&self, name: String, mode: String) -> zbus::OwnedObjectPath {
        self.calls
            .lock()
            .unwrap()
            .push(format!("StopUnit {name} {mode}"));
        zbus::OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/2").unwrap()
    }
}

/// Serve the fake manager on `bus` from a background runtime; returns its call log.
fn fake_systemd(bus: &Bus, run: &Path) -> Arc<std::sync::Mutex<Vec<String>>> {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mgr = FakeManager {
        calls: calls.clone(),
        run: run.to_owned(),
    };
    let addr = bus.1.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _conn = zbus::connection::Builder::address(addr.as_str())
                .name("org.freedesktop.systemd1")
                .serve_at("/org/freedesktop/systemd1", mgr)
                .build()
                .await
                .unwrap();
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("fake systemd did not come up");
    calls
}

#[test]
fn proxy_and_vm_start_stop_drive_systemd_over_dbus() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config = write_config(dir.path());
    let bus = Bus::start();
    let calls = fake_systemd(&bus, &run);

    // The proxy, with no --start-command, asks systemd for the dependency, then the VM.
    let listener_env = [("DBUS_SYSTEM_BUS_ADDRESS", bus.1.as_str())];
    let _p = start_proxy_env(
        &run,
        &config,
        "work",
        &["--agent-timeout", "30"],
        &listener_env,
    );
    let out = vm_run(&run, &["work", "echo", "via systemd"], b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via systemd\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "StartUnit vmsilo-net-vm.service replace",
            "StartUnit vmsilo-work-vm.service replace"
        ]
    );

    // A unit systemd refuses reaches vm-run as a clear error.
    let _d = start_proxy_env(
        &run,
        &config,
        "dead",
        &["--agent-timeout", "30"],
        &listener_env,
    );
    let out = vm_run(&run, &["dead", "true"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        err.contains("cannot start unit vmsilo-dead-vm.service through systemd")
            && err.contains("Unit vmsilo-dead-vm.service not found"),
        "{err}"
    );
    assert_eq!(err.matches("not found").count(), 1, "{err}");

    // vm-start starts dependencies first; vm-stop stops the VM.
    calls.lock().unwrap().clear();
    for (bin, vm) in [
        (env!("CARGO_BIN_EXE_vm-start"), "work"),
        (env!("CARGO_BIN_EXE_vm-stop"), "work"),
    ] {
        let out = Command::new(bin)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.1)
            .env("VMSILO_CONFIG", &config)
            .arg(vm)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "StartUnit vmsilo-net-vm.service replace",
            "StartUnit vmsilo-work-vm.service replace",
            "StopUnit vmsilo-work-vm.service replace"
        ]
    );
}

/// A peer that accepts and then says nothing after `reply`, holding the connection open.
fn silent_peer(path: &Path, reply: fn(&mut UnixStream)) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            reply(&mut s);
            held.push(s);
        }
    });
}

#[test]
fn vm_run_ends_on_sigint_sigterm_sighup_before_the_program_starts() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    // Nothing at all; Hello but never Started.
    silent_peer(&dir.path().join("mute-command.socket"), |_| {});
    silent_peer(&dir.path().join("hello-command.socket"), |s| {
        let _ = read_message(s);
        write_message(
            s,
            &Message::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
    });
    for vm in ["mute", "hello"] {
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            let mut child = Command::new(VM_RUN)
                .env("VMSILO_RUN_DIR", dir.path())
                .args([vm, "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                child.try_wait().unwrap().is_none(),
                "{vm}: vm-run gave up on its own"
            );
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
            let t = Instant::now();
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    panic!("{vm}: vm-run ignored {sig} before the program started");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert_eq!(status.code(), Some(128 + sig as i32), "{vm} {sig}: {err}");
            assert!(
                err.contains(&format!("interrupted by {sig} before the program started")),
                "{vm} {sig}: {err}"
            );
        }
    }
}

#[test]
fn a_handshake_that_never_finishes_times_out() {
    let (client, mut agent) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let _ = read_message(&mut agent);
        write_message(
            &mut agent,
            &Message::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let _ = read_message(&mut agent);
        // Never answers the Exec; keeps the stream open until the client gives up.
        let mut rest = Vec::new();
        let _ = agent.read_to_end(&mut rest);
    });
    let (_tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut started = false;
    let t = Instant::now();
    let err = vmsilo::vm_run::run_session_with(
        client,
        vmsilo_protocol::ExecRequest {
            argv: vec![b"true".to_vec()],
            ..Default::default()
        },
        rx,
        &mut Vec::new(),
        &mut Vec::new(),
        Duration::from_millis(500),
        &mut || started = true,
    )
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!started);
    assert!(
        matches!(err, vmsilo::vm_run::VmRunError::HandshakeTimeout(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not start the program within"));
    assert_eq!(err.exit_code(), 255);
    drop(err);
    peer.join().unwrap();
    // The real limit outlasts the proxy's default 60 s wait for a booting VM.
    assert!(vmsilo::vm_run::HANDSHAKE_TIMEOUT > Duration::from_secs(60));
}

#[test]
fn an_oversized_command_is_the_users_error_not_the_guests() {
    let dir = tempfile::tempdir().unwrap();
    // An agent is there, so a request that reached it would fail differently.
    plain_agent(&dir.path().join("t-command.socket"));
    let many: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    let mut args = vec!["t".to_owned(), "echo".to_owned()];
    args.extend(many);
    let big = "a".repeat(100_000);
    let long_cwd = format!("--cwd=/{}", "d".repeat(5000));
    let cases: [(Vec<String>, &str); 3] = [
        (args, "5001 words (program and arguments); at most 4096"),
        (
            vec!["t".into(), "echo".into(), big.clone(), big.clone(), big],
            "at most 262144 fit in one request",
        ),
        (
            vec![long_cwd, "t".into(), "true".into()],
            "working directory is 5001 bytes; at most 4096",
        ),
    ];
    for (args, expect) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = vm_run(dir.path(), &refs, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("the command is too large to send"), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("malformed"), "{err}");
    }
}
