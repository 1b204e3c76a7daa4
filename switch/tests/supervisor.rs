//! The `vm-switch` binary's main process, driven through its real interface: a config directory
//! of peer files. No VMM needed: checks sockets, children, titles, error messages and shutdown.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Switch {
    child: Child,
    log: PathBuf,
}

impl Switch {
    fn start(dir: &Path, extra: &[&str]) -> Switch {
        let log = dir.with_extension("log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
            .args(["--name", "testnet", "--config-dir"])
            .arg(dir)
            .args(["--no-sandbox", "--log-level", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Switch { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn children(&self) -> Vec<(u32, String)> {
        let pid = self.child.id();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(pid) {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let title = String::from_utf8_lossy(&cmd)
                    .trim_end_matches('\0')
                    .to_string();
                out.push((p, title));
            }
        }
        out
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn write_peer(dir: &Path, name: &str, body: &str) {
    let tmp = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.json"))).unwrap();
}

#[test]
fn peers_come_and_go_with_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"]}"#,
    );
    let sw = Switch::start(&dir, &["--seccomp-mode", "kill"]);
    wait_for("alpha.sock", || dir.join("alpha.sock").exists());
    wait_for("one child titled vm-switch(testnet): alpha", || {
        sw.children()
            .iter()
            .any(|(_, t)| t == "vm-switch(testnet): alpha")
    });

    // Added at runtime.
    write_peer(
        &dir,
        "beta",
        r#"{"name":"beta","mac":"52:54:00:00:00:02","ipv4":["10.9.0.2/24"],"receiveBroadcast":true}"#,
    );
    wait_for("beta.sock", || dir.join("beta.sock").exists());
    wait_for("two children", || sw.children().len() == 2);
    let alpha_pid = sw
        .children()
        .into_iter()
        .find(|(_, t)| t.ends_with(": alpha"))
        .unwrap()
        .0;

    // An invalid file is reported with its path and field, and does not disturb others.
    write_peer(
        &dir,
        "gamma",
        r#"{"name":"gamma","mac":"52:54:00:00:00:03","ipv4":["10.9.0.300/24"]}"#,
    );
    wait_for("error naming the file and field", || {
        let log = sw.log();
        log.contains("gamma.json") && log.contains("ipv4[0]")
    });
    assert!(!dir.join("gamma.sock").exists());

    // Changing beta leaves alpha's child alone.
    write_peer(
        &dir,
        "beta",
        r#"{"name":"beta","mac":"52:54:00:00:00:02","ipv4":["10.9.0.22/24"]}"#,
    );
    wait_for("peer changed", || sw.log().contains("peer changed"));
    // Removed at runtime: socket and child go away, alpha stays.
    std::fs::remove_file(dir.join("beta.json")).unwrap();
    wait_for("beta.sock removed", || !dir.join("beta.sock").exists());
    wait_for("one child left", || sw.children().len() == 1);
    assert_eq!(
        sw.children()[0].0,
        alpha_pid,
        "alpha's child was not restarted"
    );
    assert!(dir.join("alpha.sock").exists());
}

#[test]
fn a_killed_child_is_forked_again_and_sigterm_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"]}"#,
    );
    let mut sw = Switch::start(&dir, &[]);
    wait_for("child", || sw.children().len() == 1);
    let first = sw.children()[0].0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new child", || {
        sw.children().iter().any(|(p, _)| *p != first)
    });
    assert!(dir.join("alpha.sock").exists(), "socket survives the child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sw.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = sw.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.join("alpha.sock").exists(),
        "socket removed on shutdown"
    );
}

