//! Resolving the paths clients send: relative paths and `~` are the user's home.

use std::path::{Component, Path, PathBuf};

/// Turns a client path into an absolute, lexically normalised path.
///
/// `~` and `~/x` expand to `home`; other relative paths are taken relative to `home`; `.` and
/// `..` are folded without touching the filesystem (`..` at the root stays at the root), so the
/// result names the same file the client meant without following symlinks.
pub(crate) fn resolve(path: &str, home: &Path) -> PathBuf {
    let joined = if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        home.join(path)
    };
    normalize(&joined)
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::resolve;
    use std::path::Path;

    #[test]
    fn resolution_table() {
        let home = Path::new("/home/user");
        let table = [
            ("/tmp/a.txt", "/tmp/a.txt"),
            ("a.txt", "/home/user/a.txt"),
            ("./d/../a.txt", "/home/user/a.txt"),
            ("~", "/home/user"),
            ("~/x/y", "/home/user/x/y"),
            ("", "/home/user"),
            ("/../../etc//passwd", "/etc/passwd"),
            ("../..", "/"),
            ("/tmp/dir/", "/tmp/dir"),
            ("~user/x", "/home/user/~user/x"),
        ];
        for (input, expected) in table {
            assert_eq!(resolve(input, home), Path::new(expected), "{input:?}");
        }
    }
}
