//! Child processes of the service: spawned with a clean signal mask, in their own process group,
//! and tied to the service's life.
//!
//! The service blocks SIGTERM/SIGINT/SIGCHLD and reads them from a signalfd, and a blocked mask
//! is inherited across exec, so every child gets its mask reset first. Own process group: a
//! Ctrl-C in a `vm-start-debug` terminal reaches the service, which then shuts the guest down
//! properly, instead of killing the VMM under it. Parent-death signal: if the service itself is
//! killed, its children do not linger; the VMM gets SIGKILL, because a QEMU stuck before its main
//! loop never acts on SIGTERM. Descriptors: nothing above stderr is passed on.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What a child gets when the service dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathSignal {
    /// A chance to clean up (helpers that remove their sockets).
    Term,
    /// Gone for sure (the VMM, which may be stuck where it cannot act on SIGTERM).
    Kill,
}

/// Prepare `cmd` as a service child (see the module docs).
pub fn prepare(cmd: &mut Command, death: DeathSignal) {
    let death_signal = match death {
        DeathSignal::Term => libc::SIGTERM,
        DeathSignal::Kill => libc::SIGKILL,
    } as libc::c_ulong;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec in the child and only calls
    // async-signal-safe functions (sigprocmask, prctl, close_range) on memory it owns; it
    // allocates nothing. close_range only sets CLOEXEC, so std's own exec-error pipe (already
    // CLOEXEC) keeps working.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Whatever the service itself inherited (a supervisor's pipes, a jobserver) is not
            // the child's business: mark every fd above stderr close-on-exec. Kernels before
            // 5.11 lack the flag; then nothing changes, which is what we had anyway.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}

/// Send `signal` to a child that may already have exited.
pub fn signal(child: &Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// Wait up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL (if it still runs) and reap.
pub fn kill(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// SIGTERM, wait `grace`, then SIGKILL and reap.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child, Signal::SIGTERM);
    if let Ok(Some(status)) = wait_timeout(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}
