"""What every fuzz target shares: the oracle (errors, time, memory), scratch files, a plain mutator and main().

A target is a function ``check(data: bytes)`` that returns normally when fastlm handled the input as
documented (accepted it, or raised the error it promises). :func:`run_one` adds the two bounds that an
exception cannot show: the input must finish within :data:`TIME_LIMIT_S` of CPU time, and the Python
allocations it causes (NumPy arrays included: NumPy reports them to tracemalloc) must stay within
:func:`allocation_limit` of its size. Native allocations (the Rust tokenizer) are bounded by libFuzzer's ``-rss_limit_mb`` instead.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import gzip
import hashlib
import itertools
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
import types
import warnings
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 10.0            # CPU seconds of one input (the replay tests' bound too)
# libFuzzer's -timeout, in wall-clock seconds: it catches an input that never returns. Wider than TIME_LIMIT_S,
# as a fuzzer under `nice` on a busy machine may wait minutes for a core (seen: 392 s inside one stat()).
HANG_LIMIT_S = 600
ALLOC_FACTOR = 16              # decoding 4-bit blocks to float32 takes ~7x their bytes, to float64 ~14x
ALLOC_SLACK = 64 << 20         # what parsing any input may take (a vocabulary's Python strings, ...)
RSS_LIMIT_MB = 4096

Check = Callable[[bytes], None]


class Bug(AssertionError):
    """An input broke a bound: too slow or too much memory (an unexpected exception is a bug as it is)."""


def allocation_limit(size: int) -> int:
    return ALLOC_FACTOR * size + ALLOC_SLACK


def run_one(check: Check, data: bytes, measure_memory: bool = True) -> None:
    """``check(data)`` under the oracle: an unexpected exception passes through, a broken bound raises Bug.
    Tracing is started for the call and stopped after it, unless it was on already (a fuzzing run keeps it
    on)."""
    started = measure_memory and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check(data)
        elapsed = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    if elapsed > TIME_LIMIT_S:
        raise Bug(f"a {len(data)}-byte input took {elapsed:.1f} s of CPU time (limit {TIME_LIMIT_S} s)")
    if measure_memory and peak > allocation_limit(len(data)):
        raise Bug(f"a {len(data)}-byte input allocated {peak} bytes (limit {allocation_limit(len(data))})")


@contextlib.contextmanager
def memory_ceiling(extra: int = 4 << 30):
    """Cap this process's address space at its current size plus ``extra`` bytes while inside: an input that
    slips past the tracemalloc bound then fails with MemoryError instead of taking the machine's memory."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


# --------------------------------------------------------------------------------------------- scratch files

