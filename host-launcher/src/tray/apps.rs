//! The tray's per-VM application lists, read from the entries `vmsilo desktop` generated.
//!
//! Only files named `vmsilo-<vm>-*.desktop` carrying `X-Vmsilo-VM=<vm>` count, so a stray file
//! can't put a command under another VM's menu. Earlier directories win for equal file names,
//! as in XDG lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use freedesktop_desktop_entry::DesktopEntry;

use super::model::{App, MAX_APPS};
use crate::desktop::exec;

/// The directories searched by default: `$XDG_DATA_HOME/applications` then each
/// `$XDG_DATA_DIRS/applications`.
pub fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match std::env::var_os("XDG_DATA_HOME") {
        Some(h) if !h.is_empty() => dirs.push(PathBuf::from(h).join("applications")),
        _ => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".local/share/applications"));
            }
        }
    }
    let data = std::env::var("XDG_DATA_DIRS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/local/share:/usr/share".to_owned());
    dirs.extend(
        data.split(':')
            .filter(|s| !s.is_empty())
            .map(|d| Path::new(d).join("applications")),
    );
    dirs
}

/// Apps per VM name found in `dirs`, each list sorted by name.
pub fn load(dirs: &[PathBuf], vms: &[String]) -> BTreeMap<String, Vec<App>> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<String, Vec<App>> = BTreeMap::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let Some(fname) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some(vm) = vms.iter().find(|vm| {
                fname.starts_with(&format!("vmsilo-{vm}-")) && fname.ends_with(".desktop")
            }) else {
                continue;
            };
            if !seen.insert(fname.clone()) {
                continue;
            }
            match read_app(&path, vm) {
                Some(app) => {
                    let list = out.entry(vm.clone()).or_default();
                    if list.len() < MAX_APPS {
                        list.push(app);
                    }
                }
                None => tracing::debug!(path = %path.display(), "not a vmsilo app entry"),
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

/// The user's message locale (`LC_ALL`, `LC_MESSAGES`, `LANG`) as desktop-entry locale keys,
/// most specific first: `de_DE.UTF-8@euro` gives `de_DE@euro`, `de_DE`, `de@euro`, `de`.
pub fn user_locales() -> Vec<String> {
    let raw = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    locales_of(&raw)
}

fn locales_of(raw: &str) -> Vec<String> {
    let (base, modifier) = match raw.split_once('@') {
        Some((b, m)) => (b, Some(m)),
        None => (raw, None),
    };
    let base = base.split('.').next().unwrap_or("");
    if base.is_empty() || base == "C" || base == "POSIX" {
        return Vec::new();
    }
    let lang = base.split('_').next().unwrap_or(base);
    let mut out = Vec::new();
    for b in [base, lang] {
        if let Some(m) = modifier {
            out.push(format!("{b}@{m}"));
        }
        out.push(b.to_owned());
    }
    out.dedup();
    out
}

fn read_app(path: &Path, vm: &str) -> Option<App> {
    let bytes = crate::files::read_regular(path, crate::desktop::MAX_ENTRY_BYTES).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let entry = DesktopEntry::from_str(path, &text, None::<&[&str]>).ok()?;
    let group = entry.groups.desktop_entry()?;
    if group.entry("X-Vmsilo-VM") != Some(vm) {
        return None;
    }
    let name = group.localized_entry("Name", &user_locales())?.to_owned();
    let command = exec::expand_without_files(&exec::parse(group.entry("Exec")?).ok()?);
    (!command.is_empty()).then_some(App { name, command })
}

#[cfg(test)]
mod tests {
    use super::locales_of;

    #[test]
    fn locale_keys() {
        assert_eq!(
            locales_of("de_DE.UTF-8@euro"),
            ["de_DE@euro", "de_DE", "de@euro", "de"]
        );
        assert_eq!(locales_of("fr"), ["fr"]);
        assert!(locales_of("C.UTF-8").is_empty());
        assert!(locales_of("").is_empty());
    }
}
