//! `onefs.json`: the description of an image, written once by `onefs create`.
//!
//! ```json
//! { "format": "onefs", "version": 2, "id": "…uuid…",
//!   "size": 1099511627776, "block_size": 4194304, "block_count": 262144,
//!   "block_files": { "prefix": "blk-", "first": 1, "width": 6 },
//!   "created": "2026-11-27T17:00:00Z", "created_by": "onefs 0.1.0",
//!   "checksum": "crc32c:…" }
//! ```
//! Block file `prefix + (i + 1)` (zero-padded to `width`) holds bytes
//! `[i * block_size, (i + 1) * block_size)` of `disk.img`.
//!
//! `checksum` (from version 2) covers every other field: a description
//! edited by hand into another consistent geometry would silently remap
//! every stored byte, so it is refused instead. Version 1 descriptions
//! (written before the checksum existed) are still read.
//!
//! `onefs grow` rewrites it with a larger `size` and `block_count` and a
//! fresh checksum ([`Meta::grown`], [`Meta::replace`]); everything else,
//! `id` and `created` included, stays. `width` stays too: blocks past what
//! it can count are named with all their digits (see `core::geometry`).

use crate::confined::{Access, ConfinedDir};
use crate::core::crc32c::crc32c;
use crate::core::geometry::BLOCK_PREFIX;
use crate::core::{Geometry, GeometryError};
use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub const META_FILE: &str = "onefs.json";
pub const FORMAT: &str = "onefs";
pub const VERSION: u32 = 2;
/// Descriptions are a few hundred bytes; anything far larger is not one.
const MAX_LEN: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub size: u64,
    pub block_size: u64,
    pub block_count: u64,
    pub block_files: BlockFiles,
    pub created: String,
    pub created_by: String,
    /// `crc32c:XXXXXXXX` of the description without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockFiles {
    pub prefix: String,
    pub first: u64,
    pub width: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// `source` names the file already.
    #[error("{source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path}: the description was changed after onefs wrote it (its checksum is {stored}, its content {actual}): \
         size and block size must stay as created, or every stored byte would move; restore the original"
    )]
    Tampered { path: String, stored: String, actual: String },
    #[error("{path}: not an onefs image description: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: format version {found} is newer than this onefs supports ({VERSION}); upgrade onefs to mount it")]
    FutureVersion { path: String, found: u64 },
    #[error("{path}: {source}")]
    Geometry { path: String, source: GeometryError },
}

/// Just enough of the file to decide how to read the rest.
#[derive(Deserialize)]
struct Probe {
    format: Option<String>,
    version: Option<u64>,
}

impl Meta {
    pub fn new(geometry: &Geometry) -> Self {
        let mut meta = Self {
            format: FORMAT.into(),
            version: VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            size: geometry.size(),
            block_size: geometry.block_size(),
            block_count: geometry.block_count(),
            block_files: BlockFiles { prefix: BLOCK_PREFIX.into(), first: 1, width: geometry.name_width() },
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            created_by: format!("onefs {}", env!("CARGO_PKG_VERSION")),
            checksum: None,
        };
        meta.checksum = Some(meta.content_checksum());
        meta
    }

    /// The checksum of every field but `checksum`, in a fixed rendering.
    fn content_checksum(&self) -> String {
        let content = Meta { checksum: None, ..self.clone() };
        // Serialising plain strings and integers cannot fail.
        let text = serde_json::to_string(&content).unwrap_or_default();
        format!("crc32c:{:08x}", crc32c(text.as_bytes()))
    }

    /// This image's description at `size` bytes: the same id, creation,
    /// block size and names, the new size and block count, a fresh checksum
    /// (a version 1 description becomes version 2). Refuses what
    /// [`Geometry::grown`] refuses.
    pub fn grown(&self, size: u64) -> Result<Self, GeometryError> {
        let geometry = self.geometry()?.grown(size)?;
        let mut meta =
            Self { version: VERSION, size, block_count: geometry.block_count(), checksum: None, ..self.clone() };
        meta.checksum = Some(meta.content_checksum());
        Ok(meta)
    }

