"""Long runs: many generate calls on one loaded model, then many load/unload cycles, watching the process's
resident memory and its memory maps.

    python bench/soak.py                              # 10,000 calls and 1,000 loads of the real model
    python bench/soak.py --calls 2000 --loads 200     # shorter
    python bench/soak.py --calls 0                    # only the 1,000 load/unload cycles

The calls phase prints RSS after a warm-up (a twentieth of the calls) and at the end (growth target:
< 10 MB). The loads phase loads the model, generates one token and drops it, ``--loads`` times; it prints
RSS and the maps of the model file open in this process (/proc/self/maps) before the cycles, after ten of
them and at the end (targets: RSS flat, no map left once the last model is dropped).
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
    """How many of this process's memory maps are of the file ``path``."""
    with open("/proc/self/maps") as f:
        return sum(str(path) in line for line in f)


def soak_calls(path: Path, calls: int, tokens: int, every: int = 1000) -> None:
    """``calls`` short generate calls on one model: RSS after the warm-up, every ``every`` calls and at the
    end."""
    lm = fastlm.load(path)
    warmup = max(1, calls // 20)
    start = time.perf_counter()
    for i in range(calls):
        if i == warmup:
            gc.collect()
            base = rss_mb()
        elif i > warmup and i % every == 0:
            print(f"  {i} calls, {time.perf_counter() - start:.0f} s: RSS {rss_mb():.1f} MB "
                  f"({rss_mb() - base:+.1f} MB)", flush=True)
        lm.generate(f"Call {i}: once upon a time", tokens, seed=i)
    gc.collect()
    end = rss_mb()
    print(f"{calls} generate calls of {tokens} tokens in {time.perf_counter() - start:.0f} s: RSS {base:.1f} MB "
          f"after {warmup}, {end:.1f} MB at the end ({end - base:+.1f} MB)", flush=True)


def soak_loads(path: Path, loads: int) -> None:
    """``loads`` load / generate one token / drop cycles: RSS and maps of the file, at start and end."""
    gc.collect()
    start_rss, start_maps = rss_mb(), maps_of(path)
    warm = min(10, loads)
    start = time.perf_counter()
    for i in range(loads):
        if i == warm:
            gc.collect()
            base = rss_mb()
        lm = fastlm.load(path)
        lm.generate("Hi", 1, seed=0)
        del lm
    gc.collect()
    if loads == warm:
        base = rss_mb()
    end = rss_mb()
    print(f"{loads} load/generate/unload cycles in {time.perf_counter() - start:.0f} s: RSS {start_rss:.1f} MB "
          f"before, {base:.1f} MB after {warm}, {end:.1f} MB at the end ({end - base:+.1f} MB since cycle "
          f"{warm}); maps of {path.name} open: {start_maps} before, {maps_of(path)} at the end", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=fastlm.DEFAULT_MODEL)
    parser.add_argument("--calls", type=int, default=10_000, help="generate calls (0: skip the phase)")
    parser.add_argument("--tokens", type=int, default=4, help="new tokens per call")
    parser.add_argument("--loads", type=int, default=1_000, help="load/unload cycles (0: skip the phase)")
    args = parser.parse_args()
    path = fastlm.api.resolve(args.model)
    if args.calls:
        soak_calls(path, args.calls, args.tokens)
    if args.loads:
        soak_loads(path, args.loads)


if __name__ == "__main__":
    main()
