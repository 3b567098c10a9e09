"""After a crash (SIGKILL of `kiln up`), the next start removes every leftover sandbox."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
os.environ.pop("E2B_DEBUG", None)

from kiln_server import HOME, KilnServer, runsc_processes  # noqa: E402


def test_restart_after_crash_cleans_up():
    from e2b import Sandbox
    from e2b.exceptions import NotFoundException

    first = KilnServer(team_limit=5)
    sandbox = Sandbox.create()
    assert sandbox.commands.run("echo alive").stdout == "alive\n"
    first.proc.kill()  # a crash: no cleanup at all
    first.proc.wait(30)
    first.log.close()
    assert [p for p in runsc_processes() if sandbox.sandbox_id in p], "a crash leaves the sandbox running"

    second = KilnServer(team_limit=5)
    try:
        assert [p for p in runsc_processes() if sandbox.sandbox_id in p] == [], "restart removed the leftover"
        assert not (HOME / "sandboxes" / sandbox.sandbox_id).exists()
        try:
            sandbox.get_info()
            raise AssertionError("the leftover sandbox is still known")
        except NotFoundException:
            pass
        fresh = Sandbox.create()
        assert fresh.commands.run("echo fresh").stdout == "fresh\n"
    finally:
        assert second.stop() == 0
    time.sleep(0.5)
    assert runsc_processes() == []
