//! `onefs grow --size SIZE {STORE | --definition NAME | --config FILE}`:
//! makes disk.img larger. The block size never changes, and nothing
//! shrinks.
//!
//! Unmounted, `onefs grow` rewrites the description itself: under the
//! store's lock (so no mount starts meanwhile), atomically in a store
//! directory ([`Meta::replace`](crate::meta::Meta::replace)), and for a
//! remote store as one PUT of `onefs.json` under the remote lock too.
//! Mounted, the onefs serving the store does it while the image is in use,
//! asked through its control socket ([`crate::mount::control`]): it writes
//! the description, grows the image and tells the kernel, so that `stat`
//! shows the new size at once; `losetup -c` then shows it to a loop device.
//!
//! Every refusal (a size that is smaller, equal, not a multiple of the block
//! size or past the block limit; no image there) is one line, and changes
//! nothing: the size is checked against the description before anything is
//! locked or written.

use crate::compose::MetaPlace;
use crate::config::Definition;
use crate::core::size::{Approx, Size};
use crate::mount::control::{self, Grown};
use crate::store_lock::{Role, StoreLock};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to grow.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A store directory.
    Store(&'a Path),
    /// A definition: its store directory, or its `[backend]`.
    Definition(&'a Definition),
}

/// What `onefs grow` did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub grown: Grown,
    /// Done by the onefs serving the mount (else: in the description only).
    pub online: bool,
    /// Where the description is, for messages.
    pub place: String,
    /// Loop devices attached to the mounted disk.img.
    pub loops: Vec<String>,
    /// A definition's `[create] size` that now differs from the image.
    pub create_differs: Option<(PathBuf, u64)>,
}

/// Grows the image of `target` to `size` bytes, through its onefs when it
/// is mounted.
pub fn grow(target: Target<'_>, size: u64) -> anyhow::Result<Outcome> {
    let (place, lock_dir) = match target {
        Target::Store(store) => {
            let resolved = crate::paths::check_resolved("store", store)?;
            (MetaPlace::Dir(store.to_path_buf()), Some(resolved))
        }
        Target::Definition(def) => match &def.remote {
            Some(remote) => {
                let backend = crate::compose::open_backend(&remote.backend)?;
                // The cache directory holds the local lock once mounted.
                let cache = crate::paths::check_resolved("cache directory", &def.store)?;
                (MetaPlace::Backend(backend), cache.is_dir().then_some(cache))
            }
            None => {
                let resolved = crate::paths::check_resolved("store", &def.store)?;
                (MetaPlace::Dir(def.store.clone()), Some(resolved))
            }
        },
    };
    // Refusals change nothing: judged before anything is locked or written.
    let meta = place.load()?;
    meta.grown(size).map_err(|e| anyhow::anyhow!("{}: {e}", place.describe()))?;

    let mut outcome = match lock_dir.as_deref().and_then(serving) {
        Some(pid) => online(pid, lock_dir.as_deref().unwrap_or(Path::new("")), &place, size)?,
        None => match offline(&place, lock_dir.as_deref(), size) {
            Ok(outcome) => outcome,
            // Mounted in the meantime: ask its onefs after all.
            Err(err) => match lock_dir.as_deref().and_then(serving) {
                Some(pid) => online(pid, lock_dir.as_deref().unwrap_or(Path::new("")), &place, size)?,
                None => return Err(err),
            },
        },
    };
    if let Target::Definition(def) = target
        && let Some(create) = def.create
        && create.size != outcome.grown.size
    {
        outcome.create_differs = Some((def.file.clone(), create.size));
    }
    Ok(outcome)
}

/// The onefs serving a mount of the store whose lock is in `dir`, if any.
fn serving(dir: &Path) -> Option<u32> {
    let holder = crate::store_lock::holder(dir)?;
    (holder.role == Role::Mount).then_some(holder.pid).flatten()
}

fn online(pid: u32, store: &Path, place: &MetaPlace, size: u64) -> anyhow::Result<Outcome> {
    if crate::status::is_stopped(pid) {
        bail!(
            "store {} is mounted by onefs pid {pid}, which is stopped (kill -CONT {pid} resumes it); run onefs grow again then",
            store.display()
        );
    }
    let grown = control::request_grow(pid, store, size)?;
    let disk = grown.mountpoint.join(crate::fuse::DISK_NAME);
    check_kernel_sees(&disk, size);
    let loops = loop_devices(&disk);
    Ok(Outcome { grown, online: true, place: place.describe(), loops, create_differs: None })
}

