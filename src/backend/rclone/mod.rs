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

mod rcd;

pub use rcd::{MIN_VERSION, check_version, find_rclone, parse_version};

use super::ObjectBackend;
use super::retry::{is_permanent, permanent};
use rcd::Rcd;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

const DEFAULT_TIMEOUT: u64 = 600;
const MAX_OBJECT: usize = 1 << 31;

/// An rclone remote as an [`ObjectBackend`].
pub struct RcloneBackend {
    remote: String,
    timeout: Duration,
    rcd: Rcd,
    temp_seq: AtomicU64,
    version: (u32, u32, u32),
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
        let backend = RcloneBackend {
            remote: config.remote.clone(),
            timeout: Duration::from_secs(config.timeout.unwrap_or(DEFAULT_TIMEOUT).max(1)),
            rcd: Rcd::start(&bin, config)?,
            temp_seq: AtomicU64::new(0),
            version,
        };
        // Creating the remote's Fs reads its config (and logs in); on failure
        // dropping the backend stops the rcd.
        if let Err(e) = backend.rc("operations/fsinfo", &json!({ "fs": backend.remote }), "operations/fsinfo") {
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
        self.rcd.pid()
    }

    /// How many times an rcd was started (1 + restarts).
    pub fn rcd_starts(&self) -> u64 {
        self.rcd.starts()
    }

    /// One HTTP/1.1 request over the socket: status and body (its time
    /// logged at debug level).
    fn http(&self, method: &str, path: &str, body: Option<&[u8]>, what: &str) -> io::Result<(u16, Vec<u8>)> {
        super::timed(&self.describe(), || what.to_string(), || self.http_once(method, path, body, what))
    }

    fn http_once(&self, method: &str, path: &str, body: Option<&[u8]>, what: &str) -> io::Result<(u16, Vec<u8>)> {
        self.rcd.wait_ready()?;
        let transient = |e: io::Error| io::Error::new(e.kind(), format!("rclone {}: {what}: {e}", self.remote));
        let mut stream = UnixStream::connect(self.rcd.socket()).map_err(transient)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(transient)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(transient)?;
        let body = body.unwrap_or(&[]);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: rclone\r\nAuthorization: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.rcd.auth(),
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
        self.rcd.dir().join(format!("put-{}", self.temp_seq.fetch_add(1, Ordering::Relaxed)))
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
