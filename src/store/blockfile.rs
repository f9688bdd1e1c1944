//! Helpers for files that hold one block's raw bytes (the directory store's
//! block files, the cache's block files, fsck's view of both).

use crate::core::is_zero;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// True if the first `len` bytes of `file` hold no non-zero byte. Reads only
/// the data extents the filesystem reports (SEEK_DATA/SEEK_HOLE), so a
/// mostly-punched block is cheap; reads everything where those are missing.
pub fn holds_only_zeros(file: &File, len: u64, buf: &mut [u8]) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: plain lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(true),
                Some(libc::EINVAL) => scan(file, pos, len, buf),
                _ => Err(err),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len } else { (hole as u64).min(len) };
        if !scan(file, data as u64, hole, buf)? {
            return Ok(false);
        }
        pos = hole;
    }
    Ok(true)
}

fn scan(file: &File, mut pos: u64, end: u64, buf: &mut [u8]) -> io::Result<bool> {
    while pos < end {
        let want = buf.len().min((end - pos) as usize);
        let got = match file.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !is_zero(&buf[..got]) {
            return Ok(false);
        }
        pos += got as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sees_data_past_a_hole_and_ignores_holes() {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(holds_only_zeros(&file, 1 << 20, &mut buf).unwrap());
        file.write_all_at(&[0u8; 8192], 4096).unwrap();
        assert!(holds_only_zeros(&file, 1 << 20, &mut buf).unwrap(), "written zeros are zeros");
        file.write_all_at(b"x", 900_000).unwrap();
        assert!(!holds_only_zeros(&file, 1 << 20, &mut buf).unwrap());
        assert!(holds_only_zeros(&file, 800_000, &mut buf).unwrap(), "only the first len bytes count");
        file.flush().unwrap();
    }
}
