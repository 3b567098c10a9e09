"""Fixtures: a real envd driven by the official e2b SDK in debug mode (the SDK then talks to
http://localhost:49983 directly, as it would to envd inside a sandbox)."""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ["E2B_DEBUG"] = "true"
os.environ["E2B_API_KEY"] = "e2b_" + "0" * 40

from kiln_envd import SDK_PORT, Envd  # noqa: E402


@pytest.fixture(scope="session")
def envd():
    """The envd the SDK talks to, with `user` as its default user (as in a Kiln sandbox)."""
    if os.geteuid() != 0:
        pytest.fail("the envd SDK tests need root (private mount namespace with a test user)")
    server = Envd(port=SDK_PORT)
    status, _, _ = server.init(defaultUser="user", envVars={"KILN_SANDBOX_VAR": "from-init"})
    assert status == 204
    yield server
    server.stop()


@pytest.fixture
def sandbox(envd):
    from e2b import Sandbox

    return Sandbox.create()


@pytest.fixture
def spare_envd():
    """A private envd on its own port, for tests that change its state (tokens, defaults)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Envd(port=port)
    yield server
    server.stop()


@pytest.fixture
def socket_envd():
    """An envd serving only its host socket, as in a Kiln sandbox."""
    directory = Path(tempfile.mkdtemp(prefix="kiln-sock-"))
    server = Envd(socket_path=directory / "envd.sock")
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)
