//! Ctrl-C, SIGTERM and SIGHUP during `vmsilo demo`: stop everything the demo started, remove
//! its temporary work directory, and exit 128 + the signal number.
//!
//! The signals are blocked in every thread and taken by one thread with `sigwait`, so cleanup
//! runs as ordinary code rather than in a signal handler. Every process the demo starts goes
//! through [`spawn`], which records it under the same lock the cleanup holds, so nothing can be
//! started behind the cleanup's back.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// What the cleanup needs to know.
struct State {
    /// Set once a signal arrived; no process is started after that.
    stopping: bool,
    /// Processes the demo started and hasn't reaped yet, with what they are.
    children: Vec<(i32, String)>,
    /// Where the VM services (started by the proxies, not by us) write `<vm>.service.pid`.
    logs: Option<PathBuf>,
    /// The work directory, when it is the demo's own temporary one.
    temp_work: Option<PathBuf>,
    /// When the transcript started, to timestamp the cleanup's lines like the rest.
    start: Option<Instant>,
}

static STATE: Mutex<State> = Mutex::new(State {
    stopping: false,
    children: Vec::new(),
    logs: None,
    temp_work: None,
    start: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Take SIGINT, SIGTERM and SIGHUP from now on. Call before any other thread is started, so
/// every thread inherits the blocked mask (child processes get a clean mask from std).
pub(super) fn install(start: Instant) -> io::Result<()> {
    let set = signals();
    set.thread_block().map_err(io::Error::from)?;
    state().start = Some(start);
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                stop_and_exit(sig);
            }
        })?;
    Ok(())
}

/// The temporary work directory to remove on a signal (`None`: keep it).
pub(super) fn set_temp_work_dir(dir: Option<PathBuf>) {
    state().temp_work = dir;
}

/// Where the VM services' pid files are.
pub(super) fn set_logs(dir: PathBuf) {
    state().logs = Some(dir);
}

/// Start `cmd` as a process the cleanup knows about; call [`forget`] once it is reaped.
pub(super) fn spawn(cmd: &mut Command, what: &str) -> io::Result<Child> {
    let mut st = state();
    if st.stopping {
        drop(st);
        // The signal thread is cleaning up and will exit the process.
        loop {
            std::thread::park();
        }
    }
    let child = cmd.spawn()?;
    if let Ok(pid) = i32::try_from(child.id()) {
        st.children.push((pid, what.to_owned()));
    }
    Ok(child)
}

/// `child` has been reaped; its pid may be reused.
pub(super) fn forget(child: &Child) {
    forget_pid(child.id());
}

/// The process `pid` has been reaped.
pub(super) fn forget_pid(pid: u32) {
    let pid = i32::try_from(pid).unwrap_or(-1);
    state().children.retain(|(p, _)| *p != pid);
}

/// [`Command::status`] through [`spawn`].
pub(super) fn status(cmd: &mut Command, what: &str) -> io::Result<ExitStatus> {
    let mut child = spawn(cmd, what)?;
    let status = child.wait();
    forget(&child);
    status
}

/// [`Command::output`] through [`spawn`].
pub(super) fn output(cmd: &mut Command, what: &str) -> io::Result<Output> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = spawn(cmd, what)?;
    let pid = child.id();
    let out = child.wait_with_output();
    forget_pid(pid);
    out
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// SIGTERM `pids`, wait up to `grace` for them to go, SIGKILL what is left; our own children
/// are reaped so they don't linger as zombies.
fn terminate(pids: &[i32], grace: Duration) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let reap = |pid: i32| {
        use nix::sys::wait::{WaitPidFlag, waitpid};
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    };
    while Instant::now() < deadline {
        pids.iter().copied().for_each(reap);
        if !pids.iter().any(|&p| alive(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        reap(pid);
    }
}

fn stop_and_exit(sig: Signal) -> ! {
    let mut st = state();
    st.stopping = true;
    let elapsed = st.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!("[{elapsed:7.1}s] interrupted by {sig}: stopping what the demo started");
    // The VM services first, so their guests power off cleanly while the proxies that
    // started them still run.
    let services: Vec<i32> = st
        .logs
        .as_ref()
        .and_then(|logs| std::fs::read_dir(logs).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".service.pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect();
    terminate(&services, Duration::from_secs(20));
    let children: Vec<i32> = st.children.iter().map(|(p, _)| *p).collect();
    for (pid, what) in &st.children {
        tracing::debug!(pid, "stopping {what}");
    }
    terminate(&children, Duration::from_secs(5));
    if let Some(work) = &st.temp_work {
        match std::fs::remove_dir_all(work) {
            Ok(()) => println!("            removed the work directory {}", work.display()),
            Err(e) => println!(
                "            could not remove the work directory {}: {e}",
                work.display()
            ),
        }
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(128 + sig as i32);
}
