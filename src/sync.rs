//! Mutex and condition-variable waits that outlive a panicked holder: every
//! structure guarded in onefs is consistent between statements, so a poisoned
//! lock is used as it is instead of turning one panic into many. And work
//! spread over threads that still gets done when no thread can be had.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `changed` for at most `timeout`; returns the guard either way.
pub fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    changed.wait_timeout(guard, timeout).map(|(g, _)| g).unwrap_or_else(|poisoned| poisoned.into_inner().0)
}

/// Runs `work` on each of up to `threads` chunks of `items`, one scoped thread
/// a chunk, and returns the results in chunk order. A chunk whose thread the
/// OS refuses (a pids limit such as systemd's `TasksMax`) runs on the calling
/// thread instead: the work must get done, only slower. A chunk whose work
/// panicked gives `None`.
pub fn in_chunks<T, R, F>(items: &[T], threads: usize, work: F) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    if items.is_empty() {
        return Vec::new();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let started: Vec<_> = items
            .chunks(items.len().div_ceil(threads.max(1)))
            .map(|chunk| match std::thread::Builder::new().spawn_scoped(scope, move || work(chunk)) {
                Ok(thread) => Err(thread),
                Err(_) => Ok(work(chunk)),
            })
            .collect();
        started.into_iter().map(|s| s.or_else(|thread| thread.join()).ok()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_on_once_in_chunk_order() {
        let items: Vec<u32> = (0..103).collect();
        for threads in [0, 1, 4, 200] {
            let sums = in_chunks(&items, threads, |chunk| chunk.to_vec());
            let flat: Vec<u32> = sums.into_iter().flat_map(|c| c.expect("no panic")).collect();
            assert_eq!(flat, items, "threads={threads}");
        }
        assert!(in_chunks(&[] as &[u32], 4, |c| c.len()).is_empty());
    }

    #[test]
    fn a_panicking_chunk_is_reported_and_the_others_still_run() {
        let items: Vec<u32> = (0..8).collect();
        let results = in_chunks(&items, 4, |chunk| {
            assert!(!chunk.contains(&5), "chunk with 5");
            chunk.len()
        });
        assert_eq!(results, vec![Some(2), Some(2), None, Some(2)]);
    }
}
