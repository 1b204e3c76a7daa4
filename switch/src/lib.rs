//! vm-switch: the vhost-user-net L3 switch between vmsilo VMs.
//!
//! One main process per VM network watches a config directory of peer files and forks one
//! child per VM. Each child is the vhost-user-net backend of its VM; children pass frames to
//! each other through SPSC rings in shared memory that main sets up but never touches.
//!
//! Modules:
//! - [`args`]: command line;
//! - [`peer`]: peer files (one JSON document per VM; the format is documented there);
//! - [`frame`]: bounds-checked Ethernet/ARP/IP/ICMPv6 helpers;
//! - [`forward`]: the pure forwarding core (source validation, proxy ARP/ND, longest-prefix
//!   routing, broadcast to receiving peers);
//! - [`fq_codel`]: per-destination FQ-CoDel (RFC 8290) over an abstract clock;
//! - [`offload`]: checksum/TSO pass-through between guests, software fallback;
//! - [`ring`]: the SPSC frame ring in a sealed memfd with eventfd doorbells (layout there);
//! - [`control`]: the main↔child control channel and the buffer-exchange protocol;
//! - [`datapath`]: one child's switching state, independent of vhost-user;
//! - [`backend`]: the vhost-user-net device (virtqueues ↔ datapath);
//! - [`relay`]: vhost-user message relay that absorbs QEMU's early `SET_VRING_ENABLE`;
//! - [`child`]: a child's life: serve one VMM connection, then exit;
//! - [`supervisor`]: main's loop: directory watch, fork, ring brokering, restarts;
//! - [`sandbox`]: namespaces, pivot_root and seccomp;
//! - [`title`]: process titles `vm-switch(<net>): <vm>`;
//! - [`vq`]: guest RAM and split virtqueues through host pointers, for the frame path.

pub mod args;
pub mod backend;
pub mod child;
pub mod control;
pub mod datapath;
pub mod forward;
pub mod fq_codel;
pub mod frame;
pub mod offload;
pub mod peer;
pub mod relay;
pub mod ring;
pub mod sandbox;
pub mod supervisor;
pub mod title;
pub mod vq;

use args::Args;

/// Render an error with its whole source chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Errors from the top-level run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag value is unusable.
    #[error("{flag}: {message}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Why.
        message: String,
    },
    /// Entering the sandbox failed.
    #[error("sandbox")]
    Sandbox(#[source] sandbox::SandboxError),
    /// The supervisor failed.
    #[error("supervisor")]
    Supervisor(#[source] supervisor::SupervisorError),
}

/// Run the switch with parsed arguments until SIGTERM/SIGINT.
pub fn run(args: Args) -> Result<(), RunError> {
    if !args.buffer_size.is_power_of_two()
        || !(ring::MIN_CAPACITY..=ring::MAX_CAPACITY).contains(&args.buffer_size)
    {
        return Err(RunError::Flag {
            flag: "--buffer-size",
            message: format!(
                "{} must be a power of two between {} and {}",
                args.buffer_size,
                ring::MIN_CAPACITY,
                ring::MAX_CAPACITY
            ),
        });
    }
    if args.buffer_size < 2 * (ring::MAX_RECORD + 16) {
        tracing::warn!(
            "--buffer-size {} cannot hold 64 KiB frames; large frames will be dropped",
            args.buffer_size
        );
    }
    if args.fq_codel_target >= args.fq_codel_interval {
        return Err(RunError::Flag {
            flag: "--fq-codel-target",
            message: format!(
                "{:?} must be shorter than --fq-codel-interval ({:?})",
                args.fq_codel_target, args.fq_codel_interval
            ),
        });
    }
    if let Some(n) = &args.name
        && (n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    {
        return Err(RunError::Flag {
            flag: "--name",
            message: format!(
                "{n:?}: 1 to 64 ASCII letters, digits, '-', '_' or '.' (it names processes)"
            ),
        });
    }
    let dir = std::path::absolute(&args.config_dir).unwrap_or(args.config_dir.clone());
    match std::fs::metadata(&dir) {
        Ok(m) if !m.is_dir() => {
            return Err(RunError::Flag {
                flag: "--config-dir",
                message: format!("{} is not a directory", dir.display()),
            });
        }
        Ok(_) => {}
        // Usually systemd's RuntimeDirectory made it; a missing one may be a typo, so say so.
        Err(_) => {
            tracing::warn!(dir = %dir.display(), "config directory did not exist; creating it")
        }
    }
    let net = args
        .name
        .clone()
        .unwrap_or_else(|| supervisor::default_net_name(&dir));
    let settings = supervisor::Settings {
        net,
        dir: dir.clone(),
        params: fq_codel::Params {
            target: args.fq_codel_target,
            interval: args.fq_codel_interval,
            limit_bytes: args.fq_codel_limit,
            quantum: args.fq_codel_quantum,
        },
        buffer_size: args.buffer_size,
        seccomp: args.seccomp_mode,
    };
    std::fs::create_dir_all(&settings.dir).map_err(|e| RunError::Flag {
        flag: "--config-dir",
        message: format!("cannot create {}: {e}", settings.dir.display()),
    })?;
    // Held until the process (and the sandbox's outer process) exits.
    let _lock = supervisor::lock_dir(&settings.dir).map_err(|message| RunError::Flag {
        flag: "--config-dir",
        message,
    })?;
    let settings = if args.no_sandbox {
        settings
    } else {
        sandbox::enter(settings).map_err(RunError::Sandbox)?
    };
    sandbox::apply_seccomp(sandbox::Role::Main, args.seccomp_mode).map_err(RunError::Sandbox)?;
    supervisor::Supervisor::new(settings)
        .run()
        .map_err(RunError::Supervisor)
}
