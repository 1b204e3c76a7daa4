//! Process titles, so `ps` and `top` show which VM a worker serves.

/// Set the process title shown by `ps` (argv area) and the kernel comm name (`top`, first 15
/// bytes). Best effort: a title longer than the original command line is truncated.
pub fn set(title: &str) {
    let comm: Vec<u8> = title.bytes().take(15).chain(std::iter::once(0)).collect();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from our buffer.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised comm; arg_start and arg_end are fields 48 and 49.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|s| s.parse::<usize>().ok()),
        fields.get(46).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        return;
    };
    if end <= start || end - start > 1 << 20 {
        return;
    }
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [arg_start, arg_end) is our own argv string area, mapped and writable for the
    // life of the process; we stay inside it and NUL-fill the remainder.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
}
