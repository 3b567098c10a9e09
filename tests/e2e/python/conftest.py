"""Kiln end to end: `kiln up` started by the suite, driven by the official e2b SDK exactly as a
user would (E2B_API_URL / E2B_SANDBOX_URL / E2B_API_KEY from Kiln's env file)."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KILN = ROOT / "target" / "release" / "kiln"
# Persistent across runs on one machine, so the base template is built once per machine.
HOME = Path(os.environ.get("KILN_TEST_HOME", "/var/lib/kiln-test"))
API = "127.0.0.1:13000"
PROXY = "127.0.0.1:13002"
TEAM_LIMIT = 10
BASE_BUILD_TIMEOUT = 900


def runsc_processes():
    """runsc processes using this Kiln's state root."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "runsc" in line and str(HOME) in line]


@pytest.fixture(scope="session")
def kiln():
    if os.geteuid() != 0:
        pytest.fail("the Kiln end-to-end tests need root")
    env_file = HOME / "env"
    HOME.mkdir(parents=True, exist_ok=True)
    log = open(HOME / "kiln-up.log", "w")
    env = {
        **os.environ,
        "KILN_HOME": str(HOME),
        "KILN_API_ADDR": API,
        "KILN_PROXY_ADDR": PROXY,
        "KILN_MAX_SANDBOXES": str(TEAM_LIMIT),
    }
    proc = subprocess.Popen([str(KILN), "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + BASE_BUILD_TIMEOUT
    while not env_file.exists():
        if proc.poll() is not None:
            pytest.fail(f"kiln up exited with {proc.returncode}: {(HOME / 'kiln-up.log').read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("kiln up did not become ready")
        time.sleep(0.2)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    settings = dict(
        line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if line.startswith("export ")
    )
    os.environ.update(settings)
    os.environ.pop("E2B_DEBUG", None)
    yield settings
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log.close()
    assert proc.returncode == 0, "kiln up exits cleanly on SIGTERM"
    assert not env_file.exists(), "the env file goes away with Kiln"
    time.sleep(0.5)
    assert runsc_processes() == [], "no runsc process outlives Kiln"
    assert not any((HOME / "sandboxes").iterdir()), "no sandbox directory outlives Kiln"


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
    request.add_header("X-API-Key", key if key is not None else os.environ["E2B_API_KEY"])
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
