//! Building a child process: credentials, session, stdio and environment.

#![allow(unsafe_code)]

use super::pty::{self, PtyMaster};
use crate::users::User;
use std::{io, path::PathBuf, process::Stdio};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// What to start, fully resolved (user looked up, cwd checked, environment merged).
pub(crate) struct Spec {
    pub(crate) cmd: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) user: User,
    /// `Some((cols, rows))` runs the process on a new pseudo-terminal.
    pub(crate) pty: Option<(u16, u16)>,
    /// Whether stdin stays open for `SendInput`; otherwise the child reads EOF at once.
    pub(crate) stdin: bool,
}

/// A started child and the ends of its stdio that envd holds.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) io: Io,
}

pub(crate) enum Io {
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: ChildStdout,
        stderr: ChildStderr,
    },
    Pty(PtyMaster),
}

/// Starts the process in its own process group (its own session on a pty), so signals reach
/// everything it forks, running as `spec.user` with that user's groups.
pub(crate) fn spawn(spec: Spec) -> io::Result<Spawned> {
    let mut command = Command::new(&spec.cmd);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().cloned())
        .current_dir(&spec.cwd);
    let credentials = Credentials::for_user(&spec.user);

    let pty_master = match spec.pty {
        Some((cols, rows)) => {
            let (master, slave) = pty::open(cols, rows)?;
            command
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: the closure only makes async-signal-safe syscalls (setsid, ioctl, setgroups,
            // setgid, setuid) on data prepared before fork; it allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // Make the pty (already dup'ed onto stdin) the session's controlling terminal.
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    credentials.apply()
                });
            }
            Some(master)
        }
        None => {
            let stdin = if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            };
            command
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            // SAFETY: as above, only async-signal-safe syscalls on pre-built data.
            unsafe {
                command.pre_exec(move || credentials.apply());
            }
            None
        }
    };

    let mut child = command.spawn()?;
    let io = match pty_master {
        Some(master) => Io::Pty(master),
        None => Io::Pipes {
            stdin: child.stdin.take(),
            stdout: child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("stdout was not piped"))?,
            stderr: child
                .stderr
                .take()
                .ok_or_else(|| io::Error::other("stderr was not piped"))?,
        },
    };
    Ok(Spawned { child, io })
}

/// Makes a blocking `command` (the sudo service's) run as `user`.
pub(crate) fn run_as(command: &mut std::process::Command, user: &User) {
    let credentials = Credentials::for_user(user);
    // SAFETY: only async-signal-safe syscalls on pre-built data, as in `spawn`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || credentials.apply());
    }
}

/// The identity a child takes on, prepared before fork so that applying it allocates nothing.
#[derive(Clone)]
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Credentials {
    fn for_user(user: &User) -> Self {
        Credentials {
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
        }
    }

    /// Switches to the user. A no-op when envd already runs as that user (unprivileged runs).
    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain syscalls with a pointer/length pair into `self.groups`, which outlives them.
        unsafe {
            if libc::geteuid() == self.uid && libc::getegid() == self.gid {
                return Ok(());
            }
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) < 0
                || libc::setgid(self.gid) < 0
                || libc::setuid(self.uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
