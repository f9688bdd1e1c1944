//! Mount definitions: `/etc/onefs/NAME.toml`, one mount each; NAME is the
//! systemd instance name (`onefs@NAME.service`).
//!
//! ```toml
//! store = "/var/lib/onefs/data"
//! mountpoint = "/srv/onefs/data"
//! read_only = false
//! allow_other = false
//! uid = 0
//! gid = 0
//! mode = "0600"
//! threads = 16
//! io_uring = "auto"
//! log_level = "info"
//! [create]
//! size = "1T"
//! block_size = "4M"
//! ```
//!
//! Parsing is strict: an unknown key, a wrong type or a missing key is one
//! error line `FILE:LINE: key `k`: what is wrong`. The mount option keys go
//! through [`MountOptions::parse`], so they mean exactly what `-o` means.

use crate::core::size::parse_size;
use crate::options::MountOptions;
use log::LevelFilter;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub const DEFAULT_CONFIG_DIR: &str = "/etc/onefs";
pub const EXTENSION: &str = "toml";
const DEFAULT_BLOCK_SIZE: &str = "4M";

/// What `[create]` asks for when the store is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateSpec {
    pub size: u64,
    pub block_size: u64,
}

/// One parsed and checked definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub file: PathBuf,
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub create: Option<CreateSpec>,
    pub log_level: Option<LevelFilter>,
    /// `[backend]` and `[cache]`: blocks live in an object backend behind a
    /// local cache, and `store` is the cache directory.
    pub remote: Option<RemoteDef>,
}

/// Where the blocks of a `[backend]` definition live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendDef {
    /// Objects as files under a local (or NFS) directory.
    Dir {
        path: PathBuf,
    },
    S3(crate::backend::S3Config),
    Rclone(crate::backend::RcloneConfig),
}

impl BackendDef {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendDef::Dir { .. } => "dir",
            BackendDef::S3(_) => "s3",
            BackendDef::Rclone(_) => "rclone",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDef {
    pub backend: BackendDef,
    pub cache: crate::store::cache::CacheConfig,
}

/// One line: the file, the line and (where there is one) the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Refuses instance names that could escape the config directory or upset
/// systemd: only letters, digits, `_`, `-`, `.`, `:`; starting with a letter or
/// digit; at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if name.is_empty() {
        return Err("definition name is empty".into());
    }
    if name.len() > 64 {
        return Err(format!("definition name {name:?} is longer than 64 characters"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!("definition name {name:?} contains a path separator"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(ok_char) || name.contains("..") {
        return Err(format!(
            "definition name {name:?} is not safe: use letters, digits, '_', '-', '.' and ':', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// `DIR/NAME.toml`, after checking NAME.
pub fn definition_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    check_name(name)?;
    Ok(dir.join(format!("{name}.{EXTENSION}")))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Walks one table, taking keys by name and complaining about the rest.
struct Table<'a, 't> {
    file: &'a Path,
    text: &'a str,
    /// `""` for the top level, `"create."` for `[create]`.
    prefix: &'static str,
    /// Line of the table header (for missing keys).
    line: usize,
    table: &'t DeTable<'t>,
    taken: Vec<&'static str>,
}

type Value<'t> = &'t Spanned<DeValue<'t>>;

impl<'a, 't> Table<'a, 't> {
    fn error(&self, span: std::ops::Range<usize>, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError(format!(
            "{}:{}: key `{}{key}`: {message}",
            self.file.display(),
            line_of(self.text, span.start),
            self.prefix
        ))
    }

    fn get(&mut self, key: &'static str) -> Option<Value<'t>> {
        self.taken.push(key);
        self.table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| v)
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError(format!("{}:{}: missing required key `{}{key}`", self.file.display(), self.line, self.prefix))
    }

    fn wrong_type(&self, value: Value<'t>, key: &str, expected: &str) -> ConfigError {
        self.error(value.span(), key, format!("expected {expected}, found {}", value.get_ref().type_str()))
    }

    fn string(&mut self, key: &'static str) -> Result<Option<(String, std::ops::Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref().as_str() {
                Some(s) => Ok(Some((s.to_string(), v.span()))),
                None => Err(self.wrong_type(v, key, "a string")),
            },
        }
    }

    fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.get_ref().as_bool().map(Some).ok_or_else(|| self.wrong_type(v, key, "true or false")),
        }
    }

    fn integer(&mut self, key: &'static str) -> Result<Option<(u64, std::ops::Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref().as_integer() {
                Some(i) => u64::from_str_radix(i.as_str(), i.radix())
                    .map(|n| Some((n, v.span())))
                    .map_err(|_| self.error(v.span(), key, format!("{} is not a non-negative integer", i.as_str()))),
                None => Err(self.wrong_type(v, key, "an integer")),
            },
        }
    }

    fn path(&mut self, key: &'static str) -> Result<PathBuf, ConfigError> {
        let Some((text, span)) = self.string(key)? else {
            return Err(self.missing(key));
        };
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            return Err(self.error(span, key, format!("{text:?} is not an absolute path")));
        }
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(self.error(span, key, format!("{text:?} contains \"..\"")));
        }
        if let Some(why) = crate::paths::problem(&path) {
            return Err(self.error(span, key, format!("{text:?} {why}; use a path without control characters")));
        }
        Ok(path)
    }

    fn sub_table(&mut self, key: &'static str) -> Result<Option<(&'t DeTable<'t>, usize)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref().as_table() {
                Some(t) => Ok(Some((t, line_of(self.text, v.span().start)))),
                None => Err(self.wrong_type(v, key, "a table")),
            },
        }
    }

    /// The first key (in file order) that nobody asked for.
    fn finish(&self, known: &str) -> Result<(), ConfigError> {
        let unknown = self
            .table
            .iter()
            .filter(|(k, _)| !self.taken.contains(&k.get_ref().as_ref()))
            .min_by_key(|(k, _)| k.span().start);
        match unknown {
            None => Ok(()),
            Some((k, _)) => Err(self.error(k.span(), k.get_ref(), format!("unknown key (known keys: {known})"))),
        }
    }
}

