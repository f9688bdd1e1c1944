//! The `onefs` command line.

use crate::config::MountSpec;
use crate::core::size::{Approx, Size, parse_size};
use crate::mount::detach::{Foreground, ReadyPipe};
use crate::options::MountOptions;
use crate::{config, logging, mount};
use anyhow::bail;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "onefs",
    version,
    about = "One giant sparse file, disk.img, stored as numbered block files",
    long_about = "onefs serves a FUSE filesystem holding exactly one file, disk.img, of a size chosen at \
creation (and grown with onefs grow, while in use if need be). Its content lives in a backing store as numbered block files (blk-00001, blk-00002, ...); \
blocks that are all zeros are never stored. Attach disk.img to a loop device and put ext4 or btrfs on it."
)]
pub struct Cli {
    /// Log level: error, warn, info, debug
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Create a new image in an empty (or absent) store directory, or in the
    /// empty backend of a definition
    Create {
        /// Size of disk.img, with a binary suffix K, M, G, T or P (e.g. 1T)
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        size: String,
        /// Size of one block file: a power of two from 4K to 1G (e.g. 4M)
        #[arg(long, value_name = "SIZE", default_value = "4M", allow_hyphen_values = true)]
        block_size: String,
        /// Create the image of definition CONFIG_DIR/NAME.toml: in its store
        /// directory, or in its [backend] (which must hold nothing yet)
        #[arg(long, value_name = "NAME", conflicts_with_all = ["store", "config"])]
        definition: Option<String>,
        /// Like --definition, with this definition file
        #[arg(long, value_name = "FILE", conflicts_with = "store")]
        config: Option<PathBuf>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The store directory; must be empty or not exist yet
        #[arg(required_unless_present_any = ["definition", "config"])]
        store: Option<PathBuf>,
    },
    /// Make disk.img larger, while mounted or not; the block size never changes
    ///
    /// Unmounted, the image description (onefs.json) is rewritten atomically,
    /// under the store's lock (and a remote store's lock). Mounted, the onefs
    /// serving it grows it in use, asked through its control socket
    /// /run/onefs/control-PID: stat shows the new size at once, `losetup -c
    /// /dev/loopN` shows it to a loop device, and resize2fs or `btrfs
    /// filesystem resize max MOUNTPOINT` grows the filesystem. A smaller size
    /// is refused: onefs never shrinks an image, the filesystem on it would
    /// lose data. A read-only mount is not grown.
    Grow {
        /// The new size of disk.img: larger than now, a multiple of the block
        /// size, at most 2^32 blocks (binary suffix K, M, G, T, P)
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        size: String,
        /// Grow the image of definition CONFIG_DIR/NAME.toml (in its store
        /// directory or its [backend])
        #[arg(long, value_name = "NAME", conflicts_with_all = ["store", "config"])]
        definition: Option<String>,
        /// Like --definition, with this definition file
        #[arg(long, value_name = "FILE", conflicts_with = "store")]
        config: Option<PathBuf>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The store directory
        #[arg(required_unless_present_any = ["definition", "config"])]
        store: Option<PathBuf>,
    },
    /// Mount a store's disk.img at MOUNTPOINT; returns once the mount is live
    Mount {
        /// Stay attached and serve in the foreground (for debugging and services)
        #[arg(short, long)]
        foreground: bool,
        /// Mount options: ro, allow_other, uid=N, gid=N, mode=OCTAL, threads=N, io_uring=auto|on|off, nonempty
        #[arg(short = 'o', long = "options", value_name = "OPTIONS", default_value = "")]
        options: String,
        /// Report readiness on this file descriptor (used by the detaching parent)
        #[arg(long, hide = true, value_name = "FD")]
        ready_fd: Option<i32>,
        /// Serve the [backend] of this definition file, STORE being its cache
        /// directory (used by mount.onefs for remote definitions)
        #[arg(long, hide = true, value_name = "FILE")]
        definition_file: Option<PathBuf>,
        /// The store directory written by `onefs create`
        store: PathBuf,
        /// An existing empty directory where disk.img appears
        mountpoint: PathBuf,
    },
    /// Serve one definition in the foreground (what onefs@NAME.service runs)
    Run {
        /// The definition to serve: CONFIG_DIR/NAME.toml
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        name: Option<String>,
        /// Serve this definition file instead of CONFIG_DIR/NAME.toml
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Serve every definition in CONFIG_DIR (what onefs.service runs)
    Daemon {
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Make a running onefs re-read its definitions, and wait for the outcome
    Reload {
        /// The definition whose onefs to signal (found through its store's lock)
        #[arg(required_unless_present = "pid", conflicts_with = "pid")]
        name: Option<String>,
        /// The onefs process to signal (the units pass $MAINPID)
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Show what is mounted, where, from which store, and how much is stored
    ///
    /// Each mount's state is mounted, dead (its onefs is gone: ENOTCONN), not
    /// answering (no answer to statfs within 2s: its onefs is stopped or
    /// stuck) or not mounted. A mount or store that does not answer delays
    /// the command by a few seconds at most.
    Status {
        /// Only this definition; exit status 3 unless it is mounted and answering
        name: Option<String>,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Clear dead mounts left by a crashed onefs at definitions' mountpoints
    Cleanup {
        /// The definition whose mountpoint to clear; without it, every definition
        name: Option<String>,
        /// Use this definition file instead of CONFIG_DIR/NAME.toml
        #[arg(long, value_name = "FILE", conflicts_with = "name")]
        config: Option<PathBuf>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Remove the lock object of a remote store whose holder is gone (its
    /// host died); never while that host may still be mounted
    BreakLock {
        /// The definition whose [backend] to unlock
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        name: Option<String>,
        /// Use this definition file instead of CONFIG_DIR/NAME.toml
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where definitions live
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Check an unmounted store; exit 0 clean, 1 problems remain, 2 cannot check
    Fsck {
        /// Remove leftover temporaries and all-zero blocks, extend short blocks
        /// (stray files and over-long blocks are only reported)
        #[arg(long)]
        repair: bool,
        /// The store directory to check
        store: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().map(PathBuf::from).unwrap_or_default();
    let program = argv0.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if program == "mount.onefs" || program == "mount.fuse.onefs" {
        return crate::mount_helper::main(&program, std::env::args_os().skip(1).collect());
    }
    let parsed = Cli::command().try_get_matches().and_then(|m| {
        let given = m.value_source("log_level") == Some(clap::parser::ValueSource::CommandLine);
        Cli::from_arg_matches(&m).map(|cli| (cli, given))
    });
    let (cli, level_given) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let Some(level) = logging::parse_level(&cli.log_level) else {
        eprintln!("onefs: error: --log-level {:?} is not one of error, warn, info, debug", cli.log_level);
        return ExitCode::from(2);
    };
    let detached = matches!(cli.command, Commands::Mount { ready_fd: Some(_), .. });
    logging::init(if detached { logging::Target::Syslog } else { logging::Target::Stderr }, level);
    if let Some(code) = service_command(&cli, level_given.then_some(level)) {
        return code;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if detached {
                log::error!("{}", crate::errors::one_line(&err));
            } else {
                eprintln!("onefs: error: {}", crate::errors::one_line(&err));
            }
            ExitCode::FAILURE
        }
    }
}

/// The service commands (run, daemon, reload, status, cleanup); `None` for
/// the others.
fn service_command(cli: &Cli, level: Option<log::LevelFilter>) -> Option<ExitCode> {
    use crate::service::{self, Source};
    let fail = |err: anyhow::Error| {
        eprintln!("onefs: error: {}", crate::errors::one_line(&err));
        ExitCode::FAILURE
    };
    let result = match &cli.command {
        Commands::Run { name, config, config_dir } => {
            let source = match (name, config) {
                (_, Some(file)) => Source::File { file: file.clone(), name: None },
                (Some(name), None) => match config::definition_path(config_dir, name) {
                    Ok(file) => Source::File { file, name: Some(name.clone()) },
                    Err(err) => return Some(fail(anyhow::anyhow!("{err}"))),
                },
                (None, None) => return Some(fail(anyhow::anyhow!("give a definition NAME or --config FILE"))),
            };
            service::serve(source, level)
        }
        Commands::Daemon { config_dir } => service::serve(Source::Dir(config_dir.clone()), level),
        Commands::Reload { name, pid, config_dir } => {
            let pid = match (pid, name) {
                (Some(pid), _) => Ok(*pid),
                (None, Some(name)) => service::pid_serving(config_dir, name),
                (None, None) => Err(anyhow::anyhow!("give a definition NAME or --pid PID")),
            };
            pid.and_then(|pid| service::request_reload(pid, std::time::Duration::from_secs(120))).map(|message| {
                println!("{message}");
            })
        }
        Commands::Status { name, json, config_dir } => match crate::status::collect(config_dir, name.as_deref()) {
            Ok(entries) => {
                let text =
                    if *json { crate::status::render_json(&entries) } else { crate::status::render_text(&entries) };
                print!("{text}");
                if name.is_some() && entries.iter().all(|e| e.state != crate::status::MOUNTED) {
                    return Some(ExitCode::from(3));
                }
                Ok(())
            }
            Err(err) => Err(err),
        },
        Commands::Cleanup { name, config, config_dir } => {
            let defs = match config::Definition::chosen(name.as_deref(), config.as_deref(), config_dir) {
                Ok(Some(def)) => Ok(vec![def]),
                Ok(None) => config::load_dir(config_dir).map(|(good, _)| good),
                Err(err) => Err(err),
            }
            .map_err(anyhow::Error::from);
            defs.and_then(|defs| service::cleanup(&defs))
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{}", crate::errors::one_line(&err));
            ExitCode::FAILURE
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Create { size, block_size, definition, config: file, config_dir, store } => {
            let size = parse_size(&size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let block_size = parse_size(&block_size).map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
            crate::core::Geometry::new(size, block_size)
                .map_err(|e| anyhow::anyhow!("--{}: {e}", e.field().replace('_', "-")))?;
            let def = config::Definition::chosen(definition.as_deref(), file.as_deref(), &config_dir)?;
            let place = match (&def, &store) {
                (Some(def), _) => crate::create::Place::of(def),
                (None, Some(store)) => crate::create::Place::Dir(store),
                (None, None) => bail!("give a STORE directory, --definition NAME or --config FILE"),
            };
            let (place, meta) = crate::create::create(place, size, block_size)?;
            println!(
                "created {} (id {}): disk.img of {} ({}) in {} blocks of {}",
                place,
                meta.id,
                Size(meta.size),
                Approx(meta.size),
                meta.block_count,
                Size(meta.block_size)
            );
            Ok(())
        }
        Commands::Grow { size, definition, config: file, config_dir, store } => {
            let size = crate::grow::parse_size_arg(&size)?;
            let def = config::Definition::chosen(definition.as_deref(), file.as_deref(), &config_dir)?;
            let target = match (&def, &store) {
                (Some(def), _) => crate::grow::Target::Definition(def),
                (None, Some(store)) => crate::grow::Target::Store(store),
                (None, None) => bail!("give a STORE directory, --definition NAME or --config FILE"),
            };
            print!("{}", crate::grow::render(&crate::grow::grow(target, size)?));
            Ok(())
        }
        Commands::Run { .. }
        | Commands::Daemon { .. }
        | Commands::Reload { .. }
        | Commands::Status { .. }
        | Commands::Cleanup { .. } => {
            bail!("internal error: service commands are handled by service_command")
        }
        Commands::Mount { foreground, options, ready_fd, definition_file, store, mountpoint } => {
            let what = if definition_file.is_some() { "cache directory" } else { "store" };
            crate::paths::check_resolved(what, &store)?;
            crate::paths::check_resolved("mountpoint", &mountpoint)?;
            let options = MountOptions::parse(&options).map_err(|e| anyhow::anyhow!("-o: {e}"))?;
            let remote = match &definition_file {
                Some(file) => config::Definition::load(file, None)?.remote,
                None => None,
            };
            let spec = MountSpec { store: store.clone(), mountpoint: mountpoint.clone(), options, remote };
            match (foreground, ready_fd) {
                (_, Some(fd)) => {
                    // SAFETY: the parent handed us this descriptor for our sole use.
                    let pipe = unsafe { File::from_raw_fd(fd) };
                    mount::serve(&spec, &mut ReadyPipe::new(pipe))
                }
                (true, None) => mount::serve(&spec, &mut Foreground),
                (false, None) => mount::detach::mount_detached(
                    &cli.log_level,
                    &spec.options,
                    &store,
                    &mountpoint,
                    definition_file.as_deref(),
                ),
            }
        }
        Commands::BreakLock { name, config: file, config_dir } => {
            let Some(def) = config::Definition::chosen(name.as_deref(), file.as_deref(), &config_dir)? else {
                bail!("give a definition NAME or --config FILE");
            };
            let Some(remote) = &def.remote else {
                bail!(
                    "{}: has no [backend]; a store directory's lock is released by the kernel when its onefs exits",
                    def.name
                );
            };
            if let Some(holder) = crate::store_lock::holder(&def.store) {
                bail!(
                    "{}: onefs pid {} on this host is serving it; unmount it instead of breaking its lock",
                    def.name,
                    holder.pid.map(|p| p.to_string()).unwrap_or_default()
                );
            }
            println!("{}", crate::compose::break_lock(&remote.backend)?);
            Ok(())
        }
        Commands::Fsck { repair, store } => std::process::exit(crate::fsck::command(&store, repair)),
    }
}
