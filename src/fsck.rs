//! `onefs fsck STORE [--repair]`: checks a store that is not mounted.
//!
//! Checks `onefs.json`, every file name, the length of every block file and
//! whether a stored block holds any data. With `--repair` it fixes what has
//! exactly one meaning — a leftover temporary file, an all-zero block (the
//! same as an absent one), a block file shorter than a block (its missing
//! tail reads as zeros) — and only reports what it cannot be sure of (stray
//! files, block files longer than a block).
//!
//! The store lock is held for the whole check, so no mount starts meanwhile.

use crate::confined::{Access, ConfinedDir, Kind};
use crate::core::Geometry;
use crate::core::size::{Approx, Size};
use crate::meta::META_FILE;
use crate::store_lock::{LOCK_FILE, StoreLock};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Exit codes of `onefs fsck`.
pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_PROBLEMS: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

/// Threads reading block files: a deeper queue for the disk.
const THREADS: usize = 4;
/// Below this many block files there is no progress bar.
const PROGRESS_MIN_FILES: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A file that is not part of a store (never removed).
    Stray,
    /// A store name (block, description, lock, mark) that is a link,
    /// directory, FIFO, socket or device: never followed or opened.
    Hostile,
    /// A `.NAME.tmp` left by an interrupted write (removed by repair).
    Temporary,
    /// A block file shorter than a block (extended by repair).
    ShortBlock,
    /// A block file longer than a block (never repaired).
    LongBlock,
    /// A block file holding only zeros (removed by repair).
    ZeroBlock,
    /// A block file that could not be read or repaired.
    Unreadable,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub path: PathBuf,
    pub problem: Problem,
    /// What is wrong, for humans.
    pub detail: String,
    /// What repair did, or why it did not.
    pub repair: Option<Result<String, String>>,
}

impl Finding {
    pub fn repaired(&self) -> bool {
        matches!(self.repair, Some(Ok(_)))
    }

    /// One line naming the file.
    pub fn line(&self) -> String {
        let mut line = format!("{}: {}", self.path.display(), self.detail);
        match &self.repair {
            Some(Ok(done)) => line += &format!(": repaired ({done})"),
            Some(Err(why)) => line += &format!(": NOT repaired ({why})"),
            None => {}
        }
        line
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Block files left in the store.
    pub blocks: u64,
    /// Bytes they occupy on disk (`st_blocks * 512`).
    pub bytes_stored: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired()).count()
    }
    pub fn remaining(&self) -> usize {
        self.findings.len() - self.repaired()
    }
}

pub struct Options {
    pub repair: bool,
    /// Draw a progress line on stderr (a terminal) for large stores.
    pub progress: bool,
}

/// Runs `onefs fsck` and returns its exit code: prints each finding and a
/// summary on stdout, errors as one line on stderr.
pub fn command(store: &Path, repair: bool) -> i32 {
    let options = Options { repair, progress: io::stderr().is_terminal() };
    match check(store, &options) {
        Ok(report) => {
            let mut out = io::stdout().lock();
            for finding in &report.findings {
                let _ = writeln!(out, "{}", finding.line());
            }
            let _ = writeln!(
                out,
                "{}: {} blocks, {} bytes stored ({}), {} problems found, {} repaired",
                store.display(),
                report.blocks,
                report.bytes_stored,
                Approx(report.bytes_stored),
                report.findings.len(),
                report.repaired()
            );
            let _ = out.flush();
            if report.remaining() == 0 { EXIT_CLEAN } else { EXIT_PROBLEMS }
        }
        Err(err) => {
            eprintln!("onefs: error: {}", crate::errors::one_line(&err));
            EXIT_ERROR
        }
    }
}

/// What one directory entry is.
enum Entry {
    /// `onefs.json`, `onefs.lock` or `onefs.clean`.
    Expected,
    Block(u64, PathBuf),
    Finding(Finding),
}

