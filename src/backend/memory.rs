//! An in-memory object backend, for tests of the layers above.

use super::ObjectBackend;
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        crate::sync::lock(&self.objects)
    }

    /// All objects (for assertions).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.objects().clone()
    }
}

impl ObjectBackend for MemBackend {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.objects().get(key).cloned())
    }
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.objects().insert(key.to_string(), data.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.objects().remove(key);
        Ok(())
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self.objects().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
}
