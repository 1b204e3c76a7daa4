//! What each `vmsilo` subcommand does; `main` only parses arguments and sets up logging.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::{
    Cli, Command, CompletionsCommand, ConfigArg, DesktopArgs, PlanArgs, ProxyCommand, VmCommand,
};
use crate::config::{self, Config, ConfigError, Source};
use crate::paths::Paths;
use crate::plan::Plan;

/// Run a parsed command line; the exit code follows each subcommand's documented meaning.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Plan(args) => plan(&args),
        Command::Demo(args) => crate::demo::run(&args),
        Command::Proxy(args) => proxy(&args),
        Command::Completions(args) => completions(&args),
        Command::Desktop(args) => desktop(&args),
        Command::Vm(VmCommand::Run(args)) => crate::vm_service::cli::run(&args),
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
            Source::File(path) if arg.config.is_none() => {
                eprintln!("vmsilo: using {}", path.display())
            }
            Source::File(_) => {}
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
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &plan)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write!(out, "{plan}")
    }
    .and_then(|()| out.flush());
    match written {
        // A reader that stops early (`vmsilo plan | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other.context("writing the plan")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn proxy(args: &ProxyCommand) -> Result<ExitCode> {
    let (config, _) = load_config(&ConfigArg {
        config: args.config.clone(),
    })?;
    let mut paths = Paths::system();
    if let Some(dir) = std::env::var_os("VMSILO_RUN_DIR") {
        paths.run_dir = dir.into();
    }
    let p = &args.proxy;
    let starter = match &p.start_command {
        Some(cmd) => {
            crate::proxy::Starter::Command(vec!["/bin/sh".into(), "-c".into(), cmd.clone()])
        }
        None => crate::proxy::Starter::Systemd,
    };
    let cfg = crate::proxy::config_for(
        &config,
        &paths,
        &p.vm,
        starter,
        std::time::Duration::from_secs(p.agent_timeout),
    )?;
    let listener = crate::proxy::listener_from_env()?;
    crate::proxy::Proxy::new(cfg).serve(listener)?;
    Ok(ExitCode::SUCCESS)
}

fn completions(args: &CompletionsCommand) -> Result<ExitCode> {
    if args.completions.vm_names {
        let (config, _) = config::load_or_default(args.config.as_deref())?;
        for name in config.vm_names() {
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let me = std::env::current_exe().context("locating the vmsilo binary")?;
    // Call whatever `vmsilo` is on PATH at completion time when we were started from PATH
    // (store paths change on rebuild); otherwise the absolute path we ran from.
    let exe = if me.file_name().is_some_and(|n| n == "vmsilo")
        && std::env::var_os("VMSILO_COMPLETION_ABSOLUTE").is_none()
    {
        "vmsilo".to_owned()
    } else {
        crate::proxy::sh_quote(&me.to_string_lossy())
    };
    let names = match &args.config {
        Some(path) => format!(
            "{exe} completions --vm-names --config {}",
            crate::proxy::sh_quote(&path.to_string_lossy())
        ),
        None => format!("{exe} completions --vm-names"),
    };
    let script = match args.completions.shell {
        Some(crate::tools_cli::CompletionShell::Bash) | None => {
            crate::tools_cli::bash_completion(&names)
        }
    };
    std::io::stdout()
        .write_all(script.as_bytes())
        .context("writing the completion script")?;
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
    for w in &report.warnings {
        eprintln!("vmsilo: {}: {}: {}", w.vm, w.path.display(), w.message);
    }
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
