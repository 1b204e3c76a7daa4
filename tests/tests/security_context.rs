//! `vmsilo-wayland-context` against the headless smithay compositor in
//! `vmsilo_tests::compositor`: the real binary, real Wayland sockets, no root needed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmsilo_tests::compositor::{ContextInfo, TestCompositor};
use wayland_client::globals::{GlobalListContents, registry_queue_init};
use wayland_client::protocol::wl_registry;
use wayland_client::{Connection, Dispatch, QueueHandle};

const MANAGER: &str = "wp_security_context_manager_v1";
/// Generous: two cores are shared by several builds here.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Build (if stale) and locate the binary under test. It lives in another package of the
/// workspace, so `CARGO_BIN_EXE_*` is not available; building it here also guarantees the test
/// never runs an outdated binary.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/<test binary>
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "vmsilo-security-context"])
            .args(["--bin", "vmsilo-wayland-context"])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some(profile) => {
                cmd.args([
                    "--profile",
                    if profile == "release" {
                        "release"
                    } else {
                        profile
                    },
                ]);
            }
            None => panic!("unexpected test binary location {}", exe.display()),
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building vmsilo-wayland-context failed");
        let bin = profile_dir.join("vmsilo-wayland-context");
        assert!(bin.is_file(), "{} missing after build", bin.display());
        bin
    })
}

