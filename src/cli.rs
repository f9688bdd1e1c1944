//! The `onefs` command line.

use crate::core::size::{Approx, Size, parse_size};
use crate::mount::{MountSpec, Readiness};
use crate::options::MountOptions;
use crate::{logging, mount};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

#[derive(Parser, Debug)]
#[command(
    name = "onefs",
    version,
    about = "One giant sparse file, disk.img, stored as numbered block files",
    long_about = "onefs serves a FUSE filesystem holding exactly one file, disk.img, of a size fixed at \
creation. Its content lives in a backing store as numbered block files (blk-00001, blk-00002, ...); \
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
    /// Create a new image in an empty (or absent) store directory
    Create {
        /// Size of disk.img, with a binary suffix K, M, G, T or P (e.g. 1T)
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
        size: String,
        /// Size of one block file: a power of two from 4K to 1G (e.g. 4M)
        #[arg(long, value_name = "SIZE", default_value = "4M", allow_hyphen_values = true)]
        block_size: String,
        /// The store directory; must be empty or not exist yet
        store: PathBuf,
    },
    /// Mount a store's disk.img at MOUNTPOINT; returns once the mount is live
    Mount {
        /// Stay attached and serve in the foreground (for debugging and services)
        #[arg(short, long)]
        foreground: bool,
        /// Mount options: ro, allow_other, uid=N, gid=N, mode=OCTAL, threads=N
        #[arg(short = 'o', long = "options", value_name = "OPTIONS", default_value = "")]
        options: String,
        /// Report readiness on this file descriptor (used by the detaching parent)
        #[arg(long, hide = true, value_name = "FD")]
        ready_fd: Option<i32>,
        /// The store directory written by `onefs create`
        store: PathBuf,
        /// An existing empty directory where disk.img appears
        mountpoint: PathBuf,
    },
}

/// Readiness reported to the parent `onefs mount` over a pipe.
struct ReadyPipe(Option<File>);

impl Readiness for ReadyPipe {
    fn ready(&mut self, message: &str) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "READY {message}");
        }
    }
    fn failed(&mut self, error: &anyhow::Error) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "ERROR {error:#}");
        }
    }
}

struct Foreground;

impl Readiness for Foreground {
    fn ready(&mut self, _message: &str) {}
    fn failed(&mut self, _error: &anyhow::Error) {}
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if detached {
                log::error!("{err:#}");
            } else {
                eprintln!("onefs: error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Create { size, block_size, store } => {
            let size = parse_size(&size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            let block_size = parse_size(&block_size).map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
            crate::core::Geometry::new(size, block_size)
                .map_err(|e| anyhow::anyhow!("--{}: {e}", e.field().replace('_', "-")))?;
            let meta = crate::create::create(&store, size, block_size)?;
            println!(
                "created {} (id {}): disk.img of {} ({}) in {} blocks of {}",
                store.display(),
                meta.id,
                Size(meta.size),
                Approx(meta.size),
                meta.block_count,
                Size(meta.block_size)
            );
            Ok(())
        }
        Commands::Mount { foreground, options, ready_fd, store, mountpoint } => {
            let options = MountOptions::parse(&options).map_err(|e| anyhow::anyhow!("-o: {e}"))?;
            let spec = MountSpec { store: store.clone(), mountpoint: mountpoint.clone(), options };
            match (foreground, ready_fd) {
                (_, Some(fd)) => {
                    // SAFETY: the parent handed us this descriptor for our sole use.
                    let pipe = unsafe { File::from_raw_fd(fd) };
                    mount::serve(&spec, &mut ReadyPipe(Some(pipe)))
                }
                (true, None) => mount::serve(&spec, &mut Foreground),
                (false, None) => mount_detached(&cli.log_level, &options_text(&spec), &store, &mountpoint),
            }
        }
    }
}

fn options_text(spec: &MountSpec) -> String {
    let o = &spec.options;
    let mut parts = vec![
        format!("uid={}", o.access.uid),
        format!("gid={}", o.access.gid),
        format!("mode={:o}", o.access.mode),
        format!("threads={}", o.threads),
    ];
    if o.access.read_only {
        parts.push("ro".into());
    }
    if o.allow_other {
        parts.push("allow_other".into());
    }
    parts.join(",")
}

/// Starts a detached `onefs mount --foreground` and waits until it reports
/// that the mount is live, or why it is not.
fn mount_detached(log_level: &str, options: &str, store: &PathBuf, mountpoint: &PathBuf) -> anyhow::Result<()> {
    const READY_FD: i32 = 3;
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create pipe")?;
    let exe = std::env::current_exe().context("cannot find the onefs executable")?;
    let mut command = Command::new(exe);
    command
        .args(["--log-level", log_level, "mount", "--foreground", "--ready-fd", "3", "-o", options])
        .arg(store)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let write_fd = write_end.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the copy; the original closes at exec.
            if write_fd == READY_FD {
                libc::fcntl(write_fd, libc::F_SETFD, 0);
            } else if libc::dup2(write_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start onefs in the background")?;
    drop(write_end);
    let mut answer = String::new();
    let _ = File::from(read_end).read_to_string(&mut answer);
    let answer = answer.trim_end();
    if let Some(message) = answer.strip_prefix("READY ") {
        log::debug!("{message}");
        return Ok(());
    }
    if let Some(error) = answer.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{error}");
    }
    let status = child.wait().context("lost the background onefs")?;
    bail!("the background onefs exited ({status}) before the mount was live; see the system log")
}
