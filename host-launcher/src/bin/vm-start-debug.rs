//! `vm-start-debug <vm> [vmsilo vm run options]`: run a VM in the foreground with its console
//! on stdout and info logging — `vmsilo vm run --foreground` under the name users know.

use std::process::ExitCode;

use clap::Parser;
use vmsilo::cli::Cli;

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = vec![
        "vmsilo".into(),
        "--log-level".into(),
        "info".into(),
        "vm".into(),
        "run".into(),
    ];
    argv.push("--foreground".into());
    argv.extend(std::env::args_os().skip(1));
    let cli = Cli::parse_from(argv);
    vmsilo::init_logging(&cli.log_level);
    match vmsilo::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", vmsilo::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
