//! envd's side of `sudo`: authorize the caller, run the command, report how it ended.
//!
//! Blocking threads, one per call: calls are rare and long-lived, and each waits on a child.

use super::{
    Forward, MAX_MESSAGE, Outcome, Request,
    args::{Run, shell_join},
};
use crate::{process::run_as, users::User};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{Id, WaitPidFlag, waitid},
    },
    unistd::Pid,
};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
    Shutdown, SocketAddrUnix, SocketFlags, SocketType,
};
use std::{
    collections::BTreeMap,
    io::IoSliceMut,
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

/// The `PATH` commands run with, as Debian's sudoers `secure_path`.
const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Variables kept from the caller's environment (besides `LC_*`), as sudo's `env_reset`.
const KEPT_VARIABLES: &[&str] = &[
    "TERM",
    "COLORTERM",
    "DISPLAY",
    "XAUTHORITY",
    "LANG",
    "LANGUAGE",
    "TZ",
    "LS_COLORS",
];

/// Listens on `path` and serves every call on its own thread, for the life of the process.
///
/// Who may call is decided by the file system: the socket and its directory belong to root and
/// the group `sudo` (mode 0660/0750), so only they can connect. (The peer credentials of a Unix
/// socket cannot be used: this gVisor reports the caller's own for `SO_PEERCRED`.)
pub(crate) fn start(path: &Path) -> std::io::Result<()> {
    let group = nix::unistd::Group::from_name("sudo")
        .ok()
        .flatten()
        .map_or(0, |g| g.gid.as_raw());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(0), Some(group))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
    std::os::unix::fs::chown(path, Some(0), Some(group))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    rustix::net::listen(&listener, 64)?;
    std::thread::Builder::new()
        .name("sudo".into())
        .spawn(move || {
            loop {
                match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
                    Ok(conn) => {
                        std::thread::spawn(move || serve(&conn));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accepting a sudo call");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

fn serve(conn: &OwnedFd) {
    let outcome = run(conn).unwrap_or_else(Outcome::Refused);
    if let Ok(message) = serde_json::to_vec(&outcome) {
        let _ = rustix::net::send(conn, &message, SendFlags::empty());
    }
}

fn run(conn: &OwnedFd) -> Result<Outcome, String> {
    let (request, stdio) = receive(conn)?;
    let target = match request.run.user.as_deref() {
        None => User::lookup("root"),
        Some(uid) if uid.starts_with('#') => uid[1..]
            .parse()
            .ok()
            .and_then(User::lookup_uid)
            .ok_or_else(|| crate::users::UnknownUser(uid.to_owned())),
        Some(name) => User::lookup(name),
    }
    .map_err(|unknown| format!("unknown user {}", unknown.0))?;
    let plan = plan(&request, &target)?;
    let env = environment(&request, &target);
    let [stdin, stdout, stderr] = stdio;
    let mut command = Command::new(&plan.program);
    command
        .args(&plan.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&plan.cwd)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    std::os::unix::process::CommandExt::arg0(&mut command, &plan.argv[0]);
    run_as(&mut command, &target);
    let child = command
        .spawn()
        .map_err(|e| format!("unable to run {}: {e}", plan.argv[0]))?;
    tracing::info!(caller = %request.caller.name, user = %target.name, command = %plan.argv.join(" "), "sudo");
    supervise(conn, child)
}

/// Reads the request and the caller's three stdio descriptors.
fn receive(conn: &OwnedFd) -> Result<(Request, [OwnedFd; 3]), String> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("reading the request: {e}"))?;
    let fds: Vec<OwnedFd> = control
        .drain()
        .flat_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
            _ => Vec::new(),
        })
        .collect();
    if received.flags.contains(ReturnFlags::TRUNC) {
        return Err("argument list too long".into());
    }
    let stdio: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| "the request must carry stdin, stdout and stderr".to_owned())?;
    let request = serde_json::from_slice(&buffer[..received.bytes])
        .map_err(|e| format!("malformed request: {e}"))?;
    Ok((request, stdio))
}

/// What to execute, under which name, where.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    program: PathBuf,
    argv: Vec<String>,
    cwd: PathBuf,
}

