//! The `sudo` command: envd's binary run under the name `sudo`.

use super::{
    Caller, Forward, MAX_MESSAGE, Outcome, Request, SOCKET,
    args::{self, Action},
};
use nix::sys::signal::{SigSet, Signal};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, OwnedFd},
    process::ExitCode,
};

/// Signals `sudo` passes on to the command instead of acting on them.
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Whether this process was started as `sudo` (argv[0]'s file name).
pub fn invoked_as_sudo() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|arg0| std::path::Path::new(arg0).file_name().map(|n| n == "sudo"))
        .unwrap_or(false)
}

/// Runs `sudo` with the process's arguments; returns the command's exit status.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&args) {
        Ok(Action::Run(run)) => match run_through_envd(run) {
            Ok(code) => ExitCode::from(code),
            Err(message) => fail(&message),
        },
        Ok(Action::List) => {
            println!(
                "User {} may run the following commands on this sandbox:\n    (ALL : ALL) NOPASSWD: ALL",
                crate::users::user_name(nix::unistd::getuid().as_raw())
            );
            ExitCode::SUCCESS
        }
        Ok(Action::NoOp) => ExitCode::SUCCESS,
        Ok(Action::Version) => {
            println!(
                "Sudo version 1.9 (Kiln envd {})",
                envd_proto::host::ENVD_VERSION
            );
            ExitCode::SUCCESS
        }
        Ok(Action::Help) => {
            println!(
                "sudo - run a command as another user (served by Kiln's envd)\n\n{}",
                args::USAGE
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error.0),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("sudo: {message}");
    ExitCode::FAILURE
}

fn run_through_envd(run: args::Run) -> Result<u8, String> {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let caller = Caller {
        name: crate::users::user_name(uid),
        uid,
        gid,
    };
    let socket = match connect() {
        Ok(socket) => socket,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!("{} is not in the sudoers file.", caller.name));
        }
        Err(error) => {
            return Err(format!(
                "cannot reach envd's sudo service at {SOCKET}: {error}"
            ));
        }
    };
    let request = Request {
        caller,
        run,
        env: std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        cwd: std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".to_owned()),
    };
    let message = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    if message.len() > MAX_MESSAGE {
        return Err("argument list too long".into());
    }

    // Block the forwarded signals before any thread exists, so only the forwarding thread
    // (which waits for them) ever receives them.
    let mut signals = SigSet::empty();
    for signal in FORWARDED {
        signals.add(*signal);
    }
    signals.thread_block().map_err(|e| e.to_string())?;

    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&stdio));
    rustix::net::sendmsg(
        &socket,
        &[IoSlice::new(&message)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| format!("sending the request to envd: {e}"))?;

    let forwarder = socket.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        while let Ok(signal) = signals.wait() {
            let forward = serde_json::to_vec(&Forward::Signal(signal as i32)).unwrap_or_default();
            if rustix::net::send(&forwarder, &forward, SendFlags::empty()).is_err() {
                break;
            }
        }
    });

    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut no_fds = RecvAncillaryBuffer::new(&mut []);
    let received = rustix::net::recvmsg(
        &socket,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut no_fds,
        RecvFlags::empty(),
    )
    .map_err(|e| format!("waiting for envd: {e}"))?;
    if received.bytes == 0 {
        return Err("envd closed the connection".into());
    }
    match serde_json::from_slice(&buffer[..received.bytes.min(buffer.len())]) {
        Ok(Outcome::Exited(code)) => Ok(u8::try_from(code & 0xff).unwrap_or(1)),
        Ok(Outcome::Signaled(signal)) => Ok(u8::try_from((128 + signal) & 0xff).unwrap_or(1)),
        Ok(Outcome::Refused(message)) => Err(message),
        Err(error) => Err(format!("unreadable answer from envd: {error}")),
    }
}

fn connect() -> std::io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(SOCKET)?)?;
    Ok(socket)
}
