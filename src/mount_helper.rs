//! `mount.onefs` / `mount.fuse.onefs`: the helper mount(8) runs for fstab
//! types `onefs` and `fuse.onefs` (one binary, chosen by argv[0]):
//!
//! ```text
//! mount.fuse.onefs SRC MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS]
//! ```
//! SRC is a definition name (`/etc/onefs/SRC.toml`) or a store path. The
//! helper returns only once the mount is live, and exits 32 with the reason
//! on failure. `-f` only validates, `-v` says what it does, `-s` drops
//! options it does not know instead of failing, `-n` is accepted (there is no
//! mtab to skip).

use crate::config::{self, Definition, MountSpec};
use crate::options::MountOptions;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mount(8)'s "mount failure" status.
pub const EXIT_FAILURE: u8 = 32;
const USAGE_EXIT: u8 = 1;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub source: String,
    pub mountpoint: PathBuf,
    pub options: String,
    pub fake: bool,
    pub verbose: bool,
    pub sloppy: bool,
}

pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut positional = vec![];
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "-o" {
            i += 1;
            let value = args.get(i).ok_or("-o needs a value")?;
            parsed.options =
                if parsed.options.is_empty() { value.clone() } else { format!("{},{value}", parsed.options) };
        } else if let Some(value) = arg.strip_prefix("-o") {
            parsed.options =
                if parsed.options.is_empty() { value.to_string() } else { format!("{},{value}", parsed.options) };
        } else if arg == "-t" {
            i += 1; // a type, as mount.fuse-style callers pass; the type is ours
        } else if let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty() && !f.starts_with('-')) {
            for flag in flags.chars() {
                match flag {
                    's' => parsed.sloppy = true,
                    'f' => parsed.fake = true,
                    'n' => {}
                    'v' => parsed.verbose = true,
                    other => return Err(format!("unknown option -{other}")),
                }
            }
        } else if arg.starts_with("--") {
            return Err(format!("unknown option {arg}"));
        } else {
            positional.push(arg.clone());
        }
        i += 1;
    }
    match positional.as_slice() {
        [source, mountpoint] => {
            parsed.source = source.clone();
            parsed.mountpoint = PathBuf::from(mountpoint);
            Ok(parsed)
        }
        _ => Err("expected SOURCE and MOUNTPOINT".into()),
    }
}

