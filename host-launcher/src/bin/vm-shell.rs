//! `vm-shell [--ssh [--root]] <vm>`: a shell in a VM via its serial console or SSH over vsock.

use std::io::Write;

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmShellArgs::parse();
    match vmsilo::shell::vm_shell(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "vm-shell: {}",
                vmsilo::tools_cli::error_text(&e)
            );
            std::process::exit(1);
        }
    }
}
