"""Sandboxes through Kiln with the official Python SDK: lifecycle, commands, files, isolation."""

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import TEAM_LIMIT, api, proxy_get
from e2b import AuthenticationException, CommandExitException, NotFoundException, Sandbox


def test_create_gives_an_e2b_sandbox(sandbox):
    assert re.fullmatch(r"[a-z0-9]+", sandbox.sandbox_id)
    info = sandbox.get_info()
    assert info.template_id == "base" and info.state.value == "running"
    assert info.metadata == {}


def test_commands_run_as_user_in_home(sandbox):
    result = sandbox.commands.run("id -un; pwd; echo $HOME; python3 -c 'print(6*7)'")
    assert result.stdout == "user\n/home/user\n/home/user\n42\n"
    assert sandbox.commands.run("id -u", user="root").stdout == "0\n"


def test_passwordless_sudo(sandbox):
    """gVisor defeats setuid binaries, so the sandbox's sudo goes through envd."""
    assert sandbox.commands.run("sudo -n id -u").stdout == "0\n"
    assert sandbox.commands.run("sudo whoami; sudo -u user whoami").stdout == "root\nuser\n"
    root_file = sandbox.commands.run("echo secret | sudo tee /root/only-root >/dev/null && sudo cat /root/only-root")
    assert root_file.stdout == "secret\n"
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("cat /root/only-root")
    assert "Permission denied" in raised.value.stderr
    assert sandbox.commands.run("sudo sh -c 'echo $HOME $SUDO_USER'; sudo FOO=1 env | grep ^FOO").stdout == "/root user\nFOO=1\n"
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("sudo sh -c 'exit 3'")
    assert raised.value.exit_code == 3
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("sudo -u nobody sudo true")
    assert raised.value.exit_code == 1 and "nobody is not in the sudoers file" in raised.value.stderr
    # A killed sudo takes its command with it.
    sandbox.commands.run("sudo sleep 600", background=True)
    time.sleep(0.5)
    sandbox.commands.run("pkill -KILL -x sudo")
    time.sleep(0.5)
    assert sandbox.commands.run("pgrep -x sleep || echo none").stdout == "none\n"


def test_exit_codes_streams_and_envs(sandbox):
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("echo bad >&2; exit 4")
    assert raised.value.exit_code == 4 and raised.value.stderr == "bad\n"
    chunks = []
    sandbox.commands.run("for i in 1 2 3; do echo $i; sleep 0.05; done", on_stdout=chunks.append)
    assert "".join(chunks) == "1\n2\n3\n"
    assert sandbox.commands.run("echo $A", envs={"A": "b"}).stdout == "b\n"


def test_sandbox_env_vars_from_create(kiln):
    sbx = Sandbox.create(envs={"FROM_CREATE": "yes"}, metadata={"owner": "tests"})
    try:
        assert sbx.commands.run("echo $FROM_CREATE").stdout == "yes\n"
        assert sbx.get_info().metadata == {"owner": "tests"}
    finally:
        sbx.kill()


def test_files_through_the_proxy(sandbox):
    sandbox.files.write("notes.txt", "through kiln")
    assert sandbox.files.read("/home/user/notes.txt") == "through kiln"
    data = os.urandom(3 * 1024 * 1024)
    sandbox.files.write("/tmp/big.bin", data)
    assert sandbox.files.read("/tmp/big.bin", format="bytes") == data
    assert "notes.txt" in [e.name for e in sandbox.files.list("/home/user")]
    with pytest.raises(NotFoundException):
        sandbox.files.read("/nope")


def test_background_process_list_kill(sandbox):
    handle = sandbox.commands.run("sleep 100", background=True)
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid)


def test_pty(sandbox):
    from e2b import PtySize

    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(terminal.pid, b"echo in-pty; exit\n")
    out = []
    terminal.wait(on_pty=out.append)
    assert b"in-pty" in b"".join(out)


def test_list_and_set_timeout(sandbox):
    assert sandbox.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]
    before = sandbox.get_info().end_at
    sandbox.set_timeout(600)
    after = sandbox.get_info().end_at
    assert (after - before).total_seconds() > 400