#[test]
fn bad_flags_are_rejected_with_the_flag_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args([
            "--buffer-size",
            "300000",
            "--no-sandbox",
            "-d",
            "/nonexistent-vm-switch",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--buffer-size"), "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let file = file.path().to_str().unwrap();
    for (args, flag, says) in [
        (vec!["-n", "", "-d", "/tmp"], "--name", "1 to 64"),
        (vec!["-n", "a/b", "-d", "/tmp"], "--name", "1 to 64"),
        (
            vec!["--fq-codel-target", "10s", "--fq-codel-interval", "1ms"],
            "--fq-codel-target",
            "shorter than",
        ),
        (vec!["-d", file], "--config-dir", "is not a directory"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
            .args(&args)
            .arg("--no-sandbox")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted: {err}");
        assert!(err.contains(flag) && err.contains(says), "{args:?}: {err}");
    }
}

fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        all.push((
            p,
            ppid,
            String::from_utf8_lossy(&cmd)
                .trim_end_matches('\0')
                .to_string(),
        ));
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, pp, t) in &all {
            if *pp == parent {
                out.push((*p, t.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

#[test]
fn the_sandbox_isolates_main_and_children() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"]}"#,
    );
    let log = tmp.path().join("sb.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args(["--name", "sbnet", "--log-level", "info", "--config-dir"])
        .arg(&dir)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let worker = loop {
        if let Some(w) = descendants(child.id())
            .into_iter()
            .find(|(_, t)| t == "vm-switch(sbnet): alpha")
        {
            break w.0;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no sandboxed worker; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_for("alpha.sock in the host directory", || {
        dir.join("alpha.sock").exists()
    });
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for kind in ["net", "pid", "mnt", "ipc", "user"] {
        assert_ne!(
            ns("self", kind),
            ns(&worker.to_string(), kind),
            "worker shares the {kind} namespace"
        );
    }
    // The worker's root is the tmpfs with only /config, /dev, /proc, /tmp.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{worker}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    root.sort();
    assert_eq!(root, ["config", "dev", "proc", "tmp"]);
    // Seccomp is on in the worker (mode 2 = filter).
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "{status}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(
        st.success(),
        "{st:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!dir.join("alpha.sock").exists());
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn sigterm_and_wait(sw: &mut Switch) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sw.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = sw.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vm-switch ignored SIGTERM; log:\n{}",
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fifos_and_badly_named_files_are_skipped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    let mut sw = Switch::start(&dir, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    nix::unistd::mkfifo(&dir.join("u.json"), mode).unwrap();
    let outside = tmp.path().join("fifo");
    nix::unistd::mkfifo(&outside, mode).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("v.json")).unwrap();
    let long = format!("{}.json", "a".repeat(200));
    for odd in ["n o.json", "\u{dc}.json", ".json", long.as_str()] {
        std::fs::write(dir.join(odd), "{}").unwrap();
    }
    // Main is still responsive: a valid peer added afterwards is served.
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"]}"#,
    );
    wait_for("alpha.sock", || is_socket(&dir.join("alpha.sock")));
    for (file, why) in [
        ("u.json", "not a regular file (FIFO)"),
        ("v.json", "not a regular file (FIFO)"),
        ("n o.json", "not a valid VM name"),
        ("\u{dc}.json", "not a valid VM name"),
        ("/.json", "empty"),
        (long.as_str(), "200 bytes long"),
    ] {
        wait_for(&format!("a warning naming {file}"), || {
            sw.log()
                .lines()
                .any(|l| l.contains(file) && l.contains(why))
        });
    }
    assert_eq!(sw.children().len(), 1);
    let st = sigterm_and_wait(&mut sw);
    assert!(st.success(), "{st:?}");
}

#[test]
fn a_second_instance_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"]}"#,
    );
    let sw = Switch::start(&dir, &[]);
    wait_for("alpha.sock", || is_socket(&dir.join("alpha.sock")));
    wait_for("child", || sw.children().len() == 1);
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(dir.join("alpha.sock")).unwrap().ino();
    for sandbox in [true, false] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm-switch"));
        cmd.args(["--log-level", "info", "-d"]).arg(&dir);
        if !sandbox {
            cmd.arg("--no-sandbox");
        }
        let mut second = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let t = Instant::now();
        while second.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = second.kill();
                panic!("the second vm-switch kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = second.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("another vm-switch") && err.contains(".vm-switch.lock"),
            "{err}"
        );
    }
    assert!(
        is_socket(&dir.join("alpha.sock")),
        "first one's socket kept"
    );
    assert_eq!(
        std::fs::metadata(dir.join("alpha.sock")).unwrap().ino(),
        ino
    );
    assert_eq!(sw.children().len(), 1);
}

#[test]
fn only_stale_sockets_are_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    // A regular file and a socket someone listens on sit where peers' sockets would go; a
    // socket nobody listens on is left over from a killed vm-switch.
    std::fs::write(dir.join("c.sock"), "user data").unwrap();
    let live = std::os::unix::net::UnixListener::bind(dir.join("d.sock")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join("e.sock")).unwrap());
    let mut sw = Switch::start(&dir, &[]);
    for (i, n) in ["c", "d", "e"].iter().enumerate() {
        write_peer(
            &dir,
            n,
            &format!(r#"{{"name":"{n}","mac":"52:54:00:00:00:0{}"}}"#, i + 1),
        );
    }
    wait_for("e served on a fresh socket", || {
        sw.children().iter().any(|(_, t)| t.ends_with(": e"))
    });
    wait_for("errors naming c.sock and d.sock", || {
        let log = sw.log();
        log.lines()
            .any(|l| l.contains("c.sock") && l.contains("not a socket"))
            && log
                .lines()
                .any(|l| l.contains("d.sock") && l.contains("another process is listening"))
    });
    assert_eq!(
        std::fs::read_to_string(dir.join("c.sock")).unwrap(),
        "user data"
    );
    assert_eq!(sw.children().len(), 1, "c and d are not served");
    // Once the file is moved away, c is served.
    std::fs::rename(dir.join("c.sock"), tmp.path().join("saved")).unwrap();
    wait_for("c served", || {
        sw.children().iter().any(|(_, t)| t.ends_with(": c"))
    });
    // Someone replaces c's socket with their own file: shutdown leaves it alone.
    std::fs::remove_file(dir.join("c.sock")).unwrap();
    std::fs::write(dir.join("c.sock"), "mine").unwrap();
    let st = sigterm_and_wait(&mut sw);
    assert!(st.success(), "{st:?}");
    assert_eq!(std::fs::read_to_string(dir.join("c.sock")).unwrap(), "mine");
    assert!(
        is_socket(&dir.join("d.sock")),
        "the live socket is untouched"
    );
    assert!(!dir.join("e.sock").exists(), "its own socket is removed");
    drop(live);
}

#[test]
fn a_peer_reusing_a_mac_or_address_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    write_peer(
        &dir,
        "alpha",
        r#"{"name":"alpha","mac":"52:54:00:00:00:01","ipv4":["10.9.0.1/24"],"ipv6":["fd00::1/64"]}"#,
    );
    let sw = Switch::start(&dir, &[]);
    wait_for("alpha.sock", || is_socket(&dir.join("alpha.sock")));
    write_peer(
        &dir,
        "beta",
        r#"{"name":"beta","mac":"52:54:00:00:00:01","ipv4":["10.9.0.2/24"]}"#,
    );
    write_peer(
        &dir,
        "gamma",
        r#"{"name":"gamma","mac":"52:54:00:00:00:03","ipv4":["10.9.0.1/32"]}"#,
    );
    write_peer(
        &dir,
        "delta",
        r#"{"name":"delta","mac":"52:54:00:00:00:04","ipv6":["fd00::1/128"]}"#,
    );
    for (n, what) in [
        ("beta", "mac 52:54:00:00:00:01"),
        ("gamma", "ipv4 address 10.9.0.1"),
        ("delta", "ipv6 address fd00::1"),
    ] {
        wait_for(&format!("{n} refused"), || {
            sw.log().lines().any(|l| {
                l.contains(&format!("{n}.json"))
                    && l.contains(what)
                    && l.contains("\"alpha\"")
                    && l.contains("not served")
            })
        });
    }
    assert!(!dir.join("beta.sock").exists());
    assert!(!dir.join("gamma.sock").exists());
    assert!(!dir.join("delta.sock").exists());
    assert_eq!(sw.children().len(), 1);
    // Once alpha is gone the clash is gone: the others are served (all three are mutually
    // compatible).
    std::fs::remove_file(dir.join("alpha.json")).unwrap();
    wait_for("beta, gamma and delta served", || {
        ["beta", "gamma", "delta"]
            .iter()
            .all(|n| is_socket(&dir.join(format!("{n}.sock"))))
    });
}

#[test]
fn a_killed_sandboxed_main_is_reported_by_the_outer_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    let log = tmp.path().join("sb.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args(["--name", "kill", "--config-dir"])
        .arg(&dir)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let mut main = String::new();
    wait_for("the sandboxed main", || {
        main = std::fs::read_to_string(&children).unwrap_or_default();
        !main.trim().is_empty() && dir.join(".vm-switch.lock").exists()
    });
    let main: i32 = main.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.code(), Some(137), "{text}");
    assert!(
        text.contains("ERROR") && text.contains("sandboxed main process was killed"),
        "default log level must say so:\n{text}"
    );
}
