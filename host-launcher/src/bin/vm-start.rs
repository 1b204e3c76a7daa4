//! `vm-start <vm>`: start a VM (and what it depends on) through systemd.

use std::io::Write;

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmStartArgs::parse();
    if let Err(e) = vmsilo::shell::vm_start(&args) {
        let _ = writeln!(
            std::io::stderr(),
            "vm-start: {}",
            vmsilo::tools_cli::error_text(&e)
        );
        std::process::exit(1);
    }
}
