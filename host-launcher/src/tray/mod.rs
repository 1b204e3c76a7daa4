//! `vmsilo-tray`: a StatusNotifierItem showing every VM's state, with Start/Stop/Restart/Shell
//! and the VM's applications in a com.canonical.dbusmenu menu.
//!
//! - [`model`]: states and the menu tree (pure);
//! - [`dbus`]: the item and menu objects on the session bus, and the proxies used;
//! - [`icon`]: colour swatches (PNG for menu items, ARGB pixmaps for the tray icon);
//! - [`apps`]: per-VM application lists from the generated desktop entries.
//!
//! State follows `vmsilo-<vm>-vm.service` through systemd's `PropertiesChanged` signals on the
//! system bus (after `Manager.Subscribe`), never by polling; when systemd's bus name changes
//! owner (daemon re-exec, restart) the units are looked up and followed again. Start, Stop and
//! Restart call the systemd Manager (`StartUnit`/`StopUnit`/`RestartUnit`, mode `replace`;
//! NixOS's polkit rule lets the configured user do that). The item registers with
//! `org.kde.StatusNotifierWatcher` and registers again whenever the watcher's name gets a new
//! owner (plasmashell restarted).

pub mod apps;
pub mod dbus;
pub mod icon;
pub mod model;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use zbus::Connection;

use self::dbus::{ITEM_PATH, MENU_PATH, SYSTEMD_NAME, Shared, WATCHER_NAME};
use self::model::{Action, Model, VmEntry, VmState};
use crate::paths::units;

/// vmsilo's tray icon: each VM's state, Start/Stop/Restart, a shell and its applications.
// (Arguments of `vmsilo-tray`; the doc comments are the `--help` text.)
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vmsilo-tray", version)]
pub struct TrayArgs {
    /// The configuration document listing the VMs.
    #[arg(long, value_name = "CONFIG", default_value = crate::config::SYSTEM_CONFIG)]
    pub config: PathBuf,

    /// Directory with the generated `vmsilo-<vm>-*.desktop` entries (repeatable; default: the
    /// `applications` directory of each XDG data directory).
    #[arg(long = "applications", value_name = "DIR")]
    pub app_dirs: Vec<PathBuf>,

    /// Host terminal command that runs the rest of its arguments, for Shell.
    #[arg(long, value_name = "COMMAND", default_value = "konsole -e")]
    pub terminal: String,

    /// The vm-shell program Shell runs in the terminal.
    #[arg(long, value_name = "PATH", default_value = "vm-shell")]
    pub vm_shell: String,

    /// Log verbosity: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(long, env = "VMSILO_LOG", default_value = "info")]
    pub log_level: String,
}

