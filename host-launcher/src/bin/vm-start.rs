//! `vm-start <vm>`: start a VM (and what it depends on) through systemd.

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmStartArgs::parse();
    if let Err(e) = vmsilo::shell::vm_start(&args) {
        eprintln!("vm-start: {}", vmsilo::error_chain(&e));
        std::process::exit(1);
    }
}