/// Warns unless `stat` of the mounted disk.img shows `size` (within the
/// second the kernel may cache attributes for, and without hanging on a
/// stuck mount). The `stat` itself refreshes the size the kernel caches,
/// which an old loop driver reads without asking onefs.
fn check_kernel_sees(disk: &Path, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let owned = disk.to_path_buf();
        let seen = crate::probe::ask(("stat", disk.to_path_buf()), crate::probe::LIMIT, move || {
            std::fs::metadata(&owned).map(|m| m.len()).ok()
        });
        match seen {
            Ok(Some(seen)) if seen == size => return,
            Ok(Some(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(Some(seen)) => {
                log::warn!("{}: stat still shows {} after the grow to {}", disk.display(), Size(seen), Size(size));
                return;
            }
            // Detached or covered: the loop device asks onefs itself.
            _ => return,
        }
    }
}

/// Loop devices attached to `disk` (as named when they were attached).
fn loop_devices(disk: &Path) -> Vec<String> {
    let mut found = vec![];
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        if Path::new(backing.trim_end_matches('\n')) == disk {
            found.push(format!("/dev/{name}"));
        }
    }
    found.sort();
    found
}

fn offline(place: &MetaPlace, lock_dir: Option<&Path>, size: u64) -> anyhow::Result<Outcome> {
    let _local = match lock_dir {
        Some(dir) => Some(StoreLock::try_acquire_for_grow(dir).map_err(|err| read_only_mount(dir).unwrap_or(err))?),
        None => None,
    };
    let remote = match place {
        MetaPlace::Backend(backend) => Some(crate::compose::lock_remote(backend.clone(), Path::new("onefs grow"))?),
        MetaPlace::Dir(_) => None,
    };
    // Under the locks: the description as it is now.
    let meta = place.load()?;
    let grown = meta.grown(size).map_err(|e| anyhow::anyhow!("{}: {e}", place.describe()))?;
    let written = place.replace(&grown);
    let released = remote.map(|lock| lock.release()).transpose();
    written?;
    released.with_context(|| format!("{}: releasing the remote lock", place.describe()))?;
    log::info!("grew {}: {} -> {}", place.describe(), Size(meta.size), Size(size));
    Ok(Outcome {
        grown: Grown {
            store: lock_dir.map(Path::to_path_buf).unwrap_or_default(),
            mountpoint: PathBuf::new(),
            old_size: meta.size,
            size,
            block_size: grown.block_size,
            block_count: grown.block_count,
        },
        online: false,
        place: place.describe(),
        loops: vec![],
        create_differs: None,
    })
}

/// A read-only mount holds the store's lock without naming itself in it:
/// say so instead of "in use by another process".
fn read_only_mount(store: &Path) -> Option<anyhow::Error> {
    let mount = crate::mountinfo::mounts()
        .into_iter()
        .find(|m| m.fstype == crate::mount::FUSE_TYPE && Path::new(&m.source) == store)?;
    Some(anyhow::anyhow!(
        "store {} is mounted read-only at {}, and a read-only mount writes nothing to its store; unmount it and grow it offline, or mount it read-write",
        store.display(),
        mount.mountpoint.display()
    ))
}

/// What `onefs grow` prints.
pub fn render(outcome: &Outcome) -> String {
    let g = &outcome.grown;
    let sizes = format!(
        "disk.img {} -> {} ({}), {} blocks of {}",
        Size(g.old_size),
        Size(g.size),
        Approx(g.size),
        g.block_count,
        Size(g.block_size)
    );
    let mut text = if outcome.online {
        format!("grew {} online at {}: {sizes}\n", outcome.place, g.mountpoint.display())
    } else {
        format!("grew {}: {sizes}; not mounted: the next mount serves the new size\n", outcome.place)
    };
    if outcome.online {
        let disk = g.mountpoint.join(crate::fuse::DISK_NAME);
        text += &match outcome.loops.as_slice() {
            [] => format!(
                "a loop device attached to {} from now on sees the new size; one attached already does after losetup -c /dev/loopN\n",
                disk.display()
            ),
            loops => format!(
                "next: losetup -c {} (the loop device sees the new size), then grow the filesystem: resize2fs {}, or btrfs filesystem resize max MOUNTPOINT\n",
                loops.join(" ; losetup -c "),
                loops[0]
            ),
        };
    }
    if let Some((file, size)) = &outcome.create_differs {
        text += &format!(
            "note: {} says [create] size = \"{}\"; it applies only to an empty store and is never applied to this image\n",
            file.display(),
            Size(*size)
        );
    }
    text
}

/// `onefs grow`'s `--size`: parsed, and named in its errors.
pub fn parse_size_arg(text: &str) -> anyhow::Result<u64> {
    match crate::core::size::parse_size(text) {
        Ok(size) => Ok(size),
        Err(e) => bail!("--size: {e}"),
    }
}
