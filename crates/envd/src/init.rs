//! envd as a sandbox's PID 1.
//!
//! In a sandbox envd is the container's init, so orphaned processes are reparented to it and
//! must be reaped. Reaping with `waitpid(-1)` inside envd would steal the exit status of the
//! processes envd itself watches, so PID 1 splits in two, as tini does: the parent only reaps
//! and forwards signals to the child, which
//! serves. The parent exits with the child's status.

#![allow(unsafe_code)]

use nix::{
    sys::{
        signal::{SigSet, Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork},
};

/// When running as PID 1, forks: returns in the child (which goes on to serve) and never
/// returns in the parent. Otherwise returns at once. Must be called before any thread starts.
pub fn split_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    // SAFETY: called from `main` before the async runtime or any other thread exists, so the
    // child is a faithful single-threaded copy.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {}
        Ok(ForkResult::Parent { child }) => reap_forever(child),
        // Without a fork envd still works; it only leaves orphans unreaped.
        Err(error) => eprintln!("envd: cannot fork a reaper as PID 1: {error}"),
    }
}

fn reap_forever(child: Pid) -> ! {
    let signals = SigSet::all();
    let _ = signals.thread_block();
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(_) => continue,
        };
        if signal != Signal::SIGCHLD {
            let _ = kill(child, signal);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                    std::process::exit(128 + signal as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