_scratch = Path(tempfile.mkdtemp(prefix="fastlm-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, _scratch, True)
_serial = itertools.count()


def scratch_dir(files: dict[str, bytes]) -> Path:
    """A new folder holding ``files`` (name -> bytes). The previous folder is deleted, but a memory map still
    open on one of its files stays valid: Linux keeps an unlinked file's pages, where rewriting the file in
    place could truncate a live map under its reader."""
    folder = _scratch / str(next(_serial))
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for old in _scratch.iterdir():
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def run_checkpoint(files: dict[str, bytes]) -> None:
    """Load a Hugging Face checkpoint made of ``files`` and run one forward pass through the model it builds;
    a ModelFormatError is the loader refusing the input, which is right."""
    from fastlm.errors import ModelFormatError
    from fastlm.model import CausalLM
    from fastlm.weights import load_safetensors
    try:
        config, params, _ = load_safetensors(scratch_dir(files))
    except ModelFormatError:
        return
    CausalLM.from_params(config, params).forward([0])


# --------------------------------------------------------------------------------------- the plain mutator

_INTERESTING = [0, 1, 2, 7, 8, 16, 31, 32, 255, 256, 1024, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32,
                2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to four random edits of ``data``: bit flips, interesting little-endian integers, inserted,
    deleted or repeated chunks, truncation, a splice with another input."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(out)
        op = rng.randrange(7)
        at = rng.randrange(n) if n else 0
        if op == 0 and n:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) % (1 << (8 * width))
            out[at:at + width] = value.to_bytes(width, "little")
        elif op == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and n:
            del out[at:at + rng.randint(1, 64)]
        elif op == 4 and n:
            out[at:at] = out[at:at + rng.randint(1, 256)] * rng.randint(1, 8)
        elif op == 5 and n:
            del out[rng.randrange(n):]
        elif op == 6 and others:
            other = rng.choice(others)
            out[at:] = other[rng.randrange(len(other)):] if other else b""
    return bytes(out)


def plain_fuzz(check: Check, seeds: list[bytes], seconds: float, seed: int = 0,
               measure_memory: bool = True) -> int:
    """Random mutations of ``seeds`` through :func:`run_one` for ``seconds``; returns the number of inputs
    run. A failing input raises, with the input attached as the exception's ``fuzz_input`` attribute."""
    rng = random.Random(seed)
    deadline, runs = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        data = mutate(rng.choice(seeds), rng, seeds)
        try:
            run_one(check, data, measure_memory)
        except BaseException as err:            # a Rust panic is a BaseException
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            err.fuzz_input = data
            raise
        runs += 1
    return runs


# ------------------------------------------------------------------------------------------------- main()

def inputs_in(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the files in folders named, sorted."""
    found = []
    for p in map(Path, paths):
        found.extend(sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p])
    return found


def name_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


REGRESSIONS = ROOT / "tests" / "data" / "fuzz"


def read_input(path: Path) -> bytes:
    """An input file's bytes; a ``.gz`` file (the regression corpus compresses large inputs) is unpacked."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


def keep(target: str, data: bytes, label: str) -> Path:
    """Add ``data`` to the regression corpus of ``target`` as ``<label>-<hash>``, gzipped when over 4 KiB."""
    folder = REGRESSIONS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}-{name_of(data)}"
    if len(data) > 4096:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _instrument(atheris, packages: tuple[str, ...]) -> None:
    """Coverage for the functions of ``packages`` only (atheris.instrument_all() takes minutes on the whole
    of NumPy and SciPy)."""
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] not in packages:
            continue
        for obj in list(vars(module).values()):
            members = vars(obj).values() if isinstance(obj, type) and obj.__module__ == module_name else [obj]
            for member in members:
                member = getattr(member, "__func__", member)              # classmethod, staticmethod
                if isinstance(member, types.FunctionType) and member.__module__ == module_name:
                    atheris.instrument_func(member)


def main(name: str, check: Check, seeds: Callable[[], list[bytes]], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m fuzz.{name}", description=f"Fuzz fastlm's {name} input.")
    parser.add_argument("inputs", nargs="*", type=Path, help="replay these files or folders instead of fuzzing")
    parser.add_argument("--seconds", type=float, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--plain", action="store_true", help="the plain random mutator, even with atheris")
    parser.add_argument("--keep", metavar="LABEL",
                        help="add the inputs named to the regression corpus, tests/data/fuzz/<target>/")
    parser.add_argument("--no-memory-check", dest="memory", action="store_false",
                        help="skip tracemalloc's bound (faster)")
    args = parser.parse_args(argv)
    if args.memory:
        tracemalloc.start()              # once for the whole run: run_one only resets the peak
    with memory_ceiling():
        _run(name, check, seeds, args)


def _run(name: str, check: Check, seeds: Callable[[], list[bytes]], args: argparse.Namespace) -> None:
    if args.inputs and args.keep:
        for path in inputs_in(args.inputs):
            print(f"kept {keep(name, read_input(path), args.keep)}")
        return
    if args.inputs:
        failed = 0
        for path in inputs_in(args.inputs):
            try:
                run_one(check, read_input(path), args.memory)
                print(f"ok    {path}")
            except BaseException as err:
                failed += 1
                print(f"FAIL  {path}: {type(err).__name__}: {err}")
        sys.exit(1 if failed else 0)

    corpus, crashes = ROOT / "fuzz" / "corpus" / name, ROOT / "fuzz" / "crashes" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    initial = seeds()
    for data in initial:
        (corpus / name_of(data)).write_bytes(data)
    try:
        import atheris
    except ImportError:
        atheris = None
    if atheris is None or args.plain:
        if atheris is None:
            print("atheris is not installed (pip install -e '.[fuzz]'): plain random mutations, no coverage")
        start = time.monotonic()
        try:
            runs = plain_fuzz(check, initial + [p.read_bytes() for p in inputs_in([corpus])], args.seconds,
                              seed=int(time.time()), measure_memory=args.memory)
        except BaseException as err:
            data = getattr(err, "fuzz_input", None)
            if data is None:
                raise
            (crashes / f"crash-{name_of(data)}").write_bytes(data)
            print(f"crash-{name_of(data)} written to {crashes}")
            raise
        print(f"{runs} inputs in {time.monotonic() - start:.0f} s, no failure")
        return

    def one_input(data: bytes) -> None:
        run_one(check, data, args.memory)

    _instrument(atheris, ("fastlm", "jinja2", "fuzz"))
    atheris.Setup([sys.argv[0], f"-max_total_time={int(args.seconds)}", f"-timeout={HANG_LIMIT_S}",
                   f"-rss_limit_mb={RSS_LIMIT_MB}", f"-artifact_prefix={crashes}/", "-print_final_stats=1",
                   str(corpus)], one_input)
    atheris.Fuzz()
