//! Creating an image: the one way, used by `onefs create`, by a
//! definition's `[create]` (the service and the mount helper) and by tests.
//! A store directory must be empty or absent; an object backend's prefix
//! or folder must hold nothing; then `onefs.json` is written.
//!
//! `onefs.json` is written to `.onefs.json.tmp` first and linked into place
//! ([`Meta::write_new`]), so a create killed half-way leaves that temporary
//! file and nothing else. Such a directory is recognised: `onefs create`
//! clears the leftover and creates, and mount and fsck say what happened
//! instead of only that `onefs.json` is missing.

use crate::backend::ObjectBackend;
use crate::config::{BackendDef, Definition};
use crate::core::Geometry;
use crate::core::size::Size;
use crate::meta::{Contents, META_FILE, Meta, contents, holds_nothing, leftover_name};
use anyhow::{Context, bail};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Where an image is made.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// A store directory of block files.
    Dir(&'a Path),
    /// An object backend (the cache in front of it is made at mount).
    Backend(&'a BackendDef),
}

impl<'a> Place<'a> {
    /// Where a definition keeps its image.
    pub fn of(def: &'a Definition) -> Self {
        match &def.remote {
            Some(remote) => Place::Backend(&remote.backend),
            None => Place::Dir(&def.store),
        }
    }
}

/// Creates an image of `size` bytes in blocks of `block_size` in `place`,
/// which must hold nothing yet. Returns where it went (for messages) and
/// its description.
pub fn create(place: Place<'_>, size: u64, block_size: u64) -> anyhow::Result<(String, Meta)> {
    let geometry = Geometry::new(size, block_size).map_err(|e| anyhow::anyhow!("{e}"))?;
    match place {
        Place::Dir(store) => Ok((store.display().to_string(), create_in_dir(store, &geometry)?)),
        Place::Backend(def) => {
            let backend = crate::compose::open_backend(def)?;
            Ok((backend.describe(), create_in_backend(&*backend, &geometry)?))
        }
    }
}

/// `[create]` of a definition: creates the image when the place holds
/// nothing yet. An existing image is kept as it is, and a `[create]` size
/// that differs from it is reported, never applied. Returns whether it
/// created one.
pub fn create_if_empty(def: &Definition) -> anyhow::Result<bool> {
    let Some(wanted) = def.create else { return Ok(false) };
    let place = Place::of(def);
    let existing = match place {
        Place::Dir(store) => (!holds_nothing(store)?).then(|| crate::meta::Meta::load(store).ok()),
        Place::Backend(backend) => {
            let backend = crate::compose::open_backend(backend)?;
            let keys = backend.list("").with_context(|| format!("{}: cannot list", backend.describe()))?;
            (!keys.is_empty()).then(|| crate::compose::load_meta(&*backend).ok())
        }
    };
    if let Some(existing) = existing {
        if let Some(meta) = existing
            && (meta.size != wanted.size || meta.block_size != wanted.block_size)
        {
            log::warn!(
                "{}: [create] asks for size {} and block_size {}, but the store already holds an image of size {} with block_size {}; [create] only applies to an empty store (onefs grow makes an image larger)",
                def.file.display(),
                Size(wanted.size),
                Size(wanted.block_size),
                Size(meta.size),
                Size(meta.block_size)
            );
        }
        return Ok(false);
    }
    let (place, meta) = create(place, wanted.size, wanted.block_size)?;
    log::info!("created {place} (id {}) for {}: disk.img of {}", meta.id, def.name, Size(meta.size));
    Ok(true)
}

/// A backend's prefix or folder that holds nothing gets `onefs.json`.
fn create_in_backend(backend: &dyn ObjectBackend, geometry: &Geometry) -> anyhow::Result<Meta> {
    let keys = backend.list("").with_context(|| format!("{}: cannot list", backend.describe()))?;
    if let Some(key) = keys.iter().min() {
        bail!(
            "{}: store is not empty (it holds {key:?}); onefs creates images only in an empty prefix or folder",
            backend.describe()
        );
    }
    let meta = Meta::new(geometry);
    backend
        .put(META_FILE, meta.to_json().as_bytes())
        .with_context(|| format!("{}: cannot write the image description", backend.describe()))?;
    Ok(meta)
}

fn create_in_dir(store: &Path, geometry: &Geometry) -> anyhow::Result<Meta> {
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
    let meta = Meta::new(geometry);
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
        let err = crate::meta::load_explained(&store).unwrap_err().to_string();
        assert!(err.contains("interrupted onefs create; run onefs create again"), "{err}");

        fs::write(store.join("precious"), b"x").unwrap();
        assert_eq!(contents(&store).unwrap(), Contents::Other("precious".into()));
        assert!(!holds_nothing(&store).unwrap());
        assert!(create(Place::Dir(&store), 1 << 30, 4 << 20).unwrap_err().to_string().contains("\"precious\""));
        assert!(store.join(leftover_name()).exists(), "a refused create removed the leftover");
        fs::remove_file(store.join("precious")).unwrap();

        // A directory of that name is not a leftover.
        let other = dir.path().join("other");
        fs::create_dir_all(other.join(leftover_name())).unwrap();
        assert_eq!(contents(&other).unwrap(), Contents::Other(leftover_name()));

        let (_, meta) = create(Place::Dir(&store), 1 << 30, 4 << 20).unwrap();
        assert!(!store.join(leftover_name()).exists());
        assert_eq!(crate::meta::load_explained(&store).unwrap(), meta);
    }

    #[test]
    fn creates_through_a_symlink_in_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        create(Place::Dir(&link), 1 << 30, 4 << 20).unwrap();
        assert!(target.join(META_FILE).is_file());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        let err = create(Place::Dir(&dangling), 1 << 30, 4 << 20).unwrap_err().to_string();
        assert!(err.contains("symlink") && err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("absent").exists());
    }

    #[test]
    fn a_backend_gets_its_description_beside_the_blocks_and_only_when_empty() {
        let backend = crate::backend::MemBackend::new();
        let geometry = Geometry::new(1 << 30, 4 << 20).unwrap();
        let meta = create_in_backend(&backend, &geometry).unwrap();
        assert_eq!(crate::compose::load_meta(&backend).unwrap(), meta);
        let err = create_in_backend(&backend, &geometry).unwrap_err().to_string();
        assert!(err.contains("not empty") && err.contains("onefs.json"), "{err}");
        let empty = crate::backend::MemBackend::new();
        assert!(crate::compose::load_meta(&empty).unwrap_err().to_string().contains("not an onefs store"));
    }

    #[test]
    fn create_section_recovers_a_store_an_interrupted_create_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join(leftover_name()), b"{").unwrap();
        let text = format!("store = {:?}\nmountpoint = \"/m\"\n[create]\nsize = \"8M\"\n", store.to_str().unwrap());
        let def = Definition::parse(&text, Path::new("/etc/onefs/data.toml"), "data").unwrap();
        assert!(create_if_empty(&def).unwrap(), "a leftover alone counts as empty");
        assert!(crate::meta::Meta::load(&store).is_ok() && !store.join(leftover_name()).exists());
        assert!(!create_if_empty(&def).unwrap(), "an image is never made twice");
    }
}