/// A running `vmsilo-wayland-context`, its stdout lines and its stderr.
struct ContextProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl ContextProcess {
    fn spawn(args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("XDG_RUNTIME_DIR")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn for_vm(vm: &str, color: &str, listen: &Path, display: &Path) -> Self {
        Self::spawn(
            &[
                "--vm",
                vm,
                "--color",
                color,
                "--listen",
                listen.to_str().unwrap(),
                "--display",
                display.to_str().unwrap(),
            ],
            &[],
        )
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, failing the test (with stderr) if none comes in time.
    fn expect_line(&self, what: &str) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!("no {what} on stdout ({e}); stderr:\n{}", self.stderr()),
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // All of stderr is in once the reader hits end of file.
                if let Some(reader) = self.stderr_reader.take() {
                    reader.join().unwrap();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ContextProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Probe;

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for Probe {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

/// Connect a Wayland client to `socket` and list the globals it is offered.
fn connect_and_list(socket: &Path) -> (Connection, Vec<String>) {
    let stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let conn = Connection::from_socket(stream).unwrap();
    let (globals, _queue) = registry_queue_init::<Probe>(&conn).unwrap();
    let names = globals
        .contents()
        .clone_list()
        .into_iter()
        .map(|g| g.interface)
        .collect();
    (conn, names)
}

fn expected(vm: &str, colour: &str) -> ContextInfo {
    ContextInfo {
        sandbox_engine: Some("org.vmsilo".into()),
        app_id: Some(format!("org.vmsilo.{vm}")),
        instance_id: Some(colour.into()),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    display: PathBuf,
    listen: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let display = dir.path().join("wayland-test");
    let vm_dir = dir.path().join("run/banking");
    std::fs::create_dir_all(&vm_dir).unwrap();
    Setup {
        display,
        listen: vm_dir.join("wayland-0"),
        _dir: dir,
    }
}

#[test]
fn metadata_arrives_and_listener_clients_are_tagged_and_hidden_from_manager() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let proc = ContextProcess::for_vm("banking", "#2ECC71", &s.listen, &s.display);

    assert_eq!(
        proc.expect_line("READY"),
        format!("READY {}", s.listen.display())
    );
    let snap = compositor.snapshot();
    assert_eq!(snap.contexts.len(), 1, "{snap:?}");
    assert_eq!(snap.contexts[0].info, expected("banking", "#2ecc71"));
    assert!(snap.contexts[0].listening);

    // A normal client sees the manager; the security-context client itself is a normal client.
    let (_normal, normal_globals) = connect_and_list(&s.display);
    assert!(normal_globals.iter().any(|g| g == MANAGER));

    let (_vm_client, vm_globals) = connect_and_list(&s.listen);
    assert!(
        !vm_globals.iter().any(|g| g == MANAGER),
        "a client inside the context must not see {MANAGER}: {vm_globals:?}"
    );
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base"] {
        assert!(vm_globals.iter().any(|g| g == needed), "{needed} missing");
    }
    let snap = compositor.snapshot();
    assert_eq!(snap.clients_of(0).count(), 1, "{snap:?}");
    // Ours (the context creator) and the normal probe came in untagged.
    assert_eq!(
        snap.clients.iter().filter(|c| c.context.is_none()).count(),
        2
    );
}

#[test]
fn sigterm_removes_socket_and_stops_new_connections_but_keeps_existing_clients() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut proc = ContextProcess::for_vm("work", "#3498db", &s.listen, &s.display);
    proc.expect_line("READY");
    let (vm_client, _) = connect_and_list(&s.listen);

    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
    assert!(!s.listen.exists(), "listen socket left behind");
    assert!(UnixStream::connect(&s.listen).is_err());
    // The compositor saw close_fd's peer close and stopped accepting.
    compositor
        .wait_for(TIMEOUT, |snap| (!snap.contexts[0].listening).then_some(()))
        .expect("compositor still listening after SIGTERM");
    // Already connected VM clients are not cut off.
    vm_client.roundtrip().unwrap();
    assert!(compositor.snapshot().clients_of(0).all(|c| c.connected));
}

#[test]
fn sigint_is_a_clean_stop_too() {
    let s = setup();
    let _compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut proc = ContextProcess::for_vm("work", "#3498db", &s.listen, &s.display);
    proc.expect_line("READY");
    proc.signal(Signal::SIGINT);
    assert_eq!(proc.wait_exit().code(), Some(0));
    assert!(!s.listen.exists());
}

#[test]
fn killed_process_stops_the_listener() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut proc = ContextProcess::for_vm("work", "#3498db", &s.listen, &s.display);
    proc.expect_line("READY");
    proc.signal(Signal::SIGKILL);
    proc.wait_exit();
    compositor
        .wait_for(TIMEOUT, |snap| (!snap.contexts[0].listening).then_some(()))
        .expect("compositor still listening after the process died");
    // The stale socket file may remain, but nobody accepts on it.
    assert!(UnixStream::connect(&s.listen).is_err());
}

#[test]
fn compositor_restart_recreates_the_listener_at_the_same_path() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut proc = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    let ready = format!("READY {}", s.listen.display());
    assert_eq!(proc.expect_line("READY"), ready);

    // A second compositor on the live socket is refused: the first one really owns it.
    assert!(TestCompositor::start(&s.display, true).is_err());
    // Crash: every connection drops; leave a dead socket file behind like a SIGKILLed KWin.
    compositor.stop().unwrap();
    std::os::unix::net::UnixListener::bind(&s.display)
        .map(drop)
        .unwrap();
    // While the compositor is away the VM's socket is gone, not silently queueing.
    let deadline = Instant::now() + TIMEOUT;
    while s.listen.exists() {
        assert!(
            Instant::now() < deadline,
            "listen socket kept while compositor is down"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    for round in 1..=2 {
        let compositor = TestCompositor::start(&s.display, true).unwrap();
        assert_eq!(proc.expect_line("READY again"), ready, "round {round}");
        let snap = compositor.snapshot();
        assert_eq!(snap.contexts.len(), 1, "{snap:?}");
        assert_eq!(snap.contexts[0].info, expected("banking", "#2ecc71"));
        let (_vm_client, vm_globals) = connect_and_list(&s.listen);
        assert!(!vm_globals.iter().any(|g| g == MANAGER));
        assert_eq!(
            compositor.snapshot().clients_of(0).count(),
            1,
            "round {round}"
        );
        compositor.stop().unwrap();
    }

    proc.signal(Signal::SIGTERM);
    assert_eq!(
        proc.wait_exit().code(),
        Some(0),
        "stderr:\n{}",
        proc.stderr()
    );
    assert!(!s.listen.exists());
}

#[test]
fn waits_for_a_compositor_that_is_not_up_yet_using_the_environment() {
    let s = setup();
    let runtime_dir = s.display.parent().unwrap().to_owned();
    let name = s.display.file_name().unwrap().to_str().unwrap().to_owned();
    let proc = ContextProcess::spawn(
        &[
            "--vm",
            "late",
            "--color",
            "#000000",
            "--listen",
            s.listen.to_str().unwrap(),
        ],
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("WAYLAND_DISPLAY", Path::new(&name)),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.listen.exists());
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    assert_eq!(
        proc.expect_line("READY"),
        format!("READY {}", s.listen.display())
    );
    assert_eq!(
        compositor.snapshot().contexts[0].info,
        expected("late", "#000000")
    );
}

#[test]
fn compositor_without_the_protocol_is_a_clear_error() {
    let s = setup();
    let _compositor = TestCompositor::start(&s.display, false).unwrap();
    let mut proc = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    let status = proc.wait_exit();
    assert!(!status.success());
    let stderr = proc.stderr();
    assert!(
        stderr.contains("does not offer wp_security_context_manager_v1"),
        "{stderr}"
    );
    assert!(!s.listen.exists());
    assert!(
        proc.lines.try_recv().is_err(),
        "printed something on stdout"
    );
}

#[test]
fn listen_path_that_is_not_a_socket_is_left_alone() {
    let s = setup();
    let _compositor = TestCompositor::start(&s.display, true).unwrap();
    std::fs::write(&s.listen, b"precious").unwrap();
    let mut proc = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    let status = proc.wait_exit();
    assert!(!status.success());
    assert!(
        proc.stderr().contains("exists and is not a unix socket"),
        "{}",
        proc.stderr()
    );
    assert_eq!(std::fs::read(&s.listen).unwrap(), b"precious");
}

#[test]
fn stale_socket_at_listen_path_is_replaced() {
    let s = setup();
    let _compositor = TestCompositor::start(&s.display, true).unwrap();
    std::os::unix::net::UnixListener::bind(&s.listen)
        .map(drop)
        .unwrap();
    let proc = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    proc.expect_line("READY");
    connect_and_list(&s.listen);
}

#[test]
fn bad_arguments_are_rejected_with_the_offending_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("banking", "red", "red"),
        ("banking", "#2ecc7", "#2ecc7"),
        ("banking", "2ecc71", "2ecc71"),
        ("banking", "#2ecc7g", "#2ecc7g"),
        ("bad name", "#2ecc71", "bad name"),
        ("../etc", "#2ecc71", "../etc"),
        // vmsilo VM names: lowercase letter, then lowercase/digits/'-', <= 12, no trailing '-'.
        ("Banking", "#2ecc71", "Banking"),
        ("my_vm", "#2ecc71", "my_vm"),
        ("2fast", "#2ecc71", "2fast"),
        ("dev-", "#2ecc71", "dev-"),
        ("abcdefghijklm", "#2ecc71", "abcdefghijklm"),
        ("", "#2ecc71", "--vm"),
    ];
    for (vm, color, needle) in cases {
        let mut proc = ContextProcess::spawn(
            &[
                "--vm",
                vm,
                "--color",
                color,
                "--listen",
                "/nonexistent/x",
                "--display",
                "/nonexistent/y",
            ],
            &[],
        );
        let status = proc.wait_exit();
        assert_eq!(
            status.code(),
            Some(2),
            "{vm:?} {color:?}: {}",
            proc.stderr()
        );
        assert!(
            proc.stderr().contains(needle),
            "{vm:?} {color:?}: {}",
            proc.stderr()
        );
    }
}

#[test]
fn sigterm_while_the_compositor_is_absent_exits_cleanly() {
    let s = setup();
    let mut proc = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    // The retry warning comes after the signal handling is set up.
    let deadline = Instant::now() + TIMEOUT;
    while !proc.stderr().contains("compositor not usable") {
        assert!(
            Instant::now() < deadline,
            "no retry warning: {}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proc.signal(Signal::SIGTERM);
    assert_eq!(
        proc.wait_exit().code(),
        Some(0),
        "stderr:\n{}",
        proc.stderr()
    );
    assert!(!s.listen.exists());
    assert!(proc.lines.try_recv().is_err(), "READY without a compositor");
}

/// The library API the VM service could embed instead of spawning the binary.
#[test]
fn library_listener_lives_until_dropped() {
    use vmsilo_security_context::{Listener, Metadata};
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let conn = Connection::from_socket(UnixStream::connect(&s.display).unwrap()).unwrap();
    let metadata = Metadata::new("lib".parse().unwrap(), "#ABCDEF".parse().unwrap());
    let listener = Listener::create(&conn, &metadata, &s.listen, None).unwrap();
    assert_eq!(listener.path(), s.listen);
    assert_eq!(
        compositor.snapshot().contexts[0].info,
        expected("lib", "#abcdef")
    );
    let (_client, globals) = connect_and_list(&s.listen);
    assert!(!globals.iter().any(|g| g == MANAGER));

    drop(listener);
    assert!(!s.listen.exists());
    compositor
        .wait_for(TIMEOUT, |snap| (!snap.contexts[0].listening).then_some(()))
        .expect("still listening after the Listener was dropped");
    // The creator's connection is untouched and can create another one.
    let again = Listener::create(&conn, &metadata, &s.listen, None).unwrap();
    connect_and_list(again.path());
    assert_eq!(compositor.snapshot().clients_of(1).count(), 1);
}

#[test]
fn library_reports_a_missing_protocol() {
    use vmsilo_security_context::{Listener, ListenerError, Metadata};
    let s = setup();
    let _compositor = TestCompositor::start(&s.display, false).unwrap();
    let conn = Connection::from_socket(UnixStream::connect(&s.display).unwrap()).unwrap();
    let metadata = Metadata::new("lib".parse().unwrap(), "#abcdef".parse().unwrap());
    let err = Listener::create(&conn, &metadata, &s.listen, None).unwrap_err();
    assert!(matches!(err, ListenerError::ProtocolMissing), "{err:?}");
    assert!(!err.is_transient());
    assert!(!s.listen.exists());
}

/// The supervisor as a library: readiness callback per (re-)creation and a pipe as stop signal.
#[test]
fn library_supervisor_recreates_and_stops_on_its_stop_fd() {
    use std::os::fd::AsFd;
    use vmsilo_security_context::{Metadata, Retry, Supervisor};
    let s = setup();
    let metadata = Metadata::new("sup".parse().unwrap(), "#102030".parse().unwrap());
    let supervisor =
        Supervisor::new(s.display.clone(), metadata, s.listen.clone()).with_retry(Retry {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            protocol_grace: Duration::from_millis(100),
        });
    let (stop_read, stop_write) = nix::unistd::pipe().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        supervisor.run(stop_read.as_fd(), |path| {
            ready_tx.send(path.to_owned()).unwrap();
        })
    });

    for _ in 0..3 {
        let compositor = TestCompositor::start(&s.display, true).unwrap();
        assert_eq!(ready_rx.recv_timeout(TIMEOUT).unwrap(), s.listen);
        connect_and_list(&s.listen);
        assert_eq!(
            compositor.snapshot().contexts[0].info,
            expected("sup", "#102030")
        );
        compositor.stop().unwrap();
    }
    let _compositor = TestCompositor::start(&s.display, true).unwrap();
    assert_eq!(ready_rx.recv_timeout(TIMEOUT).unwrap(), s.listen);
    nix::unistd::write(&stop_write, b"x").unwrap();
    runner.join().unwrap().unwrap();
    assert!(!s.listen.exists());
}

/// The compositor socket is still the compositor's: a normal client gets the manager global.
fn assert_display_intact(display: &Path) {
    let (_conn, globals) = connect_and_list(display);
    assert!(globals.iter().any(|g| g == MANAGER), "{globals:?}");
}

/// Environment variables for a spawned process.
type Env<'a> = Vec<(&'a str, &'a Path)>;

#[test]
fn listen_path_equal_to_the_display_socket_is_refused() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let runtime_dir = s.display.parent().unwrap().to_owned();
    let name = s.display.file_name().unwrap().to_str().unwrap().to_owned();
    let link = runtime_dir.join("run/link");
    std::os::unix::fs::symlink(&runtime_dir, &link).unwrap();
    let spellings = [
        s.display.clone(),
        runtime_dir.join("run/banking/../../").join(&name),
        link.join(&name),
    ];
    for listen in &spellings {
        let listen_arg = listen.to_str().unwrap();
        // Explicit --display path, a --display name and $WAYLAND_DISPLAY resolved under
        // $XDG_RUNTIME_DIR all name the same socket.
        let runs: [(Vec<&str>, Env<'_>); 3] = [
            (vec!["--display", s.display.to_str().unwrap()], vec![]),
            (
                vec!["--display", &name],
                vec![("XDG_RUNTIME_DIR", &runtime_dir)],
            ),
            (
                vec![],
                vec![
                    ("XDG_RUNTIME_DIR", &runtime_dir),
                    ("WAYLAND_DISPLAY", Path::new(&name)),
                ],
            ),
        ];
        for (extra, env) in runs {
            let mut args = vec!["--vm", "x", "--color", "#123456", "--listen", listen_arg];
            args.extend(extra);
            let mut proc = ContextProcess::spawn(&args, &env);
            let status = proc.wait_exit();
            assert_eq!(status.code(), Some(1), "{args:?}: {}", proc.stderr());
            let stderr = proc.stderr();
            assert!(stderr.contains("is the compositor socket"), "{stderr}");
            assert!(stderr.contains(listen_arg), "{stderr}");
            assert!(proc.lines.try_recv().is_err(), "READY printed: {args:?}");
            assert_display_intact(&s.display);
        }
    }
    assert!(compositor.snapshot().contexts.is_empty());

    // Before the compositor is up the paths are compared by name; nothing is created.
    compositor.stop().unwrap();
    if s.display.exists() {
        std::fs::remove_file(&s.display).unwrap();
    }
    let mut proc = ContextProcess::for_vm("x", "#123456", &spellings[1], &s.display);
    assert_eq!(proc.wait_exit().code(), Some(1), "{}", proc.stderr());
    assert!(proc.stderr().contains("is the compositor socket"));
    assert!(!s.display.exists());
}

#[test]
fn second_instance_on_a_live_listen_path_is_refused_and_changes_nothing() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut first = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    first.expect_line("READY");

