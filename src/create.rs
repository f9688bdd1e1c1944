//! `onefs create`: a new, empty image in an empty (or absent) directory.

use crate::core::Geometry;
use crate::meta::Meta;
use anyhow::{Context, bail};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

pub fn create(store: &Path, size: u64, block_size: u64) -> anyhow::Result<Meta> {
    let geometry = Geometry::new(size, block_size).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::paths::check_resolved("store", store)?;
    match fs::symlink_metadata(store) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(store).with_context(|| format!("{}: cannot list", store.display()))?;
            if let Some(entry) = entries.next() {
                let name = entry.map(|e| e.file_name().to_string_lossy().into_owned()).unwrap_or_default();
                bail!(
                    "{}: store is not empty (it holds {name:?}); onefs creates images only in an empty directory",
                    store.display()
                );
            }
        }
        Ok(_) => bail!("{}: exists and is not a directory", store.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(store)
                .map_err(|e| anyhow::anyhow!("{}: cannot create store directory: {e}", store.display()))?;
        }
        Err(e) => bail!("{}: {e}", store.display()),
    }
    let meta = Meta::new(&geometry);
    meta.write_new(store).map_err(|e| anyhow::anyhow!("cannot write image description: {e}"))?;
    Ok(meta)
}
