"""Benchmark: pause and resume of sandboxes that touched 64 MiB and 512 MiB, through the official
Python SDK, beside raw `runsc checkpoint` / `runsc restore` of a container holding the same memory,
in the same run.

The memory is random bytes (`os.urandom`), so the checkpoint cannot compress it away.

  - pause:  `sbx.pause()` (quiesce, checkpoint, store in object storage, record) vs `runsc checkpoint`
  - resume: `Sandbox.connect(id)` + a first command, from the node's cached image, and after the
    cache is cleared (the image fetched back from storage and verified) vs `runsc restore` + exec;
    3 s after the pause (the paused container is removed in the background meanwhile)

Usage: bench/pause_resume.py [--sizes 64,512] [--repeat 3]   (root; `make bench-pause`)
The storage is whatever STORAGE_PROVIDER says (default Local under the test home).
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
from kiln_server import HOME, KilnServer  # noqa: E402

FAILURES = []
TOUCH = "import os,time; b=os.urandom({size} << 20); open('/tmp/ready','w').close(); time.sleep(1e9)"


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class RawRunsc:
    """A raw runsc container of the base rootfs holding `size` MiB, checkpointed and restored."""

    def __init__(self, rootfs, size):
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-bench-pause."))
        self.base = ["runsc", "--root", str(self.dir / "state"), "--platform=ptrace", "--network=none", "--overlay2=root:memory"]
        spec = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/usr/bin/python3", "-c", TOUCH.format(size=size)],
                        "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
            "root": {"path": str(rootfs), "readonly": False},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]},
        }
        (self.dir / "bundle").mkdir(parents=True)
        (self.dir / "bundle" / "config.json").write_text(json.dumps(spec))

    def run(self, *args, capture=False):
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.run(self.base + list(args), stdin=subprocess.DEVNULL, stdout=output,
                              stderr=subprocess.DEVNULL, check=True).stdout

    def cycle(self, name):
        """Start, wait for the memory, then time checkpoint and restore (+ exec)."""
        image = self.dir / f"image-{name}"
        self.run("create", "--bundle", str(self.dir / "bundle"), name)
        self.run("start", name)
        deadline = time.time() + 120
        while subprocess.run(self.base + ["exec", name, "/usr/bin/test", "-e", "/tmp/ready"],
                             stdin=subprocess.DEVNULL, capture_output=True).returncode != 0:
            assert time.time() < deadline, "the raw container did not touch its memory"
            time.sleep(0.2)
        checkpoint = timed(lambda: self.run("checkpoint", "--image-path", str(image), name))
        self.run("delete", "--force", name)

        def restore():
            self.run("restore", "--detach", "--image-path", str(image), "--bundle", str(self.dir / "bundle"), name)
            self.run("exec", name, "/bin/true")

        restore_time = timed(restore)
        self.run("delete", "--force", name)
        shutil.rmtree(image, ignore_errors=True)
        return checkpoint, restore_time

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def kiln_cycle(size):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=600)
    try:
        sbx.commands.run(f"python3 -c \"{TOUCH.format(size=size)}\"", background=True)
        deadline = time.time() + 120
        while sbx.commands.run("test -e /tmp/ready && echo yes || echo no").stdout.strip() != "yes":
            assert time.time() < deadline, "the sandbox did not touch its memory"
            time.sleep(0.2)
        pause = timed(sbx.pause)
        # The stopped container is removed in the background (runsc needs a second or two); a
        # resume right away would wait for that. Resumes come later in practice.
        time.sleep(3)

        def resume():
            resumed = Sandbox.connect(sbx.sandbox_id, timeout=600)
            resumed.commands.run("true")

        resume_cached = timed(resume)
        assert sbx.pause()
        time.sleep(3)
        shutil.rmtree(HOME / "cache" / "snapshots" / sbx.sandbox_id, ignore_errors=True)
        try:
            resume_fetched = timed(resume)
        except Exception as error:  # reported, not hidden: the table says how many failed
            print(f"resume from storage failed: {error}", file=sys.stderr)
            FAILURES.append(str(error))
            resume_fetched = float("nan")
        return pause, resume_cached, resume_fetched
    finally:
        Sandbox.kill(sbx.sandbox_id)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    kiln = KilnServer(team_limit=5)
    rows = []
    try:
        for size in sizes:
            kiln_runs = [kiln_cycle(size) for _ in range(args.repeat)]
            raw = RawRunsc(HOME / "templates" / "base" / "rootfs", size)
            try:
                raw_runs = [raw.cycle(f"raw{i}") for i in range(args.repeat)]
            finally:
                raw.close()
            median = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
            rows.append((size, median(kiln_runs, 0), median(kiln_runs, 1),
                         statistics.median([r[2] for r in kiln_runs if r[2] == r[2]] or [float("nan")]),
                         median(raw_runs, 0), median(raw_runs, 1)))
    finally:
        kiln.stop()

    print(f"\nmedians of {args.repeat} runs (random bytes touched; storage: Local unless STORAGE_PROVIDER says otherwise)\n")
    print("| touched | pause | pause s/GiB | raw checkpoint | ratio | resume (cached) | resume (fetched) | raw restore+exec | ratio (cached) |")
    print("|---|---|---|---|---|---|---|---|---|")
    if FAILURES:
        print(f"\n{len(FAILURES)} resume(s) failed: {FAILURES}\n")
    for size, pause, cached, fetched, raw_ckpt, raw_restore in rows:
        print(f"| {size} MiB | {pause:.2f} s | {pause / (size / 1024):.2f} | {raw_ckpt:.2f} s | {pause / raw_ckpt:.2f}x "
              f"| {cached:.2f} s | {fetched:.2f} s | {raw_restore:.2f} s | {cached / raw_restore:.2f}x |")


if __name__ == "__main__":
    main()