    pub fn geometry(&self) -> Result<Geometry, GeometryError> {
        Geometry::with_name_width(self.size, self.block_size, self.block_files.width)
    }

    /// Parses and checks a description; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MetaError> {
        let path_s = path.display().to_string();
        let invalid = |reason: String| MetaError::Invalid { path: path_s.clone(), reason };
        let probe: Probe = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if probe.format.as_deref() != Some(FORMAT) {
            return Err(invalid(format!(
                "\"format\" is {:?}, expected \"{FORMAT}\"",
                probe.format.unwrap_or_default()
            )));
        }
        match probe.version {
            None => return Err(invalid("missing \"version\"".into())),
            Some(v) if v > VERSION as u64 => return Err(MetaError::FutureVersion { path: path_s, found: v }),
            Some(v) if v < 1 => return Err(invalid(format!("unknown version {v}"))),
            Some(_) => {}
        }
        let meta: Meta = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let geometry = meta.geometry().map_err(|source| MetaError::Geometry { path: path_s.clone(), source })?;
        if meta.block_count != geometry.block_count() {
            return Err(invalid(format!(
                "block_count {} does not match size {} / block_size {}",
                meta.block_count, meta.size, meta.block_size
            )));
        }
        if meta.block_files.prefix != BLOCK_PREFIX || meta.block_files.first != 1 {
            return Err(invalid(format!(
                "unsupported block file naming (prefix {:?}, first {})",
                meta.block_files.prefix, meta.block_files.first
            )));
        }
        if uuid::Uuid::parse_str(&meta.id).is_err() {
            return Err(invalid(format!("id {:?} is not a UUID", meta.id)));
        }
        match &meta.checksum {
            None if meta.version >= 2 => return Err(invalid("missing \"checksum\"".into())),
            None => {}
            Some(stored) => {
                let actual = meta.content_checksum();
                if *stored != actual {
                    return Err(MetaError::Tampered { path: path_s, stored: stored.clone(), actual });
                }
            }
        }
        Ok(meta)
    }

    /// Reads `STORE/onefs.json`: a regular file (never through a link,
    /// never blocking on a FIFO), of a description's size.
    pub fn load(store: &Path) -> Result<Self, MetaError> {
        let path = store.join(META_FILE);
        let io = |source| MetaError::Io { path: path.display().to_string(), source };
        let data = ConfinedDir::open(store).and_then(|dir| dir.read_small(META_FILE, MAX_LEN)).map_err(io)?;
        let text = String::from_utf8(data)
            .map_err(|_| MetaError::Invalid { path: path.display().to_string(), reason: "not UTF-8 text".into() })?;
        Self::parse(&text, &path)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Writes `STORE/onefs.json` atomically and durably: a temporary file,
    /// fsync, rename, fsync of the directory. Never replaces an existing one.
    pub fn write_new(&self, store: &Path) -> io::Result<()> {
        let dir = ConfinedDir::open(store)?;
        let tmp = format!(".{META_FILE}.tmp");
        let mut file = dir.open_file(&tmp, Access::CreateNew(0o644))?;
        let written = file
            .write_all(self.to_json().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| crate::errors::context(dir.join(&tmp).display(), e));
        drop(file);
        let linked = written.and_then(|()| dir.link(&tmp, META_FILE));
        let _ = dir.remove(&tmp);
        linked?;
        dir.sync()
    }
}

/// The temporary name a new description is written under by `onefs grow`
/// before it is renamed over `onefs.json`; one left by a crash is removed
/// by the next mount (and by `onefs fsck --repair`), like any `.NAME.tmp`.
pub const REPLACEMENT: &str = ".onefs.json.grow.tmp";

