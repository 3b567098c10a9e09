"""The host channel: envd on a Unix socket, the quiesce/resume handshake and port relays."""

import http.client
import http.server
import json
import os
import socket
import threading
import time

import pytest

from kiln_envd import UnixHTTPConnection, envelope, parse_envelopes

STREAM = {"Content-Type": "application/connect+json"}


def start(socket_envd, command):
    body = envelope(json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", command]}, "stdin": False}).encode())
    return socket_envd.request("POST", "/process.Process/Start", body, STREAM)


def test_rpc_over_the_socket(socket_envd):
    status, _, body = start(socket_envd, "echo over-socket")
    assert status == 200
    assert parse_envelopes(body)[1][1] == {"event": {"data": {"stdout": "b3Zlci1zb2NrZXQK"}}}


def test_internal_paths_are_socket_only(spare_envd):
    assert spare_envd.request("POST", "/_kiln/quiesce")[0] == 404


@pytest.fixture
def loopback_server():
    """A web server 'inside the sandbox' (envd runs on this host, so: on loopback)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"relayed {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def connect_tunnel(socket_path, port):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(socket_path))
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "tunnel closed before its response"
        head += chunk
    return sock, head.split(b"\r\n")[0]


def test_relay_to_a_port_inside(socket_envd, loopback_server):
    sock, status_line = connect_tunnel(socket_envd.socket_path, loopback_server)
    assert b" 200 " in status_line
    sock.sendall(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    assert reply.endswith(b"relayed /hello")


def test_relay_to_a_closed_port_is_502(socket_envd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    sock, status_line = connect_tunnel(socket_envd.socket_path, closed_port)
    assert b" 502 " in status_line
    sock.close()


def test_relay_only_to_loopback(socket_envd):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_envd.socket_path))
    sock.sendall(b"CONNECT 10.1.2.3:80 HTTP/1.1\r\nHost: 10.1.2.3:80\r\n\r\n")
    assert b" 400 " in sock.recv(200).split(b"\r\n")[0]
    sock.close()


def host_socket_fds(server):
    """envd's fds that are Unix sockets bound to (or accepted on) the host socket path."""
    on_path = {
        line.split()[6]
        for line in open("/proc/net/unix").read().splitlines()[1:]
        if line.split()[-1] == str(server.socket_path)
    }
    fd_dir = f"/proc/{server.proc.pid}/fd"
    links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
    return [link for link in links if link.startswith("socket:[") and link[8:-1] in on_path]


def test_quiesce_closes_everything_and_sigusr1_resumes(socket_envd, loopback_server):
    path = socket_envd.socket_path
    # A long-running process streaming over the socket, an idle keep-alive connection and a relay.
    stream = UnixHTTPConnection(str(path))
    body = envelope(json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 30"]}, "stdin": False}).encode())
    stream.request("POST", "/process.Process/Start", body, STREAM)
    streaming = stream.getresponse()
    first = streaming.read1(64)
    pid = parse_envelopes(first)[0][1]["event"]["start"]["pid"]
    idle = UnixHTTPConnection(str(path))
    assert socket_envd.request("GET", "/health", conn=idle)[0] == 204
    tunnel, _ = connect_tunnel(path, loopback_server)

    assert len(host_socket_fds(socket_envd)) >= 3, "listener, stream, idle connection and relay are seen"

    # The host's side of the handshake: ask, then read the answer to EOF.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as host:
        host.settimeout(10)
        host.connect(str(path))
        host.sendall(b"POST /_kiln/quiesce HTTP/1.1\r\nHost: envd\r\nContent-Length: 0\r\n\r\n")
        answer = b""
        while chunk := host.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"state":"quiesced"}')

    assert not path.exists(), "the socket file is removed"
    try:
        rest = streaming.read()
    except http.client.IncompleteRead as cut:
        rest = cut.partial
    assert b"end" not in rest, "the stream over the socket was cut, not finished"
    assert tunnel.recv(10) == b"", "the relay was closed"
    with pytest.raises(OSError):
        socket_envd.request("GET", "/health", conn=idle)
    assert host_socket_fds(socket_envd) == [], "gVisor cannot checkpoint a bound host socket"

    time.sleep(0.1)
    assert not path.exists(), "a quiesced envd waits for the host's resume file"
    resume = path.with_name("resume")
    resume.touch()
    deadline = time.time() + 5
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert socket_envd.request("GET", "/health")[0] == 204
    assert not resume.exists(), "envd consumes the resume file"
    listed = json.loads(socket_envd.request("POST", "/process.Process/List", b"{}", {"Content-Type": "application/json"})[2])
    assert pid in [p["pid"] for p in listed["processes"]], "processes survive a quiesce"

    # A second quiesce/resume cycle works the same way.
    assert socket_envd.request("POST", "/_kiln/quiesce")[0] == 200
    resume.touch()
    deadline = time.time() + 5
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert socket_envd.request("GET", "/health")[0] == 204
