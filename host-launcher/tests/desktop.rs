//! The desktop generator on the real Debian entries in `../shared/fixtures/guest-packages`,
//! with every output checked by `desktop-file-validate` (Debian `desktop-file-utils`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vmsilo::desktop::{self, Options, VmApps};

fn fixtures() -> PathBuf {
    let shared = std::env::var_os("VMSILO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("fixtures/guest-packages")
}

fn pkg(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` is not on PATH; install the Debian packages desktop-file-utils and libxml2-utils")
        })
}

fn vms() -> Vec<VmApps> {
    vec![
        VmApps {
            name: "banking".into(),
            color: "#2ecc71".into(),
            packages: vec![pkg("firefox-esr"), pkg("konsole"), pkg("htop")],
        },
        VmApps {
            name: "personal".into(),
            color: "#ff0000".into(),
            packages: vec![
                pkg("libreoffice-writer"),
                pkg("libreoffice-common"),
                pkg("okular"),
                pkg("vlc"),
            ],
        },
    ]
}

/// Replace the machine-specific fixture path so snapshots are stable.
fn portable(text: &str) -> String {
    text.replace(
        &fixtures().to_string_lossy().into_owned(),
        "/nix/store/FIXTURES",
    )
}

fn read(out: &Path, rel: &str) -> String {
    std::fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_generated_file_passes_desktop_file_validate() {
    let validate = require("desktop-file-validate");
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let mut checked = 0;
    for f in &report.files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "desktop" && ext != "directory" {
            continue;
        }
        let o = Command::new(&validate).arg(f).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "{} failed validation:\n{text}",
            f.display()
        );
        assert!(
            !text.contains("error:") && !text.contains("warning:"),
            "{} has validation findings:\n{text}\n---\n{}",
            f.display(),
            std::fs::read_to_string(f).unwrap()
        );
        checked += 1;
    }
    // 3 visible entries in banking, 4 in personal (startcenter, writer, okular, vlc), 2 folders.
    assert_eq!(checked, report.generated.len() + 2);
    assert_eq!(report.generated.len(), 7, "{:#?}", report.generated);
}

#[test]
fn entries_names_and_skips() {
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let mut names: Vec<String> = report
        .generated
        .iter()
        .map(|g| {
            g.desktop_file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "vmsilo-banking-firefox-esr.desktop",
            "vmsilo-banking-htop.desktop",
            "vmsilo-banking-org.kde.konsole.desktop",
            "vmsilo-personal-libreoffice-startcenter.desktop",
            "vmsilo-personal-libreoffice-writer.desktop",
            "vmsilo-personal-org.kde.okular.desktop",
            "vmsilo-personal-vlc.desktop",
        ]
    );
    // NoDisplay entries (okular's per-format aliases, vlc's disc openers, the XSLT filter).
    let nodisplay = report
        .skipped
        .iter()
        .filter(|s| s.reason == "NoDisplay=true")
        .count();
    assert_eq!(nodisplay, 11 + 4 + 1, "{:#?}", report.skipped);
    for f in walk(out.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with("org.vmsilo."), "forbidden output {name}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn firefox_entry() {
    let out = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let text = read(
        out.path(),
        "share/applications/vmsilo-banking-firefox-esr.desktop",
    );
    assert!(text.contains("\nName=Firefox ESR [banking]\n"));
    assert!(text.contains("\nExec=vm-run banking -- /usr/lib/firefox-esr/firefox-esr %u\n"));
    assert!(text.contains("\nIcon=vmsilo-banking-firefox-esr\n"));
    assert!(text.contains("X-GNOME-FullName[fr]=Navigateur Web Firefox ESR [banking]\n"));
    assert!(text.contains("Categories=Network;WebBrowser;X-vmsilo-banking;\n"));
    assert!(text.contains("MimeType=text/html;"));
    insta::assert_snapshot!("firefox_entry", portable(&text));
}

#[test]
fn terminal_entry_runs_in_host_terminal() {
    let out = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let text = read(out.path(), "share/applications/vmsilo-banking-htop.desktop");
    assert!(
        text.contains("\nExec=konsole -e vm-run --tty banking -- htop\n"),
        "{text}"
    );
    assert!(text.contains("\nTerminal=false\n"));

    let mut opts = Options::default();
    opts.launch.terminal = desktop::parse_terminal("\"/opt/my term\" --run").unwrap();
    opts.launch.vm_run = "/nix/store/abc-vmsilo/bin/vm-run".into();
    let out2 = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &opts, out2.path()).unwrap();
    let text = read(
        out2.path(),
        "share/applications/vmsilo-banking-htop.desktop",
    );
    assert!(
        text.contains(
            "\nExec=\"/opt/my term\" --run /nix/store/abc-vmsilo/bin/vm-run --tty banking -- htop\n"
        ),
        "{text}"
    );
}

#[test]
fn konsole_actions_tryexec_and_dbus_keys() {
    let out = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let text = read(
        out.path(),
        "share/applications/vmsilo-banking-org.kde.konsole.desktop",
    );
    assert!(!text.contains("TryExec"), "{text}");
    assert!(!text.contains("X-DBUS"), "{text}");
    assert!(!text.contains("X-KDE-Shortcuts"), "{text}");
    assert!(!text.contains("StartupWMClass"), "{text}");
    assert!(text.contains("\nActions=NewWindow;NewTab;\n"));
    assert!(
        text.contains(
            "[Desktop Action NewTab]\nName=Open a New Tab\nName[de]=Neues Unterfenster öffnen\n"
        ) || text.contains("[Desktop Action NewTab]\nName=Open a New Tab\n")
    );
    assert!(text.contains("Exec=vm-run banking -- konsole --new-tab\n"));
    insta::assert_snapshot!("konsole_entry", portable(&text));
}

#[test]
fn libreoffice_writer_keeps_url_mimes_and_actions() {
    let out = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let text = read(
        out.path(),
        "share/applications/vmsilo-personal-libreoffice-writer.desktop",
    );
    assert!(text.contains("\nExec=vm-run personal -- libreoffice --writer %U\n"));
    assert!(text.contains("MimeType=application/vnd.oasis.opendocument.text;"));
    assert!(text.contains("[Desktop Action NewDocument]"));
    assert!(!text.contains("InitialPreference"), "{text}");
    // The icon came from another package of the same VM (libreoffice-common), as SVG.
    let svg = read(
        out.path(),
        "share/icons/hicolor/scalable/apps/vmsilo-personal-libreoffice-writer.svg",
    );
    assert!(svg.contains("stroke=\"#ff0000\""));
    assert!(
        svg.contains("xlink:href=\"data:image/svg+xml;base64,"),
        "expected the scalable original embedded"
    );
}

#[test]
fn field_codes_from_a_synthetic_package() {
    let pkgdir = tempfile::tempdir().unwrap();
    let apps = pkgdir.path().join("share/applications/sub");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(pkgdir.path().join("share/pixmaps")).unwrap();
    std::fs::copy(
        pkg("htop").join("share/pixmaps/htop.png"),
        pkgdir.path().join("share/pixmaps/viewer.png"),
    )
    .unwrap();
    std::fs::write(
        apps.join("viewer.desktop"),
        "[Desktop Entry]\nType=Application\nName=Viewer\nName[de]=Betrachter\n\
         Exec=viewer --title %c --icon-arg %i --self %k %d %F \"--weird arg\" 50%%\n\
         Icon=/usr/share/pixmaps/viewer.png\nMimeType=image/png;\nDBusActivatable=true\n\
         TryExec=viewer\nPath=/var/guest\nX-KDE-Wayland-Interfaces=org_kde_plasma_window_management\n",
    )
    .unwrap();
    std::fs::write(
        apps.join("dbusonly.desktop"),
        "[Desktop Entry]\nType=Application\nName=D-Bus only\nDBusActivatable=true\n",
    )
    .unwrap();
    std::fs::write(
        apps.join("broken.desktop"),
        "[Desktop Entry]\nType=Application\nName=Broken\nExec=prog \"unterminated\n",
    )
    .unwrap();
    std::fs::write(
        apps.join("hidden.desktop"),
        "[Desktop Entry]\nType=Application\nName=H\nExec=h\nHidden=true\n",
    )
    .unwrap();
    let vm = VmApps {
        name: "work".into(),
        color: "#3498db".into(),
        packages: vec![pkgdir.path().into()],
    };
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&[vm], &Options::default(), out.path()).unwrap();
    assert_eq!(report.generated.len(), 1, "{report:#?}");
    assert!(
        report.generated[0].icon_found,
        "absolute /usr path re-rooted in the package"
    );
    let reasons: Vec<_> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("no Exec")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unterminated double quote")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"Hidden=true"), "{reasons:?}");

    let text = read(
        out.path(),
        "share/applications/vmsilo-work-sub-viewer.desktop",
    );
    let guest_path = apps.join("viewer.desktop");
    let expected = format!(
        "\nExec=vm-run work -- viewer --title Viewer --icon-arg --icon /usr/share/pixmaps/viewer.png \
         --self {} \"--weird arg\" 50%%\n",
        guest_path.display()
    );
    assert!(text.contains(&expected), "{text}\nexpected {expected}");
    assert!(text.contains("Name[de]=Betrachter [work]\n"));
    assert!(
        !text.contains("MimeType"),
        "files-only entry must not claim MIME types: {text}"
    );
    for gone in [
        "DBusActivatable",
        "TryExec",
        "Path=",
        "X-KDE-Wayland-Interfaces",
    ] {
        assert!(!text.contains(gone), "{gone} leaked: {text}");
    }
    let svg = read(
        out.path(),
        "share/icons/hicolor/scalable/apps/vmsilo-work-sub-viewer.svg",
    );
    assert!(
        svg.contains("data:image/png;base64,iVBORw0KGgo"),
        "PNG embedded as data URI"
    );

    let validate = require("desktop-file-validate");
    let st = Command::new(validate)
        .arg(
            out.path()
                .join("share/applications/vmsilo-work-sub-viewer.desktop"),
        )
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn icons_and_menu_folder() {
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&vms(), &Options::default(), out.path()).unwrap();
    let by_name = |n: &str| {
        report
            .generated
            .iter()
            .find(|g| g.desktop_file.file_name().unwrap().to_string_lossy() == n)
            .unwrap()
            .clone()
    };
    // Largest hicolor PNG (128x128) for Firefox.
    let ff = by_name("vmsilo-banking-firefox-esr.desktop");
    assert!(ff.icon_found);
    let svg = std::fs::read_to_string(&ff.icon_file).unwrap();
    let png128 =
        std::fs::read(pkg("firefox-esr").join("share/icons/hicolor/128x128/apps/firefox-esr.png"))
            .unwrap();
    assert!(
        svg.contains(&desktop::icon::base64(&png128)),
        "expected the 128px original"
    );
    assert!(svg.contains("stroke=\"#2ecc71\""));
    // htop: scalable SVG preferred over the pixmap PNG.
    let htop = std::fs::read_to_string(by_name("vmsilo-banking-htop.desktop").icon_file).unwrap();
    assert!(htop.contains("data:image/svg+xml;base64,") && !htop.contains("data:image/png"));
    // Konsole names a theme icon the package doesn't ship: letter badge in the VM colour.
    let k = by_name("vmsilo-banking-org.kde.konsole.desktop");
    assert!(!k.icon_found);
    let ksvg = std::fs::read_to_string(&k.icon_file).unwrap();
    assert!(ksvg.contains(">K</text>") && ksvg.contains("#2ecc71"));
    // Every SVG and menu file is well-formed XML.
    let xmllint = require("xmllint");
    for f in report
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg" || e == "menu"))
    {
        let o = Command::new(&xmllint)
            .arg("--noout")
            .arg(f)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    let dir = read(
        out.path(),
        "share/desktop-directories/vmsilo-banking.directory",
    );
    assert!(dir.contains("Type=Directory\n") && dir.contains("Icon=vmsilo-banking\n"));
    let folder = read(
        out.path(),
        "share/icons/hicolor/scalable/apps/vmsilo-banking.svg",
    );
    assert!(folder.contains("fill=\"#2ecc71\""));
    let menu = read(
        out.path(),
        "etc/xdg/menus/applications-merged/vmsilo-banking.menu",
    );
    assert!(menu.contains("<Directory>vmsilo-banking.directory</Directory>"));
    assert!(menu.contains("<Category>X-vmsilo-banking</Category>"));
    insta::assert_snapshot!("banking_menu", menu);
}

#[test]
fn output_is_stable_across_runs() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    desktop::generate(&vms(), &Options::default(), a.path()).unwrap();
    desktop::generate(&vms(), &Options::default(), b.path()).unwrap();
    let mut fa: Vec<_> = walk(a.path())
        .into_iter()
        .map(|p| p.strip_prefix(a.path()).unwrap().to_owned())
        .collect();
    let mut fb: Vec<_> = walk(b.path())
        .into_iter()
        .map(|p| p.strip_prefix(b.path()).unwrap().to_owned())
        .collect();
    fa.sort();
    fb.sort();
    assert_eq!(fa, fb);
    for rel in fa {
        assert_eq!(
            std::fs::read(a.path().join(&rel)).unwrap(),
            std::fs::read(b.path().join(&rel)).unwrap()
        );
    }
}

#[test]
fn bad_vm_name_is_refused() {
    let vm = VmApps {
        name: "../x".into(),
        color: "#000000".into(),
        packages: vec![],
    };
    let out = tempfile::tempdir().unwrap();
    let err = desktop::generate(&[vm], &Options::default(), out.path()).unwrap_err();
    assert!(matches!(err, desktop::DesktopError::BadVmName(n) if n == "../x"));
}

#[test]
fn hostile_packages_are_skipped_not_fatal() {
    let pkgdir = tempfile::tempdir().unwrap();
    let apps = pkgdir.path().join("share/applications");
    let icons = pkgdir.path().join("share/icons/hicolor/scalable/apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(&icons).unwrap();
    // Bigger than the limit.
    let mut big = String::from("[Desktop Entry]\nType=Application\nName=Big\nExec=big\n");
    big.push_str("X-Pad=");
    big.push_str(&"a".repeat(2 * 1024 * 1024));
    big.push('\n');
    std::fs::write(apps.join("big.desktop"), big).unwrap();
    // Not UTF-8.
    std::fs::write(
        apps.join("latin1.desktop"),
        b"[Desktop Entry]\nType=Application\nName=Caf\xe9\nExec=x\n",
    )
    .unwrap();
    // A symlink loop in the icon tree and an icon that isn't an SVG at all.
    std::os::unix::fs::symlink(
        pkgdir.path().join("share/icons/hicolor"),
        icons.join("loop"),
    )
    .unwrap();
    std::fs::write(
        icons.join("evil.svg"),
        "<html><script>alert(1)</script></html>",
    )
    .unwrap();
    std::fs::write(
        apps.join("evil.desktop"),
        "[Desktop Entry]\nType=Application\nName=Evil\nName[de]=Bö\\nse\nIcon=evil\n\
         Exec=evil \"$(rm -rf ~)\" `id` %u\nComment=line1\\nline2\n",
    )
    .unwrap();
    let vm = VmApps {
        name: "dmz".into(),
        color: "#ff00ff".into(),
        packages: vec![pkgdir.path().into()],
    };
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&[vm], &Options::default(), out.path()).unwrap();
    let reasons: Vec<_> = report.skipped.iter().map(|s| s.reason.clone()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("larger than")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not UTF-8")),
        "{reasons:?}"
    );
    assert_eq!(report.generated.len(), 1);
    assert!(
        report.generated[0].icon_found,
        "found, but it can't be embedded"
    );
    let svg = std::fs::read_to_string(&report.generated[0].icon_file).unwrap();
    assert!(
        !svg.contains("script") && svg.contains(">E</text>"),
        "letter badge instead: {svg}"
    );
    let text = read(out.path(), "share/applications/vmsilo-dmz-evil.desktop");
    // Shell metacharacters stay quoted literals for the guest program, never interpreted.
    assert!(
        text.contains("Exec=vm-run dmz -- evil \"\\\\$(rm -rf ~)\" \"\\\\`id\\\\`\" %u\n"),
        "{text}"
    );
    // An escaped newline can't push the VM tag onto a hidden second line.
    assert!(text.contains("Name[de]=Bö se [dmz]\n"), "{text}");
    assert!(text.contains("Comment=line1 line2\n"), "{text}");
    let validate = require("desktop-file-validate");
    let o = Command::new(validate)
        .arg(&report.generated[0].desktop_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// A package with one entry per given file name and contents; returns (pkg dir, apps dir).
fn synthetic(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let pkgdir = tempfile::tempdir().unwrap();
    let apps = pkgdir.path().join("share/applications");
    std::fs::create_dir_all(&apps).unwrap();
    for (name, text) in files {
        std::fs::write(apps.join(name), text).unwrap();
    }
    (pkgdir, apps)
}

fn run_one(pkgdir: &Path) -> (desktop::Report, tempfile::TempDir) {
    let vm = VmApps {
        name: "dmz".into(),
        color: "#ff00ff".into(),
        packages: vec![pkgdir.into()],
    };
    let out = tempfile::tempdir().unwrap();
    let report = desktop::generate(&[vm], &Options::default(), out.path()).unwrap();
    (report, out)
}

fn assert_valid(file: &Path) {
    let o = Command::new(require("desktop-file-validate"))
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !text.contains("error:"),
        "{}: {text}",
        file.display()
    );
}

#[test]
fn control_and_bidi_characters_cannot_hide_the_vm_tag() {
    let (pkgdir, _apps) = synthetic(&[(
        "spoof.desktop",
        "[Desktop Entry]\nType=Application\nName=Bank\\n\u{202E}evil\u{2066}x\u{2069}\u{200F}\n\
         Name[fr]=Banque\\r\\t\u{202B}y\nGenericName=Web\\nBrowser\u{202D}\n\
         Comment=a\u{2067}b\\nc\nKeywords=k\\n1\u{202A};k2;\nX-GNOME-FullName=Full\\nName\n\
         Exec=spoof\nActions=A;\n\n[Desktop Action A]\nName=Act\\nion\u{202E}\nExec=spoof --a\n",
    )]);
    let (report, out) = run_one(pkgdir.path());
    assert_eq!(report.generated.len(), 1, "{report:#?}");
    let text = read(out.path(), "share/applications/vmsilo-dmz-spoof.desktop");
    for bad in [
        '\u{202A}', '\u{202B}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2069}',
        '\u{200F}',
    ] {
        assert!(!text.contains(bad), "{bad:?} survived: {text}");
    }
    assert!(
        !text.contains("\\n") && !text.contains("\\t") && !text.contains("\\r"),
        "{text}"
    );
    assert!(text.contains("\nName=Bank evilx [dmz]\n"), "{text}");
    assert!(text.contains("\nName[fr]=Banque  y [dmz]\n"), "{text}");
    assert!(text.contains("\nGenericName=Web Browser\n"), "{text}");
    assert!(text.contains("\nComment=ab c\n"), "{text}");
    assert!(text.contains("\nKeywords=k 1;k2;dmz;\n"), "{text}");
    assert!(
        text.contains("\nX-GNOME-FullName=Full Name [dmz]\n"),
        "{text}"
    );
    assert!(text.contains("\nName=Act ion\n"), "{text}");
    assert_eq!(
        report.generated[0].source,
        pkgdir.path().join("share/applications/spoof.desktop")
    );
    assert_valid(&report.generated[0].desktop_file);
}

#[test]
fn nul_bytes_skip_the_entry() {
    let (pkgdir, _apps) = synthetic(&[
        (
            "nul.desktop",
            "[Desktop Entry]\nType=Application\nName=N\nExec=prog\0; rm -rf ~\n",
        ),
        (
            "nulname.desktop",
            "[Desktop Entry]\nType=Application\nName=A\0B\nExec=prog\n",
        ),
        (
            "ok.desktop",
            "[Desktop Entry]\nType=Application\nName=Ok\nExec=prog\n",
        ),
    ]);
    let (report, out) = run_one(pkgdir.path());
    assert_eq!(report.generated.len(), 1, "{report:#?}");
    assert!(
        out.path()
            .join("share/applications/vmsilo-dmz-ok.desktop")
            .is_file()
    );
    assert!(
        !out.path()
            .join("share/applications/vmsilo-dmz-nul.desktop")
            .exists()
    );
    let reasons: Vec<_> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons.contains(&"key \"Exec\" contains a NUL byte")
            && reasons.contains(&"key \"Name\" contains a NUL byte"),
        "{reasons:?}"
    );
}

#[test]
fn scheme_handlers_are_never_claimed_on_the_host() {
    let (pkgdir, _apps) = synthetic(&[(
        "browser.desktop",
        "[Desktop Entry]\nType=Application\nName=Browser\nExec=browser %u\n\
         MimeType=text/html;x-scheme-handler/https;X-Scheme-Handler/http;x-scheme-handler/mailto;image/png;\n",
    )]);
    let (report, out) = run_one(pkgdir.path());
    assert_eq!(report.generated.len(), 1, "{report:#?}");
    let text = read(out.path(), "share/applications/vmsilo-dmz-browser.desktop");
    assert!(text.contains("\nMimeType=text/html;image/png;\n"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("scheme-handler"),
        "{text}"
    );
    assert_valid(&report.generated[0].desktop_file);
}

#[test]
fn symlinked_directories_add_no_duplicates_and_never_loop() {
    let (pkgdir, apps) = synthetic(&[(
        "app.desktop",
        "[Desktop Entry]\nType=Application\nName=App\nExec=app\n",
    )]);
    let real = apps.join("sub");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(
        real.join("tool.desktop"),
        "[Desktop Entry]\nType=Application\nName=Tool\nExec=tool\n",
    )
    .unwrap();
    // A cycle back to the top, a second name for `sub`, and a second name for a file.
    std::os::unix::fs::symlink(&apps, apps.join("loop")).unwrap();
    std::os::unix::fs::symlink(&apps, real.join("up")).unwrap();
    std::os::unix::fs::symlink(&real, apps.join("alias")).unwrap();
    std::os::unix::fs::symlink(apps.join("app.desktop"), apps.join("again.desktop")).unwrap();
    // A link to a directory outside the tree (as Nix buildEnv makes) is still followed once.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("ext.desktop"),
        "[Desktop Entry]\nType=Application\nName=Ext\nExec=ext\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(other.path(), apps.join("linked")).unwrap();
    let (report, _out) = run_one(pkgdir.path());
    let mut names: Vec<String> = report
        .generated
        .iter()
        .map(|g| {
            g.desktop_file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "vmsilo-dmz-app.desktop",
            "vmsilo-dmz-linked-ext.desktop",
            "vmsilo-dmz-sub-tool.desktop",
        ],
        "{report:#?}"
    );
}

#[test]
fn exec_lines_beyond_the_vm_run_limits_are_skipped() {
    let huge = format!(
        "[Desktop Entry]\nType=Application\nName=Huge\nExec=prog{}\n",
        " a".repeat(400_000)
    );
    let (pkgdir, _apps) = synthetic(&[
        ("huge.desktop", &huge),
        (
            "ok.desktop",
            "[Desktop Entry]\nType=Application\nName=Ok\nExec=prog\n",
        ),
    ]);
    let (report, out) = run_one(pkgdir.path());
    assert_eq!(report.generated.len(), 1, "{report:#?}");
    assert!(
        !out.path()
            .join("share/applications/vmsilo-dmz-huge.desktop")
            .exists()
    );
    let reason = &report
        .skipped
        .iter()
        .find(|s| s.source.ends_with("huge.desktop"))
        .unwrap()
        .reason;
    assert!(reason.contains("400001 arguments"), "{reason}");
}

/// Decode an 8-bit RGBA PNG (what rsvg-convert writes) to (width, height, pixels), through
/// Python's zlib since the test has no PNG decoder of its own.
fn decode_png(png: &Path) -> (usize, usize, Vec<u8>) {
    const SCRIPT: &str = r#"
import sys, zlib, struct
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\x89PNG\r\n\x1a\n'
i, idat = 8, b''
while i < len(d):
    n, = struct.unpack('>I', d[i:i+4]); t = d[i+4:i+8]; c = d[i+8:i+8+n]; i += 12 + n
    if t == b'IHDR': w, h, bd, ct, _, _, il = struct.unpack('>IIBBBBB', c)
    elif t == b'IDAT': idat += c
assert bd == 8 and ct == 6 and il == 0, (bd, ct, il)
raw = zlib.decompress(idat); stride = w * 4; out = bytearray(); prev = bytearray(stride); p = 0
for y in range(h):
    f = raw[p]; line = bytearray(raw[p+1:p+1+stride]); p += 1 + stride
    for x in range(stride):
        a = line[x-4] if x >= 4 else 0; b = prev[x]; c = prev[x-4] if x >= 4 else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    out += line; prev = line
sys.stdout.buffer.write(struct.pack('>II', w, h) + out)
"#;
    let o = Command::new(require("python3"))
        .args(["-c", SCRIPT])
        .arg(png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = u32::from_be_bytes(o.stdout[0..4].try_into().unwrap()) as usize;
    let h = u32::from_be_bytes(o.stdout[4..8].try_into().unwrap()) as usize;
    (w, h, o.stdout[8..].to_vec())
}

#[test]
fn guest_svg_icons_cannot_paint_over_the_frame_or_carry_active_content() {
    let rsvg = require("rsvg-convert");
    let xmllint = require("xmllint");
    let icons: &[(&str, &str)] = &[
        (
            "bigrect",
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect x="-100" y="-100" width="1000" height="1000" fill="#ff0000"/></svg>"##,
        ),
        (
            "breakout",
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><g></g><rect width="128" height="128" fill="#00ff00"/><g><circle r="3" fill="#00ff00"/></g></svg>"##,
        ),
        (
            "breakout2",
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"></g><rect width="128" height="128" fill="#00ff00"/><g></svg>"##,
        ),
        (
            "active",
            r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10" onload="alert(1)"><script>alert(2)</script><foreignObject><p/></foreignObject><image href="https://evil.example/x.png" width="10" height="10"/></svg>"##,
        ),
        (
            "outside",
            r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 10 10"><image xlink:href="file:///etc/passwd" width="10" height="10"/></svg>"##,
        ),
    ];
    let pkgdir = tempfile::tempdir().unwrap();
    let apps = pkgdir.path().join("share/applications");
    let svgs = pkgdir.path().join("share/icons/hicolor/scalable/apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(&svgs).unwrap();
    for (name, svg) in icons {
        std::fs::write(svgs.join(format!("{name}.svg")), svg).unwrap();
        std::fs::write(
            apps.join(format!("{name}.desktop")),
            format!("[Desktop Entry]\nType=Application\nName=Evil {name}\nExec=x\nIcon={name}\n"),
        )
        .unwrap();
    }
    let (report, out) = run_one(pkgdir.path());
    assert_eq!(report.generated.len(), icons.len(), "{report:#?}");
    let magenta = [255u8, 0, 255, 255];
    for (name, _) in icons {
        let icon = out.path().join(format!(
            "share/icons/hicolor/scalable/apps/vmsilo-dmz-{name}.svg"
        ));
        let text = std::fs::read_to_string(&icon).unwrap();
        let lint = Command::new(&xmllint)
            .arg("--noout")
            .arg(&icon)
            .output()
            .unwrap();
        assert!(
            lint.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&lint.stderr)
        );
        for gone in [
            "script",
            "onload",
            "foreignObject",
            "evil.example",
            "passwd",
            "#00ff00",
            "#ff0000",
        ] {
            assert!(!text.contains(gone), "{name}: {gone} in {text}");
        }
        let png = out.path().join(format!("{name}.png"));
        let o = Command::new(&rsvg)
            .args(["-w", "128", "-h", "128", "-o"])
            .arg(&png)
            .arg(&icon)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (w, h, px) = decode_png(&png);
        assert_eq!((w, h), (128, 128));
        let at = |x: usize, y: usize| -> [u8; 4] { px[(y * w + x) * 4..][..4].try_into().unwrap() };
        // The frame's stroke, mid-edge on all four sides, is the VM colour.
        for (x, y) in [(64, 3), (64, 124), (3, 64), (124, 64)] {
            assert_eq!(at(x, y), magenta, "{name}: frame at ({x},{y})");
        }
        // Outside the rounded frame stays transparent; between frame and picture is the tint.
        assert_eq!(at(1, 1)[3], 0, "{name}: corner painted");
        for (x, y) in [(14, 64), (64, 14), (113, 64), (64, 113)] {
            let p = at(x, y);
            assert!(
                !((p[1] > 200 && p[0] < 100) || (p[0] > 200 && p[1] < 100 && p[2] < 100)),
                "{name}: guest colour outside its box at ({x},{y}): {p:?}"
            );
        }
        if *name == "bigrect" {
            // The guest picture itself is still shown, inside its box.
            let p = at(64, 64);
            assert!(
                p[0] > 200 && p[1] < 50 && p[2] < 50,
                "{name}: picture missing: {p:?}"
            );
        }
        if *name == "active" || *name == "outside" {
            assert!(
                text.contains(">E</text>"),
                "{name}: letter badge expected: {text}"
            );
        }
    }
}