impl Meta {
    /// Replaces `STORE/onefs.json` atomically and durably: the new text goes
    /// to [`REPLACEMENT`] beside it (never through a link), is fsync'ed,
    /// renamed over `onefs.json`, and the directory is fsync'ed. A crash at
    /// any point leaves the old description or the new one, never neither.
    pub fn replace(&self, store: &Path) -> io::Result<()> {
        let dir = ConfinedDir::open(store)?;
        // A leftover of an earlier crash (or a link planted there) goes
        // first: the new text is written to a file of our own.
        dir.remove(REPLACEMENT)?;
        let mut file = dir.open_file(REPLACEMENT, Access::CreateNew(0o644))?;
        let written = file
            .write_all(self.to_json().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| crate::errors::context(dir.join(REPLACEMENT).display(), e));
        drop(file);
        if let Err(err) = written {
            let _ = dir.remove(REPLACEMENT);
            return Err(err);
        }
        crate::kill_point::reached("description-temporary");
        if let Err(err) = dir.rename(REPLACEMENT, META_FILE) {
            let _ = dir.remove(REPLACEMENT);
            return Err(err);
        }
        crate::kill_point::reached("description-renamed");
        dir.sync()
    }
}

/// The temporary name `onefs.json` is written under before it is linked
/// into place; alone in a store, the mark of an interrupted create.
pub fn leftover_name() -> String {
    format!(".{META_FILE}.tmp")
}

/// What a would-be store directory holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Contents {
    Absent,
    Empty,
    /// Only the leftover of an interrupted `onefs create`.
    Leftover,
    /// Something else, named (`onefs.json` when there is one).
    Other(String),
}