/// Checks (and with `repair`, repairs) the store at `store`. An error means
/// the store could not be checked at all (no store, damaged `onefs.json`,
/// mounted, unreadable directory).
pub fn check(store: &Path, options: &Options) -> anyhow::Result<Report> {
    let meta = crate::meta::load_explained(store)?;
    let geometry = meta.geometry().map_err(|e| anyhow::anyhow!("{}: {e}", store.join(META_FILE).display()))?;
    let _lock = StoreLock::try_acquire_for_fsck(store, options.repair)?;
    let dir = ConfinedDir::open(store)?;
    let mut blocks = Vec::new();
    let mut findings = Vec::new();
    for (name, kind) in dir.entries()? {
        match classify(&geometry, &dir, &name, kind, options.repair) {
            Entry::Expected => {}
            Entry::Block(block, path) => blocks.push((block, path)),
            Entry::Finding(f) => findings.push(f),
        }
    }
    blocks.sort_unstable();

    let progress = Progress::new(options.progress && blocks.len() >= PROGRESS_MIN_FILES, blocks.len());
    let next = AtomicUsize::new(0);
    let kept = AtomicU64::new(0);
    let stored = AtomicU64::new(0);
    let block_findings = Mutex::new(Vec::new());
    let check_blocks = || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((_, path)) = blocks.get(i) else { break };
            let outcome = check_block(&geometry, &dir, path, options.repair, &mut buf);
            if let Some(bytes) = outcome.stored {
                kept.fetch_add(1, Ordering::Relaxed);
                stored.fetch_add(bytes, Ordering::Relaxed);
            }
            if !outcome.findings.is_empty() {
                crate::sync::lock(&block_findings).extend(outcome.findings);
            }
            progress.tick();
        }
    };
    // Every worker takes the next block from the shared counter, so the
    // calling thread finishes the job alone if no helper can be started.
    std::thread::scope(|scope| {
        for _ in 1..THREADS.min(blocks.len()).max(1) {
            if std::thread::Builder::new().spawn_scoped(scope, check_blocks).is_err() {
                break;
            }
        }
        check_blocks();
    });
    progress.finish();
    findings.extend(block_findings.into_inner().unwrap_or_else(|p| p.into_inner()));
    findings.sort_by(|a, b| a.path.cmp(&b.path));
    if options.repair && findings.iter().any(|f| f.repaired()) {
        dir.sync().map_err(|e| anyhow::anyhow!("cannot flush repairs: {e}"))?;
    }
    Ok(Report { blocks: kept.into_inner(), bytes_stored: stored.into_inner(), findings })
}

