//! Mount options, as given with `-o` (and later by definitions and fstab).

/// Who owns disk.img and how it may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub read_only: bool,
}

/// How `onefs mount` uses FUSE over io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingMode {
    /// Use it when the kernel offers it, else `/dev/fuse`.
    #[default]
    Auto,
    /// Refuse to mount without it.
    On,
    /// Serve through `/dev/fuse` only.
    Off,
}

impl RingMode {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "on" => Some(Self::On),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub access: Access,
    pub allow_other: bool,
    /// FUSE worker threads (with io_uring: about twice as many ring entries).
    pub threads: usize,
    /// Whether requests come through FUSE over io_uring.
    pub io_uring: RingMode,
    /// Mount over a directory that is not empty (hiding what it holds).
    pub nonempty: bool,
}

pub const DEFAULT_THREADS: usize = 16;

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            access: Access { uid: 0, gid: 0, mode: 0o600, read_only: false },
            allow_other: false,
            threads: DEFAULT_THREADS,
            io_uring: RingMode::Auto,
            nonempty: false,
        }
    }
}

/// Options mount(8) passes along for helpers to ignore.
const IGNORED: &[&str] = &[
    "defaults", "rw", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "dev", "nodev", "suid",
    "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "async",
];

/// The options as `-o` takes them back: every value spelled out, so a
/// detached `onefs mount` gets exactly what its parent parsed.
impl std::fmt::Display for MountOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.access;
        write!(
            f,
            "uid={},gid={},mode={:o},threads={},io_uring={}",
            a.uid,
            a.gid,
            a.mode,
            self.threads,
            self.io_uring.as_str()
        )?;
        for (on, name) in [(a.read_only, "ro"), (self.allow_other, "allow_other"), (self.nonempty, "nonempty")] {
            if on {
                write!(f, ",{name}")?;
            }
        }
        Ok(())
    }
}

impl MountOptions {
    /// Parses a comma-separated option list such as `ro,allow_other,uid=1000`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut options = Self::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let number = |radix: u32| -> Result<u32, String> {
                let v = value.ok_or_else(|| format!("mount option {key} needs a value ({key}=N)"))?;
                u32::from_str_radix(v, radix).map_err(|_| format!("mount option {item}: {v:?} is not a valid number"))
            };
            match key {
                "ro" => options.access.read_only = true,
                "rw" => options.access.read_only = false,
                "allow_other" => options.allow_other = true,
                "nonempty" => options.nonempty = true,
                "uid" => options.access.uid = number(10)?,
                "gid" => options.access.gid = number(10)?,
                "mode" => {
                    let mode = number(8)?;
                    if mode > 0o777 {
                        return Err(format!("mount option {item}: mode must be at most 0777"));
                    }
                    options.access.mode = mode as u16;
                }
                "threads" => {
                    let n = number(10)? as usize;
                    if !(1..=256).contains(&n) {
                        return Err(format!("mount option {item}: threads must be 1 to 256"));
                    }
                    options.threads = n;
                }
                "io_uring" => {
                    let v = value.ok_or_else(|| format!("mount option {key} needs a value (auto, on or off)"))?;
                    options.io_uring = RingMode::parse(v)
                        .ok_or_else(|| format!("mount option {item}: {v:?} is not one of auto, on, off"))?;
                }
                k if IGNORED.contains(&k) || k.starts_with("x-") => {}
                _ => return Err(format!("unknown mount option {item:?}")),
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_options() {
        let o = MountOptions::parse(
            "ro,allow_other,uid=1000,gid=100,mode=0640,threads=4,nonempty,_netdev,x-systemd.requires=a",
        )
        .unwrap();
        assert!(o.access.read_only && o.allow_other && o.nonempty);
        assert_eq!((o.access.uid, o.access.gid, o.access.mode, o.threads), (1000, 100, 0o640, 4));
        assert_eq!(MountOptions::parse("").unwrap(), MountOptions::default());
        assert_eq!(MountOptions::default().io_uring, RingMode::Auto);
        for mode in [RingMode::Auto, RingMode::On, RingMode::Off] {
            let o = MountOptions::parse(&format!("io_uring={}", mode.as_str())).unwrap();
            assert_eq!(o.io_uring, mode);
        }
    }

    #[test]
    fn displays_as_options_that_parse_back_the_same() {
        for text in ["", "ro,allow_other,uid=1000,gid=100,mode=0640,threads=4,io_uring=off,nonempty", "mode=0755"] {
            let o = MountOptions::parse(text).unwrap();
            assert_eq!(MountOptions::parse(&o.to_string()).unwrap(), o, "{text:?} -> {o}");
        }
    }

    #[test]
    fn names_the_bad_option() {
        assert_eq!(MountOptions::parse("rw,bogus").unwrap_err(), "unknown mount option \"bogus\"");
        assert!(MountOptions::parse("uid=abc").unwrap_err().contains("uid=abc"));
        assert!(MountOptions::parse("mode=999").unwrap_err().contains("mode=999"));
        assert!(MountOptions::parse("threads=0").unwrap_err().contains("threads=0"));
        assert!(MountOptions::parse("uid").unwrap_err().contains("uid needs a value"));
        assert!(MountOptions::parse("io_uring").unwrap_err().contains("io_uring needs a value (auto, on or off)"));
        assert!(
            MountOptions::parse("io_uring=1").unwrap_err().contains("io_uring=1: \"1\" is not one of auto, on, off")
        );
    }
}
