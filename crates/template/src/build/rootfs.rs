//! Host-side edits of a root filesystem being built: users, directories, copied files.
//!
//! The root filesystem comes from an untrusted image, so every path is resolved with
//! [`resolve_in_root`] (a symlink such as `etc -> /` cannot redirect a write to the host) and
//! nothing from the image is executed on the host.

use crate::layers::resolve_in_root;
use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Why an edit failed; the message names the path inside the root filesystem.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("{path}: {message}")]
    Path { path: String, message: String },
    #[error("unknown user '{0}' in the template")]
    UnknownUser(String),
    #[error("unknown group '{0}' in the template")]
    UnknownGroup(String),
}

fn fail(path: &Path) -> impl Fn(std::fmt::Arguments<'_>) -> RootfsError + '_ {
    move |message| RootfsError::Path {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// A path inside `root` (absolute or relative to `/`), resolved safely; the last component is
/// not followed.
pub(crate) fn inside(root: &Path, path: &Path) -> Result<PathBuf, RootfsError> {
    resolve_in_root(root, path, false).map_err(|e| fail(path)(format_args!("{e}")))
}

/// A user of the template's `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: String,
}

fn read_table(root: &Path, file: &str) -> Result<Vec<Vec<String>>, RootfsError> {
    let path = inside(root, Path::new(file))?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(fail(Path::new(file))(format_args!("{e}"))),
    }
}

fn append_line(root: &Path, file: &str, line: &str, mode: u32) -> Result<(), RootfsError> {
    let path = inside(root, Path::new(file))?;
    let report = |e: std::io::Error| fail(Path::new(file))(format_args!("{e}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(report)?;
    }
    let existing = std::fs::read(&path).unwrap_or_default();
    let mut file_handle = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(report)?;
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        file_handle.write_all(b"\n").map_err(report)?;
    }
    file_handle
        .write_all(format!("{line}\n").as_bytes())
        .map_err(report)?;
    if existing.is_empty() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(report)?;
    }
    Ok(())
}

fn field(entry: &[String], index: usize) -> &str {
    entry.get(index).map(String::as_str).unwrap_or("")
}

/// Looks `name` (or a numeric uid) up in the template's `/etc/passwd`.
pub(crate) fn account(root: &Path, name: &str) -> Result<Option<Account>, RootfsError> {
    Ok(read_table(root, "/etc/passwd")?
        .into_iter()
        .find(|e| field(e, 0) == name || field(e, 2) == name)
        .and_then(|e| {
            Some(Account {
                name: field(&e, 0).to_owned(),
                uid: field(&e, 2).parse().ok()?,
                gid: field(&e, 3).parse().ok()?,
                home: field(&e, 5).to_owned(),
            })
        }))
}

fn group_id(root: &Path, name: &str) -> Result<Option<u32>, RootfsError> {
    Ok(read_table(root, "/etc/group")?
        .into_iter()
        .find(|e| field(e, 0) == name || field(e, 2) == name)
        .and_then(|e| field(&e, 2).parse().ok()))
}

/// `user` or `user:group` → uid and gid in the template.
pub(crate) fn owner(root: &Path, spec: &str) -> Result<(u32, u32), RootfsError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let account = account(root, user)?.ok_or_else(|| RootfsError::UnknownUser(user.into()))?;
    let gid = match group {
        Some(group) => {
            group_id(root, group)?.ok_or_else(|| RootfsError::UnknownGroup(group.into()))?
        }
        None => account.gid,
    };
    Ok((account.uid, gid))
}

