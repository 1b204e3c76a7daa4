//! Turning one guest desktop entry into its host counterpart.
//!
//! Keys are copied from an allowlist only: a guest package must not be able to smuggle host-side
//! behaviour (`X-KDE-Wayland-Interfaces`, global shortcuts, D-Bus activation, a host working
//! directory) into the host menu. What happens to each key:
//!
//! - `Name` (all locales) gets ` [<vm>]` appended; `Keywords` (all locales) gain the VM name;
//!   `GenericName`, `Comment`, `OnlyShowIn`, `NotShowIn`, `SingleMainWindow`,
//!   `X-KDE-Protocols` are copied; `X-GNOME-FullName` is copied with the
//!   suffix.
//! - `InitialPreference` is dropped: a value chosen by the guest package must not rank a VM app
//!   above host apps when KDE picks the default handler of a file or URL type.
//! - `StartupWMClass` is dropped: every VM running the same program would carry the same class,
//!   so the task manager could show a banking window with the shopping entry's icon. Without it
//!   a guest window is never attributed to a VM entry by the app_id the guest chose.
//! - `Categories` keep the original ones (so the app still shows under "Internet" etc.) plus
//!   `X-vmsilo-<vm>`, which the VM's menu folder includes.
//! - `Icon` names the composed VM-coloured icon.
//! - `Exec` becomes `vm-run <vm> -- <guest command>` (see [`super::exec`] for field codes);
//!   `Terminal=true` becomes `<terminal…> vm-run --tty <vm> -- <guest command>` with
//!   `Terminal=false`.
//! - `MimeType` is kept when the command takes URLs (`%u`/`%U`); when it took only files
//!   (`%f`/`%F`, now removed) it is dropped, since the host can't hand the guest a file.
//!   `x-scheme-handler/*` types are always dropped: one would let a guest package register a VM
//!   program for a URL scheme on the host (`x-scheme-handler/https` makes every link clicked in
//!   any host app a candidate for opening in that VM, and the only candidate when no host browser
//!   claims it), which is the host's choice, never the guest's.
//! - `Name`, `GenericName`, `Comment`, `Keywords`, `X-GNOME-FullName` and action names have
//!   control characters (escaped newlines included) replaced by spaces and bidi controls
//!   (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C) removed, so the VM tag appended to
//!   the name can't be pushed out of sight or visually reordered.
//! - `TryExec` is dropped: it names a guest binary, which the host would look up on the host
//!   `PATH` (hiding the entry when the host lacks the program, or showing it when only the host
//!   has it). The package list already says the program is in the guest.
//! - `DBusActivatable` and `X-DBUS-*` are dropped: the host session bus would try to activate
//!   the guest's service on the host. An entry with `DBusActivatable=true` and no `Exec` can't
//!   be launched through `vm-run` and is skipped.
//! - `Path` (a guest working directory), `StartupNotify` (the guest can't complete the host's
//!   startup notification), `X-KDE-Shortcuts` (a global host shortcut), `Implements` (host D-Bus
//!   interfaces), `PrefersNonDefaultGPU`, `X-KDE-Wayland-Interfaces` and any other key are
//!   dropped.
//! - `Hidden=true`, `NoDisplay=true` and non-`Application` entries are skipped.
//! - Desktop actions listed in `Actions` keep their name and icon name, with `Exec` rewritten the
//!   same way; actions without a group or an `Exec` are left out.

use std::collections::BTreeMap;

use freedesktop_desktop_entry::{DesktopEntry, Group};

use super::exec::{self, Arg, ExecError, Substitutions};
use super::keyfile::KeyFile;
use super::menu::vm_category;

/// How host entries launch guest programs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `vm-run` program (a name on `PATH` or an absolute path).
    pub vm_run: String,
    /// Host terminal command line that runs the rest of its arguments, e.g. `konsole -e`.
    pub terminal: Vec<String>,
}

/// Why a guest entry got no host entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// `NoDisplay=true`.
    #[error("NoDisplay=true")]
    NoDisplay,
    /// `Hidden=true`.
    #[error("Hidden=true")]
    Hidden,
    /// `Type` is not `Application`.
    #[error("Type={0:?} is not Application")]
    NotApplication(String),
    /// No `Exec` (e.g. D-Bus activated only).
    #[error("no Exec key (DBusActivatable-only entries can't run through vm-run)")]
    NoExec,
    /// No `Name`.
    #[error("no Name key")]
    NoName,
    /// The `Exec` value is broken.
    #[error("Exec: {0}")]
    Exec(#[from] ExecError),
}