def test_metadata_filter_and_pagination(kiln):
    from e2b import SandboxQuery

    tagged = [Sandbox.create(metadata={"suite": "paging", "n": str(i)}) for i in range(3)]
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": "paging"}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        assert {s.sandbox_id for s in first + second} == {s.sandbox_id for s in tagged}
    finally:
        for sbx in tagged:
            sbx.kill()


def test_expiry_kills(kiln):
    sbx = Sandbox.create(timeout=2)
    time.sleep(4)
    with pytest.raises(NotFoundException):
        sbx.get_info()
    assert not sbx.is_running()


def test_kill_semantics(kiln):
    from kiln_server import runsc_processes

    sbx = Sandbox.create()
    assert [p for p in runsc_processes() if sbx.sandbox_id in p], "the sandbox has runsc processes"
    assert sbx.kill() is True
    assert [p for p in runsc_processes() if sbx.sandbox_id in p] == [], "kill leaves no process"
    assert Sandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(NotFoundException):
        sbx.get_info()


def test_a_server_in_the_sandbox_is_reachable(sandbox):
    sandbox.commands.run("mkdir -p /tmp/www && echo served > /tmp/www/index.html")
    sandbox.commands.run("cd /tmp/www && python3 -m http.server 8080", background=True)
    deadline = time.time() + 10
    status = None
    while time.time() < deadline and status != 200:
        status, body = proxy_get("/index.html", sandbox.sandbox_id, 8080)
        time.sleep(0.2)
    assert (status, body) == (200, "served\n")
    status, body = proxy_get("/index.html", None, None, host=f"8080-{sandbox.sandbox_id}.kiln.test")
    assert (status, body) == (200, "served\n")
    status, body = proxy_get("/", sandbox.sandbox_id, 9999)
    assert status == 502 and "port is not open" in body


def test_two_sandboxes_are_isolated(kiln):
    a, b = Sandbox.create(), Sandbox.create()
    try:
        a.files.write("/tmp/secret", "a's")
        a.commands.run("sleep 300", background=True)
        assert not b.files.exists("/tmp/secret")
        assert "sleep 300" not in b.commands.run("ps -eo args").stdout
        assert b.commands.run("cat /tmp/secret 2>&1 || echo absent").stdout.strip().endswith("absent")
    finally:
        a.kill()
        b.kill()


def test_parallel_creates(kiln):
    with ThreadPoolExecutor(6) as pool:
        sandboxes = list(pool.map(lambda _: Sandbox.create(), range(6)))
    try:
        assert len({s.sandbox_id for s in sandboxes}) == 6
        with ThreadPoolExecutor(6) as pool:
            outputs = list(pool.map(lambda s: s.commands.run("echo ok").stdout, sandboxes))
        assert outputs == ["ok\n"] * 6
    finally:
        for sbx in sandboxes:
            sbx.kill()


def test_team_limit_is_429(kiln):
    from e2b import RateLimitException

    created = []
    try:
        with pytest.raises(RateLimitException):
            for _ in range(TEAM_LIMIT + 1):
                created.append(Sandbox.create())
        assert len(created) == TEAM_LIMIT
    finally:
        for sbx in created:
            sbx.kill()


def test_wrong_api_key_is_401(kiln):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "f" * 40)
    assert api("GET", "/v2/sandboxes", key="e2b_nope")[0] == 401


def test_rest_exec_endpoint(sandbox):
    status, body, _ = api("POST", f"/sandboxes/{sandbox.sandbox_id}/exec", {"command": "sh", "args": ["-c", "echo hi; echo e >&2; exit 3"]})
    assert status == 200
    assert body == {"exitCode": 3, "stdout": "hi\n", "stderr": "e\n", "status": "exit status 3"}
    status, body, _ = api("POST", f"/sandboxes/{sandbox.sandbox_id}/exec", {"command": "id", "args": ["-un"], "user": "root"})
    assert body["stdout"] == "root\n"


