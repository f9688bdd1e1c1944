//! `s3`: any S3-compatible object store (AWS, Garage, MinIO, Ceph RGW, ...).
//!
//! ```toml
//! [backend]
//! type = "s3"
//! endpoint = "https://s3.eu-west-1.amazonaws.com"
//! region = "eu-west-1"
//! bucket = "onefs"
//! prefix = "data/"             # optional; objects live under it
//! path_style = true            # optional; default: true except on *.amazonaws.com
//! credentials_file = "/etc/onefs/data.s3"   # or credential = "NAME", or the environment
//! ```
//!
//! Credentials are never taken inline from a definition. In order:
//! `credentials_file` (a file, not world-readable, holding
//! `access_key_id = ...` and `secret_access_key = ...`; AWS's
//! `aws_access_key_id`/`aws_secret_access_key` and `[section]` headers are
//! accepted too), `credential` (the same format in systemd's
//! `$CREDENTIALS_DIRECTORY/NAME`, from `LoadCredential=`), then the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//! `AWS_SESSION_TOKEN`).
//!
//! Requests are presigned by rusty-s3 and sent by a synchronous ureq agent,
//! which suits fuser's synchronous worker threads. Each call makes one
//! attempt (a listing: one request per page); connection errors, timeouts,
//! 5xx, 408 and 429 are transient, other 4xx answers permanent
//! ([`super::retry`]: the caller retries). No conditional requests are used
//! (Garage ignores `If-None-Match`).

use super::ObjectBackend;
use super::retry::{Retry, permanent};
use rusty_s3::actions::S3Action;
use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde::Deserialize;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[backend]` table of an `s3` definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    /// Signing region (`us-east-1` unless the store says otherwise; Garage's default is `garage`).
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket (`data/`); a missing trailing `/` is added.
    #[serde(default)]
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`); default true except for `*.amazonaws.com`.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// A file with `access_key_id` and `secret_access_key` (must not be world-readable).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A systemd credential name: `$CREDENTIALS_DIRECTORY/NAME`, same format.
    #[serde(default)]
    pub credential: Option<String>,
    /// Seconds before one request gives up (default 120); it is then retried.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Attempts per request on transient errors, for requests outside the
    /// cache (default 6: about 6 s of backoff in all); the cache retries its
    /// own for its `retry_timeout`.
    #[serde(default)]
    pub attempts: Option<u32>,
}

impl S3Config {
    /// How requests outside the cache are retried (`attempts`).
    pub fn retry(&self) -> Retry {
        Retry::attempts(self.attempts.unwrap_or(Retry::DEFAULT_ATTEMPTS))
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

const DEFAULT_TIMEOUT: u64 = 120;
/// How long a presigned URL is valid: it is used at once.
const SIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// The largest object `get` accepts (blocks are at most 1 GiB).
const MAX_OBJECT: u64 = 1 << 31;

/// An S3 bucket (under a prefix) as an [`ObjectBackend`].
pub struct S3Backend {
    bucket: Bucket,
    credentials: Credentials,
    /// Always empty or ending in `/`.
    prefix: String,
    agent: ureq::Agent,
    page_size: usize,
    /// `s3 ENDPOINT bucket BUCKET` for messages.
    name: String,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Access key, secret and optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials {{ access_key_id: {:?}, .. }}", self.access_key_id)
    }
}

impl S3Credentials {
    /// Reads `key = value` lines (TOML or AWS credentials style); the file
    /// must not be readable by everyone.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("s3 credentials file {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            anyhow::bail!(
                "s3 credentials file {} is readable by everyone (mode {mode:04o}): refusing to use it; chmod 600 it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("s3 credentials file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("s3 credentials file {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let (mut key, mut secret, mut token) = (None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected `key = value`", n + 1));
            };
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v).to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "access_key_id" | "aws_access_key_id" => key = Some(v),
                "secret_access_key" | "aws_secret_access_key" => secret = Some(v),
                "session_token" | "aws_session_token" => token = Some(v),
                other => {
                    return Err(format!(
                        "line {}: unknown key `{other}` (known: access_key_id, secret_access_key, session_token)",
                        n + 1
                    ));
                }
            }
        }
        match (key, secret) {
            (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => Ok(S3Credentials {
                access_key_id: k,
                secret_access_key: s,
                session_token: token.filter(|t| !t.is_empty()),
            }),
            _ => Err("needs both access_key_id and secret_access_key".into()),
        }
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Self> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Some(S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }

    /// Where `config` says the credentials are (see the module docs).
    pub fn resolve(config: &S3Config) -> anyhow::Result<Self> {
        if let Some(file) = &config.credentials_file {
            return Self::from_file(file);
        }
        if let Some(name) = &config.credential {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                anyhow::bail!("s3 credential {name:?} is not a systemd credential name");
            }
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                anyhow::anyhow!("s3 credential {name:?}: $CREDENTIALS_DIRECTORY is not set (give the unit LoadCredential={name}:FILE)")
            })?;
            return Self::from_file(&Path::new(&dir).join(name));
        }
        Self::from_env().ok_or_else(|| {
            anyhow::anyhow!(
                "s3 {} bucket {}: no credentials: set credentials_file or credential, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                config.endpoint,
                config.bucket
            )
        })
    }
}