/// Why the tray could not start.
#[derive(Debug, Error)]
pub enum TrayError {
    /// Reading the configuration failed.
    #[error("loading the configuration")]
    Config(#[source] crate::config::ConfigError),
    /// The terminal command is unusable.
    #[error("--terminal")]
    Terminal(#[source] crate::desktop::DesktopError),
    /// Connecting to a bus failed.
    #[error("connecting to the {0} bus")]
    Connect(&'static str, #[source] zbus::Error),
    /// Exporting the item or menu failed.
    #[error("serving {0} on the session bus")]
    Serve(&'static str, #[source] zbus::Error),
    /// Waiting for a termination signal failed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
}

/// A running tray; dropping it stops its tasks.
#[derive(Debug)]
pub struct Tray {
    /// The state shown.
    pub shared: Arc<Shared>,
    /// The bus name the item owns.
    pub bus_name: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Tray {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How the tray launches things.
#[derive(Debug, Clone)]
struct Launch {
    terminal: Vec<String>,
    vm_shell: String,
}

/// Build the model from the configuration and the generated entries.
fn build_model(config: &crate::config::Config, app_dirs: &[PathBuf]) -> Model {
    let names: Vec<String> = config.vm_names().map(str::to_owned).collect();
    let mut apps = apps::load(app_dirs, &names);
    let vms = config
        .nixos_vms
        .iter()
        .map(|vm| {
            let mut list = apps.remove(&vm.name).unwrap_or_default();
            let suffix = format!(" [{}]", vm.name);
            for app in &mut list {
                if let Some(short) = app.name.strip_suffix(&suffix) {
                    app.name = short.to_owned();
                }
            }
            VmEntry {
                name: vm.name.clone(),
                rgb: vm.color.0,
                unit: units::vm_service(&vm.name),
                state: VmState::Unknown,
                apps: list,
            }
        })
        .collect();
    Model { vms, revision: 1 }
}

/// Start serving the tray for `config` on the given buses.
pub async fn serve(
    args: &TrayArgs,
    config: &crate::config::Config,
    system: Connection,
    session: Connection,
) -> Result<Tray, TrayError> {
    let app_dirs = if args.app_dirs.is_empty() {
        apps::default_dirs()
    } else {
        args.app_dirs.clone()
    };
    let launch = Launch {
        terminal: crate::desktop::parse_terminal(&args.terminal).map_err(TrayError::Terminal)?,
        vm_shell: args.vm_shell.clone(),
    };
    let model = build_model(config, &app_dirs);
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Shared::new(model, tx);

    let server = session.object_server();
    server
        .at(
            ITEM_PATH,
            dbus::Item {
                shared: shared.clone(),
            },
        )
        .await
        .map_err(|e| TrayError::Serve("the StatusNotifierItem", e))?;
    server
        .at(
            MENU_PATH,
            dbus::Menu {
                shared: shared.clone(),
            },
        )
        .await
        .map_err(|e| TrayError::Serve("the menu", e))?;
    let bus_name = format!("org.kde.StatusNotifierItem-{}-1", std::process::id());
    session
        .request_name(bus_name.as_str())
        .await
        .map_err(|e| TrayError::Serve("the item's bus name", e))?;

    let tasks = vec![
        tokio::spawn(log_end(
            "watcher registration",
            register(session.clone(), bus_name.clone()),
        )),
        tokio::spawn(controller(rx, system.clone(), launch)),
        tokio::spawn(log_end(
            "systemd follower",
            follow_systemd(system, session, shared.clone()),
        )),
    ];
    Ok(Tray {
        shared,
        bus_name,
        tasks,
    })
}

/// The `vmsilo-tray` program: connect to the user's buses and serve until SIGTERM/SIGINT.
pub async fn run(args: TrayArgs) -> Result<(), TrayError> {
    let config = crate::config::load(&args.config).map_err(TrayError::Config)?;
    let system = Connection::system()
        .await
        .map_err(|e| TrayError::Connect("system", e))?;
    let session = Connection::session()
        .await
        .map_err(|e| TrayError::Connect("session", e))?;
    let tray = serve(&args, &config, system, session).await?;
    tracing::info!(name = %tray.bus_name, vms = tray.shared.model().vms.len(), "tray ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(TrayError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(TrayError::Signals)?,
    }
    drop(tray);
    Ok(())
}

async fn log_end(what: &'static str, fut: impl Future<Output = zbus::Result<()>>) {
    match fut.await {
        Ok(()) => tracing::warn!("{what} ended"),
        Err(e) => tracing::error!("{what} failed: {}", crate::error_chain(&e)),
    }
}

/// Register with the StatusNotifierWatcher now (if there is one) and whenever one appears.
async fn register(session: Connection, bus_name: String) -> zbus::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(&session).await?;
    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, WATCHER_NAME)])
        .await?;
    let watcher = dbus::WatcherProxy::new(&session).await?;
    let watcher_name = zbus::names::BusName::try_from(WATCHER_NAME)?;
    if dbus.name_has_owner(watcher_name).await? {
        try_register(&watcher, &bus_name).await;
    } else {
        tracing::info!("no StatusNotifierWatcher yet; waiting for one");
    }
    while let Some(signal) = changes.next().await {
        let args = signal.args()?;
        if args.new_owner().is_some() {
            tracing::info!("StatusNotifierWatcher (re)started; registering");
            try_register(&watcher, &bus_name).await;
        }
    }
    Ok(())
}

async fn try_register(watcher: &dbus::WatcherProxy<'_>, bus_name: &str) {
    if let Err(e) = watcher.register_status_notifier_item(bus_name).await {
        tracing::warn!("registering with the StatusNotifierWatcher: {e}");
    }
}

/// Carry out menu clicks.
async fn controller(mut rx: UnboundedReceiver<Action>, system: Connection, launch: Launch) {
    while let Some(action) = rx.recv().await {
        let system = system.clone();
        let launch = launch.clone();
        tokio::spawn(async move {
            let result = match &action {
                Action::Start(unit) => unit_job(&system, unit, Job::Start).await,
                Action::Stop(unit) => unit_job(&system, unit, Job::Stop).await,
                Action::Restart(unit) => unit_job(&system, unit, Job::Restart).await,
                Action::Shell(vm) => {
                    let mut argv = launch.terminal.clone();
                    argv.push(launch.vm_shell.clone());
                    argv.push(vm.clone());
                    spawn(&argv)
                }
                Action::Run(argv) => spawn(argv),
            };
            if let Err(e) = result {
                tracing::error!(?action, "{e}");
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Start,
    Stop,
    Restart,
}

async fn unit_job(system: &Connection, unit: &str, job: Job) -> Result<(), String> {
    let manager = dbus::ManagerProxy::new(system)
        .await
        .map_err(|e| e.to_string())?;
    let r = match job {
        Job::Start => manager.start_unit(unit, "replace").await,
        Job::Stop => manager.stop_unit(unit, "replace").await,
        Job::Restart => manager.restart_unit(unit, "replace").await,
    };
    r.map(|job| tracing::info!(%unit, job = %job.as_str(), "queued"))
        .map_err(|e| format!("{job:?} {unit}: {e}"))
}

fn spawn(argv: &[String]) -> Result<(), String> {
    let (prog, rest) = argv.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(prog)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running {prog}: {e}"))?;
    // Reap it so it doesn't linger as a zombie.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// Follow every VM unit; start over whenever systemd's bus name changes owner.
async fn follow_systemd(
    system: Connection,
    session: Connection,
    shared: Arc<Shared>,
) -> zbus::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(&system).await?;
    let mut owner_changes = dbus
        .receive_name_owner_changed_with_args(&[(0, SYSTEMD_NAME)])
        .await?;
    loop {
        let mut watchers = Vec::new();
        let systemd = zbus::names::BusName::try_from(SYSTEMD_NAME)?;
        if dbus.name_has_owner(systemd).await? {
            let manager = dbus::ManagerProxy::new(&system).await?;
            if let Err(e) = manager.subscribe().await {
                tracing::warn!("systemd Subscribe: {e}");
            }
            let vms: Vec<(String, String)> = shared
                .model()
                .vms
                .iter()
                .map(|v| (v.name.clone(), v.unit.clone()))
                .collect();
            for (vm, unit) in vms {
                let (system, session, shared) = (system.clone(), session.clone(), shared.clone());
                watchers.push(tokio::spawn(async move {
                    if let Err(e) = watch_unit(&system, &session, &shared, &vm, &unit).await {
                        tracing::warn!(%unit, "following the unit: {e}");
                    }
                }));
            }
        } else {
            tracing::warn!("systemd is not on the system bus; waiting for it");
        }
        // Wait until systemd's name changes hands, then look everything up again.
        let Some(_) = owner_changes.next().await else {
            return Ok(());
        };
        for w in watchers {
            w.abort();
        }
        let names: Vec<String> = shared.model().vms.iter().map(|v| v.name.clone()).collect();
        for vm in names {
            set_state(&session, &shared, &vm, VmState::Unknown).await;
        }
    }
}

async fn watch_unit(
    system: &Connection,
    session: &Connection,
    shared: &Arc<Shared>,
    vm: &str,
    unit: &str,
) -> zbus::Result<()> {
    let manager = dbus::ManagerProxy::new(system).await?;
    let path = manager.load_unit(unit).await?;
    let proxy = dbus::UnitProxy::builder(system).path(path).build().await?;
    let mut changes = proxy.receive_active_state_changed().await;
    let state = proxy.active_state().await?;
    set_state(session, shared, vm, VmState::from_active_state(&state)).await;
    while let Some(change) = changes.next().await {
        let state = change.get().await?;
        set_state(session, shared, vm, VmState::from_active_state(&state)).await;
    }
    Ok(())
}

/// Record a VM's new state and tell menu and tray-icon clients.
async fn set_state(session: &Connection, shared: &Arc<Shared>, vm: &str, state: VmState) {
    let revision = {
        let mut model = shared.model();
        if !model.set_state(vm, state) {
            return;
        }
        model.revision
    };
    tracing::info!(%vm, state = state.label(), "state changed");
    if let Err(e) = announce(session, revision).await {
        tracing::warn!("announcing the new state: {e}");
    }
}

async fn announce(session: &Connection, revision: u32) -> zbus::Result<()> {
    let server = session.object_server();
    let menu = server.interface::<_, dbus::Menu>(MENU_PATH).await?;
    dbus::Menu::layout_updated(menu.signal_emitter(), revision, 0).await?;
    let item = server.interface::<_, dbus::Item>(ITEM_PATH).await?;
    dbus::Item::new_icon(item.signal_emitter()).await?;
    dbus::Item::new_tool_tip(item.signal_emitter()).await?;
    Ok(())
}
