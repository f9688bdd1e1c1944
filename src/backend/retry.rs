//! Retrying backend requests: one policy, and one loop per request.
//!
//! **Who retries.** An [`ObjectBackend`] call makes exactly one attempt and
//! says whether its failure is worth retrying. The caller owns the loop:
//!
//! - the cache (`store::cache`) retries its own requests: a read of an
//!   uncached block, the epoch and the listing at open for `retry_timeout`
//!   ([`Retry::within`]); its upload workers retry a dirty block until it
//!   is uploaded, waiting [`Retry::delay`] between attempts;
//! - everyone else (the image description, `onefs create`, the remote lock,
//!   `break-lock`, the S3 bucket check) goes through [`Retrying`], which
//!   retries each request up to the backend's [`Retry::attempts`] (the S3
//!   key `attempts`).
//!
//! So a request is retried by one loop, never by a loop inside a loop.
//!
//! **Transient or permanent.** A failure is transient unless the backend
//! marked it with [`permanent`]: HTTP 4xx answers other than 408 and 429
//! (refused credentials, a missing bucket), an invalid key, a misconfigured
//! rclone remote, a local permission error. Transient ones (connection
//! refused or reset, timeouts, 5xx, 429, a restarting rclone) back off
//! exponentially with jitter, capped; a permanent one is never retried and
//! comes back at once. An error that crosses the trait stays an
//! [`io::Error`] with its kind; [`is_permanent`] reads the mark, also
//! through [`crate::errors::context`] wrappers.
//!
//! **Messages.** A backend's error names the backend, the operation and
//! the key (`s3 http://… bucket b: PUT d0000/blk-000001: HTTP 403 …`); the
//! loop adds only how it gave up (`(gave up after 6 attempts)`).

use super::ObjectBackend;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a request is retried: waits start at `first` and double up to
/// `max` (less up to a quarter, at random, so parallel requests do not
/// retry in lockstep); it gives up after `attempts` attempts, or once the
/// next wait would end more than `within` after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least one is made).
    pub attempts: u32,
    pub within: Option<Duration>,
    pub first: Duration,
    pub max: Duration,
}

impl Retry {
    /// Attempts per request outside the cache unless configured (S3 `attempts`).
    pub const DEFAULT_ATTEMPTS: u32 = 6;

    /// Up to `attempts` attempts, 0.2 s apart at first, at most 5 s: six
    /// attempts wait about 6 s in all.
    pub fn attempts(attempts: u32) -> Self {
        Retry {
            attempts: attempts.max(1),
            within: None,
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }

    /// As many attempts as fit in `limit`, 0.1 s apart at first, at most 10 s.
    pub fn within(limit: Duration) -> Self {
        Retry {
            attempts: u32::MAX,
            within: Some(limit),
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }

    /// The wait after failed attempt `n` (counting from 1).
    pub fn delay(&self, n: u32) -> Duration {
        let base = self.first.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(self.max);
        // RandomState is seeded afresh per call: enough randomness for jitter.
        let random = RandomState::new().build_hasher().finish();
        base - base / 4 * (random % 1000) as u32 / 1000
    }

    /// Runs `op` until it succeeds, fails permanently, or the policy gives
    /// up; the last error comes back (with how it gave up, for a transient one).
    pub fn run<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let started = Instant::now();
        let mut n = 1;
        loop {
            let err = match op() {
                Ok(v) => return Ok(v),
                Err(err) if is_permanent(&err) => return Err(err),
                Err(err) => err,
            };
            let wait = self.delay(n);
            let out_of_time = self.within.is_some_and(|limit| started.elapsed() + wait > limit);
            if n >= self.attempts || out_of_time {
                let how = match self.within {
                    Some(limit) if out_of_time => format!("{limit:?}"),
                    _ => format!("{n} attempts"),
                };
                return Err(io::Error::new(err.kind(), format!("{err} (gave up after {how})")));
            }
            if n == 1 {
                log::warn!("{err}; retrying in {} ms", wait.as_millis());
            } else {
                log::debug!("{err}; retrying in {} ms (attempt {})", wait.as_millis(), n + 1);
            }
            std::thread::sleep(wait);
            n += 1;
        }
    }
}

/// The mark of a failure that retrying cannot fix. It shows as the error it
/// wraps and has no source of its own, so chains do not print it twice.
#[derive(Debug)]
struct Permanent(io::Error);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Permanent {}

/// Marks `err` as permanent: no attempt will go differently. Its kind and
/// message stay.
pub fn permanent(err: io::Error) -> io::Error {
    if is_permanent(&err) { err } else { io::Error::new(err.kind(), Permanent(err)) }
}

/// True if `err` (or an error it wraps) was marked with [`permanent`].
pub fn is_permanent(err: &io::Error) -> bool {
    let Some(inner) = err.get_ref() else { return false };
    inner.is::<Permanent>()
        || crate::errors::cause(err).is_some_and(is_permanent)
        || inner.source().and_then(|source| source.downcast_ref::<io::Error>()).is_some_and(is_permanent)
}

/// A backend whose requests are retried with `retry`: for the users of a
/// backend other than the cache, which retries its requests itself.
pub struct Retrying {
    backend: Arc<dyn ObjectBackend>,
    retry: Retry,
}

impl Retrying {
    pub fn new(backend: Arc<dyn ObjectBackend>, retry: Retry) -> Self {
        Retrying { backend, retry }
    }