impl S3Backend {
    /// Resolves the credentials, then checks that the bucket answers
    /// (HEAD, retried by `config.retry()`): a missing bucket or refused
    /// credentials is one error line naming the endpoint and bucket.
    pub fn new(config: &S3Config) -> anyhow::Result<Self> {
        let credentials = S3Credentials::resolve(config)?;
        let backend = Self::with_credentials(config, credentials)?;
        config.retry().run(|| backend.check())?;
        Ok(backend)
    }

    /// Builds the client without touching the network.
    pub fn with_credentials(config: &S3Config, credentials: S3Credentials) -> anyhow::Result<Self> {
        let name = format!("s3 {} bucket {}", config.endpoint, config.bucket);
        let endpoint: url::Url = config.endpoint.parse().map_err(|e| anyhow::anyhow!("{name}: endpoint: {e}"))?;
        let path_style =
            config.path_style.unwrap_or_else(|| !endpoint.host_str().is_some_and(|h| h.ends_with(".amazonaws.com")));
        let style = if path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, config.bucket.clone(), config.region.clone())
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let credentials = match credentials.session_token {
            Some(token) => Credentials::new_with_token(credentials.access_key_id, credentials.secret_access_key, token),
            None => Credentials::new(credentials.access_key_id, credentials.secret_access_key),
        };
        let mut prefix = config.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let timeout = Duration::from_secs(config.timeout.unwrap_or(DEFAULT_TIMEOUT).max(1));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(64)
            .user_agent(concat!("onefs/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(S3Backend { bucket, credentials, prefix, agent, page_size: 1000, name })
    }

    /// Keys per ListObjectsV2 page (1..=1000; tests use small pages).
    pub fn set_page_size(&mut self, keys: usize) {
        self.page_size = keys.clamp(1, 1000);
    }

    /// HEAD of the bucket: is it there, and do the credentials open it?
    pub fn check(&self) -> io::Result<()> {
        let url = self.bucket.head_bucket(Some(&self.credentials)).sign(SIGN_FOR);
        let resp = self.agent.head(url.as_str()).call().map_err(|e| self.transport(e, "HEAD bucket"))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(permanent(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: the bucket does not exist", self.name),
            ))),
            403 | 401 => Err(permanent(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: access denied (check the credentials and the bucket's permissions)", self.name),
            ))),
            code => Err(self.status_failure(code, "HEAD bucket", String::new())),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A request that got no answer: transient, unless ureq refused it
    /// (a bad URL, TLS configuration, ...).
    fn transport(&self, e: ureq::Error, what: &str) -> io::Error {
        let msg = format!("{}: {what}: {e}", self.name);
        match e {
            ureq::Error::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, msg),
            ureq::Error::Io(ref io) => io::Error::new(io.kind(), msg),
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled => io::Error::other(msg),
            _ => permanent(io::Error::other(msg)),
        }
    }

