//! Sandbox layers: namespaces + pivot_root for the whole daemon, and seccomp filters per
//! process role (main is allowed to fork, create sockets and watch the config directory;
//! children are not).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::args::SeccompMode;

/// Errors while entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Building the BPF program failed.
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// Installing the filter failed.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    /// A namespace or mount step failed.
    #[error("{step}")]
    Namespace {
        /// What was being done.
        step: String,
        /// errno.
        #[source]
        source: std::io::Error,
    },
}

/// Which process a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The supervisor: forks, creates sockets, watches the config dir.
    Main,
    /// A per-VM worker after its VMM connected: no fork, no socket creation, no open.
    Child,
}

/// Syscalls every role needs.
fn common() -> Vec<i64> {
    vec![
        // I/O on descriptors we already hold: vhost-user socket, eventfds, control socket.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        libc::SYS_lseek,
        // Event loops (vhost-user-backend worker, main's poll).
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_poll,
        libc::SYS_ppoll,
        // Rings: each GetBuffer creates a sealed memfd and two eventfds, then maps it.
        libc::SYS_memfd_create,
        libc::SYS_ftruncate,
        libc::SYS_fcntl,
        libc::SYS_eventfd2,
        libc::SYS_dup,
        // Memory: allocator, guest memory (SET_MEM_TABLE), ring mappings.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        // Threads and time (std, tracing, FQ-CoDel timestamps).
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        // The back-pressure stall timer (created before the child's filter, re-armed after).
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Threads started just before the filter finish their start-up under it.
        libc::SYS_sched_getaffinity,
        libc::SYS_rseq,
        libc::SYS_set_robust_list,
        // Panics abort via tgkill(SIGABRT).
        libc::SYS_tgkill,
    ]
}

/// Extra syscalls for main (and for children before their own filter is applied).
fn main_extra() -> Vec<i64> {
    vec![
        // Forking children and threads inside them.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_tid_address,
        libc::SYS_prlimit64,
        libc::SYS_epoll_create1,
        libc::SYS_pread64,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_kill,
        libc::SYS_seccomp,
        libc::SYS_rt_sigaction,
        libc::SYS_close_range,
        libc::SYS_signalfd4,
        libc::SYS_getppid,
        // vhost-user listening sockets and control socketpairs; accepting the VMM in a child.
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // The child's relay connects to its private abstract socket before locking down.
        libc::SYS_connect,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        // Config directory: watch, list, read peer files, remove sockets.
        libc::SYS_inotify_init1,
        libc::SYS_inotify_add_watch,
        libc::SYS_inotify_rm_watch,
        libc::SYS_openat,
        libc::SYS_getdents64,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_readlink,
        libc::SYS_ioctl,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getcwd,
    ]
}

/// Build the filter for `role`; `None` when seccomp is disabled.
pub fn build(role: Role, mode: SeccompMode) -> Result<Option<BpfProgram>, SandboxError> {
    let on_violation = match mode {
        SeccompMode::Disabled => return Ok(None),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let mut calls = common();
    if role == Role::Main {
        calls.extend(main_extra());
    }
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    if role == Role::Main {
        // Titles, PDEATHSIG, NO_NEW_PRIVS before a child's own filter.
        rules.insert(libc::SYS_prctl, Vec::new());
    } else {
        // Answered with EACCES by `deny_open`, stacked in front of this filter.
        rules.insert(libc::SYS_openat, Vec::new());
        // Thread names only (std names threads as they start).
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )
        .map_err(SandboxError::Build)?;
        rules.insert(
            libc::SYS_prctl,
            vec![SeccompRule::new(vec![cond]).map_err(SandboxError::Build)?],
        );
    }
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let filter = SeccompFilter::new(rules, on_violation, SeccompAction::Allow, arch)
        .map_err(SandboxError::Build)?;
    let prog: BpfProgram = filter.try_into().map_err(SandboxError::Build)?;
    Ok(Some(prog))
}

