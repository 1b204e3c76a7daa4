//! Guest user lookup straight from `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary, and static glibc cannot load NSS modules, so it reads the files
//! itself. NixOS guests declare their users in these files.

use std::path::{Path, PathBuf};

/// What the agent needs to run a program as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (e.g. video, audio), primary group included.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
}

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The passwd file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No passwd entry names the user.
    #[error("no user {0:?} in the guest's passwd file")]
    NoSuchUser(String),
}

/// Look `name` up in `passwd` and its groups in `group` (missing group file = no extra groups).
pub fn lookup(name: &str, passwd: &Path, group: &Path) -> Result<UserInfo, UserError> {
    let text = std::fs::read_to_string(passwd).map_err(|source| UserError::Read {
        path: passwd.to_owned(),
        source,
    })?;
    let groups_text = std::fs::read_to_string(group).unwrap_or_default();
    parse(name, &text, &groups_text).ok_or_else(|| UserError::NoSuchUser(name.to_owned()))
}

/// Parse the passwd and group texts for `name`.
pub fn parse(name: &str, passwd: &str, group: &str) -> Option<UserInfo> {
    let fields: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)?;
    let uid = fields[2].parse().ok()?;
    let gid = fields[3].parse().ok()?;
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<u32>() else { continue };
        if f[3].split(',').any(|m| m == name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Some(UserInfo {
        name: name.to_owned(),
        uid,
        gid,
        groups,
        home: PathBuf::from(fields[5]),
        shell: fields[6].to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_user_and_supplementary_groups() {
        let passwd = "root:x:0:0::/root:/bin/sh\nuser:x:1000:100:User:/home/user:/run/current-system/sw/bin/bash\n";
        let group = "users:x:100:\nvideo:x:26:user,other\naudio:x:17:other\nbad\n";
        let u = parse("user", passwd, group).unwrap();
        assert_eq!(u.uid, 1000);
        assert_eq!(u.gid, 100);
        assert_eq!(u.groups, vec![100, 26]);
        assert_eq!(u.home, PathBuf::from("/home/user"));
        assert!(parse("nobody", passwd, group).is_none());
    }
}
