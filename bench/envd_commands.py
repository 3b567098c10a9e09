"""Benchmark: `commands.run("true")` through the official Python SDK against envd on loopback.

Baselines measured in the same run, on the same machine:
  - spawn: `bash -l -c true` started directly with subprocess, with the same clean environment and
           home (the floor: the process itself);
  - raw:   the same Connect `Start` stream sent with http.client over one keep-alive connection
           (envd without the SDK's client overhead).

Usage: bench/envd_commands.py [--calls N]   (run by `make bench`, as root)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sdk" / "python"))
os.environ["E2B_DEBUG"] = "true"
os.environ["E2B_API_KEY"] = "e2b_" + "0" * 40

from kiln_envd import SDK_PORT, Envd, envelope  # noqa: E402


def measure(fn, calls, warmup=10):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50": statistics.median(samples), "p95": samples[int(len(samples) * 0.95) - 1]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    envd = Envd(port=SDK_PORT)
    try:
        assert envd.init(defaultUser="user")[0] == 204
        from e2b import Sandbox

        sandbox = Sandbox.create()
        sdk = measure(lambda: sandbox.commands.run("true"), args.calls)

        body = envelope(json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}, "stdin": False}).encode())
        conn = envd.connection()
        headers = {"Content-Type": "application/connect+json"}
        raw = measure(lambda: envd.request("POST", "/process.Process/Start", body, headers, conn=conn), args.calls)

        # Same login shell, same (profile-free) home as the user envd runs it as.
        clean_env = {"HOME": envd.home, "PATH": "/usr/local/bin:/usr/bin:/bin", "USER": "user"}
        spawn = measure(lambda: subprocess.run(["/bin/bash", "-l", "-c", "true"], env=clean_env, check=True), args.calls)
    finally:
        envd.stop()

    print(f"commands.run(\"true\") over loopback, {args.calls} calls each (ms)\n")
    print("| path | p50 | p95 | p50 vs spawn |")
    print("|---|---|---|---|")
    for name, result in (("SDK commands.run", sdk), ("raw Connect Start", raw), ("spawn bash -l -c true", spawn)):
        print(f"| {name} | {result['p50']:.2f} | {result['p95']:.2f} | {result['p50'] / spawn['p50']:.2f}x |")


if __name__ == "__main__":
    main()
