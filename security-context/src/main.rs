//! `vmsilo-wayland-context`: see [`vmsilo_security_context::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use vmsilo_security_context::cli::{Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsilo-wayland-context: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}
