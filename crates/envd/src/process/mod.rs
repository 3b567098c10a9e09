//! Processes started through `process.Process`: the table of them, their output fan-out and
//! their exit status.
//!
//! Invariants:
//! - A subscriber sees data events in the order read, then exactly one end event, and nothing
//!   after it. The end event is published only after stdout/stderr (or the pty) are drained.
//! - A process outlives every client: dropping a subscription never signals it.
//! - An exited process stays in the table for [`EXITED_RETENTION`] so a late `Connect` still
//!   gets its end event; `List` shows only running ones.

mod pty;
mod spawn;

pub(crate) use spawn::{Spec, run_as};

use envd_proto::process::{ProcessConfig, process_event};
use nix::{sys::signal::Signal, unistd::Pid};
use std::{
    collections::HashMap,
    io,
    process::ExitStatus,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::ChildStdin,
    sync::{mpsc, watch},
};

/// How long an exited process's status stays available to `Connect`.
pub(crate) const EXITED_RETENTION: Duration = Duration::from_secs(30);
/// Read size for pipes (stdout/stderr) and for a pty, as in E2B's envd.
const PIPE_CHUNK: usize = 32 * 1024;
const PTY_CHUNK: usize = 16 * 1024;
/// After the process exits, output still in the pipes is drained; a pipe that stays silent this
/// long is considered empty (a grandchild may keep it open forever).
const DRAIN_IDLE: Duration = Duration::from_millis(20);
/// Events buffered per subscriber; a slower client back-pressures the process's output.
const SUBSCRIBER_BUFFER: usize = 64;

/// An output or end event, as published to subscribers.
pub(crate) type Event = process_event::Event;

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("process {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Precondition(&'static str),
    #[error("failed to start '{cmd}': {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<ProcessError> for connect::Error {
    fn from(err: ProcessError) -> Self {
        let code = match &err {
            ProcessError::NotFound(_) => connect::Code::NotFound,
            ProcessError::Precondition(_) => connect::Code::FailedPrecondition,
            ProcessError::Spawn { source, .. } => match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                    connect::Code::InvalidArgument
                }
                _ => connect::Code::Internal,
            },
            ProcessError::Io(_) => connect::Code::Internal,
        };
        connect::Error::new(code, err.to_string())
    }
}

/// Which process an RPC addresses.
pub(crate) enum Selector {
    Pid(u32),
    Tag(String),
}

/// Every process started through envd, by pid.
#[derive(Clone, Default)]
pub(crate) struct ProcessTable {
    processes: Arc<Mutex<HashMap<u32, Arc<Process>>>>,
}

/// One started process.
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) tag: Option<String>,
    pub(crate) config: ProcessConfig,
    input: tokio::sync::Mutex<Input>,
    pty: Option<Arc<pty::PtyMaster>>,
    state: Mutex<State>,
    exited: watch::Sender<bool>,
}

enum Input {
    Pipe(Option<ChildStdin>),
    Pty(Arc<pty::PtyMaster>),
}

#[derive(Default)]
struct State {
    subscribers: Vec<mpsc::Sender<Event>>,
    end: Option<process_event::EndEvent>,
}

impl ProcessTable {
    /// Starts a process and returns it with a subscription that sees all of its output.
    pub(crate) fn start(
        &self,
        spec: Spec,
        config: ProcessConfig,
        tag: Option<String>,
    ) -> Result<(Arc<Process>, mpsc::Receiver<Event>), ProcessError> {
        let cmd = spec.cmd.clone();
        let spawned = spawn::spawn(spec).map_err(|source| ProcessError::Spawn { cmd, source })?;
        let mut child = spawned.child;
        let pid = child
            .id()
            .ok_or(ProcessError::Precondition("process exited before start"))?;

        let (pty_master, input, readers) = match spawned.io {
            spawn::Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => (None, Input::Pipe(stdin), Readers::Pipes(stdout, stderr)),
            spawn::Io::Pty(master) => {
                let master = Arc::new(master);
                (
                    Some(master.clone()),
                    Input::Pty(master.clone()),
                    Readers::Pty(master),
                )
            }
        };
        let (subscriber, events) = mpsc::channel(SUBSCRIBER_BUFFER);
        let process = Arc::new(Process {
            pid,
            tag,
            config,
            input: tokio::sync::Mutex::new(input),
            pty: pty_master,
            state: Mutex::new(State {
                subscribers: vec![subscriber],
                end: None,
            }),
            exited: watch::channel(false).0,
        });
        self.lock().insert(pid, process.clone());

        let table = self.clone();
        let running = process.clone();
        tokio::spawn(async move {
            let pumps = readers.spawn(&running);
            let status = child.wait().await;
            running.exited.send_replace(true);
            for pump in pumps {
                let _ = pump.await;
            }
            running.finish(end_event(status)).await;
            tokio::time::sleep(EXITED_RETENTION).await;
            table.remove_if_same(&running);
        });
        Ok((process, events))
    }

