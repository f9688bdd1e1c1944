//! Asking a path's filesystem a question with a time limit.
//!
//! A `stat`, `statfs` or `canonicalize` that reaches a stuck FUSE mount (its
//! daemon stopped or hung), or a read of a hung disk, blocks in the kernel
//! and cannot be cancelled. So a question runs on a detached helper thread
//! and the caller waits for the answer only until a deadline; a question not
//! answered by then is reported as not answering and its thread is left to
//! finish whenever the kernel lets it.
//!
//! A question has a key (what is asked, of which path), and one question
//! per key is outstanding at a time: asking again while an earlier one still
//! waits joins it instead of starting another thread. A service polling a
//! stuck mount thus keeps one thread for it, not one per poll.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long `onefs status` and the service's watchdog wait for an answer.
pub const LIMIT: Duration = Duration::from_secs(2);
/// How long a mount waits for its own mountpoint and store to answer.
pub const MOUNT_LIMIT: Duration = Duration::from_secs(5);

/// Why a question has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// Still waiting for the kernel; asked this long ago.
    NotAnswering(Duration),
    /// The question could not be asked (no thread could be started) or
    /// failed unexpectedly.
    CannotAsk(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::NotAnswering(waited) => write!(f, "not answering (waited {:.1}s)", waited.as_secs_f64()),
            Unanswered::CannotAsk(why) => write!(f, "cannot ask: {why}"),
        }
    }
}

/// What is asked (a short name) of which path.
pub type Key = (&'static str, PathBuf);

struct Outstanding<T> {
    asked: Instant,
    answer: Mutex<Option<Result<T, String>>>,
    answered: Condvar,
}

type Registry = Mutex<HashMap<Key, Arc<dyn Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Locks, ignoring poisoning: every holder leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A question asked; [`Pending::wait_until`] collects the answer.
pub struct Pending<T> {
    outstanding: Result<Arc<Outstanding<T>>, String>,
}

impl<T: Clone> Pending<T> {
    /// The answer, if it comes by `deadline` (a deadline already past still
    /// collects an answer that is there).
    pub fn wait_until(&self, deadline: Instant) -> Result<T, Unanswered> {
        let outstanding = match &self.outstanding {
            Ok(outstanding) => outstanding,
            Err(why) => return Err(Unanswered::CannotAsk(why.clone())),
        };
        let mut answer = lock(&outstanding.answer);
        loop {
            match answer.as_ref() {
                Some(Ok(value)) => return Ok(value.clone()),
                Some(Err(why)) => return Err(Unanswered::CannotAsk(why.clone())),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Unanswered::NotAnswering(outstanding.asked.elapsed()));
            }
            answer = match outstanding.answered.wait_timeout(answer, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Asks `question` on a helper thread, or joins the outstanding question
/// with the same key.
pub fn start<T, F>(key: Key, question: F) -> Pending<T>
where
    T: Clone + Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let mut outstanding_questions = lock(registry());
    if let Some(existing) = outstanding_questions.get(&key)
        && let Ok(existing) = existing.clone().downcast::<Outstanding<T>>()
    {
        return Pending { outstanding: Ok(existing) };
    }
    let outstanding =
        Arc::new(Outstanding { asked: Instant::now(), answer: Mutex::new(None), answered: Condvar::new() });
    let shared = outstanding.clone();
    let thread_key = key.clone();
    let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(question))
            .map_err(|_| format!("the question about {} panicked", thread_key.1.display()));
        // Answered: forget the question before telling anyone, so that
        // whoever asks next gets a fresh answer, never this one.
        {
            let mut outstanding_questions = lock(registry());
            let ours = outstanding_questions
                .get(&thread_key)
                .is_some_and(|o| std::ptr::addr_eq(Arc::as_ptr(o), Arc::as_ptr(&shared)));
            if ours {
                outstanding_questions.remove(&thread_key);
            }
        }
        *lock(&shared.answer) = Some(answer);
        shared.answered.notify_all();
    });
    match spawned {
        Ok(_) => {
            outstanding_questions.insert(key, outstanding.clone());
            Pending { outstanding: Ok(outstanding) }
        }
        Err(err) => Pending { outstanding: Err(format!("cannot start a probe thread: {err}")) },
    }
}

/// Asks `question` and waits up to `limit` for the answer.
pub fn ask<T, F>(key: Key, limit: Duration, question: F) -> Result<T, Unanswered>
where
    T: Clone + Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    start(key, question).wait_until(Instant::now() + limit)
}

/// `statfs(path)`: the filesystem's magic number, or the errno.
pub fn statfs(path: &Path) -> Pending<Result<i64, nix::errno::Errno>> {
    let owned = path.to_path_buf();
    start(("statfs", path.to_path_buf()), move || nix::sys::statfs::statfs(&owned).map(|s| s.filesystem_type().0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(name: &str) -> Key {
        ("test", PathBuf::from(name))
    }

    #[test]
    fn a_quick_answer_comes_back() {
        assert_eq!(ask(key("quick"), Duration::from_secs(5), || 42), Ok(42));
        let root = statfs(Path::new("/")).wait_until(Instant::now() + Duration::from_secs(5));
        assert!(matches!(root, Ok(Ok(_))), "{root:?}");
        let missing = statfs(Path::new("/no/such/path")).wait_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(missing, Ok(Err(nix::errno::Errno::ENOENT)));
    }

    #[test]
    fn a_question_that_takes_too_long_is_not_answering_and_does_not_hold_the_caller() {
        let started = Instant::now();
        let answer = ask(key("slow"), Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(3));
            1
        });
        assert!(matches!(answer, Err(Unanswered::NotAnswering(_))), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(answer.unwrap_err().to_string().starts_with("not answering"));
    }

    #[test]
    fn asking_again_joins_the_outstanding_question() {
        let asked = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let question = |asked: Arc<AtomicUsize>, release: Arc<(Mutex<bool>, Condvar)>| {
            move || {
                asked.fetch_add(1, Ordering::SeqCst);
                let (open, opened) = &*release;
                let mut open = lock(open);
                while !*open {
                    open = opened.wait(open).unwrap_or_else(|p| p.into_inner());
                }
                7
            }
        };
        for _ in 0..5 {
            let answer = ask(key("joined"), Duration::from_millis(20), question(asked.clone(), release.clone()));
            assert!(matches!(answer, Err(Unanswered::NotAnswering(_))), "{answer:?}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one thread for one stuck question");
        let pending = start(key("joined"), question(asked.clone(), release.clone()));
        *lock(&release.0) = true;
        release.1.notify_all();
        assert_eq!(pending.wait_until(Instant::now() + Duration::from_secs(5)), Ok(7));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Once answered, the next question is asked afresh.
        assert_eq!(ask(key("joined"), Duration::from_secs(5), question(asked.clone(), release.clone())), Ok(7));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_panicking_question_is_reported_not_left_outstanding() {
        let answer: Result<u8, _> = ask(key("panics"), Duration::from_secs(5), || panic!("boom"));
        assert!(matches!(answer, Err(Unanswered::CannotAsk(_))), "{answer:?}");
    }
}