/// Makes sure `name` exists (as `useradd --create-home` would, with `/bin/bash` when the image
/// has it) and, when `sudo` is set, is in the group `sudo` (created when missing): E2B templates'
/// default user has passwordless sudo. Returns the account.
pub(crate) fn ensure_user(root: &Path, name: &str, sudo: bool) -> Result<Account, RootfsError> {
    if account(root, "root")?.is_none() {
        append_line(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh", 0o644)?;
        if group_id(root, "root")?.is_none() {
            append_line(root, "/etc/group", "root:x:0:", 0o644)?;
        }
    }
    let account = match account(root, name)? {
        Some(account) => account,
        None => create_user(root, name)?,
    };
    if sudo && name != "root" {
        add_to_group(root, "sudo", &account.name)?;
    }
    Ok(account)
}

fn create_user(root: &Path, name: &str) -> Result<Account, RootfsError> {
    let passwd = read_table(root, "/etc/passwd")?;
    let groups = read_table(root, "/etc/group")?;
    let used = |table: &[Vec<String>], id: u32| {
        table
            .iter()
            .any(|e| field(e, 2).parse::<u32>().ok() == Some(id))
    };
    let uid = (1000..60000)
        .find(|id| !used(&passwd, *id) && !used(&groups, *id))
        .unwrap_or(60000);
    let shell = if inside(root, Path::new("/bin/bash"))?.exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("/home/{name}");
    append_line(
        root,
        "/etc/passwd",
        &format!("{name}:x:{uid}:{uid}::{home}:{shell}"),
        0o644,
    )?;
    if group_id(root, name)?.is_none() {
        append_line(root, "/etc/group", &format!("{name}:x:{uid}:"), 0o644)?;
    }
    if inside(root, Path::new("/etc/shadow"))?.exists() {
        append_line(
            root,
            "/etc/shadow",
            &format!("{name}:!:19000:0:99999:7:::"),
            0o640,
        )?;
    }
    make_dirs(root, Path::new(&home), Some((uid, uid)))?;
    copy_skeleton(root, &home, uid)?;
    Ok(Account {
        name: name.to_owned(),
        uid,
        gid: uid,
        home,
    })
}

/// Copies the regular files of `/etc/skel` (dotfiles) into a new home.
fn copy_skeleton(root: &Path, home: &str, uid: u32) -> Result<(), RootfsError> {
    let skel = inside(root, Path::new("/etc/skel"))?;
    let Ok(entries) = std::fs::read_dir(&skel) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            continue;
        }
        let target = inside(root, &Path::new(home).join(entry.file_name()))?;
        if std::fs::copy(entry.path(), &target).is_ok() {
            let _ = std::os::unix::fs::lchown(&target, Some(uid), Some(uid));
        }
    }
    Ok(())
}

fn add_to_group(root: &Path, group: &str, user: &str) -> Result<(), RootfsError> {
    let path = inside(root, Path::new("/etc/group"))?;
    let report = |e: std::io::Error| fail(Path::new("/etc/group"))(format_args!("{e}"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut found = false;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(str::to_owned).collect();
        if fields.first().map(String::as_str) == Some(group) && fields.len() >= 3 {
            found = true;
            while fields.len() < 4 {
                fields.push(String::new());
            }
            let members: Vec<&str> = fields[3].split(',').filter(|m| !m.is_empty()).collect();
            if !members.contains(&user) {
                fields[3] = members
                    .into_iter()
                    .chain(std::iter::once(user))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            lines.push(fields.join(":"));
        } else {
            lines.push(line.to_owned());
        }
    }
    if !found {
        let groups = read_table(root, "/etc/group")?;
        let gid = std::iter::once(27)
            .chain(100..1000)
            .find(|id| {
                !groups
                    .iter()
                    .any(|e| field(e, 2).parse::<u32>().ok() == Some(*id))
            })
            .unwrap_or(999);
        lines.push(format!("{group}:x:{gid}:{user}"));
    }
    std::fs::write(&path, lines.join("\n") + "\n").map_err(report)
}

/// `mkdir -p` inside the root; directories it creates get `owner` (root when `None`).
pub(crate) fn make_dirs(
    root: &Path,
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), RootfsError> {
    let mut current = PathBuf::from("/");
    for component in path.components() {
        let std::path::Component::Normal(name) = component else {
            continue;
        };
        current.push(name);
        let target = resolve_in_root(root, &current, true)
            .map_err(|e| fail(&current)(format_args!("{e}")))?;
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => {
                return Err(fail(&current)(format_args!(
                    "exists and is not a directory"
                )));
            }
            Err(_) => {
                std::fs::create_dir(&target).map_err(|e| fail(&current)(format_args!("{e}")))?;
                let (uid, gid) = owner.unwrap_or((0, 0));
                let _ = std::os::unix::fs::lchown(&target, Some(uid), Some(gid));
            }
        }
    }
    Ok(())
}

/// Copies `from` (a host path: the extracted build context) to `to` inside the root, as
/// Docker's `COPY` does: a directory's contents go into `to`; a file goes to `to` itself, or
/// into it when `to` ends with `/` or is a directory. Everything copied gets `owner` and, when
/// given, `mode`.
pub(crate) fn copy_in(
    root: &Path,
    from: &Path,
    to: &str,
    owner: (u32, u32),
    mode: Option<u32>,
) -> Result<u64, RootfsError> {
    let from_meta = std::fs::symlink_metadata(from).map_err(|e| fail(from)(format_args!("{e}")))?;
    let into_dir =
        to.ends_with('/') || resolve_in_root(root, Path::new(to), true).is_ok_and(|p| p.is_dir());
    let target = if from_meta.is_dir() || !into_dir {
        PathBuf::from(to)
    } else {
        Path::new(to).join(from.file_name().unwrap_or_default())
    };
    if let Some(parent) = target.parent() {
        // Directories the copy creates belong to the copy's owner, so a user can work in them.
        make_dirs(root, parent, Some(owner))?;
    }
    let mut copied = 0;
    copy_tree(root, from, &target, owner, mode, &mut copied)?;
    Ok(copied)
}

fn copy_tree(
    root: &Path,
    from: &Path,
    to: &Path,
    owner: (u32, u32),
    mode: Option<u32>,
    copied: &mut u64,
) -> Result<(), RootfsError> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| fail(from)(format_args!("{e}")))?;
    let target = inside(root, to)?;
    let report = |e: std::io::Error| fail(to)(format_args!("{e}"));
    if meta.is_dir() {
        if !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_file(&target);
            std::fs::create_dir(&target).map_err(report)?;
        }
        let dir_mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(dir_mode))
            .map_err(report)?;
        std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1)).map_err(report)?;
        let entries = std::fs::read_dir(from).map_err(|e| fail(from)(format_args!("{e}")))?;
        for entry in entries.flatten() {
            // A mode given for a `COPY` applies to everything copied, as in E2B.
            copy_tree(
                root,
                &entry.path(),
                &to.join(entry.file_name()),
                owner,
                mode,
                copied,
            )?;
        }
        return Ok(());
    }
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(&target).map_err(report)?;
    } else {
        let _ = std::fs::remove_file(&target);
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(from).map_err(|e| fail(from)(format_args!("{e}")))?;
        std::os::unix::fs::symlink(link, &target).map_err(report)?;
    } else if meta.is_file() {
        std::fs::copy(from, &target).map_err(report)?;
        let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(report)?;
        *copied += 1;
    } else {
        return Ok(());
    }
    std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1)).map_err(report)
}

