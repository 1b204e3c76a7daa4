//! The tray's D-Bus faces: the StatusNotifierItem and com.canonical.dbusmenu objects it serves
//! on the session bus, and the proxies it uses (systemd on the system bus, the
//! StatusNotifierWatcher on the session bus).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::UnboundedSender;
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant, fdo, interface, proxy};

use super::icon;
use super::model::{Action, Layout, Model, Props};

/// Object path of the StatusNotifierItem.
pub const ITEM_PATH: &str = "/StatusNotifierItem";
/// Object path of the menu.
pub const MENU_PATH: &str = "/MenuBar";
/// Well-known name of the StatusNotifierWatcher.
pub const WATCHER_NAME: &str = "org.kde.StatusNotifierWatcher";
/// Well-known name of systemd.
pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";

/// State shared by the D-Bus objects and the tasks that update it.
#[derive(Debug)]
pub struct Shared {
    model: Mutex<Model>,
    actions: UnboundedSender<Action>,
}

impl Shared {
    /// Wrap a model; clicks are sent to `actions`.
    pub fn new(model: Model, actions: UnboundedSender<Action>) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(model),
            actions,
        })
    }

    /// Lock the model (a poisoned lock still holds a consistent model: every update is a
    /// single assignment).
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `com.canonical.dbusmenu` at [`MENU_PATH`].
#[derive(Debug)]
pub struct Menu {
    /// The shared state.
    pub shared: Arc<Shared>,
}

#[interface(interface = "com.canonical.dbusmenu")]
impl Menu {
    async fn get_layout(
        &self,
        parent_id: i32,
        recursion_depth: i32,
        property_names: Vec<String>,
    ) -> fdo::Result<(u32, Layout)> {
        let model = self.shared.model();
        let layout = model
            .layout(parent_id, recursion_depth, &property_names)
            .ok_or_else(|| fdo::Error::InvalidArgs(format!("no menu item {parent_id}")))?;
        Ok((model.revision, layout))
    }

    async fn get_group_properties(
        &self,
        ids: Vec<i32>,
        property_names: Vec<String>,
    ) -> Vec<(i32, Props)> {
        let model = self.shared.model();
        ids.into_iter()
            .filter_map(|id| model.properties(id, &property_names).map(|p| (id, p)))
            .collect()
    }

    async fn get_property(&self, id: i32, name: String) -> fdo::Result<OwnedVariant> {
        let model = self.shared.model();
        model
            .properties(id, std::slice::from_ref(&name))
            .and_then(|mut p| p.remove(&name))
            .ok_or_else(|| fdo::Error::InvalidArgs(format!("item {id} has no property {name}")))
    }

    async fn event(
        &self,
        id: i32,
        event_id: String,
        _data: OwnedVariant,
        _timestamp: u32,
    ) -> fdo::Result<()> {
        self.handle_event(id, &event_id)
    }

    async fn event_group(&self, events: Vec<(i32, String, OwnedVariant, u32)>) -> Vec<i32> {
        events
            .into_iter()
            .filter(|(id, event_id, _, _)| self.handle_event(*id, event_id).is_err())
            .map(|(id, ..)| id)
            .collect()
    }

    async fn about_to_show(&self, _id: i32) -> bool {
        false
    }

    async fn about_to_show_group(&self, ids: Vec<i32>) -> (Vec<i32>, Vec<i32>) {
        let model = self.shared.model();
        let errors = ids
            .into_iter()
            .filter(|id| model.properties(*id, &[]).is_none())
            .collect();
        (Vec::new(), errors)
    }

    #[zbus(property)]
    fn version(&self) -> u32 {
        3
    }

    #[zbus(property)]
    fn text_direction(&self) -> String {
        "ltr".to_owned()
    }

    #[zbus(property)]
    fn status(&self) -> String {
        "normal".to_owned()
    }

    #[zbus(property)]
    fn icon_theme_path(&self) -> Vec<String> {
        Vec::new()
    }

    /// The layout below `parent` changed; clients fetch it again.
    #[zbus(signal)]
    pub async fn layout_updated(
        emitter: &SignalEmitter<'_>,
        revision: u32,
        parent: i32,
    ) -> zbus::Result<()>;

