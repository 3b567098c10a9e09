"""A real distribution registry (Debian's `docker-registry`) on loopback, and small OCI images
made offline (static busybox and bash from the host) pushed to it over the registry API."""

import base64
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
BASH = "/bin/bash-static"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """`docker-registry serve` with its own storage; with `user`/`password`, basic auth."""

    def __init__(self, user=None, password=None):
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-registry."))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth = (user, password) if user else None
        auth = ""
        if user:
            import bcrypt

            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (self.dir / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: kiln-test\n    path: {self.dir / 'htpasswd'}\n"
        (self.dir / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n{auth}"
        )
        self.log = open(self.dir / "registry.log", "w")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(self.dir / "config.yml")], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401 with auth: it is up
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry did not start: {(self.dir / 'registry.log').read_text()}")
                time.sleep(0.1)

    def request(self, method, path, data=None, headers=None):
        request = urllib.request.Request(f"http://{self.host}{path}", data=data, method=method)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()

    def push_blob(self, repository, blob):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        _, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        location = headers["Location"]
        if location.startswith("http"):
            location = location.split(self.host, 1)[1]
        separator = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{separator}digest={digest}", blob, {"Content-Type": "application/octet-stream"})
        return digest

    def push_image(self, repository, tag, layers, env=None):
        """Pushes gzip'd `layers` (tar bytes, bottom first) with a config; returns the manifest digest."""
        descriptors, diff_ids = [], []
        for layer in layers:
            compressed = gzip.compress(layer, mtime=0)
            diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
            descriptors.append({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": self.push_blob(repository, compressed),
                "size": len(compressed),
            })
        config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.push_blob(repository, config), "size": len(config)},
            "layers": descriptors,
        }).encode()
        self.request("PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Layer:
    """A tar layer built in memory."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name, kind, data=b"", mode=0o644, link="", uid=0, gid=0):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1700000000
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        self.tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    def dir(self, name, mode=0o755):
        self._add(name, tarfile.DIRTYPE, mode=mode)

    def file(self, name, data, mode=0o644):
        self._add(name, tarfile.REGTYPE, data if isinstance(data, bytes) else data.encode(), mode)

    def symlink(self, name, target):
        self._add(name, tarfile.SYMTYPE, link=target)

    def bytes(self):
        self.tar.close()
        return self.buffer.getvalue()


def tiny_image_layers():
    """Two layers: static busybox (its applets as links) and bash, a minimal /etc; then a layer
    that deletes a file and makes a directory opaque (whiteouts) and adds data."""
    base = Layer()
    for directory in ["bin", "etc", "root", "home", "opt", "opt/old", "usr", "usr/bin", "usr/sbin", "sbin", "var", "run", "proc", "sys", "dev"]:
        base.dir(directory)
    base.dir("tmp", 0o1777)
    base.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    base.file("bin/bash", Path(BASH).read_bytes(), 0o755)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet not in ("busybox", "bash"):
            base.symlink(f"bin/{applet}", "busybox")
    base.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    base.file("etc/group", "root:x:0:\n")
    base.file("etc/removed-later", "gone soon\n")
    base.file("opt/old/lower.txt", "hidden by the opaque dir\n")
    top = Layer()
    top.dir("etc")
    top.file("etc/.wh.removed-later", "")
    top.dir("opt/old")
    top.file("opt/old/.wh..wh..opq", "")
    top.file("opt/old/upper.txt", "from the top layer\n")
    top.dir("data")
    top.file("data/hello.txt", "hello from the image\n")
    return [base.bytes(), top.bytes()]


def write_layout(directory, layers, env=None):
    """An OCI image layout of `layers` (tar bytes, bottom first) in `directory`."""
    directory = Path(directory)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    descriptors, diff_ids = [], []
    for layer in layers:
        compressed = gzip.compress(layer, mtime=0)
        diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
        digest, size = blob(compressed)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    config_digest, config_size = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env or ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode())
    manifest_digest, manifest_size = blob(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }).encode())
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}],
    }))
