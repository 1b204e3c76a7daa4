//! What the tray shows: each VM's state, and the dbusmenu tree built from it (pure, no D-Bus).
//!
//! Menu item ids are derived from positions so they stay stable while states change: VM `i`
//! is `(i + 1) * 1000`, its Start/Stop/Restart/Shell items `+1..+4`, a separator `+5`, the
//! Applications submenu `+6` and app `j` `+100 + j`.

use std::collections::HashMap;

use zbus::{OwnedVariant, Variant};

use super::icon;

/// The state of a VM's `vmsilo-<vm>-vm.service`, from its systemd `ActiveState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Not yet known (systemd not reachable yet).
    Unknown,
    /// `inactive`.
    Stopped,
    /// `activating` or `reloading`.
    Starting,
    /// `active`.
    Running,
    /// `deactivating`.
    Stopping,
    /// `failed`.
    Failed,
}

impl VmState {
    /// Map systemd's `ActiveState` string.
    pub fn from_active_state(s: &str) -> Self {
        match s {
            "active" => Self::Running,
            "activating" | "reloading" | "refreshing" => Self::Starting,
            "deactivating" => Self::Stopping,
            "failed" => Self::Failed,
            "inactive" | "maintenance" => Self::Stopped,
            _ => Self::Unknown,
        }
    }

    /// The word shown in the menu.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
        }
    }

    fn can_start(self) -> bool {
        matches!(self, Self::Stopped | Self::Failed | Self::Unknown)
    }

    fn can_stop(self) -> bool {
        matches!(self, Self::Running | Self::Starting)
    }

    /// Whether the VM counts as up for the tray icon.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Running | Self::Starting)
    }
}

/// A guest application the tray can launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Label.
    pub name: String,
    /// Host command line (already `vm-run <vm> -- …`).
    pub command: Vec<String>,
}

/// One VM in the tray.
#[derive(Debug, Clone)]
pub struct VmEntry {
    /// VM name.
    pub name: String,
    /// Colour.
    pub rgb: [u8; 3],
    /// Its systemd unit.
    pub unit: String,
    /// Current state.
    pub state: VmState,
    /// Its applications, sorted by name.
    pub apps: Vec<App>,
}

/// What a menu click asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the VM's unit.
    Start(String),
    /// Stop it.
    Stop(String),
    /// Restart it.
    Restart(String),
    /// Open a host terminal on its console.
    Shell(String),
    /// Run a host command (an app entry).
    Run(Vec<String>),
}

/// Most apps listed per VM (ids must stay below the next VM's range).
pub const MAX_APPS: usize = 800;
const STRIDE: i32 = 1000;

/// Properties of one menu item.
pub type Props = HashMap<String, OwnedVariant>;

/// A dbusmenu layout node, `(ia{sv}av)` on the wire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, zbus::Type)]
pub struct Layout {
    /// Item id.
    pub id: i32,
    /// Its properties.
    pub props: Props,
    /// Children, each a variant holding a `Layout`.
    pub children: Vec<OwnedVariant>,
}

fn ov<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    // Only fd-carrying variants fail to convert; menu properties never carry fds.
    OwnedVariant::try_from(v.into()).unwrap_or_else(|_| OwnedVariant::from(0u8))
}

/// All VMs and the menu revision.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The VMs in configuration order.
    pub vms: Vec<VmEntry>,
    /// Bumped whenever the layout changes.
    pub revision: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Root,
    Vm(usize),
    Start(usize),
    Stop(usize),
    Restart(usize),
    Shell(usize),
    Separator(usize),
    Apps(usize),
    App(usize, usize),
    Empty,
}

impl Model {
    /// Set a VM's state; returns whether anything changed (and bumps the revision if so).
    pub fn set_state(&mut self, vm: &str, state: VmState) -> bool {
        let Some(entry) = self.vms.iter_mut().find(|v| v.name == vm) else {
            return false;
        };
        if entry.state == state {
            return false;
        }
        entry.state = state;
        self.revision = self.revision.wrapping_add(1);
        true
    }

