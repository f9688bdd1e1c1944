//! `onefs mount` without `--foreground`: the parent starts a detached
//! `onefs mount --foreground --ready-fd 3` and waits on a pipe for one line,
//! `READY message` once the mount is live or `ERROR reason`, so that the
//! command returns only when the mount can be used (or fails with why).

use super::Readiness;
use crate::options::MountOptions;
use anyhow::{Context, bail};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Readiness reported to the parent `onefs mount` over a pipe.
pub struct ReadyPipe(Option<File>);

impl ReadyPipe {
    /// The write end the parent handed over.
    pub fn new(pipe: File) -> Self {
        ReadyPipe(Some(pipe))
    }
}

impl Readiness for ReadyPipe {
    fn ready(&mut self, message: &str) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "READY {message}");
        }
    }
    fn failed(&mut self, error: &anyhow::Error) {
        if let Some(mut pipe) = self.0.take() {
            let _ = writeln!(pipe, "ERROR {}", crate::errors::one_line(error));
        }
    }
}

/// Readiness nobody waits for (`--foreground`): the log says it all.
pub struct Foreground;

impl Readiness for Foreground {
    fn ready(&mut self, _message: &str) {}
    fn failed(&mut self, _error: &anyhow::Error) {}
}

/// Starts a detached `onefs mount --foreground` and waits until it reports
/// that the mount is live, or why it is not.
pub fn mount_detached(
    log_level: &str,
    options: &MountOptions,
    store: &PathBuf,
    mountpoint: &PathBuf,
    definition_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    const READY_FD: i32 = 3;
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create pipe")?;
    let exe = std::env::current_exe().context("cannot find the onefs executable")?;
    let mut command = Command::new(exe);
    command.args(["--log-level", log_level, "mount", "--foreground", "--ready-fd", "3", "-o", &options.to_string()]);
    if let Some(file) = definition_file {
        command.arg("--definition-file").arg(file);
    }
    command.arg(store).arg(mountpoint).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
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
