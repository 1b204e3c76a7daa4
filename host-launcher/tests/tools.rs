//! `vm-shell` (serial console, vsock bridge for ssh) and `vm-start`/`vm-stop` through their
//! binaries.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VM_SHELL: &str = env!("CARGO_BIN_EXE_vm-shell");
const VM_START: &str = env!("CARGO_BIN_EXE_vm-start");
const VM_STOP: &str = env!("CARGO_BIN_EXE_vm-stop");

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{"user":"u","userUid":1000,"nixosVms":[
            {"id":3,"name":"work","vsock":{"transport":"vhost-user"},"dependsOn":["net"]},
            {"id":5,"name":"net"}]}"#,
    )
    .unwrap();
    path
}

#[test]
fn console_session_copies_both_ways_until_ctrl_bracket() {
    let dir = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = nix::unistd::ttyname(&pty.slave).unwrap();
    // Raw slave: no echo or newline translation, so bytes compare exactly.
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    std::os::unix::fs::symlink(&slave, dir.path().join("work-console")).unwrap();
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"guest banner\n").unwrap();

    let mut child = Command::new(VM_SHELL)
        .args(["--run-dir"])
        .arg(dir.path())
        .arg("work")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed\n").unwrap();
    let mut got = [0u8; 6];
    master.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"typed\n");
    let mut out = child.stdout.take().unwrap();
    let mut banner = [0u8; 13];
    out.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"guest banner\n");
    stdin.write_all(&[b'x', 0x1d, b'y']).unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "Ctrl+] did not end the session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut x = [0u8; 1];
    master.read_exact(&mut x).unwrap();
    assert_eq!(
        &x, b"x",
        "bytes before Ctrl+] are delivered, the rest is not"
    );
}

#[test]
fn console_of_a_stopped_vm_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VM_SHELL)
        .arg("--run-dir")
        .arg(dir.path())
        .arg("work")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the serial console") && err.contains("work-console"),
        "{err}"
    );
}

#[test]
fn vsock_bridge_does_the_hybrid_handshake_for_the_given_port() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let l = UnixListener::bind(dir.path().join("work/vsock.sock")).unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        s.write_all(b"OK 22\nSSH-2.0-fake\n").unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        (line, rest)
    });
    let out = Command::new(VM_SHELL)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(dir.path())
        .args(["--vsock-bridge", "22", "work"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SSH-2.0-client\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"SSH-2.0-fake\n");
    let (line, rest) = backend.join().unwrap();
    assert_eq!(line, b"CONNECT 22");
    assert_eq!(rest, b"SSH-2.0-client\n");
}

#[test]
fn vm_start_and_stop_report_bus_and_name_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let run = |bin: &str, vm: &str| {
        Command::new(bin)
            .env("VMSILO_CONFIG", &cfg)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", dir.path().join("no-bus").display()),
            )
            .arg(vm)
            .output()
            .unwrap()
    };
    let out = run(VM_START, "nosuch");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VM named \"nosuch\""));
    // The dependency's unit is started first.
    let out = run(VM_START, "work");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot start vmsilo-net-vm.service: cannot connect to the system D-Bus"),
        "{err}"
    );
    // Each cause is printed once, even where zbus repeats its source in its own message.
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let out = run(VM_STOP, "work");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot stop vmsilo-work-vm.service: cannot connect to the system D-Bus"),
        "{err}"
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // vm-stop checks the configuration like vm-start, before asking systemd.
    let out = run(VM_STOP, "nosuch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("no VM named \"nosuch\""), "{err}");
}

#[test]
fn tools_reject_names_that_are_not_vm_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let vm_run = env!("CARGO_BIN_EXE_vm-run");
    for bin in [VM_START, VM_STOP, VM_SHELL, vm_run] {
        for bad in ["../../etc", "Work", "a/b", "", "-x", "toolongvmname"] {
            let mut cmd = Command::new(bin);
            cmd.env("VMSILO_CONFIG", &cfg)
                .env("VMSILO_RUN_DIR", dir.path())
                .args(["--", bad]);
            if bin == vm_run {
                cmd.arg("true");
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin} {bad:?}: {err}");
            assert!(err.contains("is not a VM name"), "{bin} {bad:?}: {err}");
        }
    }
}

#[test]
fn console_error_comes_before_any_connected_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VM_SHELL)
        .arg("--run-dir")
        .arg(dir.path())
        .arg("nosuch")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open the serial console"), "{err}");
    assert!(!err.contains("connected"), "{err}");
}

#[test]
fn generated_bash_completion_completes_vm_names_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let script = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .env("VMSILO_COMPLETION_ABSOLUTE", "1")
        .args(["completions", "bash", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(script.status.success());
    let script_path = dir.path().join("vmsilo.bash");
    std::fs::write(&script_path, &script.stdout).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(vm-start ''); COMP_CWORD=1; _vm__start vm-start '' vm-start; echo \"${{COMPREPLY[@]}}\"; \
             COMP_WORDS=(vm-shell --ssh w); COMP_CWORD=2; _vm__shell vm-shell w --ssh; echo \"${{COMPREPLY[@]}}\"",
            script_path.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].split(' ').any(|w| w == "work") && lines[0].split(' ').any(|w| w == "net"),
        "{text}"
    );
    assert_eq!(lines[1], "work", "{text}");
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    Stdio::from(w)
}

fn quickstart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/examples/quickstart.json")
}

#[test]
fn plan_into_a_closed_pipe_exits_quietly() {
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsilo"));
        cmd.arg("plan").arg(quickstart());
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json={json}: {err}");
        assert!(!err.contains("Broken pipe"), "json={json}: {err}");
    }
}

#[test]
fn vm_start_debug_survives_a_closed_stderr_and_has_its_own_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vm-start-debug"))
        .env("VMSILO_CONFIG", quickstart())
        .arg("--root")
        .arg(dir.path())
        .args(["--crosvm", "/nonexistent/crosvm", "banking"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    // It fails (no crosvm) but reports that by exit code, not with a panic (101).
    assert_eq!(out.code(), Some(1));

    let out = Command::new(env!("CARGO_BIN_EXE_vm-start-debug"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("Usage: vm-start-debug"), "{help}");
    assert!(!help.contains("vmsilo vm run"), "{help}");
    assert!(!help.contains("--foreground"), "{help}");
}
