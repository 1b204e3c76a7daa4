//! Shared helpers for vmsilo's cross-crate integration and end-to-end tests.
//!
//! End-to-end tests (real QEMU guests, vhost-user peers) are built only with the `e2e` feature so
//! that `cargo test --workspace` needs no root, QEMU or network. `.ci/run` always runs the `e2e`
//! tier; a missing prerequisite there is a loud failure, never a silent skip.

pub mod compositor;
pub mod loadgen;
pub mod switch;

use std::path::{Path, PathBuf};

pub mod agent;

/// The project's `shared/` directory, which sits beside the repository checkout.
///
/// `VMSILO_SHARED` overrides it, because CI and developers may lay the two out differently.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMSILO_SHARED") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The repository root, for tests that run the project's own scripts.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Find `tool` on `PATH`, or panic naming it: an end-to-end test must fail, not skip, when the
/// machine lacks what `.ci/run` is supposed to install.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("required tool `{tool}` is not on PATH; install it (see .ci/run) and rerun")
        })
}
pub mod vm_service;
