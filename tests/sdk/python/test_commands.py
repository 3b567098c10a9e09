"""Commands through the official Python SDK: process.Process over Connect."""

import time

import pytest
from e2b import CommandExitException, PtySize, TimeoutException


def test_echo_runs_as_default_user_in_home(sandbox, envd):
    result = sandbox.commands.run("echo hello; id -un; pwd; echo $HOME $USER $LOGNAME")
    assert result.exit_code == 0
    assert result.stdout == f"hello\nuser\n{envd.home}\n{envd.home} user user\n"
    assert result.stderr == ""


def test_exit_code_and_stderr(sandbox):
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("echo out; echo oops >&2; exit 3")
    assert raised.value.exit_code == 3
    assert raised.value.stdout == "out\n"
    assert raised.value.stderr == "oops\n"
    assert "exit status 3" in raised.value.error


def test_envs_cwd_and_init_env(sandbox):
    result = sandbox.commands.run("echo $FOO $KILN_SANDBOX_VAR; pwd", envs={"FOO": "bar"}, cwd="/tmp")
    assert result.stdout == "bar from-init\n/tmp\n"


def test_relative_cwd_is_in_home(sandbox, envd):
    sandbox.commands.run("mkdir -p sub")
    assert sandbox.commands.run("pwd", cwd="sub").stdout == f"{envd.home}/sub\n"


def test_missing_cwd_is_an_error(sandbox):
    with pytest.raises(Exception) as raised:
        sandbox.commands.run("true", cwd="/does/not/exist")
    assert "does not exist" in str(raised.value)


def test_root_on_request(sandbox):
    result = sandbox.commands.run("id -u; echo $HOME", user="root")
    assert result.stdout == "0\n/root\n"


def test_streaming_callbacks_arrive_in_order(sandbox):
    chunks = []
    sandbox.commands.run(
        "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done",
        on_stdout=lambda data: chunks.append(data),
    )
    assert "".join(chunks) == "".join(f"line{i}\n" for i in range(1, 6))
    assert len(chunks) >= 3, "output must be streamed, not buffered until exit"


def test_timeout_kills_the_process(sandbox):
    marker = f"kiln-timeout-{time.time_ns()}"
    with pytest.raises(TimeoutException):
        sandbox.commands.run(f"sleep 30; echo {marker}", timeout=1)
    time.sleep(0.5)
    listed = [p.cmd + " " + " ".join(p.args) for p in sandbox.commands.list()]
    assert not any(marker in p for p in listed), "the timed-out process must be killed"


def test_background_list_and_kill(sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as raised:
        handle.wait()
    assert "signal: killed" in raised.value.error
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is False


def test_connect_reattaches_to_running_process(sandbox):
    handle = sandbox.commands.run("sleep 0.5; echo late", background=True)
    again = sandbox.commands.connect(handle.pid)
    assert again.wait().stdout == "late\n"


def test_stdin_and_close_stdin(sandbox):
    handle = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "abc\n")
    sandbox.commands.send_stdin(handle.pid, "def\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\ndef\ndone\n"


def test_stdin_closed_by_default(sandbox):
    assert sandbox.commands.run("cat; echo eof").stdout == "eof\n"


def test_pty_create_send_resize(sandbox):
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; tty; exit\n")
    output = []
    terminal.wait(on_pty=output.append)
    text = b"".join(output).decode(errors="replace")
    assert "30 100" in text
    assert "/dev/pts/" in text


def test_killing_a_pty(sandbox):
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert sandbox.pty.kill(terminal.pid) is True
    with pytest.raises(CommandExitException):
        terminal.wait()


async def test_async_sdk_commands(envd):
    from e2b import AsyncSandbox

    sandbox = await AsyncSandbox.create()
    result = await sandbox.commands.run("echo async; id -un")
    assert result.stdout == "async\nuser\n"