    /// An error answer: `<Code>` and `<Message>` from the XML body if any;
    /// transient for 5xx, 408 and 429, permanent otherwise.
    fn status_failure(&self, code: u16, what: &str, body: String) -> io::Error {
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = body.find(&open)? + open.len();
            let end = body[start..].find(&format!("</{t}>"))? + start;
            Some(body[start..end].trim().to_string())
        };
        let detail = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!(" {c}: {m}"),
            (Some(c), None) => format!(" {c}"),
            _ => String::new(),
        };
        let hint = match tag("Code").as_deref() {
            Some("NoSuchBucket") => " (the bucket does not exist)",
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => " (check the credentials)",
            _ => "",
        };
        let msg = format!("{}: {what}: HTTP {code}{detail}{hint}", self.name).replace(['\n', '\r'], " ");
        let kind = match code {
            401 | 403 => io::ErrorKind::PermissionDenied,
            404 => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        let err = io::Error::new(kind, msg);
        if code >= 500 || code == 429 || code == 408 { err } else { permanent(err) }
    }

    fn error_body(resp: &mut ureq::http::Response<ureq::Body>) -> String {
        resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default()
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> io::Result<()> {
        use md5::Digest;
        let full = self.full_key(key);
        let md5 = base64(&md5::Md5::digest(data));
        let mut action = self.bucket.put_object(Some(&self.credentials), &full);
        action.headers_mut().insert("content-md5", md5.clone());
        let url = action.sign(SIGN_FOR);
        let mut resp = self
            .agent
            .put(url.as_str())
            .header("content-md5", &md5)
            .send(data)
            .map_err(|e| self.transport(e, &format!("PUT {full}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            code => {
                let body = Self::error_body(&mut resp);
                Err(self.status_failure(code, &format!("PUT {full}"), body))
            }
        }
    }

    /// One page of a listing of `full`, after `token`.
    fn list_page(
        &self,
        full: &str,
        token: Option<&str>,
    ) -> io::Result<rusty_s3::actions::list_objects_v2::ListObjectsV2Response> {
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        action.with_prefix(full);
        action.with_max_keys(self.page_size);
        if let Some(t) = token {
            action.with_continuation_token(t);
        }
        let url = action.sign(SIGN_FOR);
        let mut resp = self.agent.get(url.as_str()).call().map_err(|e| self.transport(e, &format!("LIST {full}")))?;
        let code = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.transport(e, &format!("LIST {full}: reading the body")))?;
        if !(200..=299).contains(&code) {
            return Err(self.status_failure(code, &format!("LIST {full}"), body));
        }
        rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|e| {
            permanent(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: LIST {full}: unreadable answer: {e}", self.name),
            ))
        })
    }
}

/// Standard base64 with padding (for `Content-MD5`).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The requests, each one timed by [`ObjectBackend`]'s methods below.
impl S3Backend {
    fn get_once(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let full = self.full_key(key);
        let url = self.bucket.get_object(Some(&self.credentials), &full).sign(SIGN_FOR);
        let mut resp = self.agent.get(url.as_str()).call().map_err(|e| self.transport(e, &format!("GET {full}")))?;
        match resp.status().as_u16() {
            200..=299 => {
                let expected = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let data = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_OBJECT)
                    .read_to_vec()
                    .map_err(|e| self.transport(e, &format!("GET {full}: reading the body")))?;
                if let Some(len) = expected
                    && len != data.len() as u64
                {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: GET {full}: got {} of {len} bytes", self.name, data.len()),
                    ));
                }
                Ok(Some(data))
            }
            code => {
                let body = Self::error_body(&mut resp);
                if code == 404 && !body.contains("NoSuchBucket") {
                    return Ok(None);
                }
                Err(self.status_failure(code, &format!("GET {full}"), body))
            }
        }
    }

    fn put_once(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.put_bytes(key, data)
    }

    fn put_file_once(&self, key: &str, path: &Path) -> io::Result<()> {
        let data = std::fs::read(path)
            .map_err(|e| crate::errors::context(format!("{}: PUT {key} from {}", self.name, path.display()), e))?;
        self.put_bytes(key, &data)
    }

    fn delete_once(&self, key: &str) -> io::Result<()> {
        let full = self.full_key(key);
        let url = self.bucket.delete_object(Some(&self.credentials), &full).sign(SIGN_FOR);
        let mut resp =
            self.agent.delete(url.as_str()).call().map_err(|e| self.transport(e, &format!("DELETE {full}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            code => {
                let body = Self::error_body(&mut resp);
                if code == 404 && !body.contains("NoSuchBucket") {
                    return Ok(());
                }
                Err(self.status_failure(code, &format!("DELETE {full}"), body))
            }
        }
    }

    fn list_once(&self, prefix: &str) -> io::Result<Vec<String>> {
        let full = self.full_key(prefix);
        let mut keys = vec![];
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(&full, token.as_deref())?;
            for object in page.contents {
                match object.key.strip_prefix(&self.prefix) {
                    Some(k) => keys.push(k.to_string()),
                    None => log::warn!("{}: LIST {full}: ignoring key {:?} outside the prefix", self.name, object.key),
                }
            }
            match page.next_continuation_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(io::Error::other(format!(
                        "{}: LIST {full}: the store repeated a continuation token",
                        self.name
                    )));
                }
                None => return Ok(keys),
            }
        }
    }
}

