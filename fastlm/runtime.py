"""Process-wide settings of the compiled kernels: the thread count, how idle threads wait, and the SIMD switch.

fastlm runs everything on one OpenMP thread pool: its kernels, and its BLAS projections, which it splits
across those threads itself, each calling BLAS single-threaded. A second pool (OpenBLAS's own threads)
taking turns with OpenMP's on the same cores makes each spin against the other, so BLAS is capped at one
thread through threadpoolctl. The initial count comes from ``FASTLM_NUM_THREADS``, else the cores this
process may run on.

**Busy cores.** Between two parallel regions an OpenMP thread waits for the next one; libgomp's default is
to spin 300,000 times first. On a core that another process also wants, a spinning thread burns the time
slices the working thread needs, and every region waits for its slowest thread: one busy core made a run
3-4x slower than ``-t 1``. fastlm therefore sets ``GOMP_SPINCOUNT`` (see :data:`SPIN_COUNT`) before the
OpenMP runtime starts, unless the environment already sets ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``: a
waiting thread spins for about the gap between two regions of one forward pass, then sleeps, so an idle
machine loses nothing and a loaded one gets its core back. It takes effect only if fastlm is imported
before anything else loads libgomp (the environment is read once, when libgomp loads).

**Threads of the caller.** OpenMP keeps the thread count per calling thread, so :func:`set_num_threads`
records the count for the process and :func:`apply_to_this_thread` (called by every ``LanguageModel`` call)
gives it to a Python thread that has not seen it yet.
"""
from __future__ import annotations

import os
import threading

SPIN_COUNT = 20_000
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)

from threadpoolctl import ThreadpoolController, threadpool_limits  # noqa: E402  (after the environment)

from . import _attention, _blocks, _linear, _qlinear, _sampling  # noqa: E402
from .errors import FastLMValueError  # noqa: E402
from .validation import check_int  # noqa: E402

_num_threads = 0
_openmp = ThreadpoolController().select(user_api="openmp")    # the libgomp the kernels loaded
_applied = threading.local()                                   # .n: the count this thread has


def _default_threads() -> int:
    env = os.environ.get("FASTLM_NUM_THREADS")
    if env:
        if not env.strip().isdigit() or int(env) < 1:
            raise FastLMValueError(f"FASTLM_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Run fastlm's kernels and projections on ``n`` threads (process-wide; BLAS itself stays at one)."""
    global _num_threads
    n = check_int("n", n, 1)
    threadpool_limits(limits=1, user_api="blas")
    _num_threads = n
    apply_to_this_thread()


def apply_to_this_thread() -> None:
    """Give the calling Python thread the count of :func:`set_num_threads` (OpenMP keeps one per thread)."""
    if getattr(_applied, "n", None) != _num_threads:
        _openmp.limit(limits=_num_threads)
        _applied.n = _num_threads


def get_num_threads() -> int:
    """The thread count set by :func:`set_num_threads` (or taken from the environment at import)."""
    return _num_threads


def set_simd(enabled: bool) -> None:
    """Run the kernels' AVX2/FMA paths (True: the default where the CPU has them) or their portable
    fallbacks (False). ``FASTLM_SIMD=0`` in the environment turns them off at import."""
    for kernels in (_attention, _blocks, _linear, _qlinear, _sampling):
        kernels.set_simd(bool(enabled))


def simd_enabled() -> bool:
    """True when the AVX2/FMA paths run."""
    return all(k.simd_enabled() for k in (_attention, _blocks, _linear, _qlinear, _sampling))
