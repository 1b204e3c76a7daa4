//! `vmsilo desktop --config CONFIG --out DIR` end to end: a real configuration document whose
//! guestPrograms point at the Debian fixture packages.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    let shared = std::env::var_os("VMSILO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared
        .join("fixtures/guest-packages")
        .canonicalize()
        .unwrap()
}

#[test]
fn desktop_subcommand_writes_entries_for_every_vm() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let config = serde_json::json!({
        "user": "david",
        "userUid": 1000,
        "nixosVms": [
            { "id": 3, "name": "banking", "color": "green",
              "guestPrograms": [f.join("firefox-esr"), f.join("htop")] },
            { "id": 5, "name": "shopping", "color": "#3498db",
              "guestPrograms": [f.join("firefox-esr")] },
            { "id": 7, "name": "personal" }
        ]
    });
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(["desktop", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .args([
            "--terminal",
            "xterm -e",
            "--vm-run",
            "/run/current-system/sw/bin/vm-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("3 desktop entries for 3 VMs"), "{stdout}");

    let apps = out.join("share/applications");
    let banking_ff =
        std::fs::read_to_string(apps.join("vmsilo-banking-firefox-esr.desktop")).unwrap();
    assert!(banking_ff.contains(
        "Exec=/run/current-system/sw/bin/vm-run banking -- /usr/lib/firefox-esr/firefox-esr %u\n"
    ));
    let htop = std::fs::read_to_string(apps.join("vmsilo-banking-htop.desktop")).unwrap();
    assert!(
        htop.contains("Exec=xterm -e /run/current-system/sw/bin/vm-run --tty banking -- htop\n")
    );
    // The colour name was normalised by the config: green is #008000.
    let icon = std::fs::read_to_string(
        out.join("share/icons/hicolor/scalable/apps/vmsilo-banking-firefox-esr.svg"),
    )
    .unwrap();
    assert!(icon.contains("stroke=\"#008000\""));
    assert!(apps.join("vmsilo-shopping-firefox-esr.desktop").is_file());
    // A VM without programs still gets its (empty) menu folder.
    assert!(
        out.join("etc/xdg/menus/applications-merged/vmsilo-personal.menu")
            .is_file()
    );
}

#[test]
fn desktop_subcommand_reports_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"user":"d","nixosVms":[{"id":4,"name":"x"}]}"#).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(["desktop", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nixosVms[0].id"), "{err}");
    assert!(!dir.path().join("out").exists());
}

/// Runs `vmsilo desktop` on `cfg`, failing the test instead of hanging when it doesn't finish.
fn desktop_within(cfg: &Path, out: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsilo"));
    cmd.args(["desktop", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env_remove("VMSILO_LOG")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("vmsilo desktop did not finish within 30 s");
        }
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// A package with everything a broken or hostile guest package can put where desktop files and
/// icons are looked up: FIFOs, a directory and a link loop named `*.desktop`, a link to a file
/// that isn't a desktop file, an icon that can't be embedded; and a guestPrograms path that
/// doesn't exist.
#[test]
fn odd_package_contents_are_named_in_warnings_and_never_hang() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    let apps = pkg.join("share/applications");
    let icons = pkg.join("share/icons/hicolor/scalable/apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(&icons).unwrap();
    std::fs::create_dir_all(pkg.join("share/doc")).unwrap();
    let entry = |name: &str, icon: &str| {
        format!("[Desktop Entry]\nType=Application\nName={name}\nExec={name}\nIcon={icon}\n")
    };
    std::fs::write(
        apps.join("good.desktop"),
        entry("good", "goodicon")
            + "Actions=bad;\n[Desktop Action bad]\nName=Bad\nExec=\"unclosed\n",
    )
    .unwrap();
    std::fs::write(apps.join("piped.desktop"), entry("piped", "fifoicon")).unwrap();
    mkfifo(&apps.join("fifo.desktop"));
    std::fs::create_dir(apps.join("folder.desktop")).unwrap();
    std::os::unix::fs::symlink("loop.desktop", apps.join("loop.desktop")).unwrap();
    std::fs::write(pkg.join("share/doc/README"), "hello\nworld\n").unwrap();
    std::os::unix::fs::symlink("../doc/README", apps.join("readme.desktop")).unwrap();
    std::fs::write(icons.join("goodicon.svg"), b"\xff\xfe not utf-8").unwrap();
    mkfifo(&icons.join("fifoicon.svg"));
    let missing = dir.path().join("no-such-package");

    let config = serde_json::json!({
        "user": "david",
        "userUid": 1000,
        "nixosVms": [{ "id": 3, "name": "t", "color": "red",
                       "guestPrograms": [&missing, &pkg] }]
    });
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let o = desktop_within(&cfg, &dir.path().join("out"), &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 desktop entries for 1 VM"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expect = [
        format!(
            "vmsilo: t: {}: guestPrograms package does not exist; no entries from it",
            missing.display()
        ),
        format!(
            "vmsilo: t: skipped {}: not a regular file (a FIFO)",
            apps.join("fifo.desktop").display()
        ),
        format!(
            "vmsilo: t: skipped {}: a directory named like a desktop file; not read",
            apps.join("folder.desktop").display()
        ),
        format!(
            "vmsilo: t: skipped {}: symbolic link that can't be followed: Too many levels of symbolic links (os error 40)",
            apps.join("loop.desktop").display()
        ),
        format!(
            "vmsilo: t: skipped {}: (symbolic link to {}) not a desktop file: line 1 is neither a [group] header, a key=value pair nor a comment: \"hello\"",
            apps.join("readme.desktop").display(),
            pkg.join("share/doc/README").display()
        ),
        format!(
            "vmsilo: t: {}: cannot embed icon (SVG is not UTF-8); using a letter badge",
            icons.join("goodicon.svg").display()
        ),
    ];
    for line in &expect {
        assert!(
            lines.contains(&line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
    let action = format!(
        "vmsilo: t: {}: action \"bad\" left out: its Exec is unusable: ",
        apps.join("good.desktop").display()
    );
    assert!(lines.iter().any(|l| l.starts_with(&action)), "{stderr}");
    // Every line is in the one `vmsilo: …` format, without tracing's timestamps or colours.
    assert_eq!(lines.len(), expect.len() + 1, "{stderr}");
}

/// Logs piped to a file or another program carry no terminal colour codes.
#[test]
fn piped_logs_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(pkg.join("share/applications")).unwrap();
    std::fs::write(
        pkg.join("share/applications/hidden.desktop"),
        "[Desktop Entry]\nType=Application\nName=x\nExec=x\nNoDisplay=true\n",
    )
    .unwrap();
    let config = serde_json::json!({
        "user": "david",
        "userUid": 1000,
        "nixosVms": [{ "id": 3, "name": "t", "guestPrograms": [&pkg] }]
    });
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let o = desktop_within(&cfg, &dir.path().join("out"), &[("VMSILO_LOG", "info")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("INFO") && stderr.contains("NoDisplay=true"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}