    fn item(&self, id: i32) -> Option<Item> {
        if id == 0 {
            return Some(Item::Root);
        }
        if id == 1 && self.vms.is_empty() {
            return Some(Item::Empty);
        }
        let vm = usize::try_from(id / STRIDE - 1).ok()?;
        let entry = self.vms.get(vm)?;
        Some(match id % STRIDE {
            0 => Item::Vm(vm),
            1 => Item::Start(vm),
            2 => Item::Stop(vm),
            3 => Item::Restart(vm),
            4 => Item::Shell(vm),
            5 => Item::Separator(vm),
            6 if !entry.apps.is_empty() => Item::Apps(vm),
            n if n >= 100 => {
                let app = usize::try_from(n - 100).ok()?;
                entry.apps.get(app)?;
                Item::App(vm, app)
            }
            _ => return None,
        })
    }

    fn id_of(item: Item) -> i32 {
        let base = |vm: usize| (vm as i32 + 1) * STRIDE;
        match item {
            Item::Root => 0,
            Item::Empty => 1,
            Item::Vm(v) => base(v),
            Item::Start(v) => base(v) + 1,
            Item::Stop(v) => base(v) + 2,
            Item::Restart(v) => base(v) + 3,
            Item::Shell(v) => base(v) + 4,
            Item::Separator(v) => base(v) + 5,
            Item::Apps(v) => base(v) + 6,
            Item::App(v, a) => base(v) + 100 + a as i32,
        }
    }