    /// The process a selector names, whether running or recently exited.
    pub(crate) fn get(&self, selector: &Selector) -> Result<Arc<Process>, ProcessError> {
        let processes = self.lock();
        let found = match selector {
            Selector::Pid(pid) => processes.get(pid).cloned(),
            Selector::Tag(tag) => processes
                .values()
                .filter(|p| p.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|p| !p.has_exited())
                .cloned(),
        };
        found.ok_or_else(|| {
            ProcessError::NotFound(match selector {
                Selector::Pid(pid) => format!("with pid {pid}"),
                Selector::Tag(tag) => format!("with tag '{tag}'"),
            })
        })
    }

    /// The process a selector names, if it is still running.
    pub(crate) fn get_running(&self, selector: &Selector) -> Result<Arc<Process>, ProcessError> {
        let process = self.get(selector)?;
        if process.has_exited() {
            return Err(ProcessError::NotFound(format!(
                "with pid {} (it has exited)",
                process.pid
            )));
        }
        Ok(process)
    }

    /// Running processes, by pid.
    pub(crate) fn running(&self) -> Vec<Arc<Process>> {
        let mut running: Vec<_> = self
            .lock()
            .values()
            .filter(|p| !p.has_exited())
            .cloned()
            .collect();
        running.sort_by_key(|p| p.pid);
        running
    }

    fn remove_if_same(&self, process: &Arc<Process>) {
        let mut processes = self.lock();
        if processes
            .get(&process.pid)
            .is_some_and(|p| Arc::ptr_eq(p, process))
        {
            processes.remove(&process.pid);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.processes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Process {
    /// A new subscription: output from now on, then the end event. A process that has already
    /// exited yields just its end event.
    pub(crate) fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut state = self.state();
        match &state.end {
            Some(end) => {
                let _ = tx.try_send(Event::End(end.clone()));
            }
            None => state.subscribers.push(tx),
        }
        rx
    }

    /// Resolves once the process has exited.
    pub(crate) async fn wait_exited(&self) {
        let mut exited = self.exited.subscribe();
        let _ = exited.wait_for(|exited| *exited).await;
    }

    /// Kills the process (SIGKILL to its group) if it is still running after `limit`, whether
    /// or not anyone is still attached to it.
    pub(crate) fn kill_after(self: &Arc<Self>, limit: std::time::Duration) {
        let process = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(limit) => { let _ = process.signal(Signal::SIGKILL); }
                () = process.wait_exited() => {}
            }
        });
    }

    pub(crate) fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// Sends a signal to the process's group, so children it forked get it too.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        if self.has_exited() {
            return Err(ProcessError::NotFound(format!(
                "with pid {} (it has exited)",
                self.pid
            )));
        }
        let pid =
            i32::try_from(self.pid).map_err(|_| ProcessError::NotFound(self.pid.to_string()))?;
        nix::sys::signal::killpg(Pid::from_raw(pid), signal)
            .or_else(|_| nix::sys::signal::kill(Pid::from_raw(pid), signal))
            .map_err(|e| ProcessError::Io(e.into()))
    }

    /// Writes to stdin (or, for a pty process, to the terminal).
    pub(crate) async fn write_input(&self, data: &[u8], to_pty: bool) -> Result<(), ProcessError> {
        let mut input = self.input.lock().await;
        match (&mut *input, to_pty) {
            (Input::Pty(master), _) => master.write_all(data).await?,
            (Input::Pipe(Some(stdin)), false) => {
                stdin.write_all(data).await?;
                stdin.flush().await?;
            }
            (Input::Pipe(None), false) => {
                return Err(ProcessError::Precondition(
                    "stdin of this process is closed or was not requested",
                ));
            }
            (Input::Pipe(_), true) => return Err(ProcessError::Precondition("process has no pty")),
        }
        Ok(())
    }

    /// Closes stdin so the process reads EOF. For a pty process, send Ctrl-D instead.
    pub(crate) async fn close_stdin(&self) -> Result<(), ProcessError> {
        match &mut *self.input.lock().await {
            Input::Pipe(stdin) => {
                stdin.take();
                Ok(())
            }
            Input::Pty(_) => Err(ProcessError::Precondition(
                "cannot close stdin of a pty process; send EOF (0x04) instead",
            )),
        }
    }

    pub(crate) fn resize(&self, cols: u16, rows: u16) -> Result<(), ProcessError> {
        let pty = self
            .pty
            .as_ref()
            .ok_or(ProcessError::Precondition("process has no pty"))?;
        Ok(pty.resize(cols, rows)?)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn publish(&self, event: Event) {
        let subscribers = self.state().subscribers.clone();
        let mut any_closed = false;
        for subscriber in &subscribers {
            any_closed |= subscriber.send(event.clone()).await.is_err();
        }
        if any_closed {
            self.state().subscribers.retain(|s| !s.is_closed());
        }
    }

    async fn finish(&self, end: process_event::EndEvent) {
        let subscribers = {
            let mut state = self.state();
            state.end = Some(end.clone());
            std::mem::take(&mut state.subscribers)
        };
        for subscriber in subscribers {
            let _ = subscriber.send(Event::End(end.clone())).await;
        }
    }
}