    /// The backend itself, one attempt per request (for the cache).
    pub fn single_attempt(&self) -> &Arc<dyn ObjectBackend> {
        &self.backend
    }
}

impl ObjectBackend for Retrying {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.retry.run(|| self.backend.get(key))
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.retry.run(|| self.backend.put(key, data))
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        self.retry.run(|| self.backend.put_file(key, path))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.retry.run(|| self.backend.delete(key))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.retry.run(|| self.backend.list(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(attempts: u32) -> Retry {
        Retry { first: Duration::from_millis(1), max: Duration::from_millis(2), ..Retry::attempts(attempts) }
    }

    /// A backend that fails its next gets with the errors queued, counting attempts.
    #[derive(Default)]
    struct Flaky {
        mem: MemBackend,
        failures: Mutex<Vec<io::Error>>,
        gets: AtomicU32,
    }

    impl Flaky {
        fn failing(errors: Vec<io::Error>) -> Arc<Self> {
            Arc::new(Flaky { failures: Mutex::new(errors), ..Flaky::default() })
        }
    }

    impl ObjectBackend for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            match crate::sync::lock(&self.failures).pop() {
                Some(err) => Err(err),
                None => self.mem.get(key),
            }
        }
        fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
            self.mem.put(key, data)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.mem.delete(key)
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            self.mem.list(prefix)
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_below_it() {
        let r = Retry::attempts(6);
        let d: Vec<u128> = (1..=8).map(|n| r.delay(n).as_millis()).collect();
        assert!((150..=200).contains(&d[0]) && (300..=400).contains(&d[1]), "{d:?}");
        assert!((2400..=3200).contains(&d[4]) && d[5..].iter().all(|&ms| (3750..=5000).contains(&ms)), "{d:?}");
        let w = Retry::within(Duration::from_secs(30));
        assert!((75..=100).contains(&w.delay(1).as_millis()) && w.delay(20) <= Duration::from_secs(10));
    }

    #[test]
    fn transient_failures_are_retried_until_attempts_run_out() {
        let mut calls = 0;
        let out: io::Result<()> = quick(3).run(|| {
            calls += 1;
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, "s3 e: GET k: io: refused"))
        });
        let err = out.unwrap_err();
        assert_eq!(calls, 3);
        assert_eq!(err.to_string(), "s3 e: GET k: io: refused (gave up after 3 attempts)", "one prefix, one suffix");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let mut calls = 0;
        let out = quick(3).run(|| {
            calls += 1;
            if calls < 3 { Err(io::Error::other("HTTP 503")) } else { Ok(7) }
        });
        assert_eq!((out.unwrap(), calls), (7, 3));
    }

    #[test]
    fn a_time_budget_ends_retries_and_says_so() {
        let r = Retry {
            first: Duration::from_millis(20),
            max: Duration::from_millis(20),
            ..Retry::within(Duration::from_millis(100))
        };
        let started = Instant::now();
        let mut calls = 0;
        let err = r
            .run(|| -> io::Result<()> {
                calls += 1;
                Err(io::Error::other("down"))
            })
            .unwrap_err();
        // Ended by the budget, not by attempts: a loaded machine may oversleep.
        assert!(started.elapsed() < Duration::from_secs(2) && calls >= 3, "{calls} calls");
        assert_eq!(err.to_string(), "down (gave up after 100ms)");
    }

    #[test]
    fn permanent_failures_come_back_at_once_unchanged() {
        let mut calls = 0;
        let err = quick(6)
            .run(|| -> io::Result<()> {
                calls += 1;
                Err(permanent(io::Error::new(io::ErrorKind::PermissionDenied, "s3 e: PUT k: HTTP 403 AccessDenied")))
            })
            .unwrap_err();
        assert_eq!((calls, err.to_string()), (1, "s3 e: PUT k: HTTP 403 AccessDenied".to_string()));
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(is_permanent(&err) && is_permanent(&permanent(err)));
        let wrapped = crate::errors::context("opening", permanent(io::Error::other("no such bucket")));
        assert!(is_permanent(&wrapped), "seen through a context");
        assert!(!is_permanent(&crate::errors::context("opening", io::Error::other("timed out"))));
        assert!(!is_permanent(&io::Error::from_raw_os_error(libc::EACCES)), "only what a backend marks");
    }

    #[test]
    fn retrying_backends_retry_transient_failures_only() {
        let flaky = Flaky::failing(vec![io::Error::other("HTTP 503"), io::Error::other("io: connection refused")]);
        flaky.mem.put("k", b"v").unwrap();
        let retrying = Retrying::new(flaky.clone(), quick(6));
        assert_eq!(retrying.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(flaky.gets.load(Ordering::Relaxed), 3);

        let flaky = Flaky::failing(vec![permanent(io::Error::new(io::ErrorKind::NotFound, "NoSuchBucket"))]);
        let retrying = Retrying::new(flaky.clone(), quick(6));
        assert_eq!(retrying.get("k").unwrap_err().to_string(), "NoSuchBucket");
        assert_eq!(flaky.gets.load(Ordering::Relaxed), 1, "not retried");
        assert_eq!(retrying.single_attempt().get("k").unwrap(), None, "no failures left: one attempt, no loop");
    }
}
