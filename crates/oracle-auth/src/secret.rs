//! Reading files that hold secrets (private keys, secret access keys).

use crate::AuthError;
use std::{os::unix::fs::PermissionsExt, path::Path};

/// Reads `path` if only its owner can read it (mode `0600`, `0400` or stricter); a file readable
/// by group or others is refused with [`AuthError::InsecureFile`], because another local user
/// may already have copied the secret.
pub fn read_secret_file(path: &Path) -> Result<String, AuthError> {
    let io = |source| AuthError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::InsecureFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}
