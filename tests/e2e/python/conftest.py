"""Kiln end to end: `kiln up` started by the suite, driven by the official e2b SDK exactly as a
user would (E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY from Kiln's env file)."""

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kiln_server import API, HOME, PROXY, KilnServer, runsc_processes

TEAM_LIMIT = 10


@pytest.fixture(scope="session")
def kiln():
    try:
        server = KilnServer(team_limit=TEAM_LIMIT)
    except RuntimeError as error:
        pytest.fail(str(error))
    assert oct(server.env_file.stat().st_mode & 0o777) == "0o600"
    yield server.settings
    assert server.stop() == 0, "kiln up exits cleanly on SIGTERM"
    assert not server.env_file.exists(), "the env file goes away with Kiln"
    time.sleep(0.5)
    assert runsc_processes() == [], "no runsc process outlives Kiln"
    assert not any((HOME / "sandboxes").iterdir()), "no sandbox directory outlives Kiln"
    assert [m for m in open("/proc/mounts") if str(HOME) in m] == [], "no mount outlives Kiln"
    kiln_cgroups = Path("/sys/fs/cgroup/memory/kiln")
    assert not kiln_cgroups.exists() or not [c for c in kiln_cgroups.iterdir() if c.is_dir()], "no cgroup outlives Kiln"


@pytest.fixture
def sandbox(kiln):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=120)
    yield sbx
    sbx.kill()


def api(method, path, body=None, key=None, raw=None, headers=None):
    """A raw API call; returns (status, parsed JSON or text, headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://{API}{path}", data=data, method=method)
    key = key if key is not None else os.environ["E2B_API_KEY"]
    if key:
        request.add_header("X-API-Key", key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            status, response_headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        status, response_headers = error.code, dict(error.headers)
    try:
        return status, json.loads(text) if text else None, response_headers
    except json.JSONDecodeError:
        return status, text, response_headers


def proxy_get(path, sandbox_id, port, host=None):
    request = urllib.request.Request(f"http://{PROXY}{path}")
    if host:
        request.add_header("Host", host)
    else:
        request.add_header("E2b-Sandbox-Id", sandbox_id)
        request.add_header("E2b-Sandbox-Port", str(port))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
