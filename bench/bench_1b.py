"""fastlm beside llama.cpp on the same files in the same run: prompt processing (pp) and generation (tg) tokens/s,
and the machine's read bandwidth, for the 1B-shaped files of ``bench/make_1b.py`` (or any GGUF files).

    python bench/bench_1b.py OUTDIR/1b.*.gguf [-p 128] [-n 128] [-t 2] [-r 3]

llama.cpp runs through llama-cpp-python when it is installed (the optional ``peers`` extra; build it from
source with native flags but AMX off: ``bash bench/install_peers.sh``); without it only fastlm is timed. Both
prefill p random tokens in one batch and then decode n tokens one at a time (llama-bench's pp / tg), after one
untimed round; the two engines' timed rounds alternate, and each ratio is the median of the rounds' own ratios,
so that the shared machine's drifts (the stolen CPU column) hit both alike. ``size x tg`` is the bytes of
weights read per second when generating; the bandwidth column is two threads reading the mapped file (the
ceiling of that figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import fastlm
from fastlm.cli import _bench_rounds


def read_bandwidth(path: Path, threads: int) -> float:
    """GB/s of ``threads`` threads summing the mapped file's bytes (as uint64), after one warm pass."""
    data = np.memmap(path, np.uint8, "r")
    words = data[: data.size // 8 * 8].view(np.uint64)
    parts = np.array_split(words, threads * 16)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))
        start = time.perf_counter()
        list(pool.map(np.sum, parts))
    return words.nbytes / (time.perf_counter() - start) / 1e9


def llama_cpp_rounds(path: Path, p: int, n: int, threads: int) -> Iterator[tuple[float, float]] | None:
    """llama.cpp's rounds, as fastlm.cli._bench_rounds (None without llama-cpp-python)."""
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=p + n + 8, n_batch=p, n_ubatch=p,
                verbose=False)

    def last_logits():      # llama-cpp-python 0.3 keeps no scores unless logits_all; read the context's own
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    def rounds():
        rng = np.random.default_rng(0)
        while True:
            tokens = rng.integers(0, llm.n_vocab(), p).tolist()
            llm.reset()
            start = time.perf_counter()
            llm.eval(tokens)
            pp = p / (time.perf_counter() - start)
            token = int(np.argmax(last_logits()))
            start = time.perf_counter()
            for _ in range(n):
                llm.eval([token])
                token = int(np.argmax(last_logits()))
            yield pp, n / (time.perf_counter() - start)
    return rounds()


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) ticks of the machine's CPUs so far (/proc/stat; (0, 0) where it is unreadable): the share
    the hypervisor gave to other guests shows how noisy a run was."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-p", type=int, default=128)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    fastlm.set_num_threads(args.threads)
    print(f"CPU: {_cpu_name()}, {args.threads} threads; fastlm SIMD level {fastlm._qlinear.isa()}; medians of "
          f"{args.repetitions} interleaved rounds, ratios per round")
    print("| file | size | read GB/s | fastlm pp | llama.cpp pp | pp ratio | fastlm tg | llama.cpp tg | tg ratio "
          "| fastlm size x tg GB/s | stolen CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.files:
        size = path.stat().st_size
        bw = read_bandwidth(path, args.threads)
        ticks = cpu_ticks()
        ours = _bench_rounds(fastlm.load(path).model, args.p, args.n)
        peer = llama_cpp_rounds(path, args.p, args.n, args.threads)
        engines = [ours] if peer is None else [ours, peer]
        for rounds in engines:                  # untimed: page faults, first touch
            next(rounds)
        # Alternate the engines round by round, so that a drift of the shared machine's speed hits both alike.
        timed = np.array([[next(rounds) for rounds in engines] for _ in range(args.repetitions)])  # (r, e, 2)
        all_ticks, stolen = (b - a for a, b in zip(ticks, cpu_ticks()))
        pp, tg = np.median(timed[:, 0, 0]), np.median(timed[:, 0, 1])
        cells = ["n/a"] * 4
        if peer is not None:
            ratios = np.median(timed[:, 0] / timed[:, 1], axis=0)
            cells = [f"{np.median(timed[:, 1, 0]):.1f}", f"{ratios[0]:.2f}", f"{np.median(timed[:, 1, 1]):.1f}",
                     f"{ratios[1]:.2f}"]
        steal = f"{100 * stolen / all_ticks:.0f} %" if all_ticks else "n/a"
        print(f"| {path.name} | {size / 1e9:.2f} GB | {bw:.1f} | {pp:.1f} | {cells[0]} | {cells[1]} | {tg:.1f} | "
              f"{cells[2]} | {cells[3]} | {size * tg / 1e9:.1f} | {steal} |", flush=True)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


if __name__ == "__main__":
    sys.exit(main())
