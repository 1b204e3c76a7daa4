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
