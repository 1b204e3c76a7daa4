//! vm-switch peer files: one JSON document per VM in each network's config directory.
//!
//! vm-switch watches the directory and acts on every complete file it sees, so the file is
//! written to a hidden temporary name, synced and renamed into place: the switch never reads a
//! half-written peer.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors while writing a peer file.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Creating the network's directory or writing/renaming the file failed.
    #[error("cannot write the vm-switch peer file {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What vm-switch needs to know about one VM on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// VM name (also the file and socket stem).
    pub name: String,
    /// The interface's MAC, `52:54:00:12:34:56` form.
    pub mac: String,
    /// IPv4 addresses with prefix length.
    pub ipv4: Vec<String>,
    /// IPv6 addresses with prefix length.
    pub ipv6: Vec<String>,
    /// CIDRs this VM routes for (`vmNetwork.routes`).
    pub routes: Vec<String>,
    /// Whether the switch delivers broadcasts to this VM.
    pub receive_broadcast: bool,
}

/// Write `<net_dir>/<peer.name>.json` atomically; returns its path.
pub fn write(net_dir: &Path, peer: &Peer) -> Result<PathBuf, PeerError> {
    let path = net_dir.join(format!("{}.json", peer.name));
    let tmp = net_dir.join(format!(".{}.json.tmp", peer.name));
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PeerError::Write { path, source }
    };
    fs::create_dir_all(net_dir).map_err(err(net_dir))?;
    let mut body = serde_json::to_vec(peer).map_err(|e| PeerError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    body.push(b'\n');
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        // Make the rename itself durable.
        fs::File::open(net_dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err(&path))?;
    Ok(path)
}

/// Remove a peer file; the switch then drops the VM's socket.
pub fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove peer file"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer() -> Peer {
        Peer {
            name: "banking".into(),
            mac: "52:54:00:12:34:56".into(),
            ipv4: vec!["10.1.0.1/24".into()],
            ipv6: vec!["fd00::1/64".into()],
            routes: vec!["0.0.0.0/0".into()],
            receive_broadcast: false,
        }
    }

    #[test]
    fn writes_the_contract_format_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("internal");
        let path = write(&net, &peer()).unwrap();
        assert_eq!(path, net.join("banking.json"));
        let value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"name":"banking","mac":"52:54:00:12:34:56","ipv4":["10.1.0.1/24"],
                "ipv6":["fd00::1/64"],"routes":["0.0.0.0/0"],"receiveBroadcast":false})
        );
        let names: Vec<_> = fs::read_dir(&net)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("banking.json")]);
        remove(&path);
        assert!(!path.exists());
        remove(&path);
    }

    #[test]
    fn replaces_an_existing_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("banking.json"),
            "{\"old\":true, and garbage",
        )
        .unwrap();
        let path = write(dir.path(), &peer()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(value["mac"], "52:54:00:12:34:56");
    }
}
