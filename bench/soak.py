"""Long runs: many generate calls on one loaded model, then many load/unload cycles, watching the process's
resident memory and its memory maps.

    python bench/soak.py                              # 10,000 calls and 1,000 loads of the real model
    python bench/soak.py --calls 2000 --loads 200     # shorter

Prints RSS after a warm-up and at the end of each phase (growth target: < 10 MB), and how many maps of the
model file are still open after the loads (target: none beyond the one model kept).
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import fastlm


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def maps_of(path: Path) -> int:
    with open("/proc/self/maps") as f:
        return sum(str(path) in line for line in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=fastlm.DEFAULT_MODEL)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=4, help="new tokens per call")
    parser.add_argument("--loads", type=int, default=1_000)
    args = parser.parse_args()

    lm = fastlm.load(args.model)
    warmup = max(1, args.calls // 20)
    start = time.perf_counter()
    for i in range(args.calls):
        if i == warmup:
            gc.collect()
            base = rss_mb()
        lm.generate(f"Call {i}: once upon a time", args.tokens, seed=i)
    gc.collect()
    print(f"{args.calls} generate calls of {args.tokens} tokens in {time.perf_counter() - start:.0f} s: RSS "
          f"{base:.1f} MB after {warmup}, {rss_mb():.1f} MB at the end ({rss_mb() - base:+.1f} MB)")

    path = lm.source
    start = time.perf_counter()
    for i in range(args.loads):
        if i == min(10, args.loads - 1):
            gc.collect()
            base = rss_mb()
        other = fastlm.load(path)
        other.generate("Hi", 1, seed=0)
        del other
    gc.collect()
    print(f"{args.loads} load/generate/unload cycles in {time.perf_counter() - start:.0f} s: RSS {base:.1f} MB "
          f"after 10, {rss_mb():.1f} MB at the end ({rss_mb() - base:+.1f} MB); maps of the file open: "
          f"{maps_of(path)} (the one model kept holds {1 if lm else 0})")


if __name__ == "__main__":
    main()
