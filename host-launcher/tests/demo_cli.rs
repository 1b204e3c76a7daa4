//! `vmsilo demo` up to the point where it would need real tools: its arguments, the
//! prerequisites step (with a fake apt-get), and Ctrl-C / SIGTERM while a step runs. Fake tools
//! on a private PATH stand in for the real ones, so nothing is installed and no VM is booted.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A sandbox for one demo run: a PATH holding only the given fake tools, a kernel tree with a
/// kernel in it, a vhost-device-vsock, and a TMPDIR for the work directory.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["bin", "tmp", "kroot/boot", "vmtest"] {
            std::fs::create_dir_all(s.path(d)).unwrap();
        }
        std::fs::write(s.path("kroot/boot/vmlinuz-6.1.0-99-amd64"), "").unwrap();
        std::fs::write(s.path("vhost-device-vsock"), "").unwrap();
        std::fs::write(s.path("vmtest/build-initramfs.sh"), "").unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsilo"));
        cmd.arg("demo")
            .args(["--kroot".as_ref(), self.path("kroot").as_os_str()])
            .args(["--vmtest".as_ref(), self.path("vmtest").as_os_str()])
            .args(args)
            .env("PATH", self.path("bin"))
            .env("TMPDIR", self.path("tmp"))
            .env("VHOST_DEVICE_VSOCK", self.path("vhost-device-vsock"))
            .env_remove("VMSILO_LOG")
            .env_remove("VMSILO_KROOT")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// What is left in TMPDIR (the demo's work directories).
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

/// A demo run that a failing test must not leave behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn an_unknown_accelerator_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let out = sb.run(&["--accel", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid value 'bogus' for '--accel <ACCEL>'")
            && stderr.contains("[possible values: auto, kvm, tcg]"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
    assert!(sb.leftovers().is_empty());
}

#[test]
fn the_transcript_says_which_accelerator_and_why() {
    let sb = Sandbox::new();
    // Nothing on PATH: the run stops at the prerequisites, after choosing the accelerator.
    let out = sb.run(&["--accel", "tcg", "--no-install"]);
    assert!(
        text(&out.stdout).contains("] accelerator: TCG (--accel tcg)\n"),
        "{}",
        text(&out.stdout)
    );
    let out = sb.run(&["--no-install"]);
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("] accelerator: "))
        .unwrap_or_else(|| panic!("no accelerator line in:\n{stdout}"));
    let why = if !Path::new("/dev/kvm").exists() {
        "TCG: there is no /dev/kvm"
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        "TCG: /dev/kvm is KVM-PVM (module kvm_pvm is loaded), which cannot boot stock kernels"
    } else {
        // KVM, or TCG because /dev/kvm can't be opened: either way it says why.
        ": /dev/kvm "
    };
    assert!(line.contains(why), "{line}");
    assert!(line.ends_with("(--accel kvm or tcg to choose)"), "{line}");
}

#[test]
fn no_install_lists_what_is_missing_with_the_right_advice() {
    let sb = Sandbox::new();
    let out = sb.run(&["--no-install", "--accel", "tcg"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "the demo needs:\n  - apt-get install qemu-system-x86 busybox-static xz-utils iproute2 apt\n"
        ),
        "{stderr}"
    );
    let advice = if is_root() {
        "(run `vmsilo demo` without --no-install to install these automatically)"
    } else {
        "(run `vmsilo demo` as root without --no-install to install these automatically)"
    };
    assert!(stderr.contains(advice), "{stderr}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// apt is asked first; what it would remove or downgrade is in the transcript; its own output
/// (dpkg's progress included) goes to a log that the error names and that is kept.
#[test]
fn install_shows_apt_changes_first_and_keeps_apt_output_in_a_log() {
    let sb = Sandbox::new();
    let calls = sb.path("apt-calls");
    script(
        &sb.path("bin/apt-get"),
        &format!(
            r#"echo "$*" >> {calls}
if [ "$1" = -s ]; then
  echo "NOTE: This is only a simulation!"
  echo "Remv foo-tools [2.0-1]"
  echo "Inst qemu-utils [1:10.0.2+ds-1~bpo12+1] (1:7.2+dfsg-7+deb12u7 Debian:12.12/oldstable [amd64])"
  echo "Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u7 Debian:12.12/oldstable [amd64])"
  exit 0
fi
if [ "$1" = install ]; then
  echo "(Reading database ... 5%"
  echo "E: Sub-process /usr/bin/dpkg returned an error code (1)" >&2
  exit 100
fi
exit 0
"#,
            calls = calls.display()
        ),
    );
    let out = sb.run(&["--accel", "tcg"]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    if !is_root() {
        assert!(stderr.contains("(run `vmsilo demo` as root to install these automatically)"));
        return;
    }
    assert!(
        stdout.contains(
            "] apt-get will change 2 packages already installed:\n\
             \x20             - remove foo-tools 2.0-1\n\
             \x20             - downgrade qemu-utils 1:10.0.2+ds-1~bpo12+1 -> 1:7.2+dfsg-7+deb12u7\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("Reading database"), "{stdout}");
    let calls = std::fs::read_to_string(&calls).unwrap();
    let pkgs = "qemu-system-x86 busybox-static xz-utils iproute2";
    assert_eq!(
        calls,
        format!(
            "update -qq\n-s install -y --no-install-recommends {pkgs}\n\
             install -y --no-install-recommends -qq {pkgs}\n"
        )
    );
    let log = stderr
        .split("its output is in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no log named in: {stderr}"));
    assert!(stderr.contains("apt-get install failed"), "{stderr}");
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(
        log_text.contains("(Reading database ... 5%") && log_text.contains("E: Sub-process"),
        "{log_text}"
    );
    assert!(Path::new(log).starts_with(sb.path("tmp")));
}

/// SIGINT or SIGTERM while a step runs (here a slow fake `cargo build`): the step's process is
/// stopped, the work directory removed, and the exit status is 128 + the signal.
#[test]
fn a_signal_stops_the_running_step_and_removes_the_work_directory() {
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        let sb = Sandbox::new();
        for tool in ["qemu-system-x86_64", "busybox", "xz", "ip", "apt-get"] {
            script(&sb.path(&format!("bin/{tool}")), "exit 1\n");
        }
        let pid_file = sb.path("cargo.pid");
        script(
            &sb.path("bin/cargo"),
            &format!(
                "echo $$ > {}.tmp && /bin/mv {0}.tmp {0}\nexec /bin/sleep 60\n",
                pid_file.display()
            ),
        );
        let mut child = KillOnDrop(
            sb.command(&["--accel", "tcg"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut child.0;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut transcript = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "cargo never ran: {transcript:?}");
            while let Ok(line) = rx.try_recv() {
                transcript.push(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cargo: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let work = sb.leftovers();
        assert_eq!(work.len(), 1, "{work:?}");
        assert!(
            work[0]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmsilo-demo.")
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vmsilo demo did not exit after {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
            transcript.push(line);
        }
        let transcript = transcript.join("\n");
        assert_eq!(status.code(), Some(code), "{sig}: {transcript}");
        assert!(
            transcript.contains(&format!(
                "interrupted by {sig}: stopping what the demo started"
            )),
            "{transcript}"
        );
        assert!(sb.leftovers().is_empty(), "{sig}: {:?}", sb.leftovers());
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(cargo), None).is_err(),
            "{sig}: the step's process {cargo} still runs"
        );
    }
}
