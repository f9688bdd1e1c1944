//! The control socket: how `onefs grow` reaches the onefs serving a store.
//!
//! Every onefs process that serves mounts (`onefs mount`, `onefs run`,
//! `onefs daemon`) listens, from its first mount on, on the Unix socket
//! `control-PID` in onefs's runtime directory (`/run/onefs`, beside the
//! reload files of `onefs reload`), mode 0600, answering only root and its
//! own user. `onefs grow` finds the pid in the store's lock, as `onefs
//! reload NAME` does, and asks. A signal could not carry the new size or
//! bring back the outcome, and a plain mount has no definition to re-read;
//! a request file in the store would write into a store that a read-only
//! mount must leave untouched. One JSON line asks, one JSON line answers;
//! each connection has a thread of its own, so a silent client holds up
//! nobody, and grows of one mount are done one at a time.

use crate::compose::MetaPlace;
use crate::core::size::Size;
use crate::fuse::KernelCache;
use crate::image::Image;
use crate::meta::Meta;
use crate::sync::lock;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The largest request or answer (they are a few hundred bytes).
const MAX_LINE: u64 = 64 << 10;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `onefs grow` waits for the answer: a remote description is
/// read and written over the network.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// onefs's runtime directory: `/run/onefs`, or a per-user directory under
/// the temporary directory when /run is not writable.
pub fn runtime_dir() -> PathBuf {
    let run = Path::new("/run/onefs");
    let dir =
        if std::fs::create_dir_all(run).is_ok() && nix::unistd::access(run, nix::unistd::AccessFlags::W_OK).is_ok() {
            run.to_path_buf()
        } else {
            std::env::temp_dir().join(format!("onefs-{}", nix::unistd::getuid()))
        };
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The control socket of onefs process `pid`.
pub fn socket_path(pid: u32) -> PathBuf {
    runtime_dir().join(format!("control-{pid}"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Grow the image mounted from `store` (its canonical path, as in
    /// mountinfo) to `size` bytes.
    Grow { store: PathBuf, size: u64 },
}

/// What a grow did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grown {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub old_size: u64,
    pub size: u64,
    pub block_size: u64,
    pub block_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    /// The outcome, or the one-line reason it failed.
    result: Result<Grown, String>,
}

/// A mounted image as the control socket sees it: what growing it takes.
pub struct Growable {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    image: Arc<Image>,
    kernel: KernelCache,
    place: MetaPlace,
    read_only: bool,
    state: Mutex<GrowState>,
}

struct GrowState {
    /// The description this mount serves (and last wrote).
    meta: Meta,
    /// Unmounted: the store is no longer this mount's to write.
    closed: bool,
}

impl Growable {
    pub fn new(
        store: PathBuf,
        mountpoint: PathBuf,
        image: Arc<Image>,
        kernel: KernelCache,
        place: MetaPlace,
        meta: Meta,
        read_only: bool,
    ) -> Self {
        Self {
            store,
            mountpoint,
            image,
            kernel,
            place,
            read_only,
            state: Mutex::new(GrowState { meta, closed: false }),
        }
    }

    /// Grows the mounted image to `size` bytes while it serves: the
    /// description first (durably: a crash after it mounts the new size,
    /// before it the old one, and no block past the old end exists before
    /// the new description does), then the image, then the kernel's cached
    /// size of disk.img.
    pub fn grow(&self, size: u64) -> anyhow::Result<Grown> {
        let mut state = lock(&self.state);
        let (store, mountpoint) = (self.store.display(), self.mountpoint.display());
        if state.closed {
            bail!("store {store} was unmounted from {mountpoint} meanwhile; run onefs grow again");
        }
        if self.read_only {
            bail!(
                "store {store} is mounted read-only at {mountpoint}, and a read-only mount writes nothing to its store; unmount it and grow it offline, or mount it read-write"
            );
        }
        let grown = state.meta.grown(size).map_err(|e| anyhow::anyhow!("{}: {e}", self.place.describe()))?;
        // Grow only the image this mount serves, as it was described.
        let on_disk = self.place.load()?;
        if on_disk != state.meta {
            bail!(
                "{}: the description no longer matches the mounted image (id {}, size {}; mounted: id {}, size {}); not grown",
                self.place.describe(),
                on_disk.id,
                Size(on_disk.size),
                state.meta.id,
                Size(state.meta.size)
            );
        }
        crate::kill_point::reached("before-description");
        self.place.replace(&grown)?;
        crate::kill_point::reached("description-written");
        let old_size = self.image.grow(size).map_err(|e| anyhow::anyhow!("{}: {e}", self.place.describe()))?;
        crate::kill_point::reached("image-grown");
        if let Err(err) = self.kernel.size_changed(old_size) {
            log::warn!(
                "{mountpoint}: cannot tell the kernel that disk.img grew ({err}); it sees the new size within a second"
            );
        }
        crate::kill_point::reached("kernel-told");
        let done = Grown {
            store: self.store.clone(),
            mountpoint: self.mountpoint.clone(),
            old_size,
            size,
            block_size: grown.block_size,
            block_count: grown.block_count,
        };
        state.meta = grown;
        log::info!(
            "grew {} at {mountpoint}: disk.img {} -> {} ({} blocks of {})",
            self.place.describe(),
            Size(old_size),
            Size(size),
            done.block_count,
            Size(done.block_size)
        );
        Ok(done)
    }

    fn close(&self) {
        lock(&self.state).closed = true;
    }
}

/// The mounts this process serves, by registration.
struct Registry {
    next: u64,
    mounts: Vec<(u64, Arc<Growable>)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { next: 0, mounts: Vec::new() });
/// The socket path once listening (an error, once, if that failed).
static LISTENING: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Keeps a mount reachable through the control socket until dropped (or
/// [`Registration::close`]d), after which a grow of it is refused.
pub struct Registration {
    id: u64,
    growable: Arc<Growable>,
}

impl Registration {
    /// Refuses further grows and waits for one in progress: after this the
    /// mount writes nothing more to its store's description.
    pub fn close(&self) {
        self.growable.close();
        lock(&REGISTRY).mounts.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.close();
    }
}

/// Makes a mount growable through this process's control socket, which
/// starts listening with the first mount. A socket that cannot be set up
/// costs only online growing, so it is logged, not fatal.
pub fn register(growable: Arc<Growable>) -> Registration {
    let listening = LISTENING.get_or_init(|| listen().map_err(|e| format!("{e:#}")));
    if let Err(err) = listening {
        log::warn!("no control socket ({err}): onefs grow can grow {} only unmounted", growable.store.display());
    }
    let mut registry = lock(&REGISTRY);
    let id = registry.next;
    registry.next += 1;
    registry.mounts.push((id, growable.clone()));
    Registration { id, growable }
}

/// Removes this process's control socket (as it exits).
pub fn close() {
    if let Some(Ok(path)) = LISTENING.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes the sockets of onefs processes that are gone (a kill -9 leaves
/// its socket behind): `control-PID` with no process PID.
fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("control-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists()
            && entry.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn listen() -> anyhow::Result<PathBuf> {
    let path = socket_path(std::process::id());
    // Named by our pid: one left there was made by a dead process that had it.
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        remove_stale_sockets(dir);
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("{}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let spawned = std::thread::Builder::new().name("control-request".into()).spawn(move || {
                            if let Err(err) = serve(stream) {
                                log::warn!("control request: {err:#}");
                            }
                        });
                        if let Err(err) = spawned {
                            log::warn!("control request not served: {err}");
                        }
                    }
                    Err(err) => {
                        log::warn!("control socket: {err}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .context("cannot start the control thread")?;
    log::debug!("control socket {}", path.display());
    Ok(path)
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn serve(stream: UnixStream) -> anyhow::Result<()> {
    let uid = peer_uid(&stream).context("peer credentials")?;
    let mut answer_to = stream.try_clone()?;
    let result = if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        Err(format!("uid {uid} may not control this onefs"))
    } else {
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(stream.take(MAX_LINE)).read_line(&mut line).context("reading the request")?;
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request).map_err(|e| crate::errors::one_line(&e)),
            Err(err) => Err(format!("not a request: {err}")),
        }
    };
    if let Err(why) = &result {
        log::warn!("control request refused: {why}");
    }
    let text = serde_json::to_string(&Answer { result })? + "\n";
    answer_to.write_all(text.as_bytes()).context("answering")?;
    Ok(())
}

fn handle(request: Request) -> anyhow::Result<Grown> {
    match request {
        Request::Grow { store, size } => {
            let found = lock(&REGISTRY).mounts.iter().find(|(_, m)| m.store == store).map(|(_, m)| m.clone());
            let Some(mount) = found else {
                bail!("onefs pid {} does not serve store {}", std::process::id(), store.display());
            };
            mount.grow(size)
        }
    }
}

/// Asks onefs process `pid` to grow the image it mounts from `store` to
/// `size` bytes, and waits for the outcome.
pub fn request_grow(pid: u32, store: &Path, size: u64) -> anyhow::Result<Grown> {
    let path = socket_path(pid);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "onefs pid {pid} serving {} has no control socket ({} is missing: it predates onefs grow); unmount it and grow it offline, or remount it",
            store.display(),
            path.display()
        ),
        Err(err) => bail!("onefs pid {pid} serving {} does not answer on {}: {err}", store.display(), path.display()),
    };
    let request = serde_json::to_string(&Request::Grow { store: store.to_path_buf(), size })? + "\n";
    stream.write_all(request.as_bytes()).with_context(|| format!("{}", path.display()))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE)).read_line(&mut line).map_err(|err| match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => anyhow::anyhow!(
            "onefs pid {pid} did not answer within {}s (is its store stuck?); check the size with onefs status",
            ANSWER_TIMEOUT.as_secs()
        ),
        _ => anyhow::anyhow!("onefs pid {pid} did not answer on {}: {err}", path.display()),
    })?;
    if line.is_empty() {
        bail!("onefs pid {pid} exited without answering (killed while growing?); check its size with onefs status");
    }
    let answer: Answer = serde_json::from_str(&line)
        .with_context(|| format!("onefs pid {pid} answered nonsense on {}", path.display()))?;
    answer.result.map_err(anyhow::Error::msg)
}
