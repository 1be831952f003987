"""fastlm beside llama.cpp on the same files in the same run: prompt processing (pp) and generation (tg) tokens/s,
and the machine's read bandwidth, for the 1B-shaped files of ``bench/make_1b.py`` (or any GGUF files).

    python bench/bench_1b.py OUTDIR/1b.*.gguf [-p 128] [-n 128] [-t 2] [-r 3]

llama.cpp runs through llama-cpp-python when it is installed (the optional ``peers`` extra; build it from
source with native flags but AMX off: ``bash bench/install_peers.sh``); without it only fastlm is timed. Both
prefill p random tokens in one batch and then decode n tokens one at a time (llama-bench's pp / tg), after one
untimed round. ``size x tg`` is the bytes of weights read per second when generating; the bandwidth column is
two threads reading the mapped file (the ceiling of that figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import fastlm
from fastlm.cli import _bench


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


def fastlm_speed(path: Path, p: int, n: int, reps: int) -> tuple[float, float]:
    model = fastlm.load(path).model
    pp, tg = _bench(model, p, n, reps)
    return float(np.mean(pp)), float(np.mean(tg))


def llama_cpp_speed(path: Path, p: int, n: int, reps: int, threads: int) -> tuple[float, float] | None:
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        return None

    def last_logits():      # llama-cpp-python 0.3 keeps no scores unless logits_all; read the context's own
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    llm = Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=p + n + 8, n_batch=p, n_ubatch=p,
                verbose=False)
    rng = np.random.default_rng(0)
    pp, tg = [], []
    for r in range(reps + 1):
        tokens = rng.integers(0, llm.n_vocab(), p).tolist()
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        pp.append(p / (time.perf_counter() - start))
        token = int(np.argmax(last_logits()))
        start = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
        tg.append(n / (time.perf_counter() - start))
    return float(np.mean(pp[1:])), float(np.mean(tg[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("-p", type=int, default=128)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    args = parser.parse_args(argv)
    fastlm.set_num_threads(args.threads)
    print(f"CPU: {_cpu_name()}, {args.threads} threads; fastlm SIMD level {fastlm._qlinear.isa()}")
    print("| file | size | read GB/s | fastlm pp | llama.cpp pp | fastlm tg | llama.cpp tg | fastlm size x tg GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.files:
        size = path.stat().st_size
        bw = read_bandwidth(path, args.threads)
        pp, tg = fastlm_speed(path, args.p, args.n, args.repetitions)
        peer = llama_cpp_speed(path, args.p, args.n, args.repetitions, args.threads)
        lpp, ltg = ("n/a", "n/a") if peer is None else (f"{peer[0]:.1f}", f"{peer[1]:.1f}")
        print(f"| {path.name} | {size / 1e9:.2f} GB | {bw:.1f} | {pp:.1f} | {lpp} | {tg:.1f} | {ltg} | "
              f"{size * tg / 1e9:.1f} |", flush=True)
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