const TOP_KEYS: &str = "store, mountpoint, read_only, allow_other, uid, gid, mode, threads, io_uring, log_level, [create], [backend], [cache]";
const CREATE_KEYS: &str = "size, block_size";
const CACHE_KEYS: &str = "dir, size, durability, upload_workers, upload_delay, retry_timeout";
const BACKEND_TYPES: &str = "\"dir\", \"s3\", \"rclone\"";

/// The `[backend]` table of an `s3` or `rclone` definition, read by serde
/// with the backend's own (strict) config struct.
#[derive(serde::Deserialize)]
struct BackendOnly {
    backend: TaggedBackend,
}

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TaggedBackend {
    S3(crate::backend::S3Config),
    Rclone(crate::backend::RcloneConfig),
}

impl<'a, 't> Table<'a, 't> {
    fn duration(
        &mut self,
        key: &'static str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some((text, span)) => humantime::parse_duration(&text).map_err(|e| {
                self.error(span, key, format!("{text:?} is not a duration such as \"2s\" or \"500ms\": {e}"))
            }),
        }
    }
}

/// `[backend]` and `[cache]`, when `[backend]` is given.
fn parse_remote(top: &mut Table<'_, '_>, text: &str, file: &Path) -> Result<Option<RemoteDef>, ConfigError> {
    use crate::store::cache::{CacheConfig, Durability};
    let backend_table = top.sub_table("backend")?;
    let cache_table = top.sub_table("cache")?;
    let Some((table, line)) = backend_table else {
        if let Some((_, line)) = cache_table {
            return Err(ConfigError(format!(
                "{}:{line}: [cache] needs a [backend] (a plain `store` directory is not cached)",
                file.display()
            )));
        }
        return Ok(None);
    };
    let mut b = Table { file, text, prefix: "backend.", line, table, taken: vec![] };
    let (kind, kind_span) = b.string("type")?.ok_or_else(|| b.missing("type"))?;
    let backend = match kind.as_str() {
        "dir" => {
            let path = b.path("path")?;
            b.finish("type, path")?;
            BackendDef::Dir { path }
        }
        "s3" | "rclone" => {
            let parsed: BackendOnly = toml::from_str(text).map_err(|e| {
                let at = e.span().map(|s| line_of(text, s.start)).unwrap_or(line);
                ConfigError(format!(
                    "{}:{at}: [backend] type {kind:?}: {}",
                    file.display(),
                    e.message().trim().replace('\n', " ")
                ))
            })?;
            match parsed.backend {
                TaggedBackend::S3(c) => BackendDef::S3(c),
                TaggedBackend::Rclone(c) => BackendDef::Rclone(c),
            }
        }
        other => return Err(b.error(kind_span, "type", format!("{other:?} is not one of {BACKEND_TYPES}"))),
    };
    let Some((table, line)) = cache_table else {
        return Err(ConfigError(format!("{}:{line}: [backend] needs a [cache] with at least `dir`", file.display())));
    };
    let mut c = Table { file, text, prefix: "cache.", line, table, taken: vec![] };
    let dir = c.path("dir")?;
    let mut cache = CacheConfig::new(&dir);
    if let Some((size_text, span)) = c.string("size")? {
        cache.size = parse_size(&size_text).map_err(|e| c.error(span.clone(), "size", e))?;
        if cache.size == 0 {
            return Err(c.error(span, "size", "must be more than zero"));
        }
    }
    if let Some((d, span)) = c.string("durability")? {
        cache.durability = match d.as_str() {
            "local" => Durability::Local,
            "remote" => Durability::Remote,
            other => return Err(c.error(span, "durability", format!("{other:?} is not one of \"local\", \"remote\""))),
        };
    }
    if let Some((n, span)) = c.integer("upload_workers")? {
        if !(1..=64).contains(&n) {
            return Err(c.error(span, "upload_workers", format!("{n} is not between 1 and 64")));
        }
        cache.upload_workers = n as usize;
    }
    cache.upload_delay = c.duration("upload_delay", CacheConfig::DEFAULT_DELAY)?;
    cache.retry_timeout = c.duration("retry_timeout", CacheConfig::DEFAULT_RETRY)?;
    c.finish(CACHE_KEYS)?;
    Ok(Some(RemoteDef { backend, cache }))
}

