//! `vm-stop <vm>`: stop a VM through systemd.

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmStopArgs::parse();
    if let Err(e) = vmsilo::shell::vm_stop(&args) {
        eprintln!("vm-stop: {}", vmsilo::error_chain(&e));
        std::process::exit(1);
    }
}
