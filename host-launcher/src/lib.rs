//! vmsilo host tools.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the configuration document: parse, default, validate |
//! | [`derive`] | values computed from the configuration (MACs, PCI slots, TAP names, colours) |
//! | [`paths`] | runtime paths and unit names shared by every part |
//! | [`crosvm`] | the crosvm command line of a VM |
//! | [`plan`] | everything vmsilo would set up for each VM, as text or JSON |
//! | [`cli`] | the `vmsilo` command's arguments |
//! | [`desktop`] | host desktop entries, icons and menu folders generated from guest packages |
//! | [`tray`] | the `vmsilo-tray` StatusNotifierItem: VM states, start/stop, app menus |
//! | [`commands`] | what each `vmsilo` subcommand does |

pub mod cli;
pub mod commands;
pub mod config;
pub mod crosvm;
pub mod derive;
pub mod desktop;
pub mod paths;
pub mod plan;
pub mod tray;

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
        .with_target(false)
        .try_init();
}
