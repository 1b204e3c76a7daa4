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

/// Install the filter for `role` on every thread of this process.
pub fn apply_seccomp(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    if let Some(prog) = build(role, mode)? {
        seccompiler::apply_filter_all_threads(&prog).map_err(SandboxError::Install)?;
    }
    Ok(())
}

/// Enter the namespace sandbox. Not implemented yet: refuse rather than run unsandboxed
/// silently.
pub fn enter(
    settings: crate::supervisor::Settings,
) -> Result<crate::supervisor::Settings, SandboxError> {
    let _ = settings;
    Err(SandboxError::Namespace {
        step: "namespace sandbox is not implemented yet; run with --no-sandbox".into(),
        source: std::io::Error::from(std::io::ErrorKind::Unsupported),
    })
}
