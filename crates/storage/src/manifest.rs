//! [`Manifest`]: the record of a committed write session, `<prefix>/manifest.json`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File name of the manifest under a session's prefix.
pub const MANIFEST: &str = "manifest.json";

/// What a committed session holds: each object's size and sha256. Readers verify against it,
/// and its presence is what makes the prefix visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, 1.
    pub version: u32,
    /// Object names (relative to the prefix) and what they hold.
    pub objects: BTreeMap<String, ObjectEntry>,
}

/// Size and content digest of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub size: u64,
    /// Lowercase hex SHA-256 of the object's bytes.
    pub sha256: String,
}
