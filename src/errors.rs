//! I/O errors with context that still carry their errno to the kernel.

use std::fmt::Display;
use std::io;

/// An I/O error with a note on what was being done (usually a path).
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct Context {
    context: String,
    source: io::Error,
}

/// Wraps `err` with `context`; [`errno`] still finds the original code.
pub fn context(context: impl Display, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), Context { context: context.to_string(), source: err })
}

/// The errno to report for an error: the original OS code where there is
/// one, otherwise the closest code for its kind, and EIO when in doubt.
pub fn errno(err: &io::Error) -> i32 {
    if let Some(code) = err.raw_os_error() {
        return code;
    }
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<Context>()) {
        return errno(&inner.source);
    }
    match err.kind() {
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_errno_and_names_the_path() {
        let err = context("/store/blk-00001", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno(&err), libc::ENOSPC);
        assert!(err.to_string().starts_with("/store/blk-00001: "), "{err}");
        let twice = context("writing", err);
        assert_eq!(errno(&twice), libc::ENOSPC);
        assert_eq!(errno(&io::Error::other("mystery")), libc::EIO);
    }
}