    /// Properties of some items changed.
    #[zbus(signal)]
    pub async fn items_properties_updated(
        emitter: &SignalEmitter<'_>,
        updated: Vec<(i32, Props)>,
        removed: Vec<(i32, Vec<String>)>,
    ) -> zbus::Result<()>;
}

impl Menu {
    fn handle_event(&self, id: i32, event_id: &str) -> fdo::Result<()> {
        let action = {
            let model = self.shared.model();
            if model.properties(id, &[]).is_none() {
                return Err(fdo::Error::InvalidArgs(format!("no menu item {id}")));
            }
            if event_id != "clicked" {
                return Ok(());
            }
            model.action(id)
        };
        if let Some(action) = action {
            tracing::info!(?action, "menu click");
            self.shared
                .actions
                .send(action)
                .map_err(|_| fdo::Error::Failed("the tray is shutting down".to_owned()))?;
        }
        Ok(())
    }
}

/// A pixmap as StatusNotifierItem carries it: width, height, ARGB32 big-endian.
pub type Pixmap = (i32, i32, Vec<u8>);

/// `org.kde.StatusNotifierItem` at [`ITEM_PATH`].
#[derive(Debug)]
pub struct Item {
    /// The shared state.
    pub shared: Arc<Shared>,
}

impl Item {
    fn pixmaps(&self) -> Vec<Pixmap> {
        let model = self.shared.model();
        let vms: Vec<([u8; 3], bool)> =
            model.vms.iter().map(|v| (v.rgb, v.state.is_up())).collect();
        [22, 32, 64]
            .iter()
            .map(|s| icon::tray_pixmap(&vms, *s))
            .collect()
    }
}

#[interface(interface = "org.kde.StatusNotifierItem")]
impl Item {
    #[zbus(property)]
    fn category(&self) -> String {
        "SystemServices".to_owned()
    }

    #[zbus(property)]
    fn id(&self) -> String {
        "vmsilo".to_owned()
    }

    #[zbus(property)]
    fn title(&self) -> String {
        "vmsilo".to_owned()
    }

    #[zbus(property)]
    fn status(&self) -> String {
        "Active".to_owned()
    }

    #[zbus(property)]
    fn window_id(&self) -> i32 {
        0
    }

    #[zbus(property)]
    fn icon_name(&self) -> String {
        String::new()
    }

    #[zbus(property)]
    fn icon_pixmap(&self) -> Vec<Pixmap> {
        self.pixmaps()
    }

    #[zbus(property)]
    fn overlay_icon_name(&self) -> String {
        String::new()
    }

    #[zbus(property)]
    fn overlay_icon_pixmap(&self) -> Vec<Pixmap> {
        Vec::new()
    }

    #[zbus(property)]
    fn attention_icon_name(&self) -> String {
        String::new()
    }

    #[zbus(property)]
    fn attention_icon_pixmap(&self) -> Vec<Pixmap> {
        Vec::new()
    }

    #[zbus(property)]
    fn attention_movie_name(&self) -> String {
        String::new()
    }

    #[zbus(property)]
    fn tool_tip(&self) -> (String, Vec<Pixmap>, String, String) {
        let summary = self.shared.model().summary();
        (String::new(), Vec::new(), "vmsilo VMs".to_owned(), summary)
    }

    #[zbus(property)]
    fn item_is_menu(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn menu(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(MENU_PATH).unwrap_or_default()
    }

    async fn activate(&self, _x: i32, _y: i32) {}

    async fn secondary_activate(&self, _x: i32, _y: i32) {}

    async fn context_menu(&self, _x: i32, _y: i32) {}

    async fn scroll(&self, _delta: i32, _orientation: String) {}

    /// The icon changed.
    #[zbus(signal)]
    pub async fn new_icon(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    /// The tooltip changed.
    #[zbus(signal)]
    pub async fn new_tool_tip(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    /// The status changed.
    #[zbus(signal)]
    pub async fn new_status(emitter: &SignalEmitter<'_>, status: &str) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub(crate) trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "org.kde.StatusNotifierWatcher",
    default_service = "org.kde.StatusNotifierWatcher",
    default_path = "/StatusNotifierWatcher"
)]
pub(crate) trait Watcher {
    fn register_status_notifier_item(&self, service: &str) -> zbus::Result<()>;
}
