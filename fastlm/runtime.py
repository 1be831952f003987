"""Process-wide settings of the compiled kernels: the thread count and the SIMD switch.

fastlm runs everything on one OpenMP thread pool: its kernels, and its BLAS projections, which it splits
across those threads itself, each calling BLAS single-threaded. A second pool (OpenBLAS's own threads)
taking turns with OpenMP's on the same cores makes each spin against the other, so BLAS is capped at one
thread through threadpoolctl. The initial count comes from ``FASTLM_NUM_THREADS``, else the cores this
process may run on.
"""
from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

from . import _attention, _blocks, _linear, _qlinear, _sampling
from .errors import FastLMValueError
from .validation import check_int

_num_threads = 0


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
    threadpool_limits(limits=n, user_api="openmp")
    threadpool_limits(limits=1, user_api="blas")
    _num_threads = n


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