impl Definition {
    /// Parses the text of a definition; `file` and `name` only name it.
    pub fn parse(text: &str, file: &Path, name: &str) -> Result<Self, ConfigError> {
        check_name(name).map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;
        let doc = DeTable::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            ConfigError(format!("{}:{line}: {}", file.display(), e.message().trim().replace('\n', " ")))
        })?;
        let mut top = Table { file, text, prefix: "", line: 1, table: doc.get_ref(), taken: vec![] };
        let remote = parse_remote(&mut top, text, file)?;
        let store = match &remote {
            None => top.path("store")?,
            Some(remote) => {
                if let Some((_, span)) = top.string("store")? {
                    return Err(top.error(
                        span,
                        "store",
                        "not with [backend]: blocks go to the backend, cached in [cache] dir",
                    ));
                }
                remote.cache.dir.clone()
            }
        };
        let mountpoint = top.path("mountpoint")?;

        // Mount options go through the same parser as `-o`.
        let mut items: Vec<String> = vec![];
        match top.boolean("read_only")? {
            Some(true) => items.push("ro".into()),
            Some(false) => items.push("rw".into()),
            None => {}
        }
        if top.boolean("allow_other")? == Some(true) {
            items.push("allow_other".into());
        }
        let mut option = |top: &mut Table, key: &'static str, item: String, span: std::ops::Range<usize>| {
            MountOptions::parse(&item).map_err(|e| top.error(span, key, e))?;
            items.push(item);
            Ok::<(), ConfigError>(())
        };
        for key in ["uid", "gid", "threads"] {
            if let Some((n, span)) = top.integer(key)? {
                option(&mut top, key, format!("{key}={n}"), span)?;
            }
        }
        if let Some((mode, span)) = top.string("mode")? {
            if mode.is_empty() || !mode.chars().all(|c| c.is_digit(8)) {
                return Err(top.error(span, "mode", format!("{mode:?} is not an octal mode such as \"0640\"")));
            }
            option(&mut top, "mode", format!("mode={mode}"), span)?;
        }
        if let Some((mode, span)) = top.string("io_uring")? {
            option(&mut top, "io_uring", format!("io_uring={mode}"), span)?;
        }
        let options =
            MountOptions::parse(&items.join(",")).map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;

        let log_level = match top.string("log_level")? {
            None => None,
            Some((level, span)) => Some(crate::logging::parse_level(&level).ok_or_else(|| {
                top.error(span, "log_level", format!("{level:?} is not one of error, warn, info, debug"))
            })?),
        };

        let create = match top.sub_table("create")? {
            None => None,
            Some((table, line)) => {
                let mut t = Table { file, text, prefix: "create.", line, table, taken: vec![] };
                let (size_text, size_span) = t.string("size")?.ok_or_else(|| t.missing("size"))?;
                let size = parse_size(&size_text).map_err(|e| t.error(size_span.clone(), "size", e))?;
                let (block_text, block_span) = t.string("block_size")?.unwrap_or((DEFAULT_BLOCK_SIZE.into(), 0..0));
                let block_size = parse_size(&block_text).map_err(|e| t.error(block_span.clone(), "block_size", e))?;
                crate::core::Geometry::new(size, block_size).map_err(|e| match e.field() {
                    "block_size" if block_span.end > 0 => t.error(block_span, "block_size", e),
                    "block_size" => t.error(size_span, "block_size", e),
                    _ => t.error(size_span, "size", e),
                })?;
                t.finish(CREATE_KEYS)?;
                Some(CreateSpec { size, block_size })
            }
        };
        top.finish(TOP_KEYS)?;
        Ok(Self {
            name: name.to_string(),
            file: file.to_path_buf(),
            store,
            mountpoint,
            options,
            create,
            log_level,
            remote,
        })
    }

    /// Reads a definition file; its name is the file's stem unless given.
    pub fn load(file: &Path, name: Option<&str>) -> Result<Self, ConfigError> {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = name.unwrap_or(&stem);
        let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ConfigError(format!("no definition {name}: {} does not exist", file.display()))
            }
            _ => ConfigError(format!("{}: {e}", file.display())),
        })?;
        Self::parse(&text, file, name)
    }

    /// Reads `DIR/NAME.toml`, refusing unsafe names.
    /// The definition a command names with `--config FILE` (which wins) or
    /// NAME (in `dir`); `None` when it names neither.
    pub fn chosen(name: Option<&str>, file: Option<&Path>, dir: &Path) -> Result<Option<Self>, ConfigError> {
        match (name, file) {
            (_, Some(file)) => Self::load(file, None).map(Some),
            (Some(name), None) => Self::load_named(dir, name).map(Some),
            (None, None) => Ok(None),
        }
    }

    pub fn load_named(dir: &Path, name: &str) -> Result<Self, ConfigError> {
        let file = definition_path(dir, name).map_err(ConfigError)?;
        Self::load(&file, Some(name))
    }

    pub fn spec(&self) -> MountSpec {
        MountSpec {
            store: self.store.clone(),
            mountpoint: self.mountpoint.clone(),
            options: self.options.clone(),
            remote: self.remote.clone(),
        }
    }

    /// Whether a running mount of `old` can take this definition without a
    /// remount (only the log level may change live).
    pub fn remount_changes(&self, old: &Definition) -> Vec<&'static str> {
        let mut changes = vec![];
        if self.store != old.store {
            changes.push("store");
        }
        if self.remote != old.remote {
            changes.push("backend or cache");
        }
        if self.mountpoint != old.mountpoint {
            changes.push("mountpoint");
        }
        if self.options != old.options {
            changes.push("mount options");
        }
        changes
    }
}

