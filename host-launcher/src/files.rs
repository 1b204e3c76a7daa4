//! Reading files a user points vmsilo at (configuration documents, guest desktop files and
//! icons) without hanging: a FIFO opened for reading blocks until a writer appears, so every
//! such file is opened non-blocking and refused unless it is a regular file.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What kind of non-regular file `meta` describes, for error messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// Open `path` (following symlinks) without blocking and check that it is a regular file.
///
/// The error says why in words (`not a regular file (a FIFO)`); callers add the path.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(&meta)),
        ));
    }
    Ok(file)
}

/// The contents of the regular file `path`, refused when longer than `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if max >= 1 << 20 && max.is_multiple_of(1 << 20) {
                format!("larger than {} MiB", max >> 20)
            } else {
                format!("larger than {max} bytes")
            },
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_regular(&fifo, 10).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a FIFO)");
        let err = read_regular(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a character device)");
        let err = read_regular(dir.path(), 10).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a directory)");
    }

    #[test]
    fn size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        assert_eq!(
            read_regular(&f, 4).unwrap_err().to_string(),
            "larger than 4 bytes"
        );
    }
}
