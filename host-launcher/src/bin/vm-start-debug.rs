//! `vm-start-debug <vm> [vmsilo vm run options]`: run a VM in the foreground with its console
//! on stdout and info logging — `vmsilo vm run --foreground` under the name users know.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use vmsilo::cli::{Cli, Command, VmCommand, VmRunArgs};

/// Run a VM in the foreground, outside systemd, with its serial console on stdout and info
/// logs on stderr, to watch it boot. Ctrl-C powers it off.
#[derive(Debug, Parser)]
#[command(name = "vm-start-debug", version)]
struct Args {
    /// Log verbosity: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, env = "VMSILO_LOG", default_value = "info")]
    log_level: String,
    #[command(flatten)]
    run: VmRunArgs,
}

/// Like `vmsilo::init_logging`, but a closed stderr (`vm-start-debug … 2>&1 | head`) must not
/// panic: tracing-subscriber reports its own write failures with `eprintln!`, which panics
/// when stderr is gone, so that report is switched off.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in log files, journald or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .log_internal_errors(false)
        .try_init();
}

fn main() -> ExitCode {
    // --foreground is implied, so it is not offered.
    let cmd = Args::command().mut_arg("foreground", |a| a.hide(true));
    let args = match Args::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let mut run = args.run;
    run.foreground = true;
    let cli = Cli {
        log_level: args.log_level,
        command: Command::Vm(VmCommand::Run(Box::new(run))),
    };
    init_logging(&cli.log_level);
    match vmsilo::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Not eprintln!: a closed stderr must not turn a failure into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                vmsilo::error_chain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}
