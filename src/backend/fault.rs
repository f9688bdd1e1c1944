//! Fault injection as a layer over any [`ObjectBackend`]: outages (every
//! request fails as a refused connection would) and failures of the Nth
//! request, plus counts of what reached the backend, so tests of the cache
//! run over a real or in-memory backend that misbehaves on cue, the way
//! mountpoint-s3's failure client wraps any client.

use super::ObjectBackend;
use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Kinds of backend requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    Get,
    Put,
    Delete,
    List,
}

pub struct FaultyBackend<B> {
    inner: B,
    /// Every request fails while set.
    down: AtomicBool,
    /// Sequence numbers (counting every request from 1) that fail.
    fail_at: Mutex<HashSet<u64>>,
    requests: AtomicU64,
    gets: AtomicU64,
    puts: AtomicU64,
}

impl<B: ObjectBackend> FaultyBackend<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            fail_at: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            puts: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Starts or ends an outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The `n`th request from now (1 = the next one) fails.
    pub fn fail_nth(&self, n: u64) {
        let at = self.requests.load(Ordering::SeqCst) + n;
        crate::sync::lock(&self.fail_at).insert(at);
    }

    /// GET and PUT requests that reached the backend.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    fn enter(&self, request: Request, key: &str) -> io::Result<()> {
        let seq = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let injected = crate::sync::lock(&self.fail_at).remove(&seq);
        if self.down.load(Ordering::SeqCst) || injected {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("injected failure of {request:?} {key} (request {seq})"),
            ));
        }
        match request {
            Request::Get => self.gets.fetch_add(1, Ordering::SeqCst),
            Request::Put => self.puts.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        Ok(())
    }
}

impl<B: ObjectBackend> ObjectBackend for FaultyBackend<B> {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.enter(Request::Get, key)?;
        self.inner.get(key)
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.enter(Request::Put, key)?;
        self.inner.put(key, data)
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        self.enter(Request::Put, key)?;
        self.inner.put_file(key, path)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.enter(Request::Delete, key)?;
        self.inner.delete(key)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.enter(Request::List, prefix)?;
        self.inner.list(prefix)
    }
}
