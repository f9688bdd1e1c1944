//! `onefs create`: a new, empty image in an empty (or absent) directory.
//!
//! `onefs.json` is written to `.onefs.json.tmp` first and linked into place
//! ([`Meta::write_new`]), so a create killed half-way leaves that temporary
//! file and nothing else. Such a directory is recognised: `onefs create`
//! clears the leftover and creates, and mount and fsck say what happened
//! instead of only that `onefs.json` is missing.

use crate::core::Geometry;
use crate::meta::{META_FILE, Meta};
use anyhow::bail;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// The temporary name `onefs.json` is written under before it is linked
/// into place; alone in a store, the mark of an interrupted create.
pub fn leftover_name() -> String {
    format!(".{META_FILE}.tmp")
}

/// What a would-be store directory holds.
#[derive(Debug, PartialEq, Eq)]
enum Contents {
    Absent,
    Empty,
    /// Only the leftover of an interrupted `onefs create`.
    Leftover,
    /// Something else, named (`onefs.json` when there is one).
    Other(String),
}

fn contents(store: &Path) -> io::Result<Contents> {
    let entries = match fs::read_dir(store) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Contents::Absent),
        Err(e) => return Err(e),
    };
    let leftover = leftover_name();
    let (mut others, mut leftover_seen) = (vec![], false);
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == leftover.as_str() && entry.file_type().is_ok_and(|t| t.is_file()) {
            leftover_seen = true;
        } else {
            others.push(name.to_string_lossy().into_owned());
        }
    }
    if others.is_empty() {
        return Ok(if leftover_seen { Contents::Leftover } else { Contents::Empty });
    }
    others.sort();
    let named = if others.iter().any(|n| n == META_FILE) { META_FILE.to_string() } else { others.swap_remove(0) };
    Ok(Contents::Other(named))
}

/// Whether `onefs create` would make an image in `store`: it does not
/// exist, is empty, or holds only the leftover of an interrupted create.
pub fn holds_nothing(store: &Path) -> anyhow::Result<bool> {
    match contents(store) {
        Ok(Contents::Other(_)) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => bail!("store {}: {e}", store.display()),
    }
}

pub fn create(store: &Path, size: u64, block_size: u64) -> anyhow::Result<Meta> {
    let geometry = Geometry::new(size, block_size).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Where the image goes: through a symlink to its target, as a mount
    // would resolve it. Judged before anything is made.
    let target = crate::paths::check_resolved("store", store)?;
    let is_link = fs::symlink_metadata(store).is_ok_and(|m| m.file_type().is_symlink());
    match fs::metadata(store) {
        Ok(meta) if meta.is_dir() => {
            match contents(&target) {
                Ok(Contents::Empty | Contents::Absent) => {}
                Ok(Contents::Leftover) => clear_leftover(store, &target)?,
                Ok(Contents::Other(name)) => bail!(
                    "{}: store is not empty (it holds {name:?}); onefs creates images only in an empty directory",
                    store.display()
                ),
                Err(e) => bail!("{}: cannot list: {e}", store.display()),
            }
            if is_link {
                log::info!("{} is a symlink: creating the image in {}", store.display(), target.display());
            }
        }
        Ok(_) if is_link => {
            bail!("{}: leads to {}, which is not a directory", store.display(), target.display())
        }
        Ok(_) => bail!("{}: exists and is not a directory", store.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if is_link && let Ok(link) = fs::read_link(store) {
                bail!(
                    "{}: is a symlink to {}, which does not exist; make that directory or give its path",
                    store.display(),
                    link.display()
                );
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&target)
                .map_err(|e| anyhow::anyhow!("{}: cannot create store directory: {e}", store.display()))?;
        }
        Err(e) => bail!("{}: {e}", store.display()),
    }
    let meta = Meta::new(&geometry);
    meta.write_new(&target).map_err(|e| anyhow::anyhow!("cannot write image description: {e}"))?;
    Ok(meta)
}

/// Removes the leftover of an interrupted create, saying so.
fn clear_leftover(store: &Path, target: &Path) -> anyhow::Result<()> {
    let leftover = target.join(leftover_name());
    fs::remove_file(&leftover).map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", leftover.display()))?;
    log::warn!(
        "{}: removed {}, left by an interrupted onefs create; creating the image again",
        store.display(),
        leftover_name()
    );
    Ok(())
}

/// Reads a store's `onefs.json` like [`Meta::load`]; where there is none,
/// says why when that can be told: no such directory, an empty one (no
/// image yet), or one holding only the leftover of an interrupted create.
pub fn load_meta(store: &Path) -> anyhow::Result<Meta> {
    match fs::metadata(store) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("store {} does not exist", store.display()),
        Ok(meta) if !meta.is_dir() => bail!("store {} is not a directory", store.display()),
        _ => {}
    }
    let err = match Meta::load(store) {
        Ok(meta) => return Ok(meta),
        Err(err) => err,
    };
    if fs::symlink_metadata(store.join(META_FILE)).is_err() {
        match contents(store) {
            Ok(Contents::Leftover) => bail!(
                "{}: holds only {}, left by an interrupted onefs create; run onefs create again",
                store.display(),
                leftover_name()
            ),
            Ok(Contents::Empty) => {
                bail!("{}: empty directory, no image in it yet; make one with onefs create", store.display())
            }
            _ => {}
        }
    }
    Err(err.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_leftover_of_an_interrupted_create_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        assert_eq!(contents(&store).unwrap(), Contents::Absent);
        fs::create_dir(&store).unwrap();
        assert_eq!(contents(&store).unwrap(), Contents::Empty);
        fs::write(store.join(leftover_name()), b"{\"format\": \"on").unwrap();
        assert_eq!(contents(&store).unwrap(), Contents::Leftover);
        assert!(holds_nothing(&store).unwrap());
        let err = load_meta(&store).unwrap_err().to_string();
        assert!(err.contains("interrupted onefs create; run onefs create again"), "{err}");

        fs::write(store.join("precious"), b"x").unwrap();
        assert_eq!(contents(&store).unwrap(), Contents::Other("precious".into()));
        assert!(!holds_nothing(&store).unwrap());
        assert!(create(&store, 1 << 30, 4 << 20).unwrap_err().to_string().contains("\"precious\""));
        assert!(store.join(leftover_name()).exists(), "a refused create removed the leftover");
        fs::remove_file(store.join("precious")).unwrap();

        // A directory of that name is not a leftover.
        let other = dir.path().join("other");
        fs::create_dir_all(other.join(leftover_name())).unwrap();
        assert_eq!(contents(&other).unwrap(), Contents::Other(leftover_name()));

        let meta = create(&store, 1 << 30, 4 << 20).unwrap();
        assert!(!store.join(leftover_name()).exists());
        assert_eq!(load_meta(&store).unwrap(), meta);
    }

    #[test]
    fn creates_through_a_symlink_in_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        create(&link, 1 << 30, 4 << 20).unwrap();
        assert!(target.join(META_FILE).is_file());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        let err = create(&dangling, 1 << 30, 4 << 20).unwrap_err().to_string();
        assert!(err.contains("symlink") && err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("absent").exists());
    }
}
