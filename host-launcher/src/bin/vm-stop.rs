//! `vm-stop <vm>`: stop a VM through systemd.

use std::io::Write;

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmStopArgs::parse();
    if let Err(e) = vmsilo::shell::vm_stop(&args) {
        let _ = writeln!(
            std::io::stderr(),
            "vm-stop: {}",
            vmsilo::tools_cli::error_text(&e)
        );
        std::process::exit(1);
    }
}
