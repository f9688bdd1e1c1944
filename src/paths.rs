//! Paths onefs can name: stores, mountpoints and cache directories must be
//! UTF-8 without control characters.
//!
//! onefs writes these paths into one-line records and reads them back:
//! mountinfo (the store is the mount's source), the store's lock file
//! (`mountpoint=…`), log lines, `onefs status` and its JSON. A newline splits
//! a record, and a name that is not UTF-8 cannot be shown or compared as
//! text, so such paths are refused up front, naming them, before anything is
//! created or mounted. Spaces and every other printable character are fine.

use std::path::{Path, PathBuf};

/// What is wrong with `path` for onefs, if anything.
pub fn problem(path: &Path) -> Option<String> {
    let Some(text) = path.to_str() else {
        return Some("is not UTF-8".into());
    };
    let c = text.chars().find(|c| c.is_control())?;
    let name = match c {
        '\n' => "a newline".to_string(),
        '\r' => "a carriage return".to_string(),
        '\t' => "a tab".to_string(),
        c => format!("the control character U+{:04X}", c as u32),
    };
    Some(format!("contains {name}"))
}

/// Refuses a path onefs cannot name; `what` says which one (`store`,
/// `mountpoint`, …). The path is quoted with escapes, so the message stays
/// one line.
pub fn check(what: &str, path: &Path) -> anyhow::Result<()> {
    match problem(path) {
        None => Ok(()),
        Some(why) => anyhow::bail!("{what} {path:?} {why}; onefs accepts only UTF-8 paths without control characters"),
    }
}

/// [`check`] for a path and for the path it resolves to (through symlinks
/// and, for a relative path, the working directory), which is what
/// mountinfo and the lock file end up holding. A path that does not exist
/// yet resolves through its nearest existing ancestor. Returns the resolved
/// path.
pub fn check_resolved(what: &str, path: &Path) -> anyhow::Result<PathBuf> {
    check(what, path)?;
    let resolved = resolve(what, path)?;
    if let Some(why) = problem(&resolved) {
        anyhow::bail!(
            "{what} {path:?} resolves to {resolved:?}, which {why}; onefs accepts only UTF-8 paths without control characters"
        );
    }
    Ok(resolved)
}

/// `path` canonicalized, or for a path that does not exist (yet), its
/// nearest existing ancestor canonicalized and the rest appended. A path
/// under a mount that does not answer (a stopped onefs)
/// is an error after a bounded wait, not a hang.
fn resolve(what: &str, path: &Path) -> anyhow::Result<PathBuf> {
    let owned = path.to_path_buf();
    crate::probe::ask(("resolve", path.to_path_buf()), crate::probe::MOUNT_LIMIT, move || resolve_now(&owned))
        .map_err(|why| anyhow::anyhow!("{what} {}: {why}: a mount on its path is stopped or stuck", path.display()))
}

fn resolve_now(path: &Path) -> PathBuf {
    if let Ok(resolved) = path.canonicalize() {
        return resolved;
    }
    for ancestor in path.ancestors().skip(1) {
        let base = if ancestor.as_os_str().is_empty() { Path::new(".") } else { ancestor };
        if let Ok(resolved) = base.canonicalize() {
            let rest = path.strip_prefix(ancestor).unwrap_or(path);
            return resolved.join(rest);
        }
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn refuses_control_characters_and_non_utf8_in_one_line() {
        let cases: [(&[u8], &str); 5] = [
            (b"/srv/a\nb", "contains a newline"),
            (b"/srv/a\tb", "contains a tab"),
            (b"/srv/a\rb", "contains a carriage return"),
            (b"/srv/a\x1bb", "U+001B"),
            (b"/srv/a\xffb", "is not UTF-8"),
        ];
        for (bytes, expected) in cases {
            let err = check("store", Path::new(OsStr::from_bytes(bytes))).unwrap_err().to_string();
            assert!(err.starts_with("store \"/srv/a") && err.contains(expected), "{err}");
            assert!(!err.chars().any(|c| c.is_control()), "{err:?} is not one printable line");
        }
        assert!(check("store", Path::new("/srv/a\u{85}b")).unwrap_err().to_string().contains("U+0085"));
    }

    #[test]
    fn accepts_spaces_and_other_printable_names() {
        for ok in ["/srv/my disk", "/srv/a,b", "/srv/a\\b", "/srv/données", "/srv/x=y#z", "relative/p"] {
            check("store", Path::new(ok)).unwrap();
        }
    }

    #[test]
    fn checks_where_a_symlink_leads() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad\nname");
        std::fs::create_dir(&bad).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&bad, &link).unwrap();
        let err = check_resolved("store", &link).unwrap_err().to_string();
        assert!(err.contains("resolves to") && err.contains("bad\\nname") && !err.contains('\n'), "{err}");
        let good = dir.path().join("good dir");
        std::fs::create_dir(&good).unwrap();
        assert_eq!(check_resolved("store", &good).unwrap(), good.canonicalize().unwrap());
        // A path still to be made is judged by where it would be made.
        let err = check_resolved("store", &link.join("new/store")).unwrap_err().to_string();
        assert!(err.contains("bad\\nname/new/store"), "{err}");
        let absent = dir.path().join("good dir/new");
        assert_eq!(check_resolved("store", &absent).unwrap(), good.canonicalize().unwrap().join("new"));
    }
}