def test_bad_input(kiln, sandbox):
    status, body, _ = api("POST", "/sandboxes", {"templateID": "no-such-template"})
    assert status == 404 and "no-such-template" in body["message"] and body["code"] == 404
    status, body, _ = api("POST", "/sandboxes", {"templateID": "base", "timeout": 0})
    assert status == 400 and body["code"] == 400
    status, body, _ = api("POST", "/v2/sandboxes", raw=b"{not json")
    assert status == 400 and "message" in body
    status, body, _ = api("GET", "/sandboxes/doesnotexist")
    assert status == 404 and body == {"code": 404, "message": "sandbox 'doesnotexist' not found"}
    status, body, _ = api("POST", f"/sandboxes/{sandbox.sandbox_id}/timeout", {"timeout": -5})
    assert status == 400


def test_proxy_refuses_unknown_sandboxes_and_internal_paths(sandbox):
    status, body = proxy_get("/health", "doesnotexist", 49983)
    assert status == 502 and '"The sandbox was not found"' in body
    status, body = proxy_get("/init", sandbox.sandbox_id, 49983)
    assert status == 403


def test_templates_are_listed(kiln):
    status, body, _ = api("GET", "/templates")
    assert status == 200 and "base" in [t["templateID"] for t in body]


def test_metrics(sandbox):
    metrics = sandbox.get_metrics()
    assert metrics and metrics[0].mem_total > 0 and metrics[0].cpu_count >= 1


def test_bearer_access_token(kiln, sandbox):
    from kiln_server import HOME

    token = (HOME / "secrets" / "access-token").read_text().strip()
    assert token.startswith("sk_e2b_")
    status, body, _ = api("GET", f"/sandboxes/{sandbox.sandbox_id}", key="", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and body["sandboxID"] == sandbox.sandbox_id
    status, _, _ = api("GET", "/v2/sandboxes", key="", headers={"Authorization": "Bearer sk_e2b_wrong"})
    assert status == 401


def test_cli(kiln):
    import subprocess

    from kiln_server import HOME, KILN

    env = {**os.environ, "KILN_HOME": str(HOME)}
    cli = lambda *args: subprocess.run([str(KILN), *args], env=env, capture_output=True, text=True, timeout=60)
    created = cli("sandbox", "create")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    assert sandbox_id in cli("sandbox", "list").stdout
    executed = cli("sandbox", "exec", sandbox_id, "--", "sh", "-c", "echo from-cli; id -un")
    assert (executed.returncode, executed.stdout) == (0, "from-cli\nuser\n")
    assert cli("sandbox", "exec", sandbox_id, "--", "false").returncode != 0
    assert "base" in cli("template", "list").stdout
    assert cli("sandbox", "kill", sandbox_id).returncode == 0
    assert cli("sandbox", "kill", sandbox_id).returncode != 0


def test_cgroup_limits_from_the_template(sandbox):
    info = sandbox.get_info()
    cgroup = f"/kiln/{sandbox.sandbox_id}"
    memory = open(f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes").read().strip()
    assert int(memory) == info.memory_mb * 1024 * 1024
    quota = open(f"/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_quota_us").read().strip()
    period = open(f"/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_period_us").read().strip()
    assert int(quota) == info.cpu_count * int(period)


def test_connect_and_refresh_never_shorten(sandbox):
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.commands.run("echo connected").stdout == "connected\n"
    sandbox.set_timeout(900)
    before = sandbox.get_info().end_at
    status, _, _ = api("POST", f"/sandboxes/{sandbox.sandbox_id}/refreshes", {"duration": 10})
    assert status == 204
    status, _, _ = api("POST", f"/v2/sandboxes/{sandbox.sandbox_id}/connect", {"timeout": 10})
    assert status == 200
    assert sandbox.get_info().end_at == before, "a shorter refresh or connect keeps the later end"
    status, _, _ = api("POST", f"/sandboxes/{sandbox.sandbox_id}/refreshes", {"duration": 1200})
    assert (sandbox.get_info().end_at - before).total_seconds() > 200
    with pytest.raises(NotFoundException):
        Sandbox.connect("doesnotexist")
