"""Template builds through Kiln with the official Python SDK's `Template` builder and the v1
Dockerfile API, from images in a real registry on loopback."""

import io
import os
import tarfile
import time
import urllib.error
import urllib.request

import pytest
from conftest import api
from e2b import BuildException, Sandbox, Template
import subprocess

from kiln_server import HOME, KILN
from oci_registry import Registry, tiny_image_layers, write_layout


@pytest.fixture(scope="module")
def registry():
    server = Registry()
    layers = tiny_image_layers()
    server.push_image("kiln-test/tiny", "1", layers, env=["PATH=/usr/local/bin:/usr/bin:/bin:/sbin", "IMAGE_VAR=from-image"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_registry():
    server = Registry(user="kiln", password="s3cret")
    server.push_image("private/tiny", "1", tiny_image_layers())
    yield server
    server.stop()


@pytest.fixture
def context(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<h1>kiln</h1>\n")
    (tmp_path / "app.txt").write_text("copied from the context\n")
    return tmp_path


def build(template, name, **options):
    logs = []
    Template.build(template, name, on_build_logs=lambda entry: logs.append(entry.message), **options)
    return logs


def test_image_with_steps_and_a_service(kiln, registry, context):
    image = f"{registry.host}/kiln-test/tiny:1"
    template = (
        Template(file_context_path=str(context))
        .from_image(image)
        .set_envs({"GREETING": "hello world"})
        .copy("site", "/srv/www/")
        .copy("app.txt", "/app/", mode=0o640)
        .run_cmd("echo built-as-$(whoami) > /srv/built.txt && mkdir -p /srv/www && cp /srv/built.txt /srv/www/", user="root")
        .set_workdir("/app")
        .run_cmd("touch made-in-workdir", user="root")
        .set_user("user")
        .set_start_cmd("busybox httpd -f -p 8080 -h /srv/www", "wget -q -O /dev/null http://127.0.0.1:8080/index.html")
    )
    build(template, "tiny-app")

    sandbox = Sandbox.create("tiny-app", timeout=120)
    try:
        run = sandbox.commands.run
        assert run("whoami; pwd").stdout == "user\n/app\n"
        assert run("echo $GREETING $IMAGE_VAR").stdout == "hello world from-image\n"
        assert run("cat /app/app.txt").stdout == "copied from the context\n"
        assert run("stat -c %a /app/app.txt").stdout == "640\n"
        assert run("cat /srv/www/index.html /srv/built.txt").stdout == "<h1>kiln</h1>\nbuilt-as-root\n"
        assert run("ls /app").stdout == "app.txt\nmade-in-workdir\n"
        # The image's layers were applied with their whiteouts.
        assert run("ls /opt/old; cat /data/hello.txt; test -e /etc/removed-later || echo removed").stdout == "upper.txt\nhello from the image\nremoved\n"
        # The service started by the build is already running at create time.
        assert run("wget -q -O- http://127.0.0.1:8080/built.txt").stdout == "built-as-root\n"
        assert run("sudo -n id -u").stdout == "0\n"
        with _through_proxy(sandbox, 8080, "/index.html") as body:
            assert body == "<h1>kiln</h1>\n"
    finally:
        sandbox.kill()

    # An unchanged rebuild is served from the cache: no step runs (speed: `make bench-templates`).
    logs = build(template, "tiny-app")
    assert any("CACHED nothing changed" in line for line in logs), logs
    assert not any(line.startswith("[") and "CACHED" not in line for line in logs), logs

    listed = {t.get("aliases", [None])[0]: t for t in api("GET", "/templates")[1]}
    assert listed["tiny-app"]["buildStatus"] == "ready"


class _through_proxy:
    """GET through Kiln's proxy with the SDK's routing headers."""

    def __init__(self, sandbox, port, path):
        request = urllib.request.Request(f"http://127.0.0.1:13002{path}")
        request.add_header("E2b-Sandbox-Id", sandbox.sandbox_id)
        request.add_header("E2b-Sandbox-Port", str(port))
        self.response = urllib.request.urlopen(request, timeout=10)

    def __enter__(self):
        return self.response.read().decode()

    def __exit__(self, *exc):
        self.response.close()


def test_from_base_template(kiln, context):
    template = (
        Template(file_context_path=str(context))
        .from_template("base")
        .set_envs({"FROM_BASE": "yes"})
        .copy("app.txt", "/home/user/app/")
        .set_workdir("/home/user/app")
        .run_cmd("python3 -c 'print(6*7)' > answer.txt")
        .set_user("user")
        .set_start_cmd("python3 -m http.server 8000", "curl -sf http://127.0.0.1:8000/answer.txt")
    )
    build(template, "from-base")
    sandbox = Sandbox.create("from-base", timeout=60)
    try:
        assert sandbox.commands.run("cat answer.txt app.txt; whoami; echo $FROM_BASE").stdout == "42\ncopied from the context\nuser\nyes\n"
        assert sandbox.commands.run("curl -s http://127.0.0.1:8000/answer.txt").stdout == "42\n", "the server started at build time runs"
    finally:
        sandbox.kill()


def test_failing_run_names_step_and_exit_code(kiln, registry):
    template = Template().from_image(f"{registry.host}/kiln-test/tiny:1").run_cmd("echo fine").run_cmd("echo broken >&2; exit 7")
    with pytest.raises(BuildException) as raised:
        build(template, "fails")
    message = str(raised.value)
    assert "step 2" in message and "exited with code 7" in message and "broken" in message, message
    status, body, _ = api("GET", "/templates/aliases/fails")
    assert status == 200


def test_a_failed_build_keeps_the_previous_one(kiln, registry):
    good = Template().from_image(f"{registry.host}/kiln-test/tiny:1").run_cmd("echo v1 > /v.txt", user="root")
    build(good, "keeps-old")
    bad = Template().from_image(f"{registry.host}/kiln-test/tiny:1").run_cmd("exit 1")
    with pytest.raises(BuildException):
        build(bad, "keeps-old")
    sandbox = Sandbox.create("keeps-old", timeout=60)
    try:
        assert sandbox.commands.run("cat /v.txt").stdout == "v1\n"
    finally:
        sandbox.kill()


def test_missing_image_and_bad_credentials_name_the_registry(kiln, registry, private_registry):
    with pytest.raises(BuildException) as raised:
        build(Template().from_image(f"{registry.host}/kiln-test/absent:9"), "missing-image")
    assert registry.host in str(raised.value), raised.value

    with pytest.raises(BuildException) as raised:
        build(Template().from_image(f"{private_registry.host}/private/tiny:1", username="kiln", password="wrong"), "bad-credentials")
    assert private_registry.host in str(raised.value), raised.value

    build(Template().from_image(f"{private_registry.host}/private/tiny:1", username="kiln", password="s3cret"), "good-credentials")


def test_v1_dockerfile_flow(kiln, registry):
    dockerfile = f"FROM {registry.host}/kiln-test/tiny:1\nENV MODE=v1\nRUN echo from-dockerfile > /opt/v1.txt\nWORKDIR /opt\n"
    status, body, _ = api("POST", "/templates", {"dockerfile": dockerfile, "alias": "dockerfile-v1", "cpuCount": 1, "memoryMB": 512})
    assert status == 202, body
    template_id, build_id = body["templateID"], body["buildID"]
    status, _, _ = api("POST", f"/templates/{template_id}/builds/{build_id}")
    assert status == 202
    deadline = time.time() + 300
    while True:
        status, info, _ = api("GET", f"/templates/{template_id}/builds/{build_id}/status")
        assert status == 200
        if info["status"] in ("ready", "error") or time.time() > deadline:
            break
        time.sleep(0.5)
    assert info["status"] == "ready", info
    assert any("RUN" in entry["message"] for entry in info["logEntries"]) or info["logEntries"] == []
    sandbox = Sandbox.create("dockerfile-v1", timeout=60)
    try:
        assert sandbox.commands.run("cat v1.txt; echo $MODE").stdout == "from-dockerfile\nv1\n"
    finally:
        sandbox.kill()


def test_dockerfile_problems_name_their_line(kiln):
    status, body, _ = api("POST", "/templates", {"dockerfile": "FROM x\nRUN true\nHEALTHCHECK CMD true\n", "alias": "bad-dockerfile"})
    assert status == 400 and "line 3" in body["message"] and "HEALTHCHECK" in body["message"], body
    status, body, _ = api("POST", "/templates", {"dockerfile": "FROM x\nCOPY a /a\n", "alias": "bad-dockerfile"})
    assert status == 400 and "line 2" in body["message"], body


def test_context_archive_escaping_is_refused(kiln):
    status, body, _ = api("POST", "/v3/templates", {"name": "escape-check"})
    assert status == 202, body
    template_id = body["templateID"]
    status, link, _ = api("GET", f"/templates/{template_id}/files/{'ab' * 32}")
    assert status == 201 and link["present"] is False
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    request = urllib.request.Request(link["url"], data=buffer.getvalue(), method="PUT")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    assert "../../etc/evil" in raised.value.read().decode()
    status, link, _ = api("GET", f"/templates/{template_id}/files/{'ab' * 32}")
    assert link["present"] is False, "nothing was kept"
    # A link with a forged signature is refused.
    forged = urllib.request.Request(link["url"].replace("signature=", "signature=0"), data=b"", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(forged, timeout=30)
    assert raised.value.code == 403


def test_unsupported_step_is_refused(kiln):
    status, body, _ = api("POST", "/v3/templates", {"name": "bad-step"})
    status, body, _ = api(
        "POST",
        f"/v2/templates/{body['templateID']}/builds/{body['buildID']}",
        {"fromImage": "x", "steps": [{"type": "RUN", "args": ["true"]}, {"type": "VOLUME", "args": ["/x"]}]},
    )
    assert status == 400 and "step 2 (VOLUME): unsupported instruction" in body["message"], body


def test_run_steps_have_the_network(kiln):
    """Build steps reach the host's network through the build's namespace and NAT (here: the
    Debian mirror, which the machines can reach), but not the host's own services; the
    template's sandboxes have no network at all."""
    import http.server
    import socket
    import threading

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outbound address
    host_ip = probe.getsockname()[0]
    probe.close()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        template = Template().from_template("base").run_cmd(
            "curl -sS -m 30 http://deb.debian.org/debian/dists/bookworm/Release | head -c 7 > /home/user/origin; "
            f"curl -s -m 3 -o /dev/null http://{host_ip}:{server.server_address[1]}/ && echo reached > /home/user/host || echo blocked > /home/user/host"
        )
        build(template, "with-network")
    finally:
        server.shutdown()
    sandbox = Sandbox.create("with-network", timeout=60)
    try:
        assert sandbox.commands.run("cat /home/user/origin").stdout == "Origin:"
        assert sandbox.commands.run("cat /home/user/host").stdout == "blocked\n", "a build cannot reach the host's services"
        offline = sandbox.commands.run("curl -sS -m 3 http://deb.debian.org/ || echo offline")
        assert offline.stdout.strip().endswith("offline")
    finally:
        sandbox.kill()


def test_local_image_store_import(kiln, tmp_path):
    """`kiln image import` seeds the local store (the default provider) for machines without
    internet; a short name then builds from it."""
    write_layout(tmp_path / "layout", tiny_image_layers())
    imported = subprocess.run(
        [str(KILN), "image", "import", str(tmp_path / "layout"), "--name", "tiny-local:7"],
        env={"KILN_HOME": str(HOME), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert imported.returncode == 0, imported.stderr
    assert "tiny-local:7" in imported.stdout
    build(Template().from_image("tiny-local:7").run_cmd("echo local > /home/user/from.txt"), "from-local-store")
    sandbox = Sandbox.create("from-local-store", timeout=60)
    try:
        assert sandbox.commands.run("cat ~/from.txt").stdout == "local\n"
    finally:
        sandbox.kill()
    with pytest.raises(BuildException) as raised:
        build(Template().from_image("not-imported:1"), "not-in-store")
    assert "local image store" in str(raised.value) or "not found" in str(raised.value), raised.value


def test_tags_name_builds(kiln, registry):
    build(Template().from_image(f"{registry.host}/kiln-test/tiny:1").run_cmd("echo tagged > /home/user/t"), "tagged:v1")
    template_id = api("GET", "/templates/aliases/tagged")[1]["templateID"]
    tags = {t["tag"] for t in api("GET", f"/templates/{template_id}/tags")[1]}
    assert {"v1", "default"} <= tags, tags
    status, assigned, _ = api("POST", "/templates/tags", {"target": "tagged:v1", "tags": ["stable"]})
    assert status == 201 and assigned["tags"] == ["stable"], assigned
    sandbox = Sandbox.create("tagged:stable", timeout=60)
    try:
        assert sandbox.commands.run("cat ~/t").stdout == "tagged\n"
    finally:
        sandbox.kill()
    assert api("DELETE", "/templates/tags", {"name": "tagged", "tags": ["stable"]})[0] == 204
    details = api("GET", f"/templates/{template_id}")[1]
    assert details["buildStatus"] == "ready" and details["builds"][0]["status"] == "ready", details


def test_cli_builds_lists_and_deletes(kiln, registry, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {registry.host}/kiln-test/tiny:1\nRUN echo cli > /opt/cli.txt\nCMD [\"busybox\", \"httpd\", \"-f\", \"-p\", \"9000\", \"-h\", \"/opt\"]\n")
    env = {**os.environ, "KILN_HOME": str(HOME)}
    built = subprocess.run([str(KILN), "template", "build", "-f", str(dockerfile), "--name", "cli-built", "--cpu", "1", "--memory", "256",
                            "--ready-cmd", "wget -q -O /dev/null http://127.0.0.1:9000/cli.txt"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    assert "RUN echo cli" in built.stdout, built.stdout
    listed = subprocess.run([str(KILN), "template", "list"], env=env, capture_output=True, text=True)
    assert "cli-built" in listed.stdout
    sandbox = Sandbox.create("cli-built", timeout=60)
    try:
        assert sandbox.commands.run("cat /opt/cli.txt; whoami; pwd").stdout == "cli\nuser\n/home/user\n"
        assert api("DELETE", "/templates/cli-built")[0] == 409, "a template with running sandboxes stays"
    finally:
        sandbox.kill()
    deleted = subprocess.run([str(KILN), "template", "delete", "cli-built"], env=env, capture_output=True, text=True)
    assert deleted.returncode == 0, deleted.stderr
    assert api("GET", "/templates/aliases/cli-built")[0] == 404
    failed = subprocess.run([str(KILN), "template", "build", "-f", "/dev/null", "--name", "cli-empty"], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "FROM" in failed.stderr
