//! `vmsilo vm run`: from parsed arguments to a running VM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Outcome, Tools, VmmPlan, plan};
use crate::cli::VmRunArgs;
use crate::paths::Paths;
use crate::qemu::Accel;

/// The tool locations and timeouts the arguments ask for.
pub fn tools(args: &VmRunArgs) -> Tools {
    Tools {
        crosvm: args.crosvm.clone(),
        qemu: args.qemu.clone(),
        qemu_img: args.qemu_img.clone(),
        vhost_device_vsock: args.vhost_device_vsock.clone(),
        wayland_context: args.wayland_context.clone(),
        sysfs: args.sysfs.clone(),
        user_runtime_dir: args.user_runtime_dir.clone(),
        wayland_display: args.wayland_display.clone(),
        accel: args
            .accel
            .as_deref()
            .map(|a| if a == "kvm" { Accel::Kvm } else { Accel::Tcg }),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        start_timeout: Duration::from_secs(args.start_timeout),
        mirror_console: args.foreground,
    }
}

/// Run the VM; exit 0 when it powered off (by itself or on request), 1 on any failure.
pub fn run(args: &VmRunArgs) -> Result<ExitCode> {
    let paths = match &args.root {
        Some(root) => Paths::under(root),
        None => Paths::system(),
    };
    let config_file: PathBuf = args
        .config
        .clone()
        .unwrap_or_else(|| paths.config_file.clone());
    // The config error already names the file.
    let config = crate::config::load(&config_file)?;
    let tools = tools(args);
    let plan = plan(&config, &args.vm, &paths, &tools)?;
    if let (VmmPlan::Qemu(_), Some(vm)) = (&plan.vmm, config.vm(&args.vm)) {
        for missing in super::plan::qemu_unsupported(vm) {
            tracing::warn!(vm = %args.vm, "not available with vmm = \"qemu\": {missing}");
        }
    }
    if args.foreground {
        // Not eprintln!: a closed stderr (`vm-start-debug … 2>&1 | head`) must not panic.
        let _ = writeln!(
            std::io::stderr(),
            "vmsilo: starting {} (console: {}; Ctrl-C powers it off)",
            args.vm,
            plan.console_link.display()
        );
    }
    let outcome = super::run(plan, &tools).with_context(|| format!("VM {}", args.vm))?;
    tracing::info!(vm = %args.vm, ?outcome, "VM stopped");
    if args.foreground {
        let _ = writeln!(
            std::io::stderr(),
            "vmsilo: {} stopped ({outcome:?})",
            args.vm
        );
    }
    Ok(match outcome {
        Outcome::GuestExited
        | Outcome::PoweredOff
        | Outcome::Forced
        | Outcome::StoppedWhileStarting
        | Outcome::GuestRebooted => ExitCode::SUCCESS,
    })
}
