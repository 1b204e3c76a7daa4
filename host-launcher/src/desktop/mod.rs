//! Host desktop integration generated from each VM's guest program packages.
//!
//! `vmsilo desktop --config CONFIG --out DIR` runs at Nix build time. For every VM and every
//! package in its `guestPrograms` it reads `share/applications/**/*.desktop` and writes, below
//! `DIR`:
//!
//! | file | what |
//! |---|---|
//! | `share/applications/vmsilo-<vm>-<id>.desktop` | host entry launching the guest program through `vm-run` ([`entry`]) |
//! | `share/icons/hicolor/scalable/apps/vmsilo-<vm>-<id>.svg` | the original icon framed in the VM colour ([`icon`]) |
//! | `share/icons/hicolor/scalable/apps/vmsilo-<vm>.svg` | the VM's menu folder icon |
//! | `share/desktop-directories/vmsilo-<vm>.directory` | the VM's menu folder ([`menu`]) |
//! | `etc/xdg/menus/applications-merged/vmsilo-<vm>.menu` | puts the VM's entries in that folder |
//!
//! `<id>` is the original desktop file ID (its path below `applications/`, `/` turned into `-`,
//! without `.desktop`), so names are unique per VM and stable across rebuilds; when two packages
//! of one VM ship the same ID the first package wins, as in XDG lookup. No output is ever named
//! `org.vmsilo.<vm>.desktop`: KWin grants privileges to the app_id matching a desktop file name,
//! and `org.vmsilo.<vm>` is the app_id every window of that VM gets.

pub mod entry;
pub mod exec;
pub mod icon;
pub mod keyfile;
pub mod menu;

use std::path::{Path, PathBuf};

use freedesktop_desktop_entry::DesktopEntry;
use thiserror::Error;

pub use entry::{Launch, Skip};

/// Desktop files bigger than this are skipped as broken or hostile.
pub const MAX_ENTRY_BYTES: u64 = 1024 * 1024;
/// At most this many desktop files are read per package.
pub const MAX_ENTRIES_PER_PACKAGE: usize = 4096;

/// One VM as the generator sees it.
#[derive(Debug, Clone)]
pub struct VmApps {
    /// VM name.
    pub name: String,
    /// Colour, `#rrggbb`.
    pub color: String,
    /// Guest program package roots (Nix store paths; the same path inside the guest).
    pub packages: Vec<PathBuf>,
}

impl VmApps {
    /// Every VM of a configuration, in document order.
    pub fn from_config(config: &crate::config::Config) -> Vec<Self> {
        config
            .nixos_vms
            .iter()
            .map(|vm| Self {
                name: vm.name.clone(),
                color: vm.color.to_string(),
                packages: vm.guest_programs.clone(),
            })
            .collect()
    }
}

/// Settings of one generator run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How entries launch programs.
    pub launch: Launch,
    /// Extra directories searched for icons the packages don't ship.
    pub icon_dirs: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            launch: Launch {
                vm_run: "vm-run".to_owned(),
                terminal: vec!["konsole".to_owned(), "-e".to_owned()],
            },
            icon_dirs: Vec::new(),
        }
    }
}

/// Errors that stop the generator (a single bad guest entry only skips that entry).
#[derive(Debug, Error)]
pub enum DesktopError {
    /// Writing an output file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A VM name that can't be part of a file name.
    #[error("VM name {0:?} can't be used in a desktop file name")]
    BadVmName(String),
    /// An output name KWin would treat as the VM's own app_id.
    #[error("refusing to write {0}: KWin would grant that app_id privileges")]
    ForbiddenName(String),
    /// The terminal command is unusable.
    #[error("terminal command {0:?} is empty or not a plain command line")]
    BadTerminal(String),
}

/// One host entry written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// VM name.
    pub vm: String,
    /// Path of the written desktop file.
    pub desktop_file: PathBuf,
    /// Path of the composed icon.
    pub icon_file: PathBuf,
    /// The original desktop file.
    pub source: PathBuf,
    /// Whether the original icon was found (otherwise a letter badge).
    pub icon_found: bool,
}

