//! vmsilo host tools.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the configuration document: parse, default, validate |
//! | [`derive`] | values computed from the configuration (MACs, PCI slots, TAP names, colours) |
//! | [`paths`] | runtime paths and unit names shared by every part |
//! | [`crosvm`] | the crosvm command line of a VM |
//! | [`demo`] | `vmsilo demo`: the quick-start example as tiny real VMs |
//! | [`plan`] | everything vmsilo would set up for each VM, as text or JSON |
//! | [`cli`] | the `vmsilo` command's arguments |
//! | [`desktop`] | host desktop entries, icons and menu folders generated from guest packages |
//! | [`files`] | reading user-supplied files without hanging on FIFOs or devices |
//! | [`tray`] | the `vmsilo-tray` StatusNotifierItem: VM states, start/stop, app menus |
//! | [`commands`] | what each `vmsilo` subcommand does |
//! | [`vsock`] | host→guest transports (kernel AF_VSOCK, hybrid vsock over a unix socket) |
//! | [`vm_run`] | the `vm-run` client of the command protocol |
//! | [`proxy`] | `vmsilo proxy <vm>`, the socket-activated command proxy |
//! | [`shell`] | `vm-shell` (serial console, SSH over vsock), `vm-start`, `vm-stop` |
//! | [`units`] | systemd D-Bus calls (start/stop VM units) |
//! | [`tools_cli`] | command lines of `vm-run`, `vm-start`, `vm-stop`, `vm-shell`, and their bash completion |
//! | [`vm_service`] | `vmsilo vm run`: prepare, run and tear down one VM |
//! | [`qemu`] | the QEMU command line (second VMM backend) |

pub mod cli;
pub mod commands;
pub mod config;
pub mod crosvm;
pub mod demo;
pub mod derive;
pub mod desktop;
pub mod files;
pub mod paths;
pub mod plan;
pub mod proxy;
pub mod qemu;
pub mod shell;
pub mod tools_cli;
pub mod tray;
pub mod units;
pub mod vm_run;
pub mod vm_service;
pub mod vsock;

/// An error and its causes on one line, `outer: inner: root`, for the top-level report.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Send `tracing` output to stderr at `level` (a level name or an env-filter directive).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in log files, journald or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not turn a log line into a panic.
        .log_internal_errors(false)
        .with_target(false)
        .try_init();
}
