"""Starting and stopping a real `kiln up` for tests and benchmarks."""

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
KILN = ROOT / "target" / "release" / "kiln"
# Persistent across runs on one machine, so the base template is built once per machine.
HOME = Path(os.environ.get("KILN_TEST_HOME", "/var/lib/kiln-test"))
API = "127.0.0.1:13000"
PROXY = "127.0.0.1:13002"
BASE_BUILD_TIMEOUT = 900


def runsc_processes():
    """Command lines of the runsc processes using this Kiln's state root (read from /proc: ps
    cuts long command lines when piped)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if args.startswith("runsc") and str(HOME) in args:
            found.append(f"{proc.name} {args}")
    return found


class KilnServer:
    """`kiln up` on the test ports; once started, the SDK settings are in os.environ."""

    def __init__(self, team_limit):
        if os.geteuid() != 0:
            raise RuntimeError("kiln up needs root")
        self.env_file = HOME / "env"
        HOME.mkdir(parents=True, exist_ok=True)
        # A crashed Kiln leaves its env file; readiness is the *new* one appearing.
        self.env_file.unlink(missing_ok=True)
        self.log_path = HOME / "kiln-up.log"
        self.log = open(self.log_path, "w")
        env = {
            **os.environ,
            "KILN_HOME": str(HOME),
            "KILN_API_ADDR": API,
            "KILN_PROXY_ADDR": PROXY,
            "KILN_MAX_SANDBOXES": str(team_limit),
        }
        self.proc = subprocess.Popen([str(KILN), "up"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + BASE_BUILD_TIMEOUT
        while not self.env_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln up exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("kiln up did not become ready")
            time.sleep(0.2)
        self.settings = dict(
            line.removeprefix("export ").split("=", 1)
            for line in self.env_file.read_text().splitlines()
            if line.startswith("export ")
        )
        os.environ.update(self.settings)
        os.environ.pop("E2B_DEBUG", None)

    def stop(self):
        """SIGTERM; returns kiln's exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code
