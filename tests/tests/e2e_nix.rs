//! The Nix tier: runs `tests/nix-check.sh` (parse every .nix file; with `NIXPKGS_LIB`, evaluate
//! the module on the shared examples and run `vmsilo check` on the result; with `KWIN_SRC`,
//! `git apply --check` the KWin patch). Needs `nix-instantiate` (Debian `nix-bin`).

use std::process::Command;

#[test]
fn nix_module_checks_pass() {
    vmsilo_tests::require_tool("nix-instantiate");
    let root = vmsilo_tests::repo_root();
    let status = Command::new("bash")
        .arg(root.join("tests/nix-check.sh"))
        .env("VMSILO_SHARED", vmsilo_tests::shared_dir())
        .status()
        .expect("spawn bash tests/nix-check.sh");
    assert!(status.success(), "tests/nix-check.sh failed: {status}");
}