    fn children(&self, item: Item) -> Vec<Item> {
        match item {
            Item::Root if self.vms.is_empty() => vec![Item::Empty],
            Item::Root => (0..self.vms.len()).map(Item::Vm).collect(),
            Item::Vm(v) => {
                let mut c = vec![
                    Item::Start(v),
                    Item::Stop(v),
                    Item::Restart(v),
                    Item::Shell(v),
                ];
                if !self.vms[v].apps.is_empty() {
                    c.push(Item::Separator(v));
                    c.push(Item::Apps(v));
                }
                c
            }
            Item::Apps(v) => (0..self.vms[v].apps.len())
                .map(|a| Item::App(v, a))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn props(&self, item: Item) -> Props {
        let mut p = Props::new();
        let mut set = |k: &str, v: OwnedVariant| {
            p.insert(k.to_owned(), v);
        };
        match item {
            Item::Root => set("children-display", ov("submenu")),
            Item::Empty => {
                set("label", ov("No VMs configured"));
                set("enabled", ov(false));
            }
            Item::Vm(v) => {
                let e = &self.vms[v];
                set("label", ov(format!("{} — {}", e.name, e.state.label())));
                set(
                    "icon-data",
                    ov(icon::swatch_png(e.rgb, 16, e.state.is_up())),
                );
                set("children-display", ov("submenu"));
            }
            Item::Start(v) => {
                set("label", ov("Start"));
                set("icon-name", ov("media-playback-start"));
                set("enabled", ov(self.vms[v].state.can_start()));
            }
            Item::Stop(v) => {
                set("label", ov("Stop"));
                set("icon-name", ov("media-playback-stop"));
                set("enabled", ov(self.vms[v].state.can_stop()));
            }
            Item::Restart(v) => {
                set("label", ov("Restart"));
                set("icon-name", ov("view-refresh"));
                set("enabled", ov(self.vms[v].state == VmState::Running));
            }
            Item::Shell(_) => {
                set("label", ov("Shell"));
                set("icon-name", ov("utilities-terminal"));
            }
            Item::Separator(_) => set("type", ov("separator")),
            Item::Apps(_) => {
                set("label", ov("Applications"));
                set("children-display", ov("submenu"));
            }
            Item::App(v, a) => set("label", ov(self.vms[v].apps[a].name.clone())),
        }
        p
    }

    /// The layout below `parent` to `depth` levels (-1: all), or None for an unknown id.
    pub fn layout(&self, parent: i32, depth: i32, names: &[String]) -> Option<Layout> {
        Some(self.layout_of(self.item(parent)?, depth, names))
    }

    fn layout_of(&self, item: Item, depth: i32, names: &[String]) -> Layout {
        let children = if depth == 0 {
            Vec::new()
        } else {
            self.children(item)
                .into_iter()
                .map(|c| ov(self.layout_of(c, depth - 1, names)))
                .collect()
        };
        Layout {
            id: Self::id_of(item),
            props: filter(self.props(item), names),
            children,
        }
    }

    /// Properties of `id`, filtered to `names` (empty: all).
    pub fn properties(&self, id: i32, names: &[String]) -> Option<Props> {
        Some(filter(self.props(self.item(id)?), names))
    }

    /// What clicking `id` does.
    pub fn action(&self, id: i32) -> Option<Action> {
        let item = self.item(id)?;
        let unit = |v: usize| self.vms[v].unit.clone();
        match item {
            Item::Start(v) => Some(Action::Start(unit(v))),
            Item::Stop(v) => Some(Action::Stop(unit(v))),
            Item::Restart(v) => Some(Action::Restart(unit(v))),
            Item::Shell(v) => Some(Action::Shell(self.vms[v].name.clone())),
            Item::App(v, a) => Some(Action::Run(self.vms[v].apps[a].command.clone())),
            _ => None,
        }
    }

    /// Tooltip text: one `vm: state` line per VM.
    pub fn summary(&self) -> String {
        self.vms
            .iter()
            .map(|v| format!("{}: {}", v.name, v.state.label()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn filter(mut props: Props, names: &[String]) -> Props {
    if !names.is_empty() {
        props.retain(|k, _| names.iter().any(|n| n == k));
    }
    props
}

impl From<Layout> for Variant<'static> {
    fn from(l: Layout) -> Self {
        let s = zbus::Structure::builder()
            .add_field(l.id)
            .add_field(l.props)
            .add_field(l.children)
            .build();
        match s {
            Ok(s) => Variant::Structure(s),
            // A three-field structure always builds.
            Err(_) => Variant::from(0u8),
        }
    }
}

impl TryFrom<OwnedVariant> for Layout {
    type Error = zbus::Error;

    fn try_from(v: OwnedVariant) -> Result<Self, Self::Error> {
        let (id, props, children) = <(i32, Props, Vec<OwnedVariant>)>::try_from(v)?;
        Ok(Self {
            id,
            props,
            children,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model() -> Model {
        Model {
            vms: vec![
                VmEntry {
                    name: "banking".into(),
                    rgb: [0x2e, 0xcc, 0x71],
                    unit: "vmsilo-banking-vm.service".into(),
                    state: VmState::Stopped,
                    apps: vec![App {
                        name: "Firefox".into(),
                        command: vec!["vm-run".into()],
                    }],
                },
                VmEntry {
                    name: "work".into(),
                    rgb: [0, 0, 255],
                    unit: "vmsilo-work-vm.service".into(),
                    state: VmState::Running,
                    apps: vec![],
                },
            ],
            revision: 1,
        }
    }

    #[test]
    fn states_map_from_systemd() {
        assert_eq!(VmState::from_active_state("active"), VmState::Running);
        assert_eq!(VmState::from_active_state("activating"), VmState::Starting);
        assert_eq!(VmState::from_active_state("failed"), VmState::Failed);
        assert_eq!(VmState::from_active_state("inactive"), VmState::Stopped);
        assert_eq!(VmState::from_active_state("bogus"), VmState::Unknown);
    }

    #[test]
    fn ids_round_trip_to_actions() {
        let m = model();
        assert_eq!(
            m.action(1001),
            Some(Action::Start("vmsilo-banking-vm.service".into()))
        );
        assert_eq!(
            m.action(2002),
            Some(Action::Stop("vmsilo-work-vm.service".into()))
        );
        assert_eq!(m.action(2004), Some(Action::Shell("work".into())));
        assert_eq!(m.action(1100), Some(Action::Run(vec!["vm-run".into()])));
        assert_eq!(m.action(1101), None);
        assert_eq!(m.action(2006), None, "no Applications submenu without apps");
        assert_eq!(m.action(3000), None);
        assert_eq!(m.action(-5), None);
    }

    #[test]
    fn layout_depth_and_filter() {
        let m = model();
        let root = m.layout(0, 1, &[]).unwrap();
        assert_eq!(root.children.len(), 2);
        let first = Layout::try_from(root.children[0].clone()).unwrap();
        assert_eq!(first.id, 1000);
        assert!(first.children.is_empty(), "depth 1 stops below the VMs");
        let only_label = m.layout(1000, 0, &["label".into()]).unwrap();
        assert_eq!(only_label.props.len(), 1);
        assert!(m.layout(999, -1, &[]).is_none());
    }

    #[test]
    fn set_state_bumps_revision_once() {
        let mut m = model();
        assert!(m.set_state("banking", VmState::Starting));
        assert!(!m.set_state("banking", VmState::Starting));
        assert!(!m.set_state("nope", VmState::Running));
        assert_eq!(m.revision, 2);
    }
}
