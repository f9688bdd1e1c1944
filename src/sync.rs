//! Mutex and condition-variable waits that outlive a panicked holder: every
//! structure guarded in onefs is consistent between statements, so a poisoned
//! lock is used as it is instead of turning one panic into many.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `changed` for at most `timeout`; returns the guard either way.
pub fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    changed.wait_timeout(guard, timeout).map(|(g, _)| g).unwrap_or_else(|poisoned| poisoned.into_inner().0)
}
