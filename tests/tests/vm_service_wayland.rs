//! The VM service with the real `vmsilo-wayland-context` against the headless test compositor
//! (crosvm is the recorder): the service starts the helper as the configured user, waits for its
//! `READY <path>`, hands crosvm the listener, and on SIGTERM the listener goes away with the VM.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use vmsilo_tests::compositor::{ContextInfo, TestCompositor};
use vmsilo_tests::vm_service::{fake_crosvm, vmsilo_bin, workspace_bin};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn security_context_lives_and_dies_with_the_vm() {
    let helper = workspace_bin("vmsilo-security-context", "vmsilo-wayland-context");
    let vmsilo = vmsilo_bin();
    let dir = tempfile::tempdir().unwrap();
    // The helper runs as the user: it must reach the compositor socket.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let user_run = dir.path().join("user-run");
    fs::create_dir_all(&user_run).unwrap();
    fs::set_permissions(&user_run, fs::Permissions::from_mode(0o755)).unwrap();
    let display = user_run.join("wayland-0");
    let compositor = TestCompositor::start(&display, true).unwrap();
    fs::set_permissions(&display, fs::Permissions::from_mode(0o777)).unwrap();

    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc/vmsilo")).unwrap();
    let uid = if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getuid().as_raw()
    };
    let doc = serde_json::json!({
        "user": "vmuser", "userUid": uid,
        "nixosVms": [{ "id": 3, "name": "banking", "color": "#2ecc71", "sharedHome": false,
                       "rootOverlay": { "type": "tmpfs" } }]
    });
    fs::write(root.join("etc/vmsilo/config.json"), doc.to_string()).unwrap();
    let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let crosvm_log = dir.path().join("crosvm.log");
    let mut service = Command::new(vmsilo)
        .args(["--log-level", "info", "vm", "run", "banking", "--root"])
        .arg(&root)
        .arg("--crosvm")
        .arg(fake_crosvm())
        .arg("--wayland-context")
        .arg(&helper)
        .arg("--user-runtime-dir")
        .arg(&user_run)
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("FAKE_CROSVM_LOG", &crosvm_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(service.id()).unwrap());
    let guard = Guard(pid);
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 64];
    loop {
        if let Ok(n) = notify.recv(&mut buf)
            && &buf[..n] == b"READY=1"
        {
            break;
        }
        if let Some(status) = service.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut service.stderr.take().unwrap(), &mut err).unwrap();
            panic!("service exited before READY=1: {status}\n{err}");
        }
        if Instant::now() > deadline {
            let _ = killpg(pid, Signal::SIGKILL);
            panic!("no READY=1");
        }
    }

    // The compositor has the VM's context, committed before crosvm started.
    let snapshot = compositor.snapshot();
    assert_eq!(snapshot.contexts.len(), 1);
    assert_eq!(
        snapshot.contexts[0].info,
        ContextInfo {
            sandbox_engine: Some("org.vmsilo".into()),
            app_id: Some("org.vmsilo.banking".into()),
            instance_id: Some("#2ecc71".into()),
        }
    );
    assert!(snapshot.contexts[0].listening);
    let listen = root.join("run/vmsilo/banking/wayland-0");
    assert!(listen.exists());
    let log = fs::read_to_string(&crosvm_log).unwrap();
    assert!(
        log.contains(&format!("\"--wayland-sock\", \"{}\"", listen.display())),
        "{log}"
    );
    // A guest window would connect here and arrive tagged with the VM's context.
    let _client = std::os::unix::net::UnixStream::connect(&listen).unwrap();
    compositor
        .wait_for(TIMEOUT, |s| s.clients_of(0).next().map(|_| ()))
        .expect("client through the VM's listener");

    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = killpg(pid, Signal::SIGKILL);
            panic!("service did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::mem::forget(guard);
    assert!(status.success(), "{status}");
    assert!(!listen.exists(), "listener removed");
    compositor
        .wait_for(TIMEOUT, |s| (!s.contexts[0].listening).then_some(()))
        .expect("the compositor stopped accepting on the VM's listener");
}

/// Kills the service's process group if the test panics before it stopped.
struct Guard(Pid);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}
