"""A real envd for tests and benchmarks, started by ../start-envd.sh (private mount namespace
with a test user `user`), plus small helpers for speaking its wire protocol by hand."""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
START_ENVD = ROOT / "tests" / "sdk" / "start-envd.sh"
ENVD = Path(os.environ.get("KILN_ENVD", ROOT / "target" / "release" / "envd"))
SDK_PORT = 49983


class Envd:
    """One envd process: its state directory, TCP port and (optionally) host socket."""

    def __init__(self, port=None, socket_path=None):
        if port:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as error:
                    raise RuntimeError(f"port {port} is taken; stop whatever listens there") from error
        self.state = Path(tempfile.mkdtemp(prefix="kiln-envd-test."))
        self.home = str(self.state / "home" / "user")
        self.port = port
        self.socket_path = socket_path
        args = [str(START_ENVD), str(self.state), str(ENVD)]
        args += ["--port", str(port)] if port else ["--no-tcp"]
        if socket_path:
            args += ["--socket", str(socket_path)]
        self.log = open(self.state.parent / (self.state.name + ".log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.request("GET", "/health")[0] == 204:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"envd exited with {self.proc.returncode}; log: {self.log.name}")
            time.sleep(0.05)
        raise RuntimeError("envd did not become healthy")

    def connection(self, timeout=10):
        if self.port:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return UnixHTTPConnection(str(self.socket_path), timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None):
        """One HTTP request; returns (status, headers, body bytes)."""
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            if own:
                conn.close()

    def init(self, **fields):
        headers = {"Content-Type": "application/json"}
        token = fields.pop("header_token", None)
        if token:
            headers["X-Access-Token"] = token
        return self.request("POST", "/init", json.dumps(fields), headers)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.state, ignore_errors=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket, as Kiln's host side talks to envd."""

    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def parse_envelopes(data: bytes):
    frames = []
    while data:
        flags, length = data[0], int.from_bytes(data[1:5], "big")
        frames.append((flags, json.loads(data[5 : 5 + length])))
        data = data[5 + length :]
    return frames


def basic_user(name: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:".encode()).decode()
