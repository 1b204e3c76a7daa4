//! What each `vmsilo` subcommand does; `main` only parses arguments and sets up logging.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::{Cli, Command, ConfigArg, DesktopArgs, PlanArgs};
use crate::config::{self, Config, ConfigError, Source};
use crate::paths::Paths;
use crate::plan::Plan;

/// Run a parsed command line; the exit code follows each subcommand's documented meaning.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Plan(args) => plan(&args),
        Command::Desktop(args) => desktop(&args),
    }
}

/// Load the document a command was pointed at, saying on stderr which one it is.
pub fn load_config(arg: &ConfigArg) -> Result<(Config, Source), ConfigError> {
    let loaded = config::load_or_default(arg.config.as_deref());
    if let Ok((_, source)) = &loaded {
        match source {
            Source::BundledExample => eprintln!(
                "vmsilo: {} does not exist; using the bundled quick-start example",
                config::SYSTEM_CONFIG
            ),
            Source::File(path) => eprintln!("vmsilo: using {}", path.display()),
        }
    }
    loaded
}

fn check(arg: &ConfigArg) -> Result<ExitCode> {
    match load_config(arg) {
        Ok((config, source)) => {
            println!(
                "{source}: valid ({} VM{})",
                config.nixos_vms.len(),
                if config.nixos_vms.len() == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {}", crate::error_chain(&err));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn plan(args: &PlanArgs) -> Result<ExitCode> {
    let (config, source) = match load_config(&args.config) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {}", crate::error_chain(&err));
            return Ok(ExitCode::FAILURE);
        }
    };
    let paths = match &args.root {
        Some(root) => Paths::under(root),
        None => Paths::system(),
    };
    let mut plan = Plan::new(&config, &paths, &source.to_string());
    if let Some(name) = &args.vm {
        let names: Vec<&str> = config.vm_names().collect();
        plan = match plan.only_vm(name) {
            Some(plan) => plan,
            None => bail!("no VM is named {name:?}; VMs: {}", names.join(", ")),
        };
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &plan).context("writing the plan")?;
        writeln!(out)?;
    } else {
        write!(out, "{plan}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn desktop(args: &DesktopArgs) -> Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {}", crate::error_chain(&err));
            return Ok(ExitCode::FAILURE);
        }
    };
    let opts = crate::desktop::Options {
        launch: crate::desktop::Launch {
            vm_run: args.vm_run.clone(),
            terminal: crate::desktop::parse_terminal(&args.terminal)?,
        },
        icon_dirs: args.icon_dir.clone(),
    };
    let vms = crate::desktop::VmApps::from_config(&config);
    let report = crate::desktop::generate(&vms, &opts, &args.out)?;
    for skipped in &report.skipped {
        eprintln!(
            "vmsilo: {}: skipped {}: {}",
            skipped.vm,
            skipped.source.display(),
            skipped.reason
        );
    }
    println!(
        "{} desktop entries for {} VM{} in {}",
        report.generated.len(),
        vms.len(),
        if vms.len() == 1 { "" } else { "s" },
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
