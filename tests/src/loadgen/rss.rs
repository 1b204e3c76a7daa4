//! Resident memory of a backend process and all its descendants, read from `/proc`: vm-switch
//! forks one child per VM and the per-child RSS is one of its targets.

use std::fs;

/// One process's resident set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRss {
    /// Process id (in our pid namespace).
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// `comm` with spaces replaced, so the output stays one token.
    pub comm: String,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// RssAnon in KiB: the process's private memory.
    pub anon_kib: u64,
    /// RssShmem in KiB: shared memory it has touched (for a vhost-user backend mostly guest
    /// memory and rings, which the VMM owns).
    pub shmem_kib: u64,
}

/// Parse `/proc/<pid>/stat`'s ppid (the field after the parenthesised comm, which may itself
/// contain spaces and parentheses).
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The KiB value of `field` (e.g. `VmRSS`) from `/proc/<pid>/status` text.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn read(pid: u32) -> Option<ProcRss> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(ProcRss {
        pid,
        ppid: parse_ppid(&stat)?,
        comm: comm.trim().replace(char::is_whitespace, "_"),
        // Kernel threads and zombies have no VmRSS.
        rss_kib: parse_status_kib(&status, "VmRSS").unwrap_or(0),
        anon_kib: parse_status_kib(&status, "RssAnon").unwrap_or(0),
        shmem_kib: parse_status_kib(&status, "RssShmem").unwrap_or(0),
    })
}

/// `root` and every descendant, parents before children. Empty if `root` does not exist.
pub fn process_tree(root: u32) -> Vec<ProcRss> {
    let all: Vec<ProcRss> = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(read)
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<ProcRss> = all.iter().filter(|p| p.pid == root).cloned().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        out.extend(all.iter().filter(|p| p.ppid == parent).cloned());
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        assert_eq!(parse_ppid("42 (vm-switch: a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nVmRSS:\t  1234 kB\nRssAnon:\t 200 kB\nRssShmem:\t 1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1234));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(200));
        assert_eq!(parse_status_kib(status, "RssShmem"), Some(1000));
        assert_eq!(parse_status_kib("Name:\tx\n", "VmRSS"), None);
    }

    #[test]
    fn finds_a_child_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let tree = process_tree(me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0].pid, me);
        assert!(tree[0].rss_kib > 0);
        assert!(tree.iter().any(|p| p.pid == child.id() && p.ppid == me));
    }
}