fn config_dir() -> PathBuf {
    std::env::var_os("ONEFS_CONFIG_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_DIR))
}

/// What to mount: the definition (if SRC names one) and the spec, with the
/// fstab options on top of the definition's.
pub fn resolve(args: &Args, dir: &Path) -> anyhow::Result<(Option<Definition>, MountSpec)> {
    let def = if !args.source.contains('/') {
        let file = config::definition_path(dir, &args.source)
            .map_err(|e| anyhow::anyhow!("{e} (SOURCE is a definition name in {} or a store path)", dir.display()))?;
        if !file.exists() {
            anyhow::bail!(
                "no definition {} (SOURCE is a definition name in {} or an absolute store path)",
                file.display(),
                dir.display()
            );
        }
        Some(Definition::load(&file, Some(&args.source))?)
    } else {
        None
    };
    let store = match &def {
        Some(def) => def.store.clone(),
        None if Path::new(&args.source).is_absolute() => PathBuf::from(&args.source),
        None => anyhow::bail!("store path {:?} is not absolute", args.source),
    };
    crate::paths::check_resolved(
        if def.as_ref().is_some_and(|d| d.remote.is_some()) { "cache directory" } else { "store" },
        &store,
    )?;
    crate::paths::check_resolved("mountpoint", &args.mountpoint)?;
    let mut items: Vec<String> = vec![];
    if let Some(def) = &def {
        items.push(def.options.to_string());
        if def.mountpoint != args.mountpoint {
            log::warn!(
                "{}: mounting at {} as fstab says, not at {} as the definition says",
                def.name,
                args.mountpoint.display(),
                def.mountpoint.display()
            );
        }
    }
    for item in args.options.split(',').filter(|s| !s.is_empty()) {
        match MountOptions::parse(item) {
            Ok(_) => items.push(item.to_string()),
            Err(err) if args.sloppy => log::warn!("ignoring {err}"),
            Err(err) => anyhow::bail!("{err}"),
        }
    }
    let options = MountOptions::parse(&items.join(",")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let remote = def.as_ref().and_then(|d| d.remote.clone());
    Ok((def, MountSpec { store, mountpoint: args.mountpoint.clone(), options, remote }))
}

/// `-f`: everything a mount would check, changing nothing.
fn validate(def: Option<&Definition>, spec: &MountSpec) -> anyhow::Result<()> {
    let will_create = def.is_some_and(|d| d.create.is_some()) && crate::meta::holds_nothing(&spec.store)?;
    if !will_create && spec.remote.is_none() {
        crate::meta::load_explained(&spec.store)?;
    }
    let canonical = crate::mount::mountpoint_dir(&spec.mountpoint)?;
    if let Some(existing) = crate::mountinfo::mount_at(&canonical) {
        anyhow::bail!(
            "mountpoint {} is already a mount point ({} from {})",
            canonical.display(),
            existing.fstype,
            existing.source
        );
    }
    Ok(())
}

pub fn main(program: &str, args: Vec<OsString>) -> ExitCode {
    // Refused before anything else: read lossily, such a path would be
    // another path.
    if let Some(bad) = args.iter().find(|a| a.to_str().is_none()) {
        eprintln!("{program}: error: argument {bad:?} is not UTF-8; onefs accepts only UTF-8 paths");
        return ExitCode::from(EXIT_FAILURE);
    }
    let args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: {program} SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS]\nSOURCE is a definition name in /etc/onefs or a store path; see mount.onefs(8)."
        );
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{program}: {err}\nusage: {program} SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS]");
            return ExitCode::from(USAGE_EXIT);
        }
    };
    let level = if args.verbose { log::LevelFilter::Info } else { log::LevelFilter::Warn };
    crate::logging::init(crate::logging::Target::Stderr, level);
    match mount(&args) {
        Ok(message) => {
            if args.verbose {
                println!("{program}: {message}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{program}: error: {}", crate::errors::one_line(&err));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn mount(args: &Args) -> anyhow::Result<String> {
    let (def, spec) = resolve(args, &config_dir())?;
    let options = spec.options.to_string();
    if args.fake {
        validate(def.as_ref(), &spec)?;
        return Ok(format!("would mount {} at {} ({options})", spec.store.display(), spec.mountpoint.display()));
    }
    if let Some(def) = &def {
        crate::create::create_if_empty(def)?;
    }
    let level = def.as_ref().and_then(|d| d.log_level).unwrap_or(log::LevelFilter::Info).to_string().to_lowercase();
    let remote_def = def.as_ref().filter(|d| d.remote.is_some()).map(|d| d.file.as_path());
    crate::mount::detach::mount_detached(&level, &spec.options, &spec.store, &spec.mountpoint, remote_def)?;
    Ok(format!("mounted {} at {} ({options})", spec.store.display(), spec.mountpoint.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_what_mount_passes() {
        let a = args(&["data", "/srv/onefs/data", "-o", "rw,_netdev,nofail", "-v", "-sn"]).unwrap();
        assert_eq!((a.source.as_str(), a.mountpoint.as_path()), ("data", Path::new("/srv/onefs/data")));
        assert_eq!(a.options, "rw,_netdev,nofail");
        assert!(a.verbose && a.sloppy && !a.fake);
        let a = args(&["/s", "/m", "-f", "-oro"]).unwrap();
        assert!(a.fake);
        assert_eq!(a.options, "ro");
        assert!(args(&["/s"]).is_err());
        assert!(args(&["/s", "/m", "-x"]).unwrap_err().contains("-x"));
    }

    #[test]
    fn fstab_options_go_over_the_definition() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.toml"), "store = \"/s\"\nmountpoint = \"/m\"\nuid = 7\nmode = \"0640\"\n")
            .unwrap();
        let a = args(&["data", "/m", "-o", "ro,_netdev,nofail,user,x-systemd.device-timeout=5"]).unwrap();
        let (def, spec) = resolve(&a, dir.path()).unwrap();
        assert!(def.is_some());
        assert_eq!(spec.store, PathBuf::from("/s"));
        assert_eq!(
            (spec.options.access.uid, spec.options.access.mode, spec.options.access.read_only),
            (7, 0o640, true)
        );
        let a = args(&["data", "/m", "-o", "bogus"]).unwrap();
        assert!(resolve(&a, dir.path()).unwrap_err().to_string().contains("bogus"));
        let a = args(&["data", "/m", "-s", "-o", "bogus,ro"]).unwrap();
        assert!(resolve(&a, dir.path()).unwrap().1.options.access.read_only);
        let a = args(&["missing", "/m"]).unwrap();
        assert!(resolve(&a, dir.path()).unwrap_err().to_string().contains("no definition"));
        let a = args(&["../x", "/m"]).unwrap();
        assert!(resolve(&a, dir.path()).is_err());
        let a = args(&["/store/path", "/m", "-o", "uid=5"]).unwrap();
        let (def, spec) = resolve(&a, dir.path()).unwrap();
        assert!(def.is_none());
        assert_eq!((spec.store, spec.options.access.uid), (PathBuf::from("/store/path"), 5));
    }
}
