//! `onefs status [NAME] [--json]`: what is mounted, where, from which store,
//! by whom, and how much of the image is stored.

use crate::config::{self, Definition};
use crate::core::size::{Approx, Size};
use crate::mount::FUSE_TYPE;
use crate::probe;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// The definition name, when a definition describes this store.
    pub name: Option<String>,
    pub store: PathBuf,
    pub mountpoint: Option<PathBuf>,
    /// `mounted`, `dead` (its daemon is gone: ENOTCONN), `not answering`
    /// (mounted, but statfs got no answer within 2 s: its onefs is stopped
    /// or stuck) or `not mounted`.
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

/// What the store says about itself: who holds it, the image's size and
/// what is stored.
fn describe(store: PathBuf) -> Entry {
    let mut entry = describe_nothing(store);
    if let Some(holder) = crate::store_lock::holder(&entry.store) {
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
    match crate::meta::load_explained(&entry.store) {
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

/// The states of a mount (or of a definition's mountpoint).
pub const MOUNTED: &str = "mounted";
pub const DEAD: &str = "dead";
pub const NOT_ANSWERING: &str = "not answering";
pub const NOT_MOUNTED: &str = "not mounted";

/// One line of the status before the questions are answered.
struct Row {
    name: Option<String>,
    store: PathBuf,
    mountpoint: PathBuf,
    mounted: bool,
}

/// Every onefs mount, plus every definition in `dir` (mounted or not).
/// With `only`, just that definition (an error if there is none).
///
/// Nothing here waits for another mount or store for long: each question to
/// a mountpoint or store is asked on a helper thread, all of them at once,
/// and whatever has not answered within [`probe::LIMIT`] is reported as not
/// answering (a stopped or stuck onefs, a hung disk).
pub fn collect(dir: &Path, only: Option<&str>) -> anyhow::Result<Vec<Entry>> {
    let defs: Vec<Definition> = match only {
        Some(name) => vec![Definition::load_named(dir, name)?],
        None if dir.is_dir() => config::load_dir(dir).map(|(good, _)| good).unwrap_or_default(),
        None => vec![],
    };
    let mounts: Vec<_> = crate::mountinfo::mounts().into_iter().filter(|m| m.fstype == FUSE_TYPE).collect();
    // A store path may lead through a stuck mount too.
    let canonical: Vec<_> = defs
        .iter()
        .map(|def| {
            let store = def.store.clone();
            probe::start(("canonical store", def.store.clone()), move || store.canonicalize().ok())
        })
        .collect();
    let deadline = Instant::now() + probe::LIMIT;
    let mut rows = vec![];
    for (def, canonical) in defs.iter().zip(canonical) {
        let canonical = canonical.wait_until(deadline).ok().flatten().unwrap_or_else(|| def.store.clone());
        let mount = mounts.iter().find(|m| Path::new(&m.source) == canonical || Path::new(&m.source) == def.store);
        rows.push(match mount {
            Some(m) => Row {
                name: Some(def.name.clone()),
                store: def.store.clone(),
                mountpoint: m.mountpoint.clone(),
                mounted: true,
            },
            None => Row {
                name: Some(def.name.clone()),
                store: def.store.clone(),
                mountpoint: def.mountpoint.clone(),
                mounted: false,
            },
        });
    }
    if only.is_none() {
        for m in &mounts {
            if rows.iter().any(|r| r.mountpoint == m.mountpoint && r.mounted) {
                continue;
            }
            rows.push(Row {
                name: None,
                store: PathBuf::from(&m.source),
                mountpoint: m.mountpoint.clone(),
                mounted: true,
            });
        }
    }

    // Ask every question first, then collect the answers by one deadline.
    let asked: Vec<_> = rows
        .iter()
        .map(|row| {
            let state = row.mounted.then(|| probe::statfs(&row.mountpoint));
            // The size the mount serves: an image grown while mounted, over
            // a remote store, is described by its cache only at the next mount.
            let live = row.mounted.then(|| {
                let disk = row.mountpoint.join(crate::fuse::DISK_NAME);
                probe::start(("size", disk.clone()), move || std::fs::metadata(&disk).ok().map(|m| m.len()))
            });
            let store = row.store.clone();
            (state, live, probe::start(("describe", row.store.clone()), move || describe(store)))
        })
        .collect();
    let deadline = Instant::now() + probe::LIMIT;
    let entries = rows
        .into_iter()
        .zip(asked)
        .map(|(row, (state, live, described))| {
            let state = match state.map(|s| s.wait_until(deadline)) {
                None => NOT_MOUNTED,
                Some(Ok(Err(nix::errno::Errno::ENOTCONN))) => DEAD,
                Some(Ok(_)) => MOUNTED,
                Some(Err(probe::Unanswered::NotAnswering(_))) => NOT_ANSWERING,
                // No thread to ask with: say what mountinfo says.
                Some(Err(probe::Unanswered::CannotAsk(_))) => MOUNTED,
            };
            let mut entry = match described.wait_until(deadline) {
                Ok(entry) => entry,
                Err(why) => {
                    let mut entry = describe_nothing(row.store.clone());
                    entry.error = Some(format!("store {}: {why}", row.store.display()));
                    entry
                }
            };
            if state == MOUNTED
                && let Some(Ok(Some(size))) = live.map(|l| l.wait_until(deadline))
                && let Some(block_size) = entry.block_size.filter(|&bs| bs > 0 && size % bs == 0)
            {
                entry.size = Some(size);
                entry.block_count = Some(size / block_size);
            }
            entry.name = row.name;
            entry.store = row.store;
            entry.mountpoint = Some(row.mountpoint);
            entry.state = state.into();
            entry
        })
        .collect();
    Ok(entries)
}

/// An entry that knows only its store.
fn describe_nothing(store: PathBuf) -> Entry {
    Entry {
        name: None,
        store,
        mountpoint: None,
        state: String::new(),
        pid: None,
        unit: None,
        size: None,
        block_size: None,
        block_count: None,
        blocks_stored: None,
        bytes_stored: None,
        error: None,
        cache: None,
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
        if e.state == NOT_ANSWERING {
            out += &format!("  the mount did not answer within {}s", probe::LIMIT.as_secs());
            out += &match e.pid {
                Some(pid) if is_stopped(pid) => format!(": onefs pid {pid} is stopped (kill -CONT {pid} resumes it)\n"),
                Some(pid) => format!(": onefs pid {pid} is stuck, or waits for its store\n"),
                None => ": its onefs is stopped or stuck\n".into(),
            };
        }
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

/// Whether process `pid` is stopped (SIGSTOP, or a debugger).
pub fn is_stopped(pid: u32) -> bool {
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .is_some_and(|state| state == 'T' || state == 't')
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

    #[test]
    fn a_mount_that_does_not_answer_says_so() {
        let mut entry = describe_nothing(PathBuf::from("/s"));
        entry.mountpoint = Some(PathBuf::from("/m"));
        entry.state = NOT_ANSWERING.into();
        entry.pid = Some(std::process::id());
        let text = render_text(std::slice::from_ref(&entry));
        assert!(text.starts_with("(no definition): not answering /s at /m"), "{text}");
        assert!(text.contains("did not answer within 2s") && text.contains("is stuck"), "{text}");
        assert!(render_json(&[entry]).contains("\"state\": \"not answering\""));
    }
}
