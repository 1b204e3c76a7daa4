//! `vm-run <vm> <command…>`: run a program in a VM and return its exit status.

use std::io::Write;

use clap::Parser;
use vmsilo::tools_cli::VmRunArgs;
use vmsilo::vm_run::{RunRequest, run_cli};

fn main() {
    let a = VmRunArgs::parse();
    let req = RunRequest {
        vm: a.vm,
        argv: a.command,
        env: a.env,
        cwd: a.cwd,
        tty: a.tty,
        detach: a.detach,
    };
    let code = match run_cli(&a.run_dir.run_dir, &req) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "vm-run: {}",
                vmsilo::tools_cli::error_text(&e)
            );
            // Like ssh: 255 means vm-run itself failed, not the guest program; 2 means the
            // command line can never work (bad VM name, request over the protocol limits).
            e.exit_code()
        }
    };
    std::process::exit(code);
}
