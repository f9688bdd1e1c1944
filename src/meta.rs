//! `onefs.json`: the description of an image, written once by `onefs create`.
//!
//! ```json
//! { "format": "onefs", "version": 1, "id": "…uuid…",
//!   "size": 1099511627776, "block_size": 4194304, "block_count": 262144,
//!   "block_files": { "prefix": "blk-", "first": 1, "width": 6 },
//!   "created": "2026-11-27T17:00:00Z", "created_by": "onefs 0.1.0" }
//! ```
//! Block file `prefix + (i + 1)` (zero-padded to `width`) holds bytes
//! `[i * block_size, (i + 1) * block_size)` of `disk.img`.

use crate::core::geometry::BLOCK_PREFIX;
use crate::core::{Geometry, GeometryError};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const META_FILE: &str = "onefs.json";
pub const FORMAT: &str = "onefs";
pub const VERSION: u32 = 1;

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
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
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
        Self {
            format: FORMAT.into(),
            version: VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            size: geometry.size(),
            block_size: geometry.block_size(),
            block_count: geometry.block_count(),
            block_files: BlockFiles { prefix: BLOCK_PREFIX.into(), first: 1, width: geometry.name_width() },
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            created_by: format!("onefs {}", env!("CARGO_PKG_VERSION")),
        }
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
        Ok(meta)
    }

    /// Reads `STORE/onefs.json`.
    pub fn load(store: &Path) -> Result<Self, MetaError> {
        let path = store.join(META_FILE);
        let text =
            fs::read_to_string(&path).map_err(|source| MetaError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Writes `STORE/onefs.json` atomically and durably: a temporary file,
    /// fsync, rename, fsync of the directory. Never replaces an existing one.
    pub fn write_new(&self, store: &Path) -> io::Result<()> {
        let path = store.join(META_FILE);
        let tmp = store.join(format!(".{META_FILE}.tmp"));
        let ctx = |p: &Path, e: io::Error| crate::errors::context(p.display(), e);
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp).map_err(|e| ctx(&tmp, e))?;
        let written = file.write_all(self.to_json().as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| ctx(&path, e))?;
        File::open(store).and_then(|d| d.sync_all()).map_err(|e| ctx(store, e))
    }
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
            .replace("\"version\": 1", "\"version\": 2")
            .replace("\"size\"", "\"new_field\": 1, \"size\"");
        let err = Meta::parse(&text, Path::new("/s/onefs.json")).unwrap_err().to_string();
        assert!(err.contains("/s/onefs.json") && err.contains("version 2 is newer"), "{err}");
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
}
