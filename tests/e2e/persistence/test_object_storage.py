"""Pause/resume with `STORAGE_PROVIDER=AWSBucket` against a real S3 server on loopback (moto):
a paused sandbox survives a Kiln restart and the loss of the node's local copy, and a pause
while storage is down fails with a clear error and leaves the sandbox running."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
os.environ.pop("E2B_DEBUG", None)

from kiln_server import HOME, KilnServer, runsc_processes  # noqa: E402
from test_persistence import assert_continued, start_counter  # noqa: E402

S3_PORT = 13090
BUCKET = "kiln-e2e"
MOTO = Path(sys.executable).parent / "moto_server"


class S3Server:
    """moto's S3 server on loopback; its objects live in memory until it stops."""

    def __init__(self):
        self.proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(S3_PORT)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}", region_name="us-east-1",
                     aws_access_key_id="kiln", aws_secret_access_key="kiln-secret").create_bucket(Bucket=BUCKET)

    def objects(self, prefix):
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}", region_name="us-east-1",
                              aws_access_key_id="kiln", aws_secret_access_key="kiln-secret")
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    secret = tmp_path_factory.mktemp("secrets") / "aws-secret"
    secret.write_text("kiln-secret\n")
    secret.chmod(0o600)
    saved = dict(os.environ)
    os.environ.update({
        "STORAGE_PROVIDER": "AWSBucket",
        "TEMPLATE_BUCKET_NAME": BUCKET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "kiln",
        "AWS_SECRET_ACCESS_KEY_FILE": str(secret),
    })
    server = S3Server()
    yield server
    server.stop()
    os.environ.clear()
    os.environ.update(saved)


def test_a_paused_sandbox_survives_a_restart_and_the_loss_of_its_local_copy(s3):
    from e2b import Sandbox

    first = KilnServer(team_limit=5)
    try:
        sbx = Sandbox.create(timeout=120)
        sbx.files.write("/home/user/kept.txt", "kept across restarts")
        pid, before = start_counter(sbx)
        assert sbx.pause() is True
        stored = s3.objects(f"snapshots/{sbx.sandbox_id}/")
        assert any(key.endswith("/checkpoint.img") for key in stored), stored
        assert any(key.endswith("/manifest.json") for key in stored), stored
    finally:
        assert first.stop() == 0
    assert runsc_processes() == []
    shutil.rmtree(HOME / "cache" / "snapshots", ignore_errors=True)

    second = KilnServer(team_limit=5)
    try:
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused", "the pause outlived Kiln"
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert_continued(resumed, pid, before)
        assert resumed.files.read("/home/user/kept.txt") == "kept across restarts"
        assert s3.objects(f"snapshots/{sbx.sandbox_id}/") == []
        resumed.kill()
    finally:
        assert second.stop() == 0


def test_storage_down_during_a_pause_keeps_the_sandbox_running(s3):
    from e2b import Sandbox
    from e2b.exceptions import ServiceBusyException

    server = KilnServer(team_limit=5)
    try:
        sbx = Sandbox.create(timeout=120)
        pid, before = start_counter(sbx)
        s3.stop()
        try:
            with pytest.raises(ServiceBusyException) as error:  # 503: retry later
                sbx.pause()
            message = str(error.value)
            assert "storing the snapshot" in message and "keeps running" in message, message
            assert "kiln-secret" not in message
            assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
            assert_continued(sbx, pid, before)
        finally:
            s3.__init__()
        assert sbx.pause() is True, "with storage back, the pause works"
        assert Sandbox.kill(sbx.sandbox_id) is True
    finally:
        assert server.stop() == 0
    assert "kiln-secret" not in (HOME / "kiln-up.log").read_text(), "no secret in Kiln's log"
