//! The shared home directory: seeded from the home template on first start, owned by the user.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors while preparing the shared home.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Copying or creating something under the home failed.
    #[error("cannot seed {path}")]
    Seed {
        /// The file or directory being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Copying the template as the user failed (often: the user cannot read it).
    #[error("copying the home template {template} as uid {uid} failed: {stderr}")]
    Copy {
        /// The template directory.
        template: PathBuf,
        /// The user.
        uid: u32,
        /// What cp printed.
        stderr: String,
    },
    /// Changing the owner to the configured user failed.
    #[error("cannot give {path} to uid {uid}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The configured user's uid.
        uid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Make sure `home` exists. If it does not, copy `template` (when present) into it as the user
/// `uid`:`gid`. Returns whether the home was created now.
///
/// An existing home is never touched: it holds the user's data. Root only creates the (empty)
/// staging directory, gives it to the user with `lchown`, and renames it into place; the copy
/// itself runs as the user (`cp`), so nothing the user controls — the template, or `/shared`,
/// which the user owns — can trick root into writing or chowning files elsewhere.
pub fn ensure(home: &Path, template: &Path, uid: u32, gid: u32) -> Result<bool, HomeError> {
    if fs::symlink_metadata(home).is_ok() {
        return Ok(false);
    }
    let seed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HomeError::Seed { path, source }
    };
    if let Some(parent) = home.parent() {
        fs::create_dir_all(parent).map_err(seed(parent))?;
    }
    // Build next to the final path and rename, so a crash never leaves a half-seeded home that
    // the next start would mistake for a finished one.
    let name = home
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = home.with_file_name(format!(".{name}.seeding"));
    if fs::symlink_metadata(&staging).is_ok() {
        // remove_dir_all does not follow symlinks.
        fs::remove_dir_all(&staging).map_err(seed(&staging))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(seed(&staging))?;
    let result = (|| {
        std::os::unix::fs::lchown(&staging, Some(uid), Some(gid)).map_err(|source| {
            HomeError::Chown {
                path: staging.clone(),
                uid,
                source,
            }
        })?;
        if template.is_dir() {
            copy_as_user(template, &staging, uid, gid)?;
        }
        fs::rename(&staging, home).map_err(seed(home))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| true)
}

/// `cp -R` the template's contents into `to`, as the user when we are root.
fn copy_as_user(template: &Path, to: &Path, uid: u32, gid: u32) -> Result<(), HomeError> {
    let mut cmd = Command::new("cp");
    cmd.args(["-R", "-P", "--preserve=mode,timestamps", "--"])
        .arg(template.join("."))
        .arg(to)
        .stdin(Stdio::null());
    if nix::unistd::geteuid().is_root() {
        cmd.uid(uid).gid(gid);
    }
    let output = cmd.output().map_err(|source| HomeError::Seed {
        path: to.to_path_buf(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HomeError::Copy {
            template: template.to_path_buf(),
            uid,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn give_tree(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        if fs::symlink_metadata(path).unwrap().is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                give_tree(&entry.unwrap().path(), uid, gid);
            }
        }
    }

    #[test]
    fn unreadable_template_is_a_clear_error_and_leaves_nothing() {
        let dir = tempdir();
        let template = dir.path().join("home-template");
        fs::create_dir_all(&template).unwrap();
        fs::write(template.join("secret"), "x").unwrap();
        // Root's 0600 file is unreadable to another uid; as ourselves, mode 000 is.
        let mode = if nix::unistd::geteuid().is_root() {
            0o600
        } else {
            0o000
        };
        fs::set_permissions(template.join("secret"), fs::Permissions::from_mode(mode)).unwrap();
        let home = dir.path().join("banking");
        let (uid, gid) = ids();
        let err = ensure(&home, &template, uid, gid).unwrap_err();
        assert!(matches!(err, HomeError::Copy { .. }), "{err:?}");
        assert!(!home.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "staging dir removed"
        );
    }

    /// A tempdir the configured user (another uid when we are root) can read.
    fn tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn ids() -> (u32, u32) {
        // Root can give files away; anyone else can only "give" them to themselves.
        if nix::unistd::geteuid().is_root() {
            (4242, 4343)
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        }
    }

    #[test]
    fn seeds_from_template_once_with_ownership() {
        let dir = tempdir();
        let template = dir.path().join("home-template");
        fs::create_dir_all(template.join(".config/app")).unwrap();
        fs::write(template.join(".bashrc"), "PS1='vm> '\n").unwrap();
        fs::write(template.join(".config/app/rc"), "x=1\n").unwrap();
        fs::set_permissions(template.join(".bashrc"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink(".bashrc", template.join(".profile")).unwrap();
        // The template belongs to the user (as the NixOS module sets it up).
        let (uid, gid) = ids();
        give_tree(&template, uid, gid);

        let home = dir.path().join("shared/banking");
        assert!(ensure(&home, &template, uid, gid).unwrap());
        assert_eq!(
            fs::read_to_string(home.join(".bashrc")).unwrap(),
            "PS1='vm> '\n"
        );
        assert_eq!(
            fs::read_to_string(home.join(".config/app/rc")).unwrap(),
            "x=1\n"
        );
        assert_eq!(
            fs::read_link(home.join(".profile")).unwrap(),
            Path::new(".bashrc")
        );
        let mode = fs::metadata(home.join(".bashrc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        for path in [
            &home,
            &home.join(".bashrc"),
            &home.join(".config/app"),
            &home.join(".profile"),
        ] {
            let meta = fs::symlink_metadata(path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
        }

        // Second start: the user's changes stay.
        fs::write(home.join(".bashrc"), "mine\n").unwrap();
        assert!(!ensure(&home, &template, uid, gid).unwrap());
        assert_eq!(fs::read_to_string(home.join(".bashrc")).unwrap(), "mine\n");
    }

    #[test]
    fn without_template_creates_a_private_empty_home() {
        let dir = tempdir();
        let home = dir.path().join("banking");
        let (uid, gid) = ids();
        assert!(ensure(&home, &dir.path().join("missing"), uid, gid).unwrap());
        let meta = fs::metadata(&home).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(fs::read_dir(&home).unwrap().count(), 0);
    }
}