fn classify(geometry: &Geometry, dir: &ConfinedDir, name: &std::ffi::OsStr, kind: Kind, repair: bool) -> Entry {
    let path = dir.path().join(name);
    let finding =
        |problem, detail: String, repair| Entry::Finding(Finding { path: path.clone(), problem, detail, repair });
    let Some(name) = name.to_str() else {
        return finding(Problem::Stray, "stray file (name is not UTF-8; left alone)".into(), None);
    };
    let is_file = kind == Kind::File;
    // Removing a name never touches what a link points to.
    let remove = |name: &str| match dir.remove(name) {
        Ok(_) => Ok("removed".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if name == META_FILE || name == LOCK_FILE || name == crate::store::dir::CLEAN_MARK {
        if is_file {
            return Entry::Expected;
        }
        // The clean mark is onefs's own note and safe to drop.
        let repair = (repair && name == crate::store::dir::CLEAN_MARK && kind != Kind::Directory).then(|| remove(name));
        return finding(Problem::Hostile, format!("{} (never followed or opened)", kind.describe()), repair);
    }
    if let Some(block) = geometry.parse_block_name(name) {
        if is_file {
            return Entry::Block(block, path);
        }
        return finding(
            Problem::Hostile,
            format!("block name but {}, not a regular file (never followed or opened; left alone)", kind.describe()),
            None,
        );
    }
    if name.starts_with(crate::core::geometry::BLOCK_PREFIX) {
        return finding(
            Problem::Stray,
            format!(
                "not a block of this image (names run {} to {}; left alone)",
                geometry.block_name(0),
                geometry.block_name(geometry.block_count() - 1)
            ),
            None,
        );
    }
    if crate::store::dir::is_temporary(name) && matches!(kind, Kind::File | Kind::Symlink) {
        return finding(Problem::Temporary, "leftover temporary file".into(), repair.then(|| remove(name)));
    }
    finding(Problem::Stray, format!("stray entry ({}), not part of a store (left alone)", kind.describe()), None)
}

struct BlockOutcome {
    /// Bytes on disk if the block file is still there.
    stored: Option<u64>,
    findings: Vec<Finding>,
}

fn check_block(geometry: &Geometry, dir: &ConfinedDir, path: &Path, repair: bool, buf: &mut [u8]) -> BlockOutcome {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let unreadable = |e: io::Error| BlockOutcome {
        stored: None,
        findings: vec![Finding {
            path: path.to_path_buf(),
            problem: Problem::Unreadable,
            detail: format!("cannot check: {e}"),
            repair: None,
        }],
    };
    let file = match dir.open_file(name, if repair { Access::ReadWrite } else { Access::Read }) {
        Ok(file) => file,
        Err(e) => return unreadable(e),
    };
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return unreadable(e),
    };
    let block_size = geometry.block_size();
    let len = meta.len();
    let mut findings = Vec::new();
    if len > block_size {
        findings.push(Finding {
            path: path.to_path_buf(),
            problem: Problem::LongBlock,
            detail: format!(
                "block file is {len} bytes, longer than the block size {} (the excess is not part of disk.img)",
                Size(block_size)
            ),
            repair: repair.then(|| Err("never done automatically: check it, then truncate it by hand".to_string())),
        });
        return BlockOutcome { stored: Some(meta.blocks() * 512), findings };
    }
    let zero = match crate::store::blockfile::holds_only_zeros(&file, len, buf) {
        Ok(zero) => zero,
        Err(e) => return unreadable(e),
    };
    if zero {
        let repair = repair.then(|| match dir.remove(name) {
            Ok(_) => Ok("removed".to_string()),
            Err(e) => Err(e.to_string()),
        });
        let removed = matches!(repair, Some(Ok(_)));
        findings.push(Finding {
            path: path.to_path_buf(),
            problem: Problem::ZeroBlock,
            detail: "block holds only zeros (the same as no block file)".into(),
            repair,
        });
        if removed {
            return BlockOutcome { stored: None, findings };
        }
    } else if len < block_size {
        let repair = repair.then(|| match file.set_len(block_size).and_then(|()| file.sync_all()) {
            Ok(()) => Ok(format!("extended to {block_size} bytes, data kept")),
            Err(e) => Err(e.to_string()),
        });
        findings.push(Finding {
            path: path.to_path_buf(),
            problem: Problem::ShortBlock,
            detail: format!("short block file: {len} of {block_size} bytes (reads as zeros past its end)"),
            repair,
        });
    }
    let changed = findings.iter().any(Finding::repaired);
    let stored = if changed { file.metadata().map_or(meta.blocks(), |m| m.blocks()) } else { meta.blocks() } * 512;
    BlockOutcome { stored: Some(stored), findings }
}

/// A `\r`-redrawn progress line on stderr.
struct Progress {
    enabled: bool,
    total: usize,
    done: AtomicUsize,
    started: Instant,
    last_draw: Mutex<Instant>,
}

impl Progress {
    fn new(enabled: bool, total: usize) -> Self {
        let now = Instant::now();
        Self { enabled, total, done: AtomicUsize::new(0), started: now, last_draw: Mutex::new(now) }
    }

    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last_draw.try_lock() else { return };
        if last.elapsed() < Duration::from_millis(100) && done < self.total {
            return;
        }
        *last = Instant::now();
        self.draw(done);
    }

    fn draw(&self, done: usize) {
        const WIDTH: usize = 30;
        let filled = WIDTH * done / self.total.max(1);
        let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
        let _ = write!(
            io::stderr().lock(),
            "\rfsck [{bar}] {done}/{} blocks {:>3}% {:.0?}",
            self.total,
            100 * done / self.total.max(1),
            self.started.elapsed()
        );
    }

    fn finish(&self) {
        if self.enabled {
            self.draw(self.done.load(Ordering::Relaxed));
            let _ = writeln!(io::stderr().lock());
        }
    }
}
