//! `EntryInfo`: what a file is, in the shape E2B's Go envd reports it.

use crate::users::{group_name, user_name};
use envd_proto::filesystem::{EntryInfo, FileType};
use std::{
    collections::{BTreeMap, HashMap},
    fs::Metadata,
    io,
    os::unix::fs::MetadataExt,
    path::Path,
};

/// Go's `os.FileMode` type bits, which the SDKs pass through in `mode`.
mod go_mode {
    pub(super) const DIR: u32 = 1 << 31;
    pub(super) const SYMLINK: u32 = 1 << 27;
    pub(super) const DEVICE: u32 = 1 << 26;
    pub(super) const NAMED_PIPE: u32 = 1 << 25;
    pub(super) const SOCKET: u32 = 1 << 24;
    pub(super) const SETUID: u32 = 1 << 23;
    pub(super) const SETGID: u32 = 1 << 22;
    pub(super) const CHAR_DEVICE: u32 = 1 << 21;
    pub(super) const STICKY: u32 = 1 << 20;
    /// Letters of `FileMode.String()`, from bit 31 down.
    pub(super) const LETTERS: &[u8] = b"dalTLDpSugct?";
}

/// The xattr namespace where `/files` uploads keep client metadata.
pub(crate) const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Builds entry infos, caching user and group names across one listing.
#[derive(Default)]
pub(crate) struct EntryReader {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl EntryReader {
    /// The entry at `path`, not following a final symlink.
    pub(crate) fn read(&mut self, path: &Path) -> io::Result<EntryInfo> {
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(self.describe(path, &metadata))
    }

    pub(crate) fn describe(&mut self, path: &Path, metadata: &Metadata) -> EntryInfo {
        let file_type = metadata.file_type();
        let is_symlink = file_type.is_symlink();
        let kind = if is_symlink {
            FileType::Symlink
        } else if file_type.is_dir() {
            FileType::Directory
        } else {
            FileType::File
        };
        let mode = go_file_mode(metadata.mode());
        EntryInfo {
            name: path
                .file_name()
                .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned()),
            r#type: kind as i32,
            path: path.to_string_lossy().into_owned(),
            size: i64::try_from(metadata.len()).unwrap_or(i64::MAX),
            mode,
            permissions: go_mode_string(mode),
            owner: self
                .users
                .entry(metadata.uid())
                .or_insert_with_key(|uid| user_name(*uid))
                .clone(),
            group: self
                .groups
                .entry(metadata.gid())
                .or_insert_with_key(|gid| group_name(*gid))
                .clone(),
            modified_time: Some(pbjson_types::Timestamp {
                seconds: metadata.mtime(),
                nanos: i32::try_from(metadata.mtime_nsec()).unwrap_or(0),
            }),
            symlink_target: is_symlink
                .then(|| std::fs::read_link(path).ok())
                .flatten()
                .map(|target| target.to_string_lossy().into_owned()),
            metadata: if is_symlink {
                BTreeMap::new()
            } else {
                read_metadata(path)
            },
            is_symlink,
        }
    }
}

/// Client metadata stored on a file as `user.e2b.<key>` xattrs.
pub(crate) fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let Ok(names) = xattr::list(path) else {
        return BTreeMap::new();
    };
    names
        .filter_map(|name| {
            let key = name
                .to_str()?
                .strip_prefix(METADATA_XATTR_PREFIX)?
                .to_owned();
            let value = xattr::get(path, &name).ok()??;
            Some((key, String::from_utf8_lossy(&value).into_owned()))
        })
        .collect()
}

/// Converts a Unix `st_mode` to Go's `os.FileMode` bits.
pub(crate) fn go_file_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & 0o777;
    mode |= match st_mode & libc::S_IFMT {
        libc::S_IFDIR => go_mode::DIR,
        libc::S_IFLNK => go_mode::SYMLINK,
        libc::S_IFBLK => go_mode::DEVICE,
        libc::S_IFCHR => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        libc::S_IFIFO => go_mode::NAMED_PIPE,
        libc::S_IFSOCK => go_mode::SOCKET,
        _ => 0,
    };
    if st_mode & libc::S_ISUID != 0 {
        mode |= go_mode::SETUID;
    }
    if st_mode & libc::S_ISGID != 0 {
        mode |= go_mode::SETGID;
    }
    if st_mode & libc::S_ISVTX != 0 {
        mode |= go_mode::STICKY;
    }
    mode
}

/// Go's `FileMode.String()`: type letters (or `-`), then `rwxrwxrwx`.
pub(crate) fn go_mode_string(mode: u32) -> String {
    let mut out = String::with_capacity(12);
    for (i, letter) in go_mode::LETTERS.iter().enumerate() {
        if mode & (1 << (31 - i)) != 0 {
            out.push(char::from(*letter));
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    for (i, letter) in b"rwxrwxrwx".iter().enumerate() {
        out.push(if mode & (1 << (8 - i)) != 0 {
            char::from(*letter)
        } else {
            '-'
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{EntryReader, go_file_mode, go_mode_string};
    use envd_proto::filesystem::FileType;

    #[test]
    fn modes_match_go() {
        assert_eq!(go_file_mode(0o040755), 2147484141);
        assert_eq!(go_mode_string(go_file_mode(0o040755)), "drwxr-xr-x");
        assert_eq!(go_mode_string(go_file_mode(0o100644)), "-rw-r--r--");
        assert_eq!(go_mode_string(go_file_mode(0o120777)), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(go_file_mode(0o041777)), "dtrwxrwxrwx");
        assert_eq!(go_mode_string(go_file_mode(0o104755)), "urwxr-xr-x");
        assert_eq!(go_mode_string(go_file_mode(0o020666)), "Dcrw-rw-rw-");
    }

    #[test]
    fn entries_of_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "hi").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let mut reader = EntryReader::default();
        let entry = reader.read(&file).unwrap();
        assert_eq!(
            (entry.name.as_str(), entry.size, entry.r#type),
            ("a.txt", 2, FileType::File as i32)
        );
        let entry = reader.read(&link).unwrap();
        assert_eq!(entry.r#type, FileType::Symlink as i32);
        assert_eq!(entry.symlink_target.as_deref(), file.to_str());
        assert_eq!(
            reader.read(dir.path()).unwrap().r#type,
            FileType::Directory as i32
        );
    }
}
