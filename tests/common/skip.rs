//! Prerequisites a test cannot do without, and the one way to skip a test
//! that lacks one.
//!
//! A test whose prerequisite this machine lacks FAILS, naming what is missing
//! and how to get it: a missing kernel feature must never pass as a green
//! test. A developer whose machine cannot have it sets
//!
//! ```sh
//! ONEFS_TEST_ALLOW_SKIP=io_uring,pids_cgroup cargo test --release   # or =all
//! ```
//!
//! and the tests needing a named prerequisite that is missing return early
//! instead, each writing a `SKIPPED` line straight to the terminal (past the
//! test harness's output capture, so it shows without `--nocapture`). The
//! variable never skips a test whose prerequisite is present, and CI never
//! sets it. The names are those of [`Prereq`].
//!
//! The library's unit tests include this file too (`crate::test_skip`, see
//! src/lib.rs), so it uses nothing but std.
#![allow(dead_code)]

use std::io::Write;

/// The variable that lets tests skip; a comma-separated list of
/// [`Prereq::name`]s, or `all`.
pub const ALLOW_SKIP: &str = "ONEFS_TEST_ALLOW_SKIP";

/// What a test may need that a machine may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prereq {
    /// FUSE over io_uring: the fuse module's `enable_uring` parameter.
    IoUring,
    /// The `kernel.io_uring_disabled` sysctl.
    IoUringSysctl,
    /// A pids cgroup controller (v2, or v1's pids hierarchy).
    PidsCgroup,
    /// cachestat(2), to see a file's dirty pages (unit tests).
    Cachestat,
    /// A real systemd in a container: systemd-nspawn and debootstrap.
    Systemd,
}

impl Prereq {
    /// Its name in `ONEFS_TEST_ALLOW_SKIP`.
    pub fn name(self) -> &'static str {
        match self {
            Prereq::IoUring => "io_uring",
            Prereq::IoUringSysctl => "io_uring_sysctl",
            Prereq::PidsCgroup => "pids_cgroup",
            Prereq::Cachestat => "cachestat",
            Prereq::Systemd => "systemd",
        }
    }

    /// Where it comes from.
    fn source(self) -> &'static str {
        match self {
            Prereq::IoUring => "Linux 6.14 or later",
            Prereq::IoUringSysctl => "Linux 6.6 or later",
            Prereq::PidsCgroup => "a kernel with CONFIG_CGROUP_PIDS and the pids controller mounted",
            Prereq::Cachestat => "Linux 6.5 or later",
            Prereq::Systemd => "the packages systemd-container and debootstrap (scripts/deps installs them)",
        }
    }
}

/// Whether `ONEFS_TEST_ALLOW_SKIP` lets tests skip when `prereq` is missing.
pub fn skip_allowed(prereq: Prereq) -> bool {
    std::env::var(ALLOW_SKIP).is_ok_and(|list| list.split(',').map(str::trim).any(|n| n == prereq.name() || n == "all"))
}

/// True when `present`. Otherwise the test fails here, saying that `missing`
/// (what was looked for and not found) and where `prereq` comes from —
/// unless `ONEFS_TEST_ALLOW_SKIP` names `prereq`: then it writes `SKIPPED`
/// and the reason to the terminal and returns false, and the caller returns.
#[track_caller]
pub fn require(prereq: Prereq, present: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    let (name, source) = (prereq.name(), prereq.source());
    assert!(
        skip_allowed(prereq),
        "missing prerequisite `{name}`: {missing}. It needs {source}. On a machine that cannot have it, \
         {ALLOW_SKIP}={name} lets the tests that need it skip (saying so)"
    );
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    // Straight to the terminal: the harness captures only eprintln!.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {missing} (allowed by {ALLOW_SKIP}={name})");
    false
}
