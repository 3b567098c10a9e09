"""Benchmark: template builds through the official Python SDK's `Template.build`.

  1. first build (every layer rebuilt: `skip_cache=True`) vs an unchanged rebuild of the same
     template, in the same run;
  2. `Sandbox.create()` + first command output from the built template vs from `base` (the same
     restore path), alternating.

The template: a small image from a loopback `docker-registry` (static busybox and bash), a COPY,
three RUN steps, ENV, WORKDIR, and a start command with a ready check.

Usage: bench/templates.py [--rebuilds 5] [--creates 10]   (root; `make bench-templates`)
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e" / "python"))
from kiln_server import KilnServer  # noqa: E402
from oci_registry import Registry, tiny_image_layers  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rebuilds", type=int, default=5)
    parser.add_argument("--creates", type=int, default=10)
    args = parser.parse_args()

    registry = Registry()
    registry.push_image("bench/tiny", "1", tiny_image_layers())
    kiln = KilnServer(team_limit=10)
    try:
        from e2b import Sandbox, Template

        context = Path(tempfile.mkdtemp(prefix="kiln-bench-context."))
        (context / "index.html").write_text("<h1>bench</h1>\n")
        # A new builder object per build: `skip_cache=True` marks the object it is given.
        template = lambda: (  # noqa: E731
            Template(file_context_path=str(context))
            .from_image(f"{registry.host}/bench/tiny:1")
            .set_envs({"MODE": "bench"})
            .copy("index.html", "/srv/www/")
            .run_cmd("for i in $(seq 1 200); do echo $i > /srv/www/$i.txt; done", user="root")
            .run_cmd("tar -cf /srv/archive.tar /bin/busybox", user="root")
            .set_workdir("/srv/www")
            .run_cmd("ls | wc -l > /srv/count", user="root")
            .set_start_cmd("busybox httpd -f -p 8080 -h /srv/www", "wget -q -O /dev/null http://127.0.0.1:8080/index.html")
        )
        first = [timed(lambda: Template.build(template(), "bench-app", skip_cache=True)) for _ in range(2)]
        rebuild = [timed(lambda: Template.build(template(), "bench-app")) for _ in range(args.rebuilds)]

        def create(name):
            """Seconds to create a sandbox and get a command's output (the kill is not timed)."""
            started = time.perf_counter()
            sandbox = Sandbox.create(name)
            assert sandbox.commands.run("echo hi").stdout == "hi\n"
            elapsed = time.perf_counter() - started
            sandbox.kill()
            return elapsed

        create("bench-app")
        create("base")
        custom, base = [], []
        for _ in range(args.creates):
            custom.append(create("bench-app"))
            base.append(create("base"))
    finally:
        kiln.stop()
        registry.stop()

    f, r = statistics.median(first), statistics.median(rebuild)
    c, b = statistics.median(custom), statistics.median(base)
    print(f"Template builds, same machine and run ({len(first)} full builds, {args.rebuilds} rebuilds, {args.creates} creates each)\n")
    print("| measurement | p50 | baseline p50 | ratio |")
    print("|---|---|---|---|")
    print(f"| unchanged rebuild | {r:.2f} s | first build (all layers rebuilt): {f:.2f} s | {r / f:.3f}x |")
    print(f"| create + first output, custom template | {c * 1000:.0f} ms | from `base`: {b * 1000:.0f} ms | {c / b:.2f}x |")


if __name__ == "__main__":
    main()
