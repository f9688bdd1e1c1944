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

use serde::Deserialize;
use std::path::PathBuf;

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

/// An rclone remote as an [`ObjectBackend`](super::ObjectBackend).
pub struct RcloneBackend {
    describe: String,
}

impl RcloneBackend {
    /// Finds and checks rclone, starts `rclone rcd` and checks the remote.
    pub fn new(config: &RcloneConfig) -> anyhow::Result<Self> {
        anyhow::bail!("rclone {}: the rclone backend is not built yet", config.remote)
    }
}

impl super::ObjectBackend for RcloneBackend {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn get(&self, _key: &str) -> std::io::Result<Option<Vec<u8>>> {
        Err(std::io::Error::other("not built yet"))
    }
    fn put(&self, _key: &str, _data: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("not built yet"))
    }
    fn delete(&self, _key: &str) -> std::io::Result<()> {
        Err(std::io::Error::other("not built yet"))
    }
    fn list(&self, _prefix: &str) -> std::io::Result<Vec<String>> {
        Err(std::io::Error::other("not built yet"))
    }
}