/// A converted entry.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// The desktop file's text.
    pub text: String,
    /// The untranslated host `Name`.
    pub name: String,
    /// The original `Icon` value, for finding the picture to frame.
    pub original_icon: Option<String>,
    /// Parts of the original left out, with why, for the generator to report.
    pub left_out: Vec<String>,
}

/// Everything the conversion needs to know about where the entry comes from and goes.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// VM name.
    pub vm: &'a str,
    /// Icon name of the composed icon.
    pub icon_name: &'a str,
    /// Path of the original file inside the guest (for `%k`).
    pub guest_entry_path: &'a str,
    /// Launch settings.
    pub launch: &'a Launch,
}

/// Convert `entry` for the host.
pub fn convert(entry: &DesktopEntry, ctx: &Context<'_>) -> Result<HostEntry, Skip> {
    let main = entry.groups.desktop_entry().ok_or(Skip::NoName)?;
    let type_ = main.entry("Type").unwrap_or("");
    if type_ != "Application" {
        return Err(Skip::NotApplication(type_.to_owned()));
    }
    if main.entry_bool("Hidden") == Some(true) {
        return Err(Skip::Hidden);
    }
    if main.entry_bool("NoDisplay") == Some(true) {
        return Err(Skip::NoDisplay);
    }
    let name = main
        .entry("Name")
        .filter(|n| !n.is_empty())
        .ok_or(Skip::NoName)?;
    let exec_value = main
        .entry("Exec")
        .filter(|e| !e.trim().is_empty())
        .ok_or(Skip::NoExec)?;
    let icon = main
        .entry("Icon")
        .filter(|i| !i.is_empty())
        .map(str::to_owned);
    let terminal = main.entry_bool("Terminal") == Some(true);
    let subs = Substitutions {
        icon: icon.clone(),
        name: name.to_owned(),
        guest_entry_path: ctx.guest_entry_path.to_owned(),
    };
    let rewritten = exec::rewrite(&exec::parse(exec_value)?, &subs)?;
    let host_exec = host_command(&rewritten.args, terminal, ctx)?;
    let suffix = format!(" [{}]", ctx.vm);

    let mut kf = KeyFile::default();
    kf.group("Desktop Entry")
        .set("Type", "Application")
        .set("Version", "1.4");
    let host_name = format!("{}{suffix}", display_text(name));
    copy_localized(&mut kf, main, "Name", |v| {
        format!("{}{suffix}", display_text(v))
    });
    copy_localized(&mut kf, main, "GenericName", display_text);
    copy_localized(&mut kf, main, "Comment", display_text);
    copy_localized(&mut kf, main, "X-GNOME-FullName", |v| {
        format!("{}{suffix}", display_text(v))
    });
    kf.set("Icon", ctx.icon_name);
    kf.set("Exec", &host_exec);
    kf.set("Terminal", "false");
    let mut categories: Vec<String> = list(main.entry("Categories"));
    let vm_cat = vm_category(ctx.vm);
    if !categories.contains(&vm_cat) {
        categories.push(vm_cat);
    }
    kf.set_list("Categories", &categories);
    copy_keywords(&mut kf, main, ctx.vm);
    if rewritten.takes_urls || !rewritten.dropped_files {
        let mimes: Vec<String> = list(main.entry("MimeType"))
            .into_iter()
            .filter(|m| !is_scheme_handler(m))
            .collect();
        if !mimes.is_empty() {
            kf.set_list("MimeType", &mimes);
        }
    }
    for key in ["OnlyShowIn", "NotShowIn"] {
        let v = list(main.entry(key));
        if !v.is_empty() {
            kf.set_list(key, &v);
        }
    }
    if let Some(v) = main.entry("X-KDE-Protocols").filter(|v| !v.is_empty()) {
        kf.set("X-KDE-Protocols", v);
    }
    if let Some(v) = main.entry_bool("SingleMainWindow") {
        kf.set("SingleMainWindow", if v { "true" } else { "false" });
    }
    kf.set("X-Vmsilo-VM", ctx.vm);
    kf.set("X-Vmsilo-Source", ctx.guest_entry_path);

    // Desktop actions.
    let mut actions = Vec::new();
    let mut action_groups = Vec::new();
    let mut left_out = Vec::new();
    for action in list(main.entry("Actions")) {
        let Some(group) = entry.groups.group(&format!("Desktop Action {action}")) else {
            tracing::debug!(%action, "action listed without a group; left out");
            continue;
        };
        if group.entry("Name").is_none_or(str::is_empty) {
            continue;
        }
        let Some(aexec) = group.entry("Exec").filter(|e| !e.trim().is_empty()) else {
            continue;
        };
        let converted = exec::parse(aexec)
            .and_then(|a| exec::rewrite(&a, &subs))
            .and_then(|r| host_command(&r.args, terminal, ctx));
        match converted {
            Ok(cmd) => {
                if !is_valid_action_id(&action) {
                    continue;
                }
                actions.push(action.clone());
                action_groups.push((action, group, cmd));
            }
            Err(e) => left_out.push(format!(
                "action {action:?} left out: its Exec is unusable: {e}"
            )),
        }
    }
    if !actions.is_empty() {
        kf.set_list("Actions", &actions);
    }
    for (action, group, cmd) in action_groups {
        kf.group(&format!("Desktop Action {action}"));
        copy_localized(&mut kf, group, "Name", display_text);
        if let Some(icon) = group
            .entry("Icon")
            .filter(|i| !i.is_empty() && !i.starts_with('/'))
        {
            kf.set("Icon", icon);
        }
        kf.set("Exec", &cmd);
    }
    Ok(HostEntry {
        left_out,
        text: kf.render(),
        name: host_name,
        original_icon: icon,
    })
}

