"""After a crash (SIGKILL of `kiln up`), the next start removes every leftover sandbox."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
os.environ.pop("E2B_DEBUG", None)

from kiln_server import HOME, KilnServer, runsc_processes  # noqa: E402


def test_restart_after_crash_cleans_up():
    from e2b import Sandbox
    from e2b.exceptions import NotFoundException

    first = KilnServer(team_limit=5)
    sandbox = Sandbox.create()
    assert sandbox.commands.run("echo alive").stdout == "alive\n"
    first.proc.kill()  # a crash: no cleanup at all
    first.proc.wait(30)
    first.log.close()
    assert [p for p in runsc_processes() if sandbox.sandbox_id in p], "a crash leaves the sandbox running"

    second = KilnServer(team_limit=5)
    try:
        assert [p for p in runsc_processes() if sandbox.sandbox_id in p] == [], "restart removed the leftover"
        assert not (HOME / "sandboxes" / sandbox.sandbox_id).exists()
        try:
            sandbox.get_info()
            raise AssertionError("the leftover sandbox is still known")
        except NotFoundException:
            pass
        fresh = Sandbox.create()
        assert fresh.commands.run("echo fresh").stdout == "fresh\n"
    finally:
        assert second.stop() == 0
    time.sleep(0.5)
    assert runsc_processes() == []


def test_a_crash_during_a_build_fails_it_cleanly():
    """A build running when Kiln dies is failed with a reason on the next start (never stuck in
    "building"), and its build sandbox, overlay mounts and network are removed."""
    import json
    import urllib.request

    def call(method, path, body=None):
        request = urllib.request.Request(f"{os.environ['E2B_API_URL']}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        request.add_header("X-API-Key", os.environ["E2B_API_KEY"])
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return json.loads(text) if text else None

    first = KilnServer(team_limit=5)
    requested = call("POST", "/v3/templates", {"name": "crash-during-build"})
    template_id, build_id = requested["templateID"], requested["buildID"]
    call("POST", f"/v2/templates/{template_id}/builds/{build_id}",
         {"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["sleep 600", "root"]}]})
    deadline = time.time() + 120
    while not any("build-" in p for p in runsc_processes()):
        assert time.time() < deadline, "the build sandbox never started"
        time.sleep(0.2)
    first.proc.kill()
    first.proc.wait(30)
    first.log.close()

    second = KilnServer(team_limit=5)
    try:
        status = call("GET", f"/templates/{template_id}/builds/{build_id}/status")
        assert status["status"] == "error", status
        assert "restarted" in status["reason"]["message"], status
        assert not any("build-" in p for p in runsc_processes()), "the build sandbox is gone"
        assert [m for m in open("/proc/mounts") if str(HOME / "cache") in m] == [], "no build mount is left"
        assert not [n for n in os.listdir("/run/netns") if n.startswith("kiln-")] if os.path.isdir("/run/netns") else True
    finally:
        assert second.stop() == 0
