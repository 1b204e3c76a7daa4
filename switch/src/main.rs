//! `vm-switch`: parse arguments, set up logging, run the switch.

use std::io::IsTerminal;

use clap::Parser;
use vm_switch::args::Args;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.quiet {
        let filter = tracing_subscriber::EnvFilter::try_from_env("VM_SWITCH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.log_level.as_str()));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    match vm_switch::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-switch: {}", vm_switch::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