    let mut second = ContextProcess::for_vm("work", "#e74c3c", &s.listen, &s.display);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", second.stderr());
    let stderr = second.stderr();
    assert!(stderr.contains("is a live socket"), "{stderr}");
    assert!(
        stderr.contains(s.listen.to_str().unwrap()),
        "path not named: {stderr}"
    );
    assert!(second.lines.try_recv().is_err(), "second printed READY");

    // The first VM's listener is untouched: new clients still get the first VM's colour (the
    // second instance's probe connection shows up there too, already closed).
    assert!(s.listen.exists(), "second instance removed the socket");
    let (_client, _) = connect_and_list(&s.listen);
    let snap = compositor.snapshot();
    assert_eq!(snap.contexts.len(), 1, "{snap:?}");
    assert_eq!(snap.contexts[0].info, expected("banking", "#2ecc71"));
    assert!(snap.contexts[0].listening);
    assert_eq!(
        snap.clients_of(0).filter(|c| c.connected).count(),
        1,
        "{snap:?}"
    );

    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "{}", first.stderr());
    assert!(!s.listen.exists());
}

#[test]
fn exit_leaves_a_socket_that_replaced_ours_alone() {
    let s = setup();
    let compositor = TestCompositor::start(&s.display, true).unwrap();
    let mut first = ContextProcess::for_vm("banking", "#2ecc71", &s.listen, &s.display);
    first.expect_line("READY");
    // Someone removes our socket and another instance takes the path over.
    std::fs::remove_file(&s.listen).unwrap();
    let _second = {
        let second = ContextProcess::for_vm("work", "#e74c3c", &s.listen, &s.display);
        second.expect_line("READY");
        second
    };
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "{}", first.stderr());
    assert!(
        s.listen.exists(),
        "first instance removed the second's socket"
    );
    connect_and_list(&s.listen);
    let snap = compositor.snapshot();
    assert_eq!(snap.contexts[1].info, expected("work", "#e74c3c"));
    assert_eq!(snap.clients_of(1).count(), 1, "{snap:?}");
}