/// Everything needed to serve one mount.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    /// Blocks in an object backend behind a local cache (`store` is then the
    /// cache directory); `None` for a plain store directory.
    pub remote: Option<RemoteDef>,
}

/// The definitions of a directory: the good ones, and the file name and
/// error of each broken one.
pub type Loaded = (Vec<Definition>, Vec<(String, ConfigError)>);

/// Every `*.toml` in `dir`, sorted by name: the good ones, and one error line
/// for each broken one.
pub fn load_dir(dir: &Path) -> Result<Loaded, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
        .collect();
    files.sort();
    let (mut good, mut bad): (Vec<Definition>, Vec<(String, ConfigError)>) = (vec![], vec![]);
    for file in files {
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match Definition::load(&file, None) {
            Ok(def) => {
                if let Some(other) = good.iter().find(|d| d.store == def.store) {
                    bad.push((
                        name,
                        ConfigError(format!(
                            "{}: store {} is already used by {}",
                            file.display(),
                            def.store.display(),
                            other.file.display()
                        )),
                    ));
                } else if let Some(other) = good.iter().find(|d| d.mountpoint == def.mountpoint) {
                    bad.push((
                        name,
                        ConfigError(format!(
                            "{}: mountpoint {} is already used by {}",
                            file.display(),
                            def.mountpoint.display(),
                            other.file.display()
                        )),
                    ));
                } else {
                    good.push(def);
                }
            }
            Err(e) => bad.push((name, e)),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definition, String> {
        Definition::parse(text, Path::new("/etc/onefs/data.toml"), "data").map_err(|e| e.0)
    }

    const FULL: &str = r#"
store = "/var/lib/onefs/data"
mountpoint = "/srv/onefs/data"
read_only = true
allow_other = true
uid = 1000
gid = 100
mode = "0640"
threads = 4
io_uring = "off"
log_level = "debug"

[create]
size = "1T"
block_size = "4M"
"#;

    #[test]
    fn parses_a_full_definition() {
        let d = parse(FULL).unwrap();
        assert_eq!(d.store, PathBuf::from("/var/lib/onefs/data"));
        assert_eq!(d.mountpoint, PathBuf::from("/srv/onefs/data"));
        let options = "ro,allow_other,uid=1000,gid=100,mode=0640,threads=4,io_uring=off";
        assert_eq!(d.options, MountOptions::parse(options).unwrap());
        assert_eq!(d.options.io_uring, crate::fuse::ring::RingMode::Off);
        assert_eq!(d.create, Some(CreateSpec { size: 1 << 40, block_size: 4 << 20 }));
        assert_eq!(d.log_level, Some(LevelFilter::Debug));
    }

    #[test]
    fn minimal_definition_takes_defaults() {
        let d = parse("store = \"/s\"\nmountpoint = \"/m\"\n").unwrap();
        assert_eq!(d.options, MountOptions::default());
        assert_eq!((d.create, d.log_level), (None, None));
        let d = parse("store = \"/s\"\nmountpoint = \"/m\"\n[create]\nsize = \"1G\"\n").unwrap();
        assert_eq!(d.create, Some(CreateSpec { size: 1 << 30, block_size: 4 << 20 }));
    }

    #[test]
    fn errors_are_one_line_naming_file_line_and_key() {
        let cases = [
            ("store = \"/s\"\nmountpoint = \"/m\"\nbogus = 1\n", "data.toml:3: key `bogus`: unknown key"),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nread_only = \"yes\"\n",
                "data.toml:3: key `read_only`: expected true or false, found string",
            ),
            ("store = \"/s\"\n", "data.toml:1: missing required key `mountpoint`"),
            ("store = 5\nmountpoint = \"/m\"\n", "data.toml:1: key `store`: expected a string, found integer"),
            ("store = \"rel\"\nmountpoint = \"/m\"\n", "data.toml:1: key `store`: \"rel\" is not an absolute path"),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nmode = \"999\"\n",
                "data.toml:3: key `mode`: \"999\" is not an octal mode",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nmode = \"1777\"\n",
                "data.toml:3: key `mode`: mount option mode=1777: mode must be at most 0777",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nthreads = 0\n",
                "data.toml:3: key `threads`: mount option threads=0",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nio_uring = \"yes\"\n",
                "data.toml:3: key `io_uring`: mount option io_uring=yes: \"yes\" is not one of auto, on, off",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nuid = -1\n",
                "data.toml:3: key `uid`: -1 is not a non-negative integer",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\nlog_level = \"loud\"\n",
                "data.toml:3: key `log_level`: \"loud\" is not one of",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\n[create]\nblock_size = \"4M\"\n",
                "data.toml:3: missing required key `create.size`",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\n[create]\nsize = \"1T\"\nsparse = true\n",
                "data.toml:5: key `create.sparse`: unknown key",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\n[create]\nsize = \"1X\"\n",
                "data.toml:4: key `create.size`: \"1X\" has an unknown suffix",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\n[create]\nsize = \"1T\"\nblock_size = \"3000\"\n",
                "data.toml:5: key `create.block_size`",
            ),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\ncreate = 1\n",
                "data.toml:3: key `create`: expected a table, found integer",
            ),
            ("store = \"/s\"\nmountpoint = \n", "data.toml:2: "),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("/etc/onefs/") && err.contains(expected), "{err:?} does not contain {expected:?}");
            assert!(!err.contains('\n'), "{err:?} is not one line");
        }
    }

    #[test]
    fn backend_and_cache_definitions() {
        use crate::store::cache::Durability;
        let d = parse("mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n[cache]\ndir = \"/c\"\nsize = \"1G\"\ndurability = \"remote\"\nupload_workers = 8\nupload_delay = \"500ms\"\nretry_timeout = \"1m\"\n").unwrap();
        assert_eq!(d.store, PathBuf::from("/c"), "the cache directory takes the place of the store");
        let r = d.remote.unwrap();
        assert_eq!(r.backend, BackendDef::Dir { path: PathBuf::from("/o") });
        assert_eq!((r.cache.size, r.cache.durability, r.cache.upload_workers), (1 << 30, Durability::Remote, 8));
        assert_eq!((r.cache.upload_delay.as_millis(), r.cache.retry_timeout.as_secs()), (500, 60));
        let d = parse("mountpoint = \"/m\"\n[backend]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\n[cache]\ndir = \"/c\"\n").unwrap();
        assert!(matches!(d.remote.unwrap().backend, BackendDef::S3(c) if c.bucket == "b"));
        let cases = [
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"ftp\"\n[cache]\ndir = \"/c\"\n",
                "data.toml:3: key `backend.type`: \"ftp\" is not one of",
            ),
            ("mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n", "[backend] needs a [cache]"),
            ("store = \"/s\"\nmountpoint = \"/m\"\n[cache]\ndir = \"/c\"\n", "[cache] needs a [backend]"),
            (
                "store = \"/s\"\nmountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n[cache]\ndir = \"/c\"\n",
                "data.toml:1: key `store`: not with [backend]",
            ),
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n[cache]\ndir = \"/c\"\ndurability = \"sync\"\n",
                "data.toml:7: key `cache.durability`",
            ),
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n[cache]\ndir = \"/c\"\nupload_delay = \"soon\"\n",
                "data.toml:7: key `cache.upload_delay`",
            ),
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\n[cache]\ndir = \"/c\"\nupload_workers = 0\n",
                "key `cache.upload_workers`: 0 is not between 1 and 64",
            ),
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"dir\"\npath = \"/o\"\nbucket = \"x\"\n[cache]\ndir = \"/c\"\n",
                "key `backend.bucket`: unknown key",
            ),
            (
                "mountpoint = \"/m\"\n[backend]\ntype = \"s3\"\nendpoint = \"http://x\"\nbucket = \"b\"\nsecret = \"no\"\n[cache]\ndir = \"/c\"\n",
                "[backend] type \"s3\": unknown field `secret`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{err:?} does not contain {expected:?}");
            assert!(!err.contains('\n'), "{err:?} is not one line");
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", "a/b", "../x", "..", ".hidden", "-x", "a b", "a\\b", "x@y", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
            assert!(definition_path(Path::new("/etc/onefs"), bad).is_err());
        }
        for good in ["data", "data-2", "a_b.c", "vm:disk1", "0"] {
            check_name(good).unwrap();
        }
        assert_eq!(definition_path(Path::new("/etc/onefs"), "data").unwrap(), PathBuf::from("/etc/onefs/data.toml"));
    }

    #[test]
    fn load_dir_reports_broken_and_duplicate_definitions_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "store = \"/s/a\"\nmountpoint = \"/m/a\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "store = \"/s/b\"\n").unwrap();
        std::fs::write(dir.path().join("c.toml"), "store = \"/s/a\"\nmountpoint = \"/m/c\"\n").unwrap();
        std::fs::write(dir.path().join("d.toml"), "store = \"/s/d\"\nmountpoint = \"/m/d\"\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (good, bad) = load_dir(dir.path()).unwrap();
        assert_eq!(good.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!((bad[0].0.as_str(), bad[1].0.as_str()), ("b", "c"));
        assert!(bad[0].1.0.contains("b.toml:1: missing required key `mountpoint`"), "{bad:?}");
        assert!(bad[1].1.0.contains("c.toml: store /s/a is already used by"), "{bad:?}");
    }

    #[test]
    fn remount_changes_name_what_changed() {
        let a = parse(FULL).unwrap();
        let mut b = a.clone();
        b.log_level = Some(LevelFilter::Info);
        assert!(b.remount_changes(&a).is_empty());
        b.mountpoint = PathBuf::from("/elsewhere");
        b.options.access.read_only = false;
        assert_eq!(b.remount_changes(&a), ["mountpoint", "mount options"]);
    }
}