enum Readers {
    Pipes(tokio::process::ChildStdout, tokio::process::ChildStderr),
    Pty(Arc<pty::PtyMaster>),
}

impl Readers {
    fn spawn(self, process: &Arc<Process>) -> Vec<tokio::task::JoinHandle<()>> {
        use process_event::data_event::Output;
        match self {
            Readers::Pipes(stdout, stderr) => vec![
                tokio::spawn(pump(process.clone(), stdout, PIPE_CHUNK, Output::Stdout)),
                tokio::spawn(pump(process.clone(), stderr, PIPE_CHUNK, Output::Stderr)),
            ],
            Readers::Pty(master) => vec![tokio::spawn(pump(
                process.clone(),
                PtyOutput(master),
                PTY_CHUNK,
                Output::Pty,
            ))],
        }
    }
}

fn data(output: Vec<u8>, wrap: fn(Vec<u8>) -> process_event::data_event::Output) -> Event {
    Event::Data(process_event::DataEvent {
        output: Some(wrap(output)),
    })
}

/// A source of process output: a pipe, or a pty master.
trait OutputSource: Send {
    /// Reads some bytes; `Ok(0)` or an error (a pty's `EIO`) ends the output.
    fn read_chunk(
        &mut self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send;
}

impl<R: AsyncRead + Unpin + Send> OutputSource for R {
    async fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }
}

/// A pty master as an output source (the `Arc` is shared with the input side).
struct PtyOutput(Arc<pty::PtyMaster>);

impl OutputSource for PtyOutput {
    async fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// Publishes output until EOF, or until the source has been drained after the process exited
/// (a grandchild may keep a pipe open forever).
async fn pump(
    process: Arc<Process>,
    mut source: impl OutputSource,
    chunk: usize,
    wrap: fn(Vec<u8>) -> process_event::data_event::Output,
) {
    let mut buf = vec![0; chunk];
    let mut exited = process.exited.subscribe();
    loop {
        let read = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_IDLE, source.read_chunk(&mut buf)).await {
                Ok(read) => read,
                Err(_idle) => break,
            }
        } else {
            tokio::select! {
                read = source.read_chunk(&mut buf) => read,
                _ = exited.wait_for(|exited| *exited) => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => process.publish(data(buf[..n].to_vec(), wrap)).await,
        }
    }
}

/// The end event as E2B's envd reports it (Go's `ProcessState`): exit code (-1 when killed by a
/// signal), `exited`, the status text, and the same text as `error` when it was not a success.
fn end_event(status: io::Result<ExitStatus>) -> process_event::EndEvent {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            return process_event::EndEvent {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(format!("failed to wait for process: {e}")),
            };
        }
    };
    let (exit_code, text) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, format!("exit status {code}")),
        (None, Some(signal)) => {
            let mut text = format!("signal: {}", signal_name(signal));
            if status.core_dumped() {
                text.push_str(" (core dumped)");
            }
            (-1, text)
        }
        (None, None) => (-1, "unknown".to_owned()),
    };
    process_event::EndEvent {
        exit_code,
        exited: status.code().is_some(),
        error: (!status.success()).then(|| text.clone()),
        status: text,
    }
}

/// Go's names for signals, which the SDKs show in `CommandExitError`.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGUSR2 => "user defined signal 2",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::end_event;
    use std::{os::unix::process::ExitStatusExt, process::ExitStatus};

    #[test]
    fn end_events_match_go_process_state() {
        let ok = end_event(Ok(ExitStatus::from_raw(0)));
        assert_eq!(
            (ok.exit_code, ok.exited, ok.status.as_str(), ok.error),
            (0, true, "exit status 0", None)
        );
        let failed = end_event(Ok(ExitStatus::from_raw(3 << 8)));
        assert_eq!(failed.exit_code, 3);
        assert_eq!(failed.error.as_deref(), Some("exit status 3"));
        let killed = end_event(Ok(ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(
            (killed.exit_code, killed.exited, killed.status.as_str()),
            (-1, false, "signal: killed")
        );
    }
}
