//! `vmsilo`: check and plan configurations, and run vmsilo's host services.

use std::process::ExitCode;

use clap::Parser;
use vmsilo::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    vmsilo::init_logging(&cli.log_level);
    match vmsilo::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", vmsilo::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
