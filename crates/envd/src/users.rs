//! Local users: who a request runs as.

use nix::unistd::{Gid, Group, Uid, User as NixUser};
use std::{ffi::CString, path::PathBuf};

/// A user of the sandbox, resolved from the system's user database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups, the primary group included.
    pub(crate) groups: Vec<u32>,
    pub(crate) home: PathBuf,
    pub(crate) shell: PathBuf,
}

/// The user is not in the user database, or the database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("user '{0}' does not exist")]
pub(crate) struct UnknownUser(pub(crate) String);

impl User {
    /// Looks a user up by name.
    pub(crate) fn lookup(name: &str) -> Result<User, UnknownUser> {
        let unknown = || UnknownUser(name.to_owned());
        let entry = NixUser::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let cname = CString::new(name).map_err(|_| unknown())?;
        let groups = nix::unistd::getgrouplist(&cname, entry.gid)
            .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|_| vec![entry.gid.as_raw()]);
        Ok(User {
            name: entry.name,
            uid: entry.uid.as_raw(),
            gid: entry.gid.as_raw(),
            groups,
            home: entry.dir,
            shell: entry.shell,
        })
    }

    /// Looks a user up by uid.
    pub(crate) fn lookup_uid(uid: u32) -> Option<User> {
        let entry = NixUser::from_uid(Uid::from_raw(uid)).ok().flatten()?;
        User::lookup(&entry.name).ok()
    }

    /// Chowns a path envd created on this user's behalf. Failure is ignored: envd may run
    /// unprivileged (tests), where the file already belongs to the only user there is.
    pub(crate) fn take_ownership(&self, path: &std::path::Path) {
        let _ = std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid));
    }
}

/// The name of a uid, or the number when it has none.
pub(crate) fn user_name(uid: u32) -> String {
    NixUser::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// The name of a gid, or the number when it has none.
pub(crate) fn group_name(gid: u32) -> String {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

#[cfg(test)]
mod tests {
    use super::User;

    #[test]
    fn root_exists_and_nobody_else_is_invented() {
        let root = User::lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert!(root.groups.contains(&0));
        assert!(User::lookup("no-such-user-kiln").is_err());
        assert!(User::lookup("nul\0byte").is_err());
    }
}
