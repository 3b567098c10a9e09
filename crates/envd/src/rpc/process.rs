//! `process.Process`: the RPCs, on top of [`crate::process::ProcessTable`].

use super::{Call, FrameReader, StreamSink, client_stream, server_stream, unary};
use crate::{
    paths,
    process::{Event, Process, Selector, Spec},
    state::Envd,
};
use axum::Router;
use connect::{Code, Error, Message};
use envd_proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, ProcessEvent, ProcessInfo, ProcessSelector, SendInputRequest, SendInputResponse,
    SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse, StreamInputRequest,
    StreamInputResponse, UpdateRequest, UpdateResponse, paths as rpc, process_event, process_input,
    process_selector, stream_input_request,
};
use nix::sys::signal::Signal as UnixSignal;
use std::sync::Arc;
use tokio::{sync::mpsc, time::Instant};

/// Default terminal size when a pty is requested without one.
const DEFAULT_PTY_SIZE: (u16, u16) = (80, 24);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn routes() -> Router<Arc<Envd>> {
    Router::new()
        .route(rpc::LIST, unary(list))
        .route(rpc::START, server_stream(start))
        .route(rpc::CONNECT, server_stream(connect_process))
        .route(rpc::SEND_INPUT, unary(send_input))
        .route(rpc::STREAM_INPUT, client_stream(stream_input))
        .route(rpc::SEND_SIGNAL, unary(send_signal))
        .route(rpc::CLOSE_STDIN, unary(close_stdin))
        .route(rpc::UPDATE, unary(update))
}

async fn list(envd: Arc<Envd>, _: Call, _: ListRequest) -> Result<ListResponse, Error> {
    let processes = envd
        .processes
        .running()
        .iter()
        .map(|p| ProcessInfo {
            config: Some(p.config.clone()),
            pid: p.pid,
            tag: p.tag.clone(),
        })
        .collect();
    Ok(ListResponse { processes })
}