pub(crate) fn contents(store: &Path) -> io::Result<Contents> {
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

/// Reads a store's `onefs.json` like [`Meta::load`]; where there is none,
/// says why when that can be told: no such directory, an empty one (no
/// image yet), or one holding only the leftover of an interrupted create.
pub fn load_explained(store: &Path) -> anyhow::Result<Meta> {
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

    fn sample() -> Meta {
        Meta::new(&Geometry::new(1 << 40, 4 << 20).unwrap())
    }

    #[test]
    fn round_trips() {
        let meta = sample();
        let parsed = Meta::parse(&meta.to_json(), Path::new("x")).unwrap();
        assert_eq!(parsed, meta);
        assert_eq!(parsed.geometry().unwrap().name_width(), 6);
    }

    #[test]
    fn refuses_future_versions_clearly() {
        let text = sample()
            .to_json()
            .replace("\"version\": 2", "\"version\": 3")
            .replace("\"size\"", "\"new_field\": 1, \"size\"");
        let err = Meta::parse(&text, Path::new("/s/onefs.json")).unwrap_err().to_string();
        assert!(err.contains("/s/onefs.json") && err.contains("version 3 is newer"), "{err}");
    }

    #[test]
    fn refuses_damaged_descriptions() {
        let good = sample().to_json();
        let cases = [
            (good[..good.len() / 2].to_string(), "EOF"),
            (good.replace("\"block_count\": 262144", "\"block_count\": 5"), "does not match"),
            (good.replace("\"format\": \"onefs\"", "\"format\": \"other\""), "format"),
            (good.replace("\"block_size\": 4194304", "\"block_size\": 3000000"), "power of two"),
            (good.replace("\"width\": 6", "\"width\": 3"), "width"),
            (good.replace("\"size\"", "\"extra\": true, \"size\""), "unknown field"),
            ("[]".to_string(), "onefs"),
        ];
        for (text, expect) in cases {
            let err = Meta::parse(&text, Path::new("/s/onefs.json")).unwrap_err().to_string();
            assert!(err.starts_with("/s/onefs.json: ") && err.contains(expect), "{err} (expected {expect})");
        }
    }

    #[test]
    fn a_consistent_hand_edit_is_refused() {
        // 1 TiB of 4 MiB blocks edited into 2 TiB of 8 MiB blocks: still
        // consistent, and every stored byte would move.
        let edited = sample()
            .to_json()
            .replace("\"size\": 1099511627776", "\"size\": 2199023255552")
            .replace("\"block_size\": 4194304", "\"block_size\": 8388608");
        let err = Meta::parse(&edited, Path::new("/s/onefs.json")).unwrap_err().to_string();
        assert!(err.starts_with("/s/onefs.json: the description was changed after onefs wrote it"), "{err}");
        let no_checksum = sample().to_json().replace(",\n  \"checksum\"", ",\n  \"x\"").replace("\"x\": ", "\"y\": ");
        assert!(Meta::parse(&no_checksum, Path::new("x")).is_err());
    }

    #[test]
    fn version_1_descriptions_without_a_checksum_are_still_read() {
        let v1 = r#"{ "format": "onefs", "version": 1, "id": "3c014f95-6c88-46e8-843f-9537cf0e4605",
            "size": 1099511627776, "block_size": 4194304, "block_count": 262144,
            "block_files": { "prefix": "blk-", "first": 1, "width": 6 },
            "created": "2026-11-27T17:08:00Z", "created_by": "onefs 0.1.0" }"#;
        let meta = Meta::parse(v1, Path::new("x")).unwrap();
        assert_eq!((meta.version, meta.checksum), (1, None));
        let v2_without = v1.replace("\"version\": 1", "\"version\": 2");
        let err = Meta::parse(&v2_without, Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("missing \"checksum\""), "{err}");
    }

    #[test]
    fn a_grown_description_keeps_the_image_and_gets_a_fresh_checksum() {
        let small = Meta::new(&Geometry::new(1 << 30, 4 << 20).unwrap());
        let big = small.grown(1 << 40).unwrap();
        assert_eq!((big.size, big.block_count, big.block_size), (1 << 40, 262_144, 4 << 20));
        assert_eq!((&big.id, &big.created, &big.created_by), (&small.id, &small.created, &small.created_by));
        assert_eq!(big.block_files, small.block_files, "names keep their width");
        assert_ne!(big.checksum, small.checksum);
        assert_eq!(Meta::parse(&big.to_json(), Path::new("x")).unwrap(), big);
        assert_eq!(big.geometry().unwrap().block_name(262_143), "blk-262144");
        assert!(small.grown(1 << 29).unwrap_err().to_string().contains("never shrinks"));
        // A version 1 description comes out as version 2, with a checksum.
        let v1 = Meta { version: 1, checksum: None, ..small.clone() };
        let grown = v1.grown(2 << 30).unwrap();
        assert_eq!(grown.version, 2);
        assert_eq!(Meta::parse(&grown.to_json(), Path::new("x")).unwrap(), grown);
    }

    #[test]
    fn object_keys_follow_the_names_past_the_width() {
        use crate::backend::block_key;
        let grown = Meta::new(&Geometry::new(64 << 20, 1 << 20).unwrap()).grown(128 << 30).unwrap();
        let geometry = grown.geometry().unwrap();
        for (block, key) in [(63, "d0000/blk-00064"), (99_999, "d0099/blk-100000"), (131_071, "d0131/blk-131072")] {
            let name = geometry.block_name(block);
            assert_eq!(block_key(block, &name), key);
            assert_eq!(geometry.parse_block_name(&name), Some(block), "the cache lists it back");
        }
    }

    #[test]
    fn replace_swaps_the_description_atomically_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let meta = sample();
        meta.write_new(store).unwrap();
        let victim = store.join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, store.join(REPLACEMENT)).unwrap();
        let grown = meta.grown(2 << 40).unwrap();
        grown.replace(store).unwrap();
        assert_eq!(Meta::load(store).unwrap(), grown);
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!store.join(REPLACEMENT).exists());
        let names: Vec<_> = std::fs::read_dir(store).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn load_reads_only_a_regular_file_of_a_description_s_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let path = store.join(META_FILE);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Would block forever without O_NONBLOCK.
        let err = Meta::load(store).unwrap_err().to_string();
        assert!(err.contains("onefs.json: is a FIFO, not a regular file"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let err = Meta::load(store).unwrap_err().to_string();
        assert!(err.contains("onefs.json: is a symbolic link"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![b' '; MAX_LEN as usize + 1]).unwrap();
        let err = Meta::load(store).unwrap_err().to_string();
        assert!(err.contains("longer than 65536 bytes"), "{err}");
        std::fs::remove_file(&path).unwrap();
        sample().write_new(store).unwrap();
        assert_eq!(Meta::load(store).unwrap().id.len(), 36);
    }
}