/// A filter that makes `openat` fail with EACCES instead of killing: glibc's allocator opens
/// `/proc/sys/vm/overcommit_memory` when a thread first grows its arena and copes with failure.
/// Stacked with the child filter (which lets `openat` through), the stricter ERRNO wins.
fn deny_open() -> Result<BpfProgram, SandboxError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_openat, Vec::new())].into();
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(SandboxError::Build)?;
    filter.try_into().map_err(SandboxError::Build)
}

/// Install the filter for `role` on every thread of this process.
pub fn apply_seccomp(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    if let Some(prog) = build(role, mode)? {
        if role == Role::Child {
            seccompiler::apply_filter_all_threads(&deny_open()?).map_err(SandboxError::Install)?;
        }
        seccompiler::apply_filter_all_threads(&prog).map_err(SandboxError::Install)?;
    }
    Ok(())
}

fn ns_err(step: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let step = step.into();
    move |e| SandboxError::Namespace {
        step,
        source: std::io::Error::from(e),
    }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let step = step.into();
    move |source| SandboxError::Namespace { step, source }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Enter the namespace sandbox, before any thread exists:
///
/// 1. `unshare` user (uid/gid 0 inside mapped to the caller), mount, PID, IPC and network
///    namespaces;
/// 2. fork: the original process stays outside the new PID namespace, forwards SIGTERM/SIGINT
///    and exits with the sandboxed process's status; the child is PID 1 and continues;
/// 3. build a tmpfs root with `/config` (the config directory, bind-mounted read-write),
///    `/dev/{null,zero,urandom}`, a fresh `/proc` and `/tmp`, then `pivot_root` into it and
///    detach the old root.
///
/// Returns the settings rewritten for the new root (`dir` = `/config`). Only the sandboxed PID 1
/// returns; the outer process never does.
pub fn enter(
    mut settings: crate::supervisor::Settings,
) -> Result<crate::supervisor::Settings, SandboxError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::signal::{SigSet, Signal};
    use nix::unistd::{ForkResult, fork, getgid, getuid, pivot_root};
    use std::os::fd::AsRawFd;

    let uid = getuid();
    let gid = getgid();
    let dir = settings.dir.clone();
    if !dir.is_dir() {
        return Err(SandboxError::Namespace {
            step: format!("config dir {}", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(ns_err("unshare(user, mount, pid, ipc, net namespaces)"))?;
    std::fs::write("/proc/self/setgroups", "deny").map_err(io_err("write setgroups"))?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))
        .map_err(io_err("write uid_map"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
        .map_err(io_err("write gid_map"))?;

    let mut fwd = SigSet::empty();
    fwd.add(Signal::SIGTERM);
    fwd.add(Signal::SIGINT);
    fwd.add(Signal::SIGHUP);
    fwd.add(Signal::SIGCHLD);
    fwd.thread_block().map_err(ns_err("block signals"))?;
    // SAFETY: single-threaded at this point (called before any thread is started).
    match unsafe { fork() }.map_err(ns_err("fork into the PID namespace"))? {
        ForkResult::Parent { child } => {
            // Outside the PID namespace: relay termination signals, mirror the exit status.
            loop {
                let sig = fwd.wait().unwrap_or(Signal::SIGCHLD);
                if sig == Signal::SIGCHLD {
                    match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => std::process::exit(code),
                        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => {
                            // Nothing inside can say this any more; the children follow main.
                            tracing::error!(
                                signal = %s,
                                "the sandboxed main process was killed; every VM on this network \
                                 lost its switch"
                            );
                            std::process::exit(128 + s as i32)
                        }
                        _ => continue,
                    }
                }
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
        ForkResult::Child => {}
    }
    // PID 1 of the new namespace. Die with the outer process.
    // SAFETY: plain prctl call.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // PID 1 only receives signals it has a handler for: install no-op handlers so the
    // supervisor's signalfd still sees SIGTERM/SIGINT forwarded from outside.
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let act = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(ignore_signal),
            nix::sys::signal::SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: installing a handler that does nothing; no state is touched.
        unsafe { nix::sys::signal::sigaction(sig, &act) }.map_err(ns_err("sigaction"))?;
    }
    fwd.thread_unblock().map_err(ns_err("unblock signals"))?;

    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ns_err("make / private"))?;
    // Keep a handle on the config directory (opened in this mount namespace): its path may be
    // hidden by the new root.
    let dir_fd =
        std::fs::File::open(&dir).map_err(io_err(format!("open config dir {}", dir.display())))?;
    // The new root is a tmpfs mounted over /tmp of this (private) mount namespace.
    let root = std::path::Path::new("/tmp");
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=16m,mode=0755"),
    )
    .map_err(ns_err("mount tmpfs root"))?;
    for d in ["config", "dev", "proc", "tmp", ".old"] {
        std::fs::create_dir(root.join(d)).map_err(io_err(format!("mkdir /{d}")))?;
    }
    let src = format!("/proc/self/fd/{}", dir_fd.as_raw_fd());
    mount(
        Some(src.as_str()),
        &root.join("config"),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(ns_err("bind-mount the config directory"))?;
    drop(dir_fd);
    for dev in ["null", "zero", "urandom"] {
        let target = root.join("dev").join(dev);
        std::fs::File::create(&target).map_err(io_err(format!("create /dev/{dev}")))?;
        mount(
            Some(format!("/dev/{dev}").as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ns_err(format!("bind-mount /dev/{dev}")))?;
    }
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ns_err("mount /proc"))?;
    mount(
        Some("tmpfs"),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=1m,mode=1777"),
    )
    .map_err(ns_err("mount /tmp"))?;
    pivot_root(root, &root.join(".old")).map_err(ns_err("pivot_root"))?;
    std::env::set_current_dir("/").map_err(io_err("chdir /"))?;
    umount2("/.old", MntFlags::MNT_DETACH).map_err(ns_err("detach the old root"))?;
    std::fs::remove_dir("/.old").map_err(io_err("rmdir /.old"))?;
    let _ = SHOWN.set((
        std::path::PathBuf::from(SANDBOX_DIR),
        std::mem::replace(&mut settings.dir, std::path::PathBuf::from(SANDBOX_DIR)),
    ));
    tracing::info!("sandbox entered: namespaces, pivot_root");
    Ok(settings)
}

/// Where the config directory appears inside the sandbox.
const SANDBOX_DIR: &str = "/config";

/// (path inside the sandbox, real path) of the config directory, once the sandbox is entered.
static SHOWN: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
    std::sync::OnceLock::new();

/// `p` as the user knows it: paths under the sandbox's `/config` are shown under the real
/// config directory, so messages name files the user can find.
pub fn shown(p: &std::path::Path) -> std::path::PathBuf {
    match SHOWN.get() {
        Some((inside, real)) => match p.strip_prefix(inside) {
            Ok(rest) if rest.as_os_str().is_empty() => real.clone(),
            Ok(rest) => real.join(rest),
            Err(_) => p.to_path_buf(),
        },
        None => p.to_path_buf(),
    }
}

/// Where to read `p` from inside the sandbox when it is a symlink with an absolute target:
/// `Ok(Some(path))` under `/config` for a target inside the config directory, `Ok(None)` to read
/// `p` as it is (no sandbox, not a link, or a relative link), and an explanation for a target
/// the sandbox cannot see.
pub fn link_target(p: &std::path::Path) -> Result<Option<std::path::PathBuf>, String> {
    let Some((inside, real)) = SHOWN.get() else {
        return Ok(None);
    };
    let Ok(target) = std::fs::read_link(p) else {
        return Ok(None);
    };
    if !target.is_absolute() {
        return Ok(None);
    }
    match target.strip_prefix(real) {
        Ok(rest) => Ok(Some(inside.join(rest))),
        Err(_) => Err(format!(
            "symlink to {}, outside the config directory {}: the sandbox sees only that directory \
             (link within it, or run with --no-sandbox)",
            target.display(),
            real.display()
        )),
    }
}
