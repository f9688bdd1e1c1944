//! I/O errors with context that still carry their errno to the kernel.

use std::fmt::Display;
use std::io;

/// An I/O error with a note on what was being done (usually a path).
///
/// Its text already ends with the cause, so it reports no `source()`: a
/// chain printed whole (`{:#}`) would say the cause twice.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub struct Context {
    context: String,
    cause: io::Error,
}

/// Wraps `err` with `context`; [`errno`] still finds the original code.
pub fn context(context: impl Display, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), Context { context: context.to_string(), cause: err })
}

/// The error `err` wraps with [`context`], if it is such a wrapper: what
/// callers that classify errors (permanent or not) look through.
pub fn cause(err: &io::Error) -> Option<&io::Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<Context>()).map(|c| &c.cause)
}

/// `context: message`, without saying twice what both begin with: a
/// message that already starts with the whole context is returned as it
/// is, and a leading subject they share (`s3 … bucket b: `) is kept once.
pub fn in_context(context: &str, message: &str) -> String {
    if message.strip_prefix(context).is_some_and(|rest| rest.is_empty() || rest.starts_with(": ")) {
        return message.to_string();
    }
    let shared = context
        .match_indices(": ")
        .map(|(i, sep)| &context[..i + sep.len()])
        .filter(|subject| message.starts_with(subject))
        .last()
        .unwrap_or("");
    format!("{context}: {}", &message[shared.len()..])
}

/// An error and its causes as one line, for the terminal and the log: each
/// cause is added only if the text so far does not already say it (many
/// errors include their cause in their own text), and line breaks inside a
/// message (a server's reply, say) become spaces.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        let part = part.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The errno to report for an error: the original OS code where there is
/// one, otherwise the closest code for its kind, and EIO when in doubt.
pub fn errno(err: &io::Error) -> i32 {
    if let Some(code) = err.raw_os_error() {
        return code;
    }
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<Context>()) {
        return errno(&inner.cause);
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

    #[test]
    fn a_shared_subject_is_said_once() {
        let name = "s3 http://127.0.0.1:1 bucket b";
        assert_eq!(
            in_context(&format!("{name}: checking the bucket"), &format!("{name}: HEAD bucket: io: refused")),
            format!("{name}: checking the bucket: HEAD bucket: io: refused")
        );
        assert_eq!(
            in_context(&format!("{name}: PUT k"), &format!("{name}: PUT k: io: refused")),
            format!("{name}: PUT k: io: refused")
        );
        assert_eq!(in_context("rclone r:x", "rclone r:x: copy: boom"), "rclone r:x: copy: boom");
        assert_eq!(in_context("uploading blk-1", "timed out"), "uploading blk-1: timed out");
        assert_eq!(in_context("a: b", "a: bc"), "a: b: bc");
    }

    #[test]
    fn a_cause_is_said_once() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        let err = anyhow::Error::from(context("/s/onefs.json", enoent()));
        assert_eq!(one_line(&err), "/s/onefs.json: No such file or directory (os error 2)");
        let err = err.context("cannot open the store");
        assert_eq!(one_line(&err), "cannot open the store: /s/onefs.json: No such file or directory (os error 2)");
        // An error type that prints its source and also reports it.
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Both {
            path: String,
            source: io::Error,
        }
        let err = anyhow::Error::from(Both { path: "/s".into(), source: enoent() });
        assert_eq!(one_line(&err), "/s: No such file or directory (os error 2)");
        // A cause the outer text does not include is kept.
        let err = anyhow::Error::from(enoent()).context("cannot list /s");
        assert_eq!(one_line(&err), "cannot list /s: No such file or directory (os error 2)");
        let err = anyhow::anyhow!("bucket said:\n  <Error>NoSuchKey</Error>\n");
        assert_eq!(one_line(&err), "bucket said: <Error>NoSuchKey</Error>");
    }
}
