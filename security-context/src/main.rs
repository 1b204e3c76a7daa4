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
                // wayland-backend logs a lost connection as an error; the supervisor already
                // reports it with context, and a compositor restart is routine.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wayland_backend=off")),
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