/// One guest entry skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// VM name.
    pub vm: String,
    /// The original desktop file.
    pub source: PathBuf,
    /// Why.
    pub reason: String,
}

/// Something the user should know that didn't stop an entry from being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// VM name.
    pub vm: String,
    /// The package, icon or file concerned.
    pub path: PathBuf,
    /// What is wrong and what was done instead.
    pub message: String,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Problems that didn't skip an entry: missing packages, icons that couldn't be embedded.
    pub warnings: Vec<Warning>,
    /// Entries written.
    pub generated: Vec<Generated>,
    /// Entries skipped.
    pub skipped: Vec<Skipped>,
    /// Every file written (entries, icons, menus), for validation.
    pub files: Vec<PathBuf>,
}

/// Whether `name` is safe as part of a file name and menu name.
fn vm_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Keep a desktop file ID inside the characters desktop-file-validate accepts for file names.
fn sanitize_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A path below `share/applications` that could not be used, and why.
type Unusable = (PathBuf, String);

/// The desktop files of one package as (desktop file ID, path), sorted by ID, and the paths
/// below `share/applications` that could not be used, with why.
///
/// Symlinks are followed (Nix packages are often trees of links into other store paths), but
/// every directory and file is visited once by its canonical path, so a link back up the tree
/// can't loop and a second link to the same directory or file can't add duplicate entries.
/// Real directories and files are visited before links in the same directory, so the ID comes
/// from the real name when both exist. A link that can't be followed (dangling, or a loop of
/// links) and a directory named like a desktop file are reported, not silently passed over.
fn package_entries(pkg: &Path) -> (Vec<(String, PathBuf)>, Vec<Unusable>) {
    struct Walk {
        seen: std::collections::HashSet<PathBuf>,
        out: Vec<(String, PathBuf)>,
        problems: Vec<Unusable>,
    }
    fn walk(dir: &Path, prefix: &str, depth: usize, w: &mut Walk) {
        let Ok(canon) = std::fs::canonicalize(dir) else {
            return;
        };
        if !w.seen.insert(canon) {
            return;
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                w.problems
                    .push((dir.to_owned(), format!("cannot list the directory: {e}")));
                return;
            }
        };
        let mut ents: Vec<_> = rd
            .flatten()
            .map(|e| (e.file_type().is_ok_and(|t| t.is_symlink()), e.file_name()))
            .collect();
        ents.sort();
        for (is_link, name) in ents {
            if w.out.len() >= MAX_ENTRIES_PER_PACKAGE {
                return;
            }
            let path = dir.join(&name);
            let name = name.to_string_lossy().into_owned();
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if is_link => {
                    w.problems
                        .push((path, format!("symbolic link that can't be followed: {e}")));
                    continue;
                }
                Err(e) => {
                    w.problems.push((path, e.to_string()));
                    continue;
                }
            };
            if meta.is_dir() {
                if name.ends_with(".desktop") {
                    w.problems.push((
                        path,
                        "a directory named like a desktop file; not read".to_owned(),
                    ));
                } else if depth > 0 {
                    walk(&path, &format!("{prefix}{name}-"), depth - 1, w);
                }
            } else if let Some(stem) = name.strip_suffix(".desktop") {
                let Ok(canon) = std::fs::canonicalize(&path) else {
                    continue;
                };
                if w.seen.insert(canon) {
                    w.out.push((format!("{prefix}{stem}"), path));
                } else {
                    tracing::debug!(path = %path.display(), "same desktop file reached twice; ignored");
                }
            }
        }
    }
    let mut w = Walk {
        seen: std::collections::HashSet::new(),
        out: Vec::new(),
        problems: Vec::new(),
    };
    walk(&pkg.join("share/applications"), "", 3, &mut w);
    w.out.sort();
    (w.out, w.problems)
}

