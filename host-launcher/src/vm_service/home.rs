//! The shared home directory: seeded from the home template on first start, owned by the user.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

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

/// Make sure `home` exists. If it does not, copy `template` (when present) into it and give every
/// entry to `uid`:`gid`. Returns whether the home was created now.
///
/// An existing home is never touched: it holds the user's data.
pub fn ensure(home: &Path, template: &Path, uid: u32, gid: u32) -> Result<bool, HomeError> {
    if fs::symlink_metadata(home).is_ok() {
        return Ok(false);
    }
    if let Some(parent) = home.parent() {
        fs::create_dir_all(parent).map_err(|source| HomeError::Seed {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // Build next to the final path and rename, so a crash never leaves a half-seeded home that
    // the next start would mistake for a finished one.
    let name = home
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = home.with_file_name(format!(".{name}.seeding"));
    if fs::symlink_metadata(&staging).is_ok() {
        fs::remove_dir_all(&staging).map_err(|source| HomeError::Seed {
            path: staging.clone(),
            source,
        })?;
    }
    let result = (|| {
        if template.is_dir() {
            copy_tree(template, &staging, uid, gid)?;
        } else {
            fs::create_dir(&staging).map_err(|source| HomeError::Seed {
                path: staging.clone(),
                source,
            })?;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o700)).map_err(|source| {
                HomeError::Seed {
                    path: staging.clone(),
                    source,
                }
            })?;
            chown(&staging, uid, gid)?;
        }
        fs::rename(&staging, home).map_err(|source| HomeError::Seed {
            path: home.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| true)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), HomeError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| HomeError::Chown {
        path: path.to_path_buf(),
        uid,
        source,
    })
}

fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<(), HomeError> {
    let seed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HomeError::Seed { path, source }
    };
    let meta = fs::symlink_metadata(from).map_err(seed(from))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(to).map_err(seed(to))?;
        for entry in fs::read_dir(from).map_err(seed(from))? {
            let entry = entry.map_err(seed(from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), uid, gid)?;
        }
        fs::set_permissions(
            to,
            fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
        )
        .map_err(seed(to))?;
    } else if kind.is_symlink() {
        let target = fs::read_link(from).map_err(seed(from))?;
        symlink(target, to).map_err(seed(to))?;
    } else if kind.is_file() {
        fs::copy(from, to).map_err(seed(to))?;
    } else {
        // Sockets, fifos and devices have no place in a home template.
        tracing::warn!(path = %from.display(), "skipping special file in the home template");
        return Ok(());
    }
    chown(to, uid, gid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("home-template");
        fs::create_dir_all(template.join(".config/app")).unwrap();
        fs::write(template.join(".bashrc"), "PS1='vm> '\n").unwrap();
        fs::write(template.join(".config/app/rc"), "x=1\n").unwrap();
        fs::set_permissions(template.join(".bashrc"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink(".bashrc", template.join(".profile")).unwrap();

        let home = dir.path().join("shared/banking");
        let (uid, gid) = ids();
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
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("banking");
        let (uid, gid) = ids();
        assert!(ensure(&home, &dir.path().join("missing"), uid, gid).unwrap());
        let meta = fs::metadata(&home).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(fs::read_dir(&home).unwrap().count(), 0);
    }
}
