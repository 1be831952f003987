"""Generation beside other work: ``fastlm generate`` on an idle machine and with cores kept busy by other
processes, at the default thread count and at ``-t 1``, timed side by side (wall clock, load included).

    python bench/busy_cores.py                         # fastlm's settings
    python bench/busy_cores.py --env GOMP_SPINCOUNT=300000   # libgomp's own default spin: the old behaviour

Prints the median of ``--repeats`` runs per case and the two ratios that matter: busy default / busy ``-t 1``
(target <= 1.3: the pool must not spin itself to a halt) and idle default / idle ``-t 1``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMAND = [sys.executable, "-m", "fastlm", "generate", "Once upon a time", "-n", "64", "--seed", "0"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(busy: int, env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median seconds of the default and the ``-t 1`` run with ``busy`` spinning processes alongside
    (interleaved, so drifting load hits both alike)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        runs: dict[str, list[float]] = {"default": [], "-t 1": []}
        for _ in range(repeats):
            runs["default"].append(timed(COMMAND, env))
            runs["-t 1"].append(timed(COMMAND + ["-t", "1"], env))
        return {k: statistics.median(v) for k, v in runs.items()}
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="processes kept busy in the loaded case")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the fastlm runs (e.g. OMP_WAIT_POLICY=active)")
    args = parser.parse_args()
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    timed(COMMAND, env)                                   # warm the page cache and the model download
    idle = measure(0, env, args.repeats)
    busy = measure(args.busy, env, args.repeats)
    print(f"{os.cpu_count()} cores; extra environment: {' '.join(args.env) or 'none'}; median of {args.repeats}")
    print("| machine | default | -t 1 | default / -t 1 |\n|---|---|---|---|")
    for name, t in (("idle", idle), (f"{args.busy} busy", busy)):
        print(f"| {name} | {t['default']:.2f} s | {t['-t 1']:.2f} s | {t['default'] / t['-t 1']:.2f} |")


if __name__ == "__main__":
    main()
