"""Pause and resume with memory, through the official SDK, on the default `Local` storage.

A background process counts in a shell variable (memory only) and writes the count to a file;
after pause → connect the same process must still be there and the count must go on from where
it was, not start again.
"""

import shutil
import time

import pytest
from conftest import api, proxy_get
from kiln_server import HOME

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"


def start_counter(sbx):
    handle = sbx.commands.run(COUNTER, background=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        count = read_count(sbx)
        if count >= 20:
            return handle.pid, count
        time.sleep(0.1)
    raise AssertionError("the counter did not start")


def read_count(sbx):
    text = sbx.commands.run("cat /tmp/count 2>/dev/null || echo 0").stdout.strip()
    return int(text or 0)


def assert_continued(sbx, pid, before):
    sbx.commands.run(f"kill -0 {pid}")  # raises if the process is gone
    first = read_count(sbx)
    assert first >= before, f"the count restarted: {first} after {before}"
    time.sleep(0.5)
    assert read_count(sbx) > first, "the counter runs again after the resume"


def stored_snapshots(sandbox_id):
    return list((HOME / "storage" / "templates" / "snapshots" / sandbox_id).glob("*/manifest.json"))


def test_pause_then_connect_keeps_processes_memory_and_files(kiln):
    from e2b import Sandbox
    from e2b.exceptions import SandboxException

    sbx = Sandbox.create(timeout=120, metadata={"purpose": "pause"})
    try:
        sbx.files.write("/home/user/notes.txt", "written before the pause")
        sbx.commands.run("echo scratch > /tmp/scratch && mkdir -p /home/user/dir")
        pid, before = start_counter(sbx)

        assert sbx.pause() is True
        assert len(stored_snapshots(sbx.sandbox_id)) == 1, "the snapshot is in storage, committed"
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.state.value == "paused"
        assert info.metadata == {"purpose": "pause"}
        listed = {s.sandbox_id: s.state.value for s in Sandbox.list().next_items()}
        assert listed.get(sbx.sandbox_id) == "paused"
        assert sbx.pause() is False, "pausing a paused sandbox is a 409"
        with pytest.raises(SandboxException):
            sbx.commands.run("true", request_timeout=5)

        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert resumed.sandbox_id == sbx.sandbox_id
        assert_continued(resumed, pid, before)
        assert resumed.files.read("/home/user/notes.txt") == "written before the pause"
        assert resumed.commands.run("cat /tmp/scratch; test -d /home/user/dir && echo dir").stdout == "scratch\ndir\n"
        assert resumed.commands.run("whoami").stdout == "user\n"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
        assert stored_snapshots(sbx.sandbox_id) == [], "a resumed sandbox's snapshot is removed"

        status, _, _ = api("POST", f"/v2/sandboxes/{sbx.sandbox_id}/connect", {"timeout": 60})
        assert status == 200, "connect to a running sandbox is 200"
        status, body, _ = api("POST", f"/sandboxes/{sbx.sandbox_id}/resume", {})
        assert status == 409, body
    finally:
        sbx.kill()


def test_resume_fetches_the_snapshot_back_from_storage(kiln):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=120)
    try:
        pid, before = start_counter(sbx)
        assert sbx.pause()
        local = HOME / "cache" / "snapshots" / sbx.sandbox_id
        assert local.exists()
        shutil.rmtree(local)
        status, body, _ = api("POST", f"/sandboxes/{sbx.sandbox_id}/resume", {"timeout": 60})
        assert status == 201, body
        assert body["sandboxID"] == sbx.sandbox_id
        assert_continued(Sandbox.connect(sbx.sandbox_id), pid, before)
    finally:
        sbx.kill()


def test_a_corrupt_snapshot_fails_the_resume_with_a_reason(kiln):
    from e2b import Sandbox
    from e2b.exceptions import SandboxException

    sbx = Sandbox.create(timeout=120)
    assert sbx.pause()
    shutil.rmtree(HOME / "cache" / "snapshots" / sbx.sandbox_id)
    (stored,) = stored_snapshots(sbx.sandbox_id)
    image = stored.parent / "checkpoint.img"
    image.write_bytes(b"not a checkpoint" + image.read_bytes()[16:])
    started = time.time()
    with pytest.raises(SandboxException) as error:
        Sandbox.connect(sbx.sandbox_id)
    assert time.time() - started < 30, "a corrupt snapshot fails fast"
    assert "sha256" in str(error.value) or "corrupt" in str(error.value).lower(), str(error.value)
    assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused", "a failed resume loses nothing"
    assert Sandbox.kill(sbx.sandbox_id) is True


def test_delete_a_paused_sandbox_removes_its_snapshot(kiln):
    from e2b import Sandbox
    from e2b.exceptions import SandboxNotFoundException

    sbx = Sandbox.create(timeout=120)
    assert sbx.pause()
    assert stored_snapshots(sbx.sandbox_id)
    assert Sandbox.kill(sbx.sandbox_id) is True
    assert stored_snapshots(sbx.sandbox_id) == []
    assert not (HOME / "cache" / "snapshots" / sbx.sandbox_id).exists()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert Sandbox.kill(sbx.sandbox_id) is False
    status, _, _ = api("POST", f"/sandboxes/{sbx.sandbox_id}/pause", {})
    assert status == 404
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def test_auto_pause_on_timeout_then_auto_resume_through_the_proxy(kiln):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        status, detail, _ = api("GET", f"/sandboxes/{sbx.sandbox_id}")
        assert status == 200 and detail["lifecycle"] == {"onTimeout": "pause", "autoResume": True}, detail
        pid, before = start_counter(sbx)
        deadline = time.time() + 30
        while Sandbox.get_info(sbx.sandbox_id).state.value != "paused":
            assert time.time() < deadline, "the sandbox was not paused at its timeout"
            time.sleep(0.5)
        # Any request through the proxy brings it back: here envd's health endpoint.
        status, _ = proxy_get("/health", sbx.sandbox_id, 49983)
        assert status in (200, 204)
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
        assert_continued(sbx, pid, before)
        assert Sandbox.get_info(sbx.sandbox_id).end_at.timestamp() - time.time() > 200, "auto-resume gives at least 300 s"
    finally:
        sbx.kill()


def test_without_auto_resume_the_proxy_does_not_resume(kiln):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=120)
    try:
        assert sbx.pause()
        status, body = proxy_get("/health", sbx.sandbox_id, 49983)
        assert status == 502, body
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_expiry_without_auto_pause_still_kills(kiln):
    from e2b import Sandbox
    from e2b.exceptions import SandboxNotFoundException

    sbx = Sandbox.create(timeout=2)
    time.sleep(4)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_a_server_in_the_sandbox_answers_again_after_resume(kiln):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=120)
    try:
        sbx.commands.run("mkdir -p /tmp/site && echo served > /tmp/site/index.html")
        sbx.commands.run("cd /tmp/site && python3 -m http.server 8000 >/dev/null 2>&1", background=True)
        deadline = time.time() + 10
        while proxy_get("/", sbx.sandbox_id, 8000)[0] != 200:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)
        assert sbx.pause()
        Sandbox.connect(sbx.sandbox_id)
        assert proxy_get("/", sbx.sandbox_id, 8000) == (200, "served\n")
    finally:
        sbx.kill()