impl ObjectBackend for S3Backend {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.prefix)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        super::timed(&self.name, || format!("GET {key}"), || self.get_once(key))
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        super::timed(&self.name, || format!("PUT {key}"), || self.put_once(key, data))
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        super::timed(&self.name, || format!("PUT {key}"), || self.put_file_once(key, path))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        super::timed(&self.name, || format!("DELETE {key}"), || self.delete_once(key))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        super::timed(&self.name, || format!("LIST {prefix}"), || self.list_once(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), out);
        }
    }

    #[test]
    fn credentials_files_in_toml_or_aws_style() {
        let c = S3Credentials::parse("access_key_id = \"GK1\"\nsecret_access_key = \"s3cr3t\"\n").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str(), c.session_token), ("GK1", "s3cr3t", None));
        let c = S3Credentials::parse(
            "# aws\n[default]\naws_access_key_id=AK\naws_secret_access_key = sk\naws_session_token = tok\n",
        )
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str(), c.session_token.as_deref()),
            ("AK", "sk", Some("tok"))
        );
        assert!(S3Credentials::parse("access_key_id = a\n").unwrap_err().contains("both"));
        assert!(S3Credentials::parse("password = a\n").unwrap_err().contains("unknown key `password`"));
        assert!(!format!("{c:?}").contains("sk"), "Debug must not show the secret");
    }

    #[test]
    fn a_world_readable_credentials_file_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, "access_key_id = a\nsecret_access_key = b\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = S3Credentials::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("readable by everyone (mode 0644)") && err.contains(&file.display().to_string()), "{err}");
        assert!(!err.contains('\n'));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(S3Credentials::from_file(&file).unwrap().access_key_id, "a");
    }

    #[test]
    fn config_rejects_unknown_keys_and_defaults_the_rest() {
        let c: S3Config = toml::from_str("endpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\n").unwrap();
        assert_eq!((c.region.as_str(), c.prefix.as_str(), c.path_style), ("us-east-1", "", None));
        let err =
            toml::from_str::<S3Config>("endpoint = \"e\"\nbucket = \"b\"\nsecret_access_key = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `secret_access_key`"), "{err}");
    }

    #[test]
    fn failures_are_transient_or_permanent_and_name_the_request_once() {
        use crate::backend::retry::is_permanent;
        // A port nothing listens on: connections are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config: S3Config =
            toml::from_str(&format!("endpoint = \"http://127.0.0.1:{port}\"\nbucket = \"b\"\n")).unwrap();
        let keys = S3Credentials { access_key_id: "a".into(), secret_access_key: "s".into(), session_token: None };
        let b = S3Backend::with_credentials(&config, keys).unwrap();
        let name = format!("s3 http://127.0.0.1:{port} bucket b");
        let body = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_string();
        let denied = b.status_failure(403, "PUT d0000/blk-000001", body);
        assert!(is_permanent(&denied));
        assert_eq!(
            denied.to_string(),
            format!("{name}: PUT d0000/blk-000001: HTTP 403 AccessDenied: Access Denied (check the credentials)")
        );
        let gone = b.status_failure(404, "GET k", "<Code>NoSuchBucket</Code>".into());
        assert!(is_permanent(&gone) && gone.to_string().ends_with("(the bucket does not exist)"), "{gone}");
        for code in [500, 503, 429, 408] {
            assert!(!is_permanent(&b.status_failure(code, "GET k", String::new())), "{code}");
        }
        let refused = b.get("k").unwrap_err();
        assert!(!is_permanent(&refused), "{refused}");
        assert_eq!(refused.to_string().matches(&format!("{name}: GET k")).count(), 1, "{refused}");
    }
}