async fn start(
    envd: Arc<Envd>,
    call: Call,
    request: StartRequest,
    sink: StreamSink<StartResponse>,
) -> Result<(), Error> {
    let config = request
        .process
        .ok_or_else(|| Error::invalid_argument("'process' is required"))?;
    if config.cmd.is_empty() {
        return Err(Error::invalid_argument("'process.cmd' must not be empty"));
    }
    let user = call.user(&envd)?;
    let (cwd, env) = {
        let defaults = envd.defaults();
        let cwd = match config.cwd.as_deref().filter(|cwd| !cwd.is_empty()) {
            Some(cwd) => paths::resolve(cwd, &user.home),
            None => defaults
                .default_workdir
                .clone()
                .unwrap_or_else(|| user.home.clone()),
        };
        let mut env = vec![
            (
                "PATH".to_owned(),
                std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
            ),
            ("HOME".to_owned(), user.home.display().to_string()),
            ("USER".to_owned(), user.name.clone()),
            ("LOGNAME".to_owned(), user.name.clone()),
            ("SHELL".to_owned(), user.shell.display().to_string()),
            ("E2B_SANDBOX".to_owned(), "true".to_owned()),
        ];
        env.extend(
            defaults
                .env_vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env.extend(config.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
        (cwd, env)
    };
    if !cwd.is_dir() {
        return Err(Error::invalid_argument(format!(
            "cwd '{}' does not exist",
            cwd.display()
        )));
    }
    let pty = request.pty.map(|pty| {
        pty.size.map_or(DEFAULT_PTY_SIZE, |size| {
            (clamp_u16(size.cols), clamp_u16(size.rows))
        })
    });
    let spec = Spec {
        cmd: config.cmd.clone(),
        args: config.args.clone(),
        env,
        cwd,
        user,
        pty,
        stdin: request.stdin.unwrap_or(true),
    };
    let (process, events) = envd.processes.start(spec, config, request.tag)?;
    // E2B's envd kills a started process when its request deadline passes, even if the client
    // has already gone.
    if let Some(limit) = call.timeout() {
        process.kill_after(limit);
    }
    follow(&process, events, &call, &sink, |event| StartResponse {
        event: Some(event),
    })
    .await
}

async fn connect_process(
    envd: Arc<Envd>,
    call: Call,
    request: ConnectRequest,
    sink: StreamSink<ConnectResponse>,
) -> Result<(), Error> {
    let process = envd.processes.get(&selector(request.process)?)?;
    let events = process.subscribe();
    follow(&process, events, &call, &sink, |event| ConnectResponse {
        event: Some(event),
    })
    .await
}

/// Streams a process's events: the start event, output with keepalives in silences, then the
/// end event. A client that goes away simply stops receiving; the process keeps running.
/// `Connect-Timeout-Ms` ends the stream with `deadline_exceeded`.
async fn follow<M: Message>(
    process: &Process,
    mut events: mpsc::Receiver<Event>,
    call: &Call,
    sink: &StreamSink<M>,
    wrap: impl Fn(ProcessEvent) -> M,
) -> Result<(), Error> {
    let emit = |event: Event| wrap(ProcessEvent { event: Some(event) });
    let start = Event::Start(process_event::StartEvent { pid: process.pid });
    if sink.send(&emit(start)).await.is_err() {
        return Ok(());
    }
    let keepalive = call.keepalive();
    let deadline = call.timeout().map(|limit| Instant::now() + limit);
    let mut next_keepalive = Instant::now() + keepalive;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(Error::internal("process output ended without an end event"));
                };
                let is_end = matches!(event, Event::End(_));
                if sink.send(&emit(event)).await.is_err() || is_end {
                    return Ok(());
                }
                next_keepalive = Instant::now() + keepalive;
            }
            () = tokio::time::sleep_until(next_keepalive) => {
                let ping = Event::Keepalive(process_event::KeepAlive {});
                if sink.send(&emit(ping)).await.is_err() {
                    return Ok(());
                }
                next_keepalive = Instant::now() + keepalive;
            }
            () = sleep_until_or_forever(deadline) => {
                return Err(Error::new(Code::DeadlineExceeded, "the process did not finish within the request timeout"));
            }
            () = sink.disconnected() => return Ok(()),
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn send_input(
    envd: Arc<Envd>,
    _: Call,
    request: SendInputRequest,
) -> Result<SendInputResponse, Error> {
    let process = envd.processes.get_running(&selector(request.process)?)?;
    write_input(&process, request.input).await?;
    Ok(SendInputResponse {})
}

async fn stream_input(
    envd: Arc<Envd>,
    _: Call,
    mut requests: FrameReader<StreamInputRequest>,
) -> Result<StreamInputResponse, Error> {
    let mut process = None;
    while let Some(request) = requests.next().await {
        match request?.event {
            Some(stream_input_request::Event::Start(start)) => {
                process = Some(envd.processes.get_running(&selector(start.process)?)?);
            }
            Some(stream_input_request::Event::Data(data)) => {
                let process = process.as_ref().ok_or_else(|| {
                    Error::new(
                        Code::FailedPrecondition,
                        "the first message must be 'start'",
                    )
                })?;
                write_input(process, data.input).await?;
            }
            Some(stream_input_request::Event::Keepalive(_)) | None => {}
        }
    }
    Ok(StreamInputResponse {})
}

async fn write_input(
    process: &Process,
    input: Option<envd_proto::process::ProcessInput>,
) -> Result<(), Error> {
    match input.and_then(|input| input.input) {
        Some(process_input::Input::Stdin(data)) => Ok(process.write_input(&data, false).await?),
        Some(process_input::Input::Pty(data)) => Ok(process.write_input(&data, true).await?),
        None => Err(Error::invalid_argument("'input' must set 'stdin' or 'pty'")),
    }
}

async fn send_signal(
    envd: Arc<Envd>,
    _: Call,
    request: SendSignalRequest,
) -> Result<SendSignalResponse, Error> {
    let signal = match Signal::try_from(request.signal) {
        Ok(Signal::Sigkill) => UnixSignal::SIGKILL,
        Ok(Signal::Sigterm) => UnixSignal::SIGTERM,
        _ => {
            return Err(Error::invalid_argument(
                "'signal' must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
            ));
        }
    };
    let process = envd.processes.get_running(&selector(request.process)?)?;
    process.signal(signal)?;
    Ok(SendSignalResponse {})
}

async fn close_stdin(
    envd: Arc<Envd>,
    _: Call,
    request: CloseStdinRequest,
) -> Result<CloseStdinResponse, Error> {
    let process = envd.processes.get_running(&selector(request.process)?)?;
    process.close_stdin().await?;
    Ok(CloseStdinResponse {})
}

async fn update(envd: Arc<Envd>, _: Call, request: UpdateRequest) -> Result<UpdateResponse, Error> {
    let process = envd.processes.get_running(&selector(request.process)?)?;
    if let Some(size) = request.pty.and_then(|pty| pty.size) {
        process.resize(clamp_u16(size.cols), clamp_u16(size.rows))?;
    }
    Ok(UpdateResponse {})
}

fn selector(selector: Option<ProcessSelector>) -> Result<Selector, Error> {
    match selector.and_then(|s| s.selector) {
        Some(process_selector::Selector::Pid(pid)) => Ok(Selector::Pid(pid)),
        Some(process_selector::Selector::Tag(tag)) => Ok(Selector::Tag(tag)),
        None => Err(Error::invalid_argument(
            "'process' must select a pid or a tag",
        )),
    }
}

fn clamp_u16(value: u32) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}
