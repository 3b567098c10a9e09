//! [`AuthError`]: why credentials could not be loaded or a request could not be signed.
//! Messages name files, profiles and endpoints, never key material, pass phrases or tokens.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A private key could not be read, decrypted or generated.
    #[error("OCI private key: {0}")]
    Key(String),

    /// The request cannot be signed as asked (a header to sign is missing, a URL has no host).
    #[error("cannot sign the OCI request: {0}")]
    Sign(String),

    /// The `~/.oci/config` file or a profile in it is unusable.
    #[error("OCI config file {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// A private key file (or other secret file) can be read by other users.
    #[error(
        "{} is readable by group or others (mode {mode:04o}); refusing to use it as a secret, run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecureFile { path: PathBuf, mode: u32 },

    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },

    /// Getting an instance-principal session token failed (metadata service or federation).
    #[error("OCI instance principal: {0}")]
    InstancePrincipal(String),
}
