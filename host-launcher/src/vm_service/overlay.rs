//! The root overlay's upper layer: a fresh qcow2 file per boot, created with `qemu-img`.
//!
//! A new file every boot is what makes the guest's root ephemeral; the previous boot's file is
//! replaced, and the file is removed again when the service stops.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while creating the overlay disk.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A previous boot's overlay could not be removed.
    #[error("cannot remove the old overlay {path}")]
    RemoveOld {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `qemu-img` could not be run at all.
    #[error("cannot run {program:?} (is qemu-img installed?)")]
    Spawn {
        /// The program we tried.
        program: OsString,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `qemu-img create` failed; its stderr says why (often a bad `rootOverlay.size`).
    #[error("qemu-img create {path} {size} failed: {stderr}")]
    Create {
        /// The overlay path.
        path: PathBuf,
        /// The requested size, as configured in `rootOverlay.size`.
        size: String,
        /// What qemu-img printed.
        stderr: String,
    },
}

/// A created overlay file, removed by [`Overlay::remove`].
#[derive(Debug)]
pub struct Overlay {
    path: PathBuf,
}

impl Overlay {
    /// Create `<state_dir>/<vm>/overlay.qcow2` of `size` (qemu-img syntax, e.g. `10G`).
    pub fn create(qemu_img: &Path, vm_state_dir: &Path, size: &str) -> Result<Self, OverlayError> {
        fs::create_dir_all(vm_state_dir).map_err(|source| OverlayError::StateDir {
            path: vm_state_dir.to_path_buf(),
            source,
        })?;
        let path = vm_state_dir.join("overlay.qcow2");
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(OverlayError::RemoveOld { path, source }),
        }
        let output = Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size)
            .output()
            .map_err(|source| OverlayError::Spawn {
                program: qemu_img.as_os_str().to_owned(),
                source,
            })?;
        if !output.status.success() {
            let _ = fs::remove_file(&path);
            return Err(OverlayError::Create {
                path,
                size: size.to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(Self { path })
    }

    /// Where the overlay file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Delete the overlay file (the guest's ephemeral root changes go with it).
    pub fn remove(self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove overlay");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn qemu_img() -> PathBuf {
        PathBuf::from("qemu-img")
    }

    #[test]
    fn creates_a_fresh_qcow2_of_the_requested_size_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/banking");
        let overlay = Overlay::create(&qemu_img(), &state, "64M").unwrap();
        let bytes = fs::read(overlay.path()).unwrap();
        assert_eq!(&bytes[..4], b"QFI\xfb", "qcow2 magic");
        // Virtual size is a big-endian u64 at offset 24 of the qcow2 header.
        let size = u64::from_be_bytes(bytes[24..32].try_into().unwrap());
        assert_eq!(size, 64 << 20);
        // Something the guest wrote last boot is gone after re-creation.
        fs::write(overlay.path(), b"stale").unwrap();
        let overlay = Overlay::create(&qemu_img(), &state, "32M").unwrap();
        let bytes = fs::read(overlay.path()).unwrap();
        assert_eq!(&bytes[..4], b"QFI\xfb");
        let path = overlay.path().to_path_buf();
        overlay.remove();
        assert!(!path.exists());
    }

    #[test]
    fn bad_size_is_reported_with_qemu_img_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = Overlay::create(&qemu_img(), dir.path(), "ten gigs").unwrap_err();
        match err {
            OverlayError::Create { size, stderr, .. } => {
                assert_eq!(size, "ten gigs");
                assert!(!stderr.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!dir.path().join("overlay.qcow2").exists());
    }

    #[test]
    fn missing_qemu_img_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            Overlay::create(Path::new("/nonexistent/qemu-img"), dir.path(), "1G").unwrap_err();
        assert!(matches!(err, OverlayError::Spawn { .. }));
    }
}