/// Text shown to the user with every control character turned into a space and every bidi
/// embedding, override, isolate and mark removed, so nothing in a guest-chosen string can move
/// or hide the ` [<vm>]` tag that follows it (a newline would push it onto a second line that
/// menus cut off; U+202E would render it reversed or before the name).
pub fn display_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}' => {}
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `x-scheme-handler/*` types claim a URL scheme for the whole host session (the host would
/// open every `https:` link clicked anywhere in that VM), so a guest package never gets one.
fn is_scheme_handler(mime: &str) -> bool {
    mime.to_ascii_lowercase().starts_with("x-scheme-handler/")
}

fn is_valid_action_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The host `Exec` value: `vm-run <vm> -- <args>`, or inside the terminal with `--tty`.
fn host_command(args: &[Arg], terminal: bool, ctx: &Context<'_>) -> Result<String, ExecError> {
    let mut full: Vec<Arg> = Vec::new();
    if terminal {
        full.extend(ctx.launch.terminal.iter().map(Arg::lit));
        full.push(Arg::lit(ctx.launch.vm_run.as_str()));
        full.push(Arg::lit("--tty"));
    } else {
        full.push(Arg::lit(ctx.launch.vm_run.as_str()));
    }
    full.push(Arg::lit(ctx.vm));
    full.push(Arg::lit("--"));
    full.extend(args.iter().cloned());
    exec::join(&full)
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn copy_localized(kf: &mut KeyFile, group: &Group, key: &str, map: impl Fn(&str) -> String) {
    let Some((default, locales)) = group.0.get(key) else {
        return;
    };
    if default.is_empty() {
        return;
    }
    kf.set(key, &map(default));
    for (locale, value) in sorted(locales) {
        if is_valid_locale(locale) && !value.is_empty() {
            kf.set_localized(key, locale, &map(value));
        }
    }
}

fn copy_keywords(kf: &mut KeyFile, group: &Group, vm: &str) {
    let add_vm = |v: &str| {
        let mut items: Vec<String> = list(Some(&display_text(v)));
        if !items.iter().any(|i| i == vm) {
            items.push(vm.to_owned());
        }
        items
    };
    let (default, locales) = match group.0.get("Keywords") {
        Some((d, l)) => (d.as_str(), Some(l)),
        None => ("", None),
    };
    kf.set_list("Keywords", &add_vm(default));
    for (locale, value) in locales.map(sorted).unwrap_or_default() {
        if is_valid_locale(locale) {
            kf.set_list_localized("Keywords", locale, &add_vm(value));
        }
    }
}

fn sorted(map: &BTreeMap<String, String>) -> Vec<(&String, &String)> {
    map.iter().collect()
}

/// `lang_COUNTRY.ENCODING@MODIFIER`, loosely: refuse anything that could break the key syntax.
fn is_valid_locale(locale: &str) -> bool {
    !locale.is_empty()
        && locale
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '.' | '-'))
}
