//! `vmsilo-tray`: the user's tray icon for vmsilo VMs (see `vmsilo::tray`).

use std::process::ExitCode;

use clap::Parser;
use vmsilo::tray::TrayArgs;

fn main() -> ExitCode {
    let args = TrayArgs::parse();
    vmsilo::init_logging(&args.log_level);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vmsilo::tray::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", vmsilo::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
