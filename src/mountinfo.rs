//! Reading `/proc/self/mountinfo`: is a path a mount point, and of what.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) mountinfo uses in paths.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = field[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + (b - b'0') as u32);
            out.push(value as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Parses mountinfo as bytes: the kernel escapes only space, tab, newline
/// and backslash, so a path that is not UTF-8 (anybody's mount, not only
/// onefs's) appears raw, and must neither hide the other lines nor come
/// back altered.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let at = line.windows(3).position(|w| w == b" - ")?;
            let (left, right) = (&line[..at], &line[at + 3..]);
            let mountpoint = left.split(|&b| b == b' ').nth(4)?;
            let mut right = right.split(|&b| b == b' ');
            let fstype = right.next()?;
            let source = right.next().unwrap_or(b"");
            Some(MountEntry {
                mountpoint: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
                fstype: String::from_utf8_lossy(fstype).into_owned(),
                source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            })
        })
        .collect()
}

pub fn mounts() -> Vec<MountEntry> {
    std::fs::read("/proc/self/mountinfo").map(|t| parse(&t)).unwrap_or_default()
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mountpoint == path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn parses_lines_with_optional_fields_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - fuse.onefs /var/lib/onefs/data rw,user_id=0\n\
                    22 1 0:21 / /proc rw shared:12 - proc proc rw\n";
        let entries = parse(text.as_bytes());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mountpoint, PathBuf::from("/mnt/my disk"));
        assert_eq!(entries[0].fstype, "fuse.onefs");
        assert_eq!(entries[0].source, "/var/lib/onefs/data");
        assert_eq!(entries[1].fstype, "proc");
    }

    #[test]
    fn spaces_tabs_and_backslashes_come_back_exactly() {
        let text = b"40 27 0:40 / /srv/my\\040disk\\011x\\134y rw - fuse.onefs /var/lib/my\\040store rw\n";
        let entries = parse(text);
        assert_eq!(entries[0].mountpoint, PathBuf::from("/srv/my disk\tx\\y"));
        assert_eq!(entries[0].source, "/var/lib/my store");
    }

    #[test]
    fn a_path_that_is_not_utf8_hides_nothing_and_stays_exact() {
        // The kernel does not escape such bytes: the file is not UTF-8 then.
        let text = b"45 27 0:41 / /mnt/a\xffb rw - tmpfs none rw\n46 27 0:42 / /srv/onefs rw - fuse.onefs /s rw\n";
        let entries = parse(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mountpoint.as_os_str().as_bytes(), b"/mnt/a\xffb");
        assert_ne!(entries[0].mountpoint, PathBuf::from("/mnt/a\u{fffd}b"));
        assert_eq!((entries[1].mountpoint.as_path(), entries[1].source.as_str()), (Path::new("/srv/onefs"), "/s"));
    }
}
