//! Filesystem facts as envd reports them: entry info and directory watches.

pub(crate) mod entry;
pub(crate) mod watch;

use std::io;

/// Maps an I/O error on `path` to the Connect code clients act on.
pub(crate) fn io_error(err: &io::Error, path: &std::path::Path) -> connect::Error {
    use connect::Code;
    let path = path.display();
    let (code, message) = match err.kind() {
        io::ErrorKind::NotFound => (Code::NotFound, format!("path '{path}' does not exist")),
        io::ErrorKind::AlreadyExists => {
            (Code::AlreadyExists, format!("path '{path}' already exists"))
        }
        io::ErrorKind::PermissionDenied => (
            Code::PermissionDenied,
            format!("permission denied: '{path}'"),
        ),
        io::ErrorKind::NotADirectory => (
            Code::InvalidArgument,
            format!("path '{path}' is not a directory"),
        ),
        io::ErrorKind::IsADirectory => (
            Code::InvalidArgument,
            format!("path '{path}' is a directory"),
        ),
        io::ErrorKind::StorageFull => (
            Code::ResourceExhausted,
            format!("not enough disk space for '{path}'"),
        ),
        _ => (Code::Internal, format!("'{path}': {err}")),
    };
    connect::Error::new(code, message)
}
