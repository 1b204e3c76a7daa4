//! The agent's session handling over unix socket pairs, driven through the wire protocol.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmsilo_guest::session::{self, Context};
use vmsilo_guest::watchdog::Activity;
use vmsilo_protocol::{
    ExecRequest, ExitStatus, Message, PROTOCOL_VERSION, WinSize, read_message, write_message,
};

fn ctx() -> Arc<Context> {
    Arc::new(Context {
        // Used only when the tests run as root; otherwise commands run as the current user.
        user: "root".into(),
        base_path: "/usr/local/bin:/usr/bin:/bin".into(),
        wayland_display: "wayland-test".into(),
        x_display: ":7".into(),
        activity: Arc::new(Activity::new()),
    })
}

fn start(ctx: &Arc<Context>) -> UnixStream {
    let (a, b) = UnixStream::pair().unwrap();
    let ctx = ctx.clone();
    std::thread::spawn(move || session::serve(b, &ctx));
    a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    a
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()],
        ..Default::default()
    }
}

fn open(req: ExecRequest, ctx: &Arc<Context>) -> UnixStream {
    let mut s = start(ctx);
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    assert_eq!(
        read_message(&mut s).unwrap(),
        Some(Message::Hello {
            version: PROTOCOL_VERSION
        })
    );
    write_message(&mut s, &Message::Exec(req)).unwrap();
    assert!(matches!(
        read_message(&mut s).unwrap(),
        Some(Message::Started { .. })
    ));
    s
}

/// Collect output until the exit status.
fn finish(s: &mut UnixStream) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match read_message(s).unwrap() {
            Some(Message::Stdout(d)) => out.extend(d),
            Some(Message::Stderr(d)) => err.extend(d),
            Some(Message::Exit(st)) => {
                assert_eq!(
                    read_message(s).unwrap(),
                    None,
                    "Exit must be the last message"
                );
                return (out, err, st);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn stdio_and_exit_code_round_trip() {
    let c = ctx();
    let mut s = open(sh("tr a-z A-Z; echo oops >&2; exit 3"), &c);
    write_message(&mut s, &Message::Stdin(b"hello ".to_vec())).unwrap();
    write_message(&mut s, &Message::Stdin(b"world\n".to_vec())).unwrap();
    write_message(&mut s, &Message::StdinEof).unwrap();
    let (out, err, st) = finish(&mut s);
    assert_eq!(out, b"HELLO WORLD\n");
    assert_eq!(err, b"oops\n");
    assert_eq!(st, ExitStatus::Code(3));
}

#[test]
fn large_output_arrives_complete_in_bounded_frames() {
    let c = ctx();
    let mut s = open(sh("head -c 1000000 /dev/zero"), &c);
    let (out, _, st) = finish(&mut s);
    assert_eq!(out.len(), 1_000_000);
    assert_eq!(st, ExitStatus::Code(0));
}

#[test]
fn desktop_environment_and_request_env_are_set() {
    let c = ctx();
    let mut req = sh("echo $WAYLAND_DISPLAY $DISPLAY $XDG_RUNTIME_DIR $PATH $EXTRA; pwd");
    req.env.push((b"EXTRA".to_vec(), b"x y".to_vec()));
    req.cwd = Some(b"/tmp".to_vec());
    let mut s = open(req, &c);
    let (out, _, _) = finish(&mut s);
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("wayland-test :7 /run/user/{uid} /usr/local/bin:/usr/bin:/bin x y\n/tmp\n")
    );
}

#[test]
fn signals_reach_the_program_and_are_reported() {
    let c = ctx();
    let mut s = open(sh("echo ready; exec sleep 30"), &c);
    assert_eq!(
        read_message(&mut s).unwrap(),
        Some(Message::Stdout(b"ready\n".to_vec()))
    );
    write_message(&mut s, &Message::Signal(libc::SIGTERM)).unwrap();
    let (_, _, st) = finish(&mut s);
    assert_eq!(st, ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(st.shell_code(), 143);
}

#[test]
fn tty_sessions_get_a_terminal_and_window_size_changes() {
    let c = ctx();
    let mut req = sh("test -t 0 && echo isatty; stty size; read x; stty size");
    req.tty = Some(WinSize {
        rows: 30,
        cols: 100,
    });
    let mut s = open(req, &c);
    // Wait for the first size before resizing so the order is deterministic.
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("30 100") {
        match read_message(&mut s).unwrap() {
            Some(Message::Stdout(d)) => out.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    write_message(
        &mut s,
        &Message::WindowSize(WinSize {
            rows: 50,
            cols: 132,
        }),
    )
    .unwrap();
    write_message(&mut s, &Message::Stdin(b"go\r".to_vec())).unwrap();
    let (rest, err, st) = finish(&mut s);
    out.extend(rest);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("isatty"), "{text}");
    assert!(text.contains("50 132"), "{text}");
    assert!(err.is_empty(), "a tty session reports everything as stdout");
    assert_eq!(st, ExitStatus::Code(0));
}

#[test]
fn detached_programs_keep_running_and_count_as_active() {
    let c = ctx();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    let mut req = sh(&format!("sleep 0.5; echo > {}", marker.display()));
    req.detach = true;
    let s = open(req, &c);
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.activity.running(), 1);
    for _ in 0..100 {
        if marker.exists() && c.activity.running() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("detached program did not finish or was not counted down");
}

#[test]
fn client_disconnect_hangs_up_the_program() {
    let c = ctx();
    let mut s = open(sh("echo ready; exec sleep 30"), &c);
    assert_eq!(
        read_message(&mut s).unwrap(),
        Some(Message::Stdout(b"ready\n".to_vec()))
    );
    assert_eq!(c.activity.running(), 1);
    drop(s);
    for _ in 0..100 {
        if c.activity.running() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("program survived its client going away");
}

#[test]
fn wrong_version_and_bad_programs_get_error_frames() {
    let c = ctx();
    let mut s = start(&c);
    write_message(&mut s, &Message::Hello { version: 999 }).unwrap();
    match read_message(&mut s).unwrap() {
        Some(Message::Error(e)) => assert!(e.contains("999"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }

    let mut s = start(&c);
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    read_message(&mut s).unwrap();
    write_message(
        &mut s,
        &Message::Exec(ExecRequest {
            argv: vec![b"/nonexistent/prog".to_vec()],
            ..Default::default()
        }),
    )
    .unwrap();
    match read_message(&mut s).unwrap() {
        Some(Message::Error(e)) => assert!(e.contains("/nonexistent/prog"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn garbage_from_the_client_ends_only_that_session() {
    use std::io::Write;
    let c = ctx();
    let mut s = start(&c);
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    match read_message(&mut s).unwrap() {
        Some(Message::Error(e)) => assert!(e.contains("frame length"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    // The agent still serves new sessions.
    let mut s = open(sh("echo ok"), &c);
    assert_eq!(finish(&mut s).0, b"ok\n");
}
