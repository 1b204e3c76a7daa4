//! vmsilo host tools.
//!
//! - [`vsock`] — host→guest transports (kernel AF_VSOCK, hybrid vsock over a unix socket).
//! - [`vm_run`] — the `vm-run` client of the command protocol.
//! - [`proxy`] — `vmsilo proxy <vm>`, the socket-activated command proxy.
//! - [`units`] — systemd D-Bus calls (start/stop VM units).
//! - [`tools_cli`] — command lines of `vm-run`, `vm-start`, `vm-stop`, `vm-shell`, and their
//!   bash completion.

pub mod proxy;
pub mod tools_cli;
pub mod units;
pub mod vm_run;
pub mod vsock;

/// Render an error with its whole `source()` chain on one line, for the single top-level report.
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