#[cfg(test)]
mod tests {
    use super::{account, copy_in, ensure_user, owner};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn users_are_created_once_with_sudo() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/skel")).unwrap();
        std::fs::write(root.join("etc/skel/.profile"), "x").unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbin:x:1000:1000::/:/bin/false",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let user = ensure_user(root, "user", true).unwrap();
        assert_eq!(user.uid, 1001, "the first free id from 1000");
        assert_eq!(ensure_user(root, "user", true).unwrap(), user);
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert_eq!(group.matches("sudo:x:27:user").count(), 1, "{group}");
        assert_eq!(
            std::fs::metadata(root.join("home/user/.profile"))
                .unwrap()
                .uid(),
            1001
        );
        assert_eq!(owner(root, "user:root").unwrap(), (1001, 0));
        assert!(owner(root, "nobody").is_err());
        assert_eq!(account(root, "1001").unwrap().unwrap().name, "user");
    }

    #[test]
    fn etc_symlinked_out_of_the_root_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        ensure_user(&root, "user", true).unwrap();
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written outside the root"
        );
    }

    #[test]
    fn copy_follows_docker_rules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let context = dir.path().join("context");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::create_dir_all(context.join("src/sub")).unwrap();
        std::fs::write(context.join("src/sub/a.py"), "a").unwrap();
        std::fs::write(context.join("file.txt"), "f").unwrap();
        // A directory's contents go into the destination.
        copy_in(&root, &context.join("src"), "/opt/code", (1000, 1000), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("opt/code/sub/a.py")).unwrap(),
            "a"
        );
        // A file goes into an existing directory, or becomes the destination.
        copy_in(
            &root,
            &context.join("file.txt"),
            "/app",
            (0, 0),
            Some(0o600),
        )
        .unwrap();
        copy_in(
            &root,
            &context.join("file.txt"),
            "/renamed.txt",
            (0, 0),
            None,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("app/file.txt")).unwrap(),
            "f"
        );
        assert_eq!(
            std::fs::metadata(root.join("app/file.txt")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(root.join("renamed.txt").is_file());
        assert_eq!(
            std::fs::metadata(root.join("opt/code/sub/a.py"))
                .unwrap()
                .uid(),
            1000
        );
    }
}