/// Generate the host desktop integration for `vms` into `out`.
pub fn generate(vms: &[VmApps], opts: &Options, out: &Path) -> Result<Report, DesktopError> {
    let mut report = Report::default();
    let apps_dir = out.join("share/applications");
    let icons_dir = out.join("share/icons/hicolor/scalable/apps");
    let dirs_dir = out.join("share/desktop-directories");
    let menus_dir = out.join("etc/xdg/menus/applications-merged");
    for vm in vms {
        if !vm_name_ok(&vm.name) {
            return Err(DesktopError::BadVmName(vm.name.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for pkg in &vm.packages {
            if let Err(e) = std::fs::metadata(pkg) {
                report.warnings.push(Warning {
                    vm: vm.name.clone(),
                    path: pkg.clone(),
                    message: if e.kind() == std::io::ErrorKind::NotFound {
                        "guestPrograms package does not exist; no entries from it".to_owned()
                    } else {
                        format!("guestPrograms package unreadable ({e}); no entries from it")
                    },
                });
                continue;
            }
            let (entries, problems) = package_entries(pkg);
            for (source, reason) in problems {
                tracing::info!(vm = %vm.name, source = %source.display(), %reason, "skipped");
                report.skipped.push(Skipped {
                    vm: vm.name.clone(),
                    source,
                    reason,
                });
            }
            for (id, path) in entries {
                let skip = |reason: String, report: &mut Report| {
                    tracing::info!(vm = %vm.name, source = %path.display(), %reason, "skipped");
                    report.skipped.push(Skipped {
                        vm: vm.name.clone(),
                        source: path.clone(),
                        reason,
                    });
                };
                if !seen.insert(id.clone()) {
                    skip(
                        format!("desktop file ID {id} already provided by an earlier package"),
                        &mut report,
                    );
                    continue;
                }
                let text = match read_bounded(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        skip(e, &mut report);
                        continue;
                    }
                };
                if let Some(key) = nul_key(&text) {
                    skip(format!("key {key:?} contains a NUL byte"), &mut report);
                    continue;
                }
                let parsed = match DesktopEntry::from_str(&path, &text, None::<&[&str]>) {
                    Ok(p) => p,
                    Err(e) => {
                        let what = syntax_problem(&text).unwrap_or_else(|| e.to_string());
                        skip(
                            format!("{}not a desktop file: {what}", link_target(&path)),
                            &mut report,
                        );
                        continue;
                    }
                };
                let stem = format!("vmsilo-{}-{}", vm.name, sanitize_id(&id));
                let file_name = format!("{stem}.desktop");
                if file_name == format!("org.vmsilo.{}.desktop", vm.name) {
                    return Err(DesktopError::ForbiddenName(file_name));
                }
                let guest_path = path.to_string_lossy().into_owned();
                let ctx = entry::Context {
                    vm: &vm.name,
                    icon_name: &stem,
                    guest_entry_path: &guest_path,
                    launch: &opts.launch,
                };
                let host = match entry::convert(&parsed, &ctx) {
                    Ok(h) => h,
                    Err(e) => {
                        skip(e.to_string(), &mut report);
                        continue;
                    }
                };
                for what in &host.left_out {
                    report.warnings.push(Warning {
                        vm: vm.name.clone(),
                        path: path.clone(),
                        message: what.clone(),
                    });
                }
                let source = host
                    .original_icon
                    .as_deref()
                    .and_then(|i| icon::find_icon(i, &vm.packages, &opts.icon_dirs));
                let (svg, icon_problem) =
                    icon::compose_app_icon(source.as_ref(), &vm.color, &host.name);
                if let (Some(why), Some(s)) = (icon_problem, &source) {
                    report.warnings.push(Warning {
                        vm: vm.name.clone(),
                        path: s.path.clone(),
                        message: format!("cannot embed icon ({why}); using a letter badge"),
                    });
                }
                let desktop_file = apps_dir.join(&file_name);
                let icon_file = icons_dir.join(format!("{stem}.svg"));
                write(&desktop_file, &host.text)?;
                write(&icon_file, &svg)?;
                report.files.push(desktop_file.clone());
                report.files.push(icon_file.clone());
                report.generated.push(Generated {
                    vm: vm.name.clone(),
                    desktop_file,
                    icon_file,
                    source: path.clone(),
                    icon_found: source.is_some(),
                });
            }
        }
        // The VM's menu folder.
        let folder = menu::folder_id(&vm.name);
        let folder_icon = icons_dir.join(format!("{folder}.svg"));
        let directory = dirs_dir.join(format!("{folder}.directory"));
        let menu_file = menus_dir.join(format!("{folder}.menu"));
        write(
            &folder_icon,
            &icon::compose_folder_icon(&vm.color, &format!("{} VM", vm.name)),
        )?;
        write(&directory, &menu::directory_file(&vm.name, &folder))?;
        write(&menu_file, &menu::menu_file(&vm.name))?;
        report.files.extend([folder_icon, directory, menu_file]);
    }
    Ok(report)
}

/// The text of a guest desktop file; a FIFO, device or directory is refused without opening it
/// for a blocking read.
fn read_bounded(path: &Path) -> Result<String, String> {
    let bytes = crate::files::read_regular(path, MAX_ENTRY_BYTES).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())
}

/// `(symbolic link to TARGET) ` when `path` is a link, so a message about its contents names
/// the file actually read.
fn link_target(path: &Path) -> String {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)
            .map(|t| format!("(symbolic link to {}) ", t.display()))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The first line that is neither blank, a comment, a `[group]` header nor a `key=value`
/// pair, or a pair before any group, described for a user; `None` if every line is well formed.
fn syntax_problem(text: &str) -> Option<String> {
    let mut in_group = false;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let shown = entry::display_text(&line.chars().take(60).collect::<String>());
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if !rest.contains(']') {
                return Some(format!(
                    "line {n} opens a group without closing it: {shown:?}"
                ));
            }
            in_group = true;
        } else if let Some((key, _)) = line.split_once('=') {
            if key.is_empty() {
                return Some(format!("line {n} has no key before '=': {shown:?}"));
            }
            if !in_group {
                return Some(format!(
                    "line {n} is a key=value pair before any [group] header: {shown:?}"
                ));
            }
        } else {
            return Some(format!(
                "line {n} is neither a [group] header, a key=value pair nor a comment: {shown:?}"
            ));
        }
    }
    None
}

