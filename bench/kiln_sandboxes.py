"""Benchmark: Kiln sandboxes through the official Python SDK, beside raw runsc in the same run.

  1. create → first command output: `Sandbox.create()` + `commands.run("echo hi")`, vs raw
     `runsc restore --detach` + `runsc exec echo hi` of a trivial checkpoint (the same base rootfs
     running `sleep infinity`, same runsc flags);
  2. `commands.run("true")` on a live sandbox vs raw `runsc exec <id> /bin/true`;
  3. memory per idle sandbox with N running (RSS and PSS of their runsc processes).

Usage: bench/kiln_sandboxes.py [--creates 15] [--calls 100] [--idle 20]   (root; `make bench-kiln`)
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e" / "python"))
from kiln_server import HOME, KilnServer, runsc_processes  # noqa: E402


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


def timed(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


class RawRunsc:
    """runsc by hand: one trivial checkpoint of the base rootfs, restored again and again."""

    def __init__(self, rootfs):
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-bench-runsc."))
        self.base = ["runsc", "--root", str(self.dir / "state"), "--platform=ptrace", "--network=none", "--overlay2=root:memory"]
        spec = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sleep", "infinity"], "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
            "root": {"path": str(rootfs), "readonly": False},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]},
        }
        (self.dir / "bundle").mkdir(parents=True)
        (self.dir / "bundle" / "config.json").write_text(json.dumps(spec))
        self.image = self.dir / "image"
        self.run("create", "--bundle", str(self.dir / "bundle"), "seed")
        self.run("start", "seed")
        time.sleep(0.5)
        self.run("checkpoint", "--image-path", str(self.image), "seed")
        self.run("delete", "--force", "seed")

    def run(self, *args):
        """runsc; only `exec` output is captured (a container started by `create`/`restore`
        would inherit a captured pipe and keep it open)."""
        output = subprocess.PIPE if args[0] in ("exec", "list") else subprocess.DEVNULL
        return subprocess.run(self.base + list(args), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.DEVNULL, check=True).stdout

    def restore_and_exec(self, name):
        self.run("restore", "--detach", "--image-path", str(self.image), "--bundle", str(self.dir / "bundle"), name)
        assert self.run("exec", name, "/bin/echo", "hi") == b"hi\n"

    def close(self):
        for name in self.run("list", "--quiet").decode().split():
            subprocess.run(self.base + ["delete", "--force", name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def sandbox_memory(count):
    """Sum of RSS and PSS (KiB) of this Kiln's runsc processes."""
    rss = pss = 0
    for line in runsc_processes():
        pid = line.split(" ", 1)[0]
        try:
            for field in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if field.startswith("Rss:"):
                    rss += int(field.split()[1])
                elif field.startswith("Pss:"):
                    pss += int(field.split()[1])
        except OSError:
            pass
    return rss / count / 1024, pss / count / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--idle", type=int, default=20)
    args = parser.parse_args()

    kiln = KilnServer(team_limit=args.idle + 5)
    raw = None
    try:
        from e2b import Sandbox

        def create_and_run(keep):
            sbx = Sandbox.create()
            assert sbx.commands.run("echo hi").stdout == "hi\n"
            keep.append(sbx)

        created = []
        Sandbox.create().kill()  # warm-up
        kiln_create = [timed(lambda: create_and_run(created)) for _ in range(args.creates)]
        for sbx in created:
            sbx.kill()

        raw = RawRunsc(HOME / "templates" / "base" / "rootfs")
        raw_create = []
        for i in range(args.creates):
            raw_create.append(timed(lambda: raw.restore_and_exec(f"r{i}")))
            raw.run("delete", "--force", f"r{i}")

        live = Sandbox.create()
        live.commands.run("true")
        kiln_exec = [timed(lambda: live.commands.run("true")) for _ in range(args.calls)]
        live.kill()
        raw.restore_and_exec("exec-target")
        raw_exec = [timed(lambda: raw.run("exec", "exec-target", "/bin/true")) for _ in range(args.calls)]
        # What commands.run actually runs: a login shell.
        raw_shell = [timed(lambda: raw.run("exec", "exec-target", "/bin/bash", "-l", "-c", "true")) for _ in range(args.calls)]

        idle = [Sandbox.create() for _ in range(args.idle)]
        time.sleep(2)
        rss, pss = sandbox_memory(args.idle)
        for sbx in idle:
            sbx.kill()
    finally:
        if raw:
            raw.close()
        kiln.stop()

    kc, rc, ke, re_ = percentiles(kiln_create), percentiles(raw_create), percentiles(kiln_exec), percentiles(raw_exec)
    rs = percentiles(raw_shell)
    print(f"Kiln vs raw runsc, same machine and run ({args.creates} creates, {args.calls} calls; ms)\n")
    print("| measurement | p50 | p95 | baseline p50 | ratio (p50) |")
    print("|---|---|---|---|---|")
    print(f"| SDK create + first command output | {kc[0]:.0f} | {kc[1]:.0f} | raw restore + exec: {rc[0]:.0f} | {kc[0] / rc[0]:.2f}x |")
    print(f"| SDK `commands.run(\"true\")`, live sandbox | {ke[0]:.1f} | {ke[1]:.1f} | raw `runsc exec true`: {re_[0]:.1f} | {ke[0] / re_[0]:.2f}x |")
    print(f"| same, vs raw `runsc exec bash -l -c true` | {ke[0]:.1f} | {ke[1]:.1f} | {rs[0]:.1f} | {ke[0] / rs[0]:.2f}x |")
    print(f"\nMemory per idle sandbox with {args.idle} running: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB")


if __name__ == "__main__":
    main()
