"""Access token, run-as users, signed URLs and /init semantics (each on a private envd)."""

import json
import time

from kiln_envd import basic_user
from urllib.parse import quote

from e2b.sandbox.signature import get_signature

UNARY = {"Content-Type": "application/json"}


def test_token_is_enforced_once_set(spare_envd):
    assert spare_envd.request("POST", "/process.Process/List", b"{}", UNARY)[0] == 200
    assert spare_envd.init(accessToken="secret-token")[0] == 204

    status, _, body = spare_envd.request("POST", "/process.Process/List", b"{}", UNARY)
    assert status == 401 and json.loads(body)["code"] == 401
    assert b"secret-token" not in body
    ok = spare_envd.request("POST", "/process.Process/List", b"{}", {**UNARY, "X-Access-Token": "secret-token"})
    assert ok[0] == 200
    assert spare_envd.request("GET", "/health")[0] == 204, "health is exempt"

    # Changing settings needs the current token.
    assert spare_envd.init(accessToken="other")[0] == 401
    assert spare_envd.init(accessToken="other", header_token="secret-token")[0] == 204


def test_signed_urls(spare_envd):
    spare_envd.init(accessToken="tok")
    headers = {"Content-Type": "application/octet-stream"}
    write = get_signature("/tmp/kiln-signed.txt", "write", None, "tok")
    status, _, _ = spare_envd.request("POST", f"/files?path=/tmp/kiln-signed.txt&signature={quote(write['signature'], safe='')}", b"s", headers)
    assert status == 200

    read = get_signature("/tmp/kiln-signed.txt", "read", None, "tok", 60)
    url = f"/files?path=/tmp/kiln-signed.txt&signature={quote(read['signature'], safe='')}&signature_expiration={read['expiration']}"
    assert spare_envd.request("GET", url)[2] == b"s"

    assert spare_envd.request("GET", "/files?path=/tmp/kiln-signed.txt")[0] == 401
    assert spare_envd.request("GET", f"/files?path=/tmp/kiln-signed.txt&signature={quote(write['signature'], safe='')}")[0] == 401
    expired = get_signature("/tmp/kiln-signed.txt", "read", None, "tok", -5)
    url = f"/files?path=/tmp/kiln-signed.txt&signature={quote(expired['signature'], safe='')}&signature_expiration={expired['expiration']}"
    assert spare_envd.request("GET", url)[0] == 401
    forged = f"/files?path=/tmp/kiln-signed.txt&signature={quote(read['signature'], safe='')}&signature_expiration={read['expiration'] + 100}"
    assert spare_envd.request("GET", forged)[0] == 401


def test_run_as_user_from_basic_auth_and_username(spare_envd):
    body = json.dumps({"path": "~"}).encode()
    status, _, out = spare_envd.request("POST", "/filesystem.Filesystem/Stat", body, {**UNARY, "Authorization": basic_user("user")})
    assert status == 200 and json.loads(out)["entry"]["path"] == spare_envd.home

    status, _, out = spare_envd.request("POST", "/filesystem.Filesystem/Stat", body, {**UNARY, "Authorization": basic_user("ghost")})
    assert status == 401 and json.loads(out)["code"] == "unauthenticated"

    status, _, out = spare_envd.request(
        "POST", "/files?path=up.txt&username=user", b"u", {"Content-Type": "application/octet-stream"}
    )
    assert status == 200 and json.loads(out)[0]["path"] == f"{spare_envd.home}/up.txt"
    assert spare_envd.request("GET", "/files?path=up.txt&username=ghost")[0] == 401


def test_init_defaults_and_stale_timestamps(spare_envd):
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    earlier = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    assert spare_envd.init(envVars={"A": "1"}, defaultUser="user", timestamp=later)[0] == 204
    status, _, _ = spare_envd.init(envVars={"A": "stale"}, defaultUser="root", timestamp=earlier)
    assert status == 204, "a stale init is acknowledged"
    assert json.loads(spare_envd.request("GET", "/envs")[2]) == {"A": "1"}, "but not applied"

    status, headers, _ = spare_envd.request("GET", "/health")
    assert headers["x-envd-version"] == "0.6.4"
    assert spare_envd.init(defaultUser="ghost")[0] == 400
    assert spare_envd.init(timestamp="yesterday")[0] == 400
    status, _, body = spare_envd.request("POST", "/init", b"[]", {"Content-Type": "application/json"})
    assert status == 400 and "message" in json.loads(body)


def test_metrics(spare_envd):
    metrics = json.loads(spare_envd.request("GET", "/metrics")[2])
    for key in ("ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "disk_used", "disk_total"):
        assert key in metrics
    assert metrics["mem_total"] > metrics["mem_used"] > 0