/// The key of the first line holding a NUL byte. The parser and key-file writer would drop
/// the NUL silently, turning `Exec=prog\0; rm -rf ~` into a different command than the one
/// a NUL-terminated reader of the original sees, so such a file is refused instead.
fn nul_key(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains('\0'))?;
    let key = line.split_once('=').map_or(line, |(k, _)| k);
    Some(key.trim().replace('\0', "\\0"))
}

fn write(path: &Path, text: &str) -> Result<(), DesktopError> {
    let err = |source| DesktopError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// Parse a terminal command line such as `konsole -e` into its arguments.
pub fn parse_terminal(cmd: &str) -> Result<Vec<String>, DesktopError> {
    let bad = || DesktopError::BadTerminal(cmd.to_owned());
    let args = exec::parse(cmd).map_err(|_| bad())?;
    let words: Vec<String> = args.iter().filter_map(exec::Arg::as_literal).collect();
    if words.is_empty() || words.len() != args.len() {
        return Err(bad());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vm_names_and_ids() {
        assert!(vm_name_ok("banking-2"));
        assert!(!vm_name_ok("a/b"));
        assert!(!vm_name_ok(""));
        assert_eq!(sanitize_id("kde4-foo bar+x"), "kde4-foo_bar_x");
    }

    #[test]
    fn terminal_parsing() {
        assert_eq!(parse_terminal("konsole -e").unwrap(), ["konsole", "-e"]);
        assert_eq!(parse_terminal("\"my term\" -x").unwrap(), ["my term", "-x"]);
        assert!(parse_terminal("").is_err());
        assert!(parse_terminal("xterm %u").is_err());
    }
}