fn plan(request: &Request, target: &User) -> Result<Plan, String> {
    let run = &request.run;
    let cwd = match (&run.chdir, run.login) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, true) => target.home.clone(),
        (None, false) => PathBuf::from(&request.cwd),
    };
    if run.login || run.shell {
        let shell = if run.login {
            target.shell.to_string_lossy().into_owned()
        } else {
            variable(&request.env, "SHELL").unwrap_or_default()
        };
        let shell = if shell.is_empty() {
            "/bin/sh".to_owned()
        } else {
            shell
        };
        let mut argv = vec![shell.clone()];
        if run.login {
            argv.push("-l".into());
        }
        if !run.command.is_empty() {
            argv.push("-c".into());
            argv.push(shell_join(&run.command));
        }
        return Ok(Plan {
            program: shell.into(),
            argv,
            cwd,
        });
    }
    let name = &run.command[0];
    let program = if name.contains('/') {
        Path::new(&request.cwd).join(name)
    } else {
        SECURE_PATH
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("{name}: command not found"))?
    };
    Ok(Plan {
        program,
        argv: run.command.clone(),
        cwd,
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn variable(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The command's environment: sudo's `env_reset` (a few of the caller's variables, the target's
/// identity, `SUDO_*`), all of the caller's with `-E` (except under `-i`), then `VAR=value`s.
fn environment(request: &Request, target: &User) -> BTreeMap<String, String> {
    let caller = &request.caller;
    let run: &Run = &request.run;
    let keep_all = run.preserve_env && !run.login;
    let mut env: BTreeMap<String, String> = request
        .env
        .iter()
        .filter(|(name, _)| {
            keep_all
                || KEPT_VARIABLES.contains(&name.as_str())
                || name.starts_with("LC_")
                || run.preserve.contains(name)
        })
        .cloned()
        .collect();
    let home = target.home.to_string_lossy().into_owned();
    let shell = target.shell.to_string_lossy().into_owned();
    for (name, value) in [
        ("PATH", SECURE_PATH.to_owned()),
        ("HOME", home),
        ("SHELL", shell),
        ("USER", target.name.clone()),
        ("LOGNAME", target.name.clone()),
        ("MAIL", format!("/var/mail/{}", target.name)),
        ("SUDO_USER", caller.name.clone()),
        ("SUDO_UID", caller.uid.to_string()),
        ("SUDO_GID", caller.gid.to_string()),
        ("SUDO_COMMAND", run.command.join(" ")),
    ] {
        env.insert(name.to_owned(), value);
    }
    env.extend(run.assignments.iter().cloned());
    env
}

/// Forwards the caller's signals to the child until it exits (a caller that goes away kills
/// it), then reports how it ended.
fn supervise(conn: &OwnedFd, mut child: std::process::Child) -> Result<Outcome, String> {
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    // Set once the child has exited, before it is reaped: from then on its pid may be reused,
    // so the forwarder must not signal it.
    let exited = Arc::new(Mutex::new(false));
    let forwarder = {
        let conn = conn.try_clone().map_err(|e| e.to_string())?;
        let exited = exited.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 256];
            loop {
                let received =
                    rustix::net::recv(&conn, &mut buffer, RecvFlags::empty()).map_or(0, |(_, n)| n);
                let exited = exited.lock().unwrap_or_else(|e| e.into_inner());
                if *exited {
                    return;
                }
                if received == 0 {
                    let _ = kill(pid, Signal::SIGKILL);
                    return;
                }
                if let Ok(Forward::Signal(number)) = serde_json::from_slice(&buffer[..received])
                    && let Ok(signal) = Signal::try_from(number)
                {
                    let _ = kill(pid, signal);
                }
            }
        })
    };
    let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    *exited.lock().unwrap_or_else(|e| e.into_inner()) = true;
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the command: {e}"))?;
    // Wakes the forwarder if the caller is still connected.
    let _ = rustix::net::shutdown(conn, Shutdown::Read);
    let _ = forwarder.join();
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Signaled(signal),
        (None, None) => Outcome::Exited(1),
    })
}

#[cfg(test)]
mod tests {
    use super::{Plan, Request, environment, plan};
    use crate::{
        sudo::{Caller, args::Run},
        users::User,
    };
    use std::path::PathBuf;

    fn root() -> User {
        User::lookup("root").unwrap()
    }

    fn request(run: Run) -> Request {
        Request {
            run,
            env: vec![
                ("SECRET".into(), "x".into()),
                ("TERM".into(), "xterm".into()),
                ("LC_ALL".into(), "C".into()),
                ("SHELL".into(), "/bin/sh".into()),
            ],
            cwd: "/tmp".into(),
            caller: Caller {
                name: "user".into(),
                uid: 1000,
                gid: 1000,
            },
        }
    }

    #[test]
    fn environment_is_reset_unless_preserved() {
        let run = Run {
            command: vec!["env".into()],
            assignments: vec![("FOO".into(), "1".into())],
            ..Run::default()
        };
        let env = environment(&request(run), &root());
        assert_eq!(env.get("SECRET"), None);
        assert_eq!(env["TERM"], "xterm");
        assert_eq!(env["LC_ALL"], "C");
        assert_eq!(env["HOME"], "/root");
        assert_eq!(env["USER"], "root");
        assert_eq!(env["SUDO_USER"], "user");
        assert_eq!(env["SUDO_UID"], "1000");
        assert_eq!(env["FOO"], "1");
        assert!(env["PATH"].starts_with("/usr/local/sbin"));

        let run = Run {
            command: vec!["env".into()],
            preserve_env: true,
            ..Run::default()
        };
        let env = environment(&request(run), &root());
        assert_eq!(env["SECRET"], "x");

        let run = Run {
            command: vec!["env".into()],
            preserve: vec!["SECRET".into()],
            ..Run::default()
        };
        let env = environment(&request(run), &root());
        assert_eq!(env["SECRET"], "x");
    }

    #[test]
    fn plans_commands_shells_and_login_shells() {
        let run = Run {
            command: vec!["ls".into(), "-l".into()],
            ..Run::default()
        };
        let found = plan(&request(run), &root()).unwrap();
        assert!(found.program.ends_with("ls"), "{found:?}");
        assert_eq!(found.cwd, PathBuf::from("/tmp"));

        let run = Run {
            command: vec!["no-such-command-kiln".into()],
            ..Run::default()
        };
        let missing = plan(&request(run), &root()).unwrap_err();
        assert_eq!(missing, "no-such-command-kiln: command not found");

        let run = Run {
            shell: true,
            command: vec!["echo".into(), "a b".into()],
            ..Run::default()
        };
        assert_eq!(
            plan(&request(run), &root()).unwrap(),
            Plan {
                program: "/bin/sh".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), r"echo a\ b".into()],
                cwd: "/tmp".into(),
            }
        );

        let run = Run {
            login: true,
            ..Run::default()
        };
        let login = plan(&request(run), &root()).unwrap();
        assert_eq!(login.argv[1], "-l");
        assert_eq!(login.cwd, PathBuf::from("/root"));
    }
}
