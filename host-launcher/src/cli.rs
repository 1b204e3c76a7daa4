//! Arguments of the `vmsilo` command. The doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Qubes-style VMs on NixOS and KDE Plasma: inspect the configuration and run vmsilo's services.
#[derive(Debug, Parser)]
#[command(name = "vmsilo", version, propagate_version = true)]
pub struct Cli {
    /// Log verbosity: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, global = true, env = "VMSILO_LOG", default_value = "warn")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `vmsilo` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration document; list every problem with its JSON path.
    ///
    /// Exits 0 when the document is valid and 1 otherwise.
    Check(ConfigArg),
    /// Show what vmsilo sets up for each VM: crosvm command, kernel command line, network,
    /// runtime paths and systemd units.
    Plan(PlanArgs),
    /// Generate host desktop entries, VM-coloured icons and a menu folder per VM from each VM's
    /// guest program packages (run at build time).
    Desktop(DesktopArgs),
}

/// Which configuration document to read.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The document; default /etc/vmsilo/config.json if it exists, else the bundled
    /// quick-start example.
    pub config: Option<PathBuf>,
}

/// Arguments of `vmsilo plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Which configuration document to read.
    #[command(flatten)]
    pub config: ConfigArg,

    /// Only this VM (and the vm-switch networks it is on).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Compute paths below this directory instead of /, to try things without root.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Arguments of `vmsilo desktop`.
#[derive(Debug, Args)]
pub struct DesktopArgs {
    /// The configuration document whose VMs' guestPrograms are read.
    #[arg(long, value_name = "CONFIG")]
    pub config: PathBuf,

    /// Output directory; gets share/applications, share/icons, share/desktop-directories and
    /// etc/xdg/menus/applications-merged.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The vm-run program entries launch (a name on PATH or an absolute path).
    #[arg(long, value_name = "PATH", default_value = "vm-run")]
    pub vm_run: String,

    /// Host terminal command that runs the rest of its arguments, for Terminal=true entries.
    #[arg(long, value_name = "COMMAND", default_value = "konsole -e")]
    pub terminal: String,

    /// Extra directory searched for icons a package names but doesn't ship (repeatable).
    #[arg(long, value_name = "DIR")]
    pub icon_dir: Vec<PathBuf>,
}
