//! The `vmsilo-agent` binary: unix listener, concurrent sessions and the idle watchdog.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vmsilo_protocol::{
    ExecRequest, ExitStatus, Message, PROTOCOL_VERSION, read_message, write_message,
};

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(sock: &Path, extra: &[&str]) -> Agent {
    let user = if nix::unistd::geteuid().is_root() {
        "root"
    } else {
        "unused"
    };
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_vmsilo-agent"))
            .args(["--no-ifname", "--user", user, "--listen-unix"])
            .arg(sock)
            .args(extra)
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if UnixStream::connect(sock).is_ok() {
            return agent;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent did not listen on {}", sock.display());
}

fn run(sock: &Path, script: &str) -> (Vec<u8>, ExitStatus) {
    let mut s = UnixStream::connect(sock).unwrap();
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    read_message(&mut s).unwrap();
    let req = ExecRequest {
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
        ..Default::default()
    };
    write_message(&mut s, &Message::Exec(req)).unwrap();
    let mut out = Vec::new();
    loop {
        match read_message(&mut s).unwrap() {
            Some(Message::Started { .. } | Message::Stderr(_)) => {}
            Some(Message::Stdout(d)) => out.extend(d),
            Some(Message::Exit(st)) => return (out, st),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn serves_concurrent_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _a = agent(&sock, &[]);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || run(&sock, &format!("sleep 0.3; echo {i}; exit {i}")))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (out, st) = h.join().unwrap();
        assert_eq!(out, format!("{i}\n").into_bytes());
        assert_eq!(st, ExitStatus::Code(i as i32));
    }
}

#[test]
fn idle_watchdog_powers_off_only_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let marker = dir.path().join("poweroff");
    let cmd = format!("echo off >> {}", marker.display());
    let _a = agent(
        &sock,
        &["--auto-shutdown-after", "1", "--poweroff-command", &cmd],
    );
    // A command running longer than the idle time keeps the guest up.
    let (_, st) = run(&sock, "sleep 2");
    assert_eq!(st, ExitStatus::Code(0));
    assert!(!marker.exists(), "powered off while a command was running");
    let idle_since = Instant::now();
    while !marker.exists() {
        assert!(
            idle_since.elapsed() < Duration::from_secs(20),
            "no poweroff after going idle"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "powered off before the idle time"
    );
}
