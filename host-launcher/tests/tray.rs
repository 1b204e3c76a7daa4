//! `vmsilo-tray` against private `dbus-daemon`s (Debian `dbus`) standing in for the system and
//! session buses, with a fake systemd (Manager + Unit objects) and a fake
//! StatusNotifierWatcher implemented here. The tray is the real binary.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use vmsilo::tray::model::Layout;
use zbus::object_server::SignalEmitter;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, Variant, fdo, interface, proxy};

const STEP: Duration = Duration::from_millis(50);
const PATIENCE: Duration = Duration::from_secs(30);

fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{tool}` is not on PATH; install the Debian package dbus"))
}

/// A private bus; killed on drop.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start() -> Self {
        let mut child = Command::new(require("dbus-daemon"))
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed {address:?}"
        );
        Self { child, address }
    }

    async fn connect(&self) -> Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- fake systemd ----------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SystemdLog {
    calls: Vec<(String, String)>,
    subscribed: bool,
}

struct FakeManager {
    log: Arc<Mutex<SystemdLog>>,
    units: HashMap<String, OwnedObjectPath>,
}

fn unit_path(unit: &str) -> OwnedObjectPath {
    // systemd's escaping: every byte outside [A-Za-z0-9] becomes _xx.
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for b in unit.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(char::from(b));
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p).unwrap()
}

impl FakeManager {
    async fn job(
        &self,
        server: &zbus::ObjectServer,
        method: &str,
        name: String,
        mode: String,
        new_state: &str,
    ) -> fdo::Result<OwnedObjectPath> {
        let path = self
            .units
            .get(&name)
            .ok_or_else(|| fdo::Error::Failed(format!("Unit {name} not found.")))?
            .clone();
        self.log
            .lock()
            .unwrap()
            .calls
            .push((format!("{method} {name}"), mode));
        set_unit_state(server, &path, new_state).await;
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/42").unwrap())
    }
}

#[interface(interface = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> fdo::Result<OwnedObjectPath> {
        self.job(server, "StartUnit", name, mode, "activating")
            .await
    }

    async fn stop_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> fdo::Result<OwnedObjectPath> {
        self.job(server, "StopUnit", name, mode, "deactivating")
            .await
    }

    async fn restart_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> fdo::Result<OwnedObjectPath> {
        self.job(server, "RestartUnit", name, mode, "activating")
            .await
    }

    async fn load_unit(&self, name: String) -> fdo::Result<OwnedObjectPath> {
        self.units
            .get(&name)
            .cloned()
            .ok_or_else(|| fdo::Error::Failed(format!("Unit {name} not found.")))
    }

    async fn subscribe(&self) {
        self.log.lock().unwrap().subscribed = true;
    }
}

struct FakeUnit {
    state: String,
}

#[interface(interface = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.state.clone()
    }
}

async fn set_unit_state(server: &zbus::ObjectServer, path: &OwnedObjectPath, state: &str) {
    let iface = server
        .interface::<_, FakeUnit>(path.as_str())
        .await
        .unwrap();
    let mut unit = iface.get_mut().await;
    unit.state = state.to_owned();
    unit.active_state_changed(iface.signal_emitter())
        .await
        .unwrap();
}

async fn fake_systemd(bus: &Bus, units: &[&str]) -> (Connection, Arc<Mutex<SystemdLog>>) {
    let log = Arc::new(Mutex::new(SystemdLog::default()));
    let conn = bus.connect().await;
    let mut map = HashMap::new();
    for u in units {
        let path = unit_path(u);
        conn.object_server()
            .at(
                path.as_str(),
                FakeUnit {
                    state: "inactive".into(),
                },
            )
            .await
            .unwrap();
        map.insert((*u).to_owned(), path);
    }
    conn.object_server()
        .at(
            "/org/freedesktop/systemd1",
            FakeManager {
                log: log.clone(),
                units: map,
            },
        )
        .await
        .unwrap();
    conn.request_name("org.freedesktop.systemd1").await.unwrap();
    (conn, log)
}

// ---- fake StatusNotifierWatcher --------------------------------------------------------------

struct FakeWatcher {
    registered: mpsc::UnboundedSender<(String, String)>,
}

#[interface(interface = "org.kde.StatusNotifierWatcher")]
impl FakeWatcher {
    async fn register_status_notifier_item(
        &self,
        service: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let _ = self.registered.send((service, sender));
    }

    #[zbus(signal)]
    async fn status_notifier_item_registered(
        emitter: &SignalEmitter<'_>,
        service: &str,
    ) -> zbus::Result<()>;
}

async fn fake_watcher(bus: &Bus) -> (Connection, mpsc::UnboundedReceiver<(String, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = bus.connect().await;
    conn.object_server()
        .at("/StatusNotifierWatcher", FakeWatcher { registered: tx })
        .await
        .unwrap();
    conn.request_name("org.kde.StatusNotifierWatcher")
        .await
        .unwrap();
    (conn, rx)
}

// ---- client proxies --------------------------------------------------------------------------

#[proxy(interface = "com.canonical.dbusmenu", default_path = "/MenuBar")]
trait DbusMenu {
    fn get_layout(&self, parent: i32, depth: i32, names: &[&str]) -> zbus::Result<(u32, Layout)>;
    fn event(
        &self,
        id: i32,
        event_id: &str,
        data: &Variant<'_>,
        timestamp: u32,
    ) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<u32>;
    #[zbus(signal)]
    fn layout_updated(&self, revision: u32, parent: i32) -> zbus::Result<()>;
}

type Pixmap = (i32, i32, Vec<u8>);

#[proxy(
    interface = "org.kde.StatusNotifierItem",
    default_path = "/StatusNotifierItem"
)]
trait Sni {
    #[zbus(property)]
    fn category(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn item_is_menu(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn menu(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn icon_pixmap(&self) -> zbus::Result<Vec<Pixmap>>;
    #[zbus(property)]
    fn tool_tip(&self) -> zbus::Result<(String, Vec<Pixmap>, String, String)>;
}

// ---- harness ---------------------------------------------------------------------------------

struct Tray {
    child: Child,
}

impl Drop for Tray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    record: PathBuf,
    system: Bus,
    session: Bus,
    config: PathBuf,
    apps: PathBuf,
    recorder: PathBuf,
}

fn fixtures() -> PathBuf {
    let shared = std::env::var_os("VMSILO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("fixtures/guest-packages")
}

fn setup() -> Setup {
    require("dbus-daemon");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let recorder = dir.path().join("recorder");
    std::fs::write(
        &recorder,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r##"{"user":"u","userUid":1000,"nixosVms":[
            {"id":3,"name":"banking","color":"#2ecc71"},
            {"id":5,"name":"work","color":"blue"}]}"##,
    )
    .unwrap();
    // The app menu comes from entries generated by `vmsilo desktop`, launching via the recorder.
    let out = dir.path().join("out");
    let f = fixtures();
    let vms = vec![vmsilo::desktop::VmApps {
        name: "banking".into(),
        color: "#2ecc71".into(),
        packages: vec![f.join("firefox-esr"), f.join("htop")],
    }];
    let mut opts = vmsilo::desktop::Options::default();
    opts.launch.vm_run = recorder.to_string_lossy().into_owned();
    vmsilo::desktop::generate(&vms, &opts, &out).unwrap();
    Setup {
        record,
        system: Bus::start(),
        session: Bus::start(),
        config,
        apps: out.join("share/applications"),
        recorder,
        _dir: dir,
    }
}

impl Setup {
    fn start_tray(&self) -> Tray {
        let child = Command::new(env!("CARGO_BIN_EXE_vmsilo-tray"))
            .arg("--config")
            .arg(&self.config)
            .arg("--applications")
            .arg(&self.apps)
            .arg("--terminal")
            .arg(format!("{} TERM", self.recorder.display()))
            .args(["--vm-shell", "vm-shell", "--log-level", "info"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.system.address)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.session.address)
            // Untranslated app names whatever the machine's locale.
            .env("LANG", "C")
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .spawn()
            .unwrap();
        Tray { child }
    }

    fn recorded(&self) -> String {
        std::fs::read_to_string(&self.record).unwrap_or_default()
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Retry `check` until it returns Some (for state the test can't subscribe to in advance).
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(STEP).await;
        }
    })
    .await
}

fn label(l: &Layout) -> String {
    l.props
        .get("label")
        .map(|v| String::try_from(v.try_clone().unwrap()).unwrap())
        .unwrap_or_default()
}

fn enabled(l: &Layout) -> bool {
    l.props
        .get("enabled")
        .is_none_or(|v| bool::try_from(v.try_clone().unwrap()).unwrap())
}

fn children(l: &Layout) -> Vec<Layout> {
    l.children
        .iter()
        .map(|c| Layout::try_from(c.try_clone().unwrap()).unwrap())
        .collect()
}

async fn vm_labels(menu: &DbusMenuProxy<'_>) -> Vec<String> {
    match menu.get_layout(0, -1, &[]).await {
        Ok((_, root)) => children(&root).iter().map(label).collect(),
        Err(_) => Vec::new(),
    }
}

async fn menu_proxy<'a>(conn: &'a Connection, name: &str) -> DbusMenuProxy<'a> {
    DbusMenuProxy::builder(conn)
        .destination(name.to_owned())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap()
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_serves_status_notifier_properties() {
    let s = setup();
    let (_systemd, log) = fake_systemd(
        &s.system,
        &["vmsilo-banking-vm.service", "vmsilo-work-vm.service"],
    )
    .await;
    let (_watcher, mut registered) = fake_watcher(&s.session).await;
    let tray = s.start_tray();
    let (service, sender) = within("registration", registered.recv()).await.unwrap();
    assert_eq!(
        service,
        format!("org.kde.StatusNotifierItem-{}-1", tray.child.id())
    );
    assert!(sender.starts_with(':'), "registered from {sender:?}");

    let client = s.session.connect().await;
    let sni = SniProxy::builder(&client)
        .destination(service.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(sni.category().await.unwrap(), "SystemServices");
    assert_eq!(sni.id().await.unwrap(), "vmsilo");
    assert_eq!(sni.status().await.unwrap(), "Active");
    assert!(sni.item_is_menu().await.unwrap());
    assert_eq!(sni.menu().await.unwrap().as_str(), "/MenuBar");
    let pixmaps = sni.icon_pixmap().await.unwrap();
    assert!(
        pixmaps
            .iter()
            .all(|(w, h, d)| d.len() == (*w * *h * 4) as usize)
            && !pixmaps.is_empty()
    );
    let tip = eventually("states in the tooltip", || async {
        let tip = sni.tool_tip().await.ok()?.3;
        tip.contains("banking: stopped").then_some(tip)
    })
    .await;
    assert!(tip.contains("work: stopped"), "{tip}");
    assert!(
        log.lock().unwrap().subscribed,
        "the tray must call Manager.Subscribe"
    );

    // A non-zbus client sees the same item (dbus-send from libdbus, in the dbus package).
    let o = Command::new(require("dbus-send"))
        .arg(format!("--bus={}", s.session.address))
        .args([
            "--print-reply",
            &format!("--dest={service}"),
            "/StatusNotifierItem",
        ])
        .args([
            "org.freedesktop.DBus.Properties.GetAll",
            "string:org.kde.StatusNotifierItem",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(r#"string "Menu" variant object path "/MenuBar""#),
        "{text}"
    );
    assert!(
        flat.contains(r#"string "Category" variant string "SystemServices""#),
        "{text}"
    );
    let menu = menu_proxy(&client, &service).await;
    assert_eq!(menu.version().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_layout_clicks_and_state_changes() {
    let s = setup();
    let (systemd, log) = fake_systemd(
        &s.system,
        &["vmsilo-banking-vm.service", "vmsilo-work-vm.service"],
    )
    .await;
    let (_watcher, mut registered) = fake_watcher(&s.session).await;
    let _tray = s.start_tray();
    let (service, _) = within("registration", registered.recv()).await.unwrap();
    let client = s.session.connect().await;
    let menu = menu_proxy(&client, &service).await;

    // Initial layout once the unit states are known.
    eventually("initial states", || async {
        (vm_labels(&menu).await == ["banking — stopped", "work — stopped"]).then_some(())
    })
    .await;
    let (_, root) = menu.get_layout(0, -1, &[]).await.unwrap();
    let vms = children(&root);
    assert_eq!(vms[0].id, 1000);
    assert!(vms[0].props.contains_key("icon-data"), "colour swatch");
    let banking = children(&vms[0]);
    let labels: Vec<_> = banking.iter().map(label).collect();
    assert_eq!(
        labels,
        ["Start", "Stop", "Restart", "Shell", "", "Applications"]
    );
    assert!(enabled(&banking[0]) && !enabled(&banking[1]) && !enabled(&banking[2]));
    let apps: Vec<_> = children(&banking[5]).iter().map(label).collect();
    assert_eq!(apps, ["Firefox ESR", "Htop"]);
    assert_eq!(
        children(&vms[1]).len(),
        4,
        "work has no apps, so no Applications submenu"
    );

    // Click Start: the fake systemd gets StartUnit and moves the unit to activating, which
    // must come back as PropertiesChanged → LayoutUpdated → "starting".
    let mut updates = menu.receive_layout_updated().await.unwrap();
    menu.event(1001, "clicked", &Variant::from(""), 0)
        .await
        .unwrap();
    within("LayoutUpdated after Start", updates.next())
        .await
        .unwrap();
    let calls = log.lock().unwrap().calls.clone();
    assert_eq!(
        calls,
        [(
            "StartUnit vmsilo-banking-vm.service".to_owned(),
            "replace".to_owned()
        )]
    );
    let (rev1, root) = menu.get_layout(0, -1, &[]).await.unwrap();
    let vms = children(&root);
    assert_eq!(label(&vms[0]), "banking — starting");
    let banking = children(&vms[0]);
    assert!(!enabled(&banking[0]) && enabled(&banking[1]));

    // The unit becomes active (systemd's doing, not ours): LayoutUpdated with a new revision.
    set_unit_state(
        systemd.object_server(),
        &unit_path("vmsilo-banking-vm.service"),
        "active",
    )
    .await;
    let upd = within("LayoutUpdated after active", updates.next())
        .await
        .unwrap();
    let args = upd.args().unwrap();
    assert!(args.revision > rev1, "revision must grow");
    assert_eq!(
        vm_labels(&menu).await,
        ["banking — running", "work — stopped"]
    );

    // Failed shows up too.
    set_unit_state(
        systemd.object_server(),
        &unit_path("vmsilo-work-vm.service"),
        "failed",
    )
    .await;
    within("LayoutUpdated after failed", updates.next())
        .await
        .unwrap();
    assert_eq!(
        vm_labels(&menu).await,
        ["banking — running", "work — failed"]
    );

    // Stop and Restart go to systemd as well.
    menu.event(1003, "clicked", &Variant::from(""), 0)
        .await
        .unwrap();
    within("LayoutUpdated after Restart", updates.next())
        .await
        .unwrap();
    menu.event(1002, "clicked", &Variant::from(""), 0)
        .await
        .unwrap();
    within("LayoutUpdated after Stop", updates.next())
        .await
        .unwrap();
    let calls: Vec<String> = log
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert_eq!(
        calls,
        [
            "StartUnit vmsilo-banking-vm.service",
            "RestartUnit vmsilo-banking-vm.service",
            "StopUnit vmsilo-banking-vm.service"
        ]
    );

    // Shell opens the terminal on vm-shell; an app runs its generated command.
    menu.event(1004, "clicked", &Variant::from(""), 0)
        .await
        .unwrap();
    menu.event(1100, "clicked", &Variant::from(""), 0)
        .await
        .unwrap();
    let rec = eventually("recorded launches", || async {
        let r = s.recorded();
        (r.lines().count() >= 2).then_some(r)
    })
    .await;
    let mut lines: Vec<&str> = rec.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "TERM vm-shell banking",
            "banking -- /usr/lib/firefox-esr/firefox-esr"
        ]
    );

    // Unknown ids are refused with an error, not a crash.
    assert!(
        menu.event(999_999, "clicked", &Variant::from(""), 0)
            .await
            .is_err()
    );
    assert!(menu.get_layout(4242, -1, &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_when_the_watcher_appears_and_again_after_it_restarts() {
    let s = setup();
    let (_systemd, _log) = fake_systemd(&s.system, &["vmsilo-banking-vm.service"]).await;
    let tray = s.start_tray();
    let expected = format!("org.kde.StatusNotifierItem-{}-1", tray.child.id());
    // No watcher yet: wait until the tray owns its name, then start one.
    let client = s.session.connect().await;
    let dbus = fdo::DBusProxy::new(&client).await.unwrap();
    eventually("the tray's bus name", || async {
        let name = zbus::names::BusName::try_from(expected.as_str()).unwrap();
        dbus.name_has_owner(name).await.ok()?.then_some(())
    })
    .await;
    let (watcher, mut registered) = fake_watcher(&s.session).await;
    let (service, _) = within("registration with a late watcher", registered.recv())
        .await
        .unwrap();
    assert_eq!(service, expected);

    // The watcher goes away (plasmashell crash) and comes back.
    drop(registered);
    watcher.close().await.unwrap();
    let (_watcher2, mut registered2) = fake_watcher(&s.session).await;
    let (service, _) = within("re-registration", registered2.recv()).await.unwrap();
    assert_eq!(service, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_units_again_after_systemd_restarts() {
    let s = setup();
    let (systemd, _log) = fake_systemd(&s.system, &["vmsilo-banking-vm.service"]).await;
    let (_watcher, mut registered) = fake_watcher(&s.session).await;
    let _tray = s.start_tray();
    let (service, _) = within("registration", registered.recv()).await.unwrap();
    let client = s.session.connect().await;
    let menu = menu_proxy(&client, &service).await;
    eventually("initial state", || async {
        (vm_labels(&menu).await == ["banking — stopped", "work — unknown"]).then_some(())
    })
    .await;
    // systemd re-executes: a new connection owns the name, with the unit already active.
    systemd.close().await.unwrap();
    let (systemd2, log2) = fake_systemd(&s.system, &["vmsilo-banking-vm.service"]).await;
    set_unit_state(
        systemd2.object_server(),
        &unit_path("vmsilo-banking-vm.service"),
        "active",
    )
    .await;
    eventually("state from the new systemd", || async {
        (vm_labels(&menu).await.first().map(String::as_str) == Some("banking — running"))
            .then_some(())
    })
    .await;
    assert!(
        log2.lock().unwrap().subscribed,
        "Subscribe again on the new systemd"
    );
    // And its signals are followed.
    let mut updates = menu.receive_layout_updated().await.unwrap();
    set_unit_state(
        systemd2.object_server(),
        &unit_path("vmsilo-banking-vm.service"),
        "inactive",
    )
    .await;
    within("LayoutUpdated from the new systemd", updates.next())
        .await
        .unwrap();
    assert_eq!(vm_labels(&menu).await[0], "banking — stopped");
}
