//! `vm-shell [--ssh [--root]] <vm>`: a shell in a VM via its serial console or SSH over vsock.

use clap::Parser;

fn main() {
    let args = vmsilo::tools_cli::VmShellArgs::parse();
    match vmsilo::shell::vm_shell(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vm-shell: {}", vmsilo::error_chain(&e));
            std::process::exit(1);
        }
    }
}
