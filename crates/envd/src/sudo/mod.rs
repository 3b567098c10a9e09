//! `sudo` in a sandbox, served by envd.
//!
//! gVisor sets `no_new_privs` on every process of a sandbox, so a setuid binary such as the real
//! sudo cannot gain privileges there. Instead envd (root, the sandbox's init) serves a Unix
//! socket inside the sandbox, and the sandbox's `sudo` is envd's own binary invoked under that
//! name ([`client`]). It sends its command line, environment and working directory together
//! with its stdin/stdout/stderr descriptors; envd ([`server`]) runs the command as the target user on those very descriptors
//! (a terminal stays a terminal), forwards the signals `sudo` receives, and answers with the
//! exit status, which `sudo` exits with.
//!
//! Policy, as the Debian sudoers `%sudo ALL=(ALL:ALL) NOPASSWD: ALL` would have it: root and
//! members of the group `sudo` may run anything as anyone; nobody is asked for a password. The
//! socket's file permissions enforce it (only root and the group can connect).
//!
//! The socket lives in the sandbox's own memory (not on the host channel), so checkpoints keep
//! it and it needs no quiesce.

mod args;
pub mod client;
pub(crate) mod server;

use serde::{Deserialize, Serialize};

/// The service's socket inside the sandbox.
pub const SOCKET: &str = "/run/envd/sudo.sock";
/// The largest message on the socket (a request carries the command line and environment).
const MAX_MESSAGE: usize = 256 * 1024;

/// `sudo` → envd, first message; carries the caller's stdin, stdout and stderr as `SCM_RIGHTS`.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    run: args::Run,
    env: Vec<(String, String)>,
    cwd: String,
    /// Who runs `sudo` (for `SUDO_USER` and friends; the socket's permissions already decided
    /// that they may).
    caller: Caller,
}

#[derive(Debug, Serialize, Deserialize)]
struct Caller {
    name: String,
    uid: u32,
    gid: u32,
}

/// `sudo` → envd after the request.
#[derive(Debug, Serialize, Deserialize)]
enum Forward {
    /// `sudo` received this signal; deliver it to the command.
    Signal(i32),
}

/// envd → `sudo`, the only answer.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
    /// Not allowed, or the command could not be started; the message says why.
    Refused(String),
}
