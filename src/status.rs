//! `onefs status [NAME] [--json]`: what is mounted, where, from which store,
//! by whom, and how much of the image is stored.

use crate::config::{self, Definition};
use crate::core::size::{Approx, Size};
use crate::mount::FUSE_TYPE;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// The definition name, when a definition describes this store.
    pub name: Option<String>,
    pub store: PathBuf,
    pub mountpoint: Option<PathBuf>,
    /// `mounted`, `dead` (its daemon is gone: ENOTCONN) or `not mounted`.
    pub state: String,
    pub pid: Option<u32>,
    pub unit: Option<String>,
    pub size: Option<u64>,
    pub block_size: Option<u64>,
    pub block_count: Option<u64>,
    pub blocks_stored: Option<u64>,
    /// Space the stored block files take in the store (allocated bytes).
    pub bytes_stored: Option<u64>,
    /// Why the image could not be described (unreadable store, …).
    pub error: Option<String>,
    /// For a store in an object backend: the live numbers of its cache
    /// (while mounted), from the cache directory's `status.json`.
    pub cache: Option<crate::store::cache::CacheStats>,
}

/// Counts the block files of a store and the space they take.
fn stored(store: &Path, prefix: &str) -> std::io::Result<(u64, u64)> {
    let (mut blocks, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(store)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() {
            blocks += 1;
            bytes += meta.blocks() * 512;
        }
    }
    Ok((blocks, bytes))
}

fn describe(name: Option<String>, store: PathBuf, mountpoint: Option<PathBuf>, state: &str) -> Entry {
    let mut entry = Entry {
        name,
        store,
        mountpoint,
        state: state.into(),
        pid: None,
        unit: None,
        size: None,
        block_size: None,
        block_count: None,
        blocks_stored: None,
        bytes_stored: None,
        error: None,
        cache: None,
    };
    if let Some(holder) = crate::lock::holder(&entry.store) {
        entry.pid = holder.pid;
        entry.unit = holder.unit;
    }
    if let Some(meta) = crate::store::cache::cached_meta(&entry.store) {
        // A cache directory: the blocks are in the backend.
        entry.size = Some(meta.size);
        entry.block_size = Some(meta.block_size);
        entry.block_count = Some(meta.block_count);
        entry.cache = crate::store::cache::read_stats(&entry.store);
        return entry;
    }
    match crate::create::load_meta(&entry.store) {
        Ok(meta) => {
            entry.size = Some(meta.size);
            entry.block_size = Some(meta.block_size);
            entry.block_count = Some(meta.block_count);
            match stored(&entry.store, &meta.block_files.prefix) {
                Ok((blocks, bytes)) => {
                    entry.blocks_stored = Some(blocks);
                    entry.bytes_stored = Some(bytes);
                }
                Err(err) => entry.error = Some(format!("{}: {err}", entry.store.display())),
            }
        }
        Err(err) => entry.error = Some(crate::errors::one_line(&err)),
    }
    entry
}

/// Every onefs mount, plus every definition in `dir` (mounted or not).
/// With `only`, just that definition (an error if there is none).
pub fn collect(dir: &Path, only: Option<&str>) -> anyhow::Result<Vec<Entry>> {
    let defs: Vec<Definition> = match only {
        Some(name) => vec![Definition::load_named(dir, name)?],
        None if dir.is_dir() => config::load_dir(dir).map(|(good, _)| good).unwrap_or_default(),
        None => vec![],
    };
    let mounts: Vec<_> = crate::mountinfo::mounts().into_iter().filter(|m| m.fstype == FUSE_TYPE).collect();
    let mut entries = vec![];
    for def in &defs {
        let canonical = def.store.canonicalize().unwrap_or_else(|_| def.store.clone());
        let mount = mounts.iter().find(|m| Path::new(&m.source) == canonical || Path::new(&m.source) == def.store);
        let (mountpoint, state) = match mount {
            Some(m) => (m.mountpoint.clone(), state_of(&m.mountpoint)),
            None => (def.mountpoint.clone(), "not mounted"),
        };
        entries.push(describe(Some(def.name.clone()), def.store.clone(), Some(mountpoint), state));
    }
    if only.is_none() {
        for m in &mounts {
            let store = PathBuf::from(&m.source);
            if entries.iter().any(|e| e.mountpoint.as_deref() == Some(&m.mountpoint) && e.state != "not mounted") {
                continue;
            }
            entries.push(describe(None, store, Some(m.mountpoint.clone()), state_of(&m.mountpoint)));
        }
    }
    Ok(entries)
}

fn state_of(mountpoint: &Path) -> &'static str {
    match nix::sys::statfs::statfs(mountpoint) {
        Err(nix::errno::Errno::ENOTCONN) => "dead",
        _ => "mounted",
    }
}

pub fn render_text(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no onefs mounts and no definitions\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let label = e.name.clone().unwrap_or_else(|| "(no definition)".into());
        let at = e.mountpoint.as_ref().map(|m| m.display().to_string()).unwrap_or_default();
        out += &format!("{label}: {} {} at {at}", e.state, e.store.display());
        let mut by = vec![];
        if let Some(pid) = e.pid {
            by.push(format!("onefs pid {pid}"));
        }
        if let Some(unit) = &e.unit {
            by.push(format!("unit {unit}"));
        }
        if !by.is_empty() {
            out += &format!(" ({})", by.join(", "));
        }
        out.push('\n');
        if let (Some(size), Some(bs), Some(count), Some(blocks), Some(bytes)) =
            (e.size, e.block_size, e.block_count, e.blocks_stored, e.bytes_stored)
        {
            out += &format!(
                "  disk.img {} in {count} blocks of {}: {blocks} blocks stored, {} ({bytes} bytes)\n",
                Size(size),
                Size(bs),
                Approx(bytes)
            );
        }
        if let (Some(c), Some(size), Some(bs)) = (&e.cache, e.size, e.block_size) {
            out += &format!(
                "  disk.img {} in blocks of {}, in {} ({} durability)\n",
                Size(size),
                Size(bs),
                c.backend,
                c.durability
            );
            let rate = c.hit_rate().map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into());
            out += &format!(
                "  cache: {} of {} ({} blocks), hit rate {rate}, {} dirty blocks, upload queue {} (+{} uploading), {} uploaded\n",
                Approx(c.cached_bytes),
                Approx(c.size_limit),
                c.cached_blocks,
                c.dirty_blocks,
                c.upload_queue,
                c.uploading,
                Approx(c.uploaded_bytes)
            );
            if let Some(secs) = c.failing_for {
                out += &format!(
                    "  backend failing for {secs}s ({} errors); dirty blocks stay in the cache\n",
                    c.backend_errors
                );
            }
        }
        if let Some(err) = &e.error {
            out += &format!("  error: {err}\n");
        }
    }
    out
}

pub fn render_json(entries: &[Entry]) -> String {
    serde_json::to_string_pretty(entries).unwrap_or_else(|_| "[]".into()) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_block_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blk-000001"), vec![1u8; 8192]).unwrap();
        std::fs::write(dir.path().join("blk-000007"), vec![1u8; 4096]).unwrap();
        std::fs::write(dir.path().join("blk-x"), b"no").unwrap();
        std::fs::write(dir.path().join("onefs.json"), b"{}").unwrap();
        let (blocks, bytes) = stored(dir.path(), "blk-").unwrap();
        assert_eq!(blocks, 2);
        assert!(bytes >= 12288, "{bytes}");
    }
}
