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
waiting thread spins for about the gap between two regions of one forward pass, then sleeps, giving a
loaded core back to whoever needs it (``bench/busy_cores.py`` measures both cases). It takes effect only if fastlm is imported
before anything else loads libgomp (the environment is read once, when libgomp loads).

**Threads of the caller.** OpenMP keeps the thread count per calling thread, so :func:`set_num_threads`
records the count for the process and :func:`apply_to_this_thread` (called by every ``LanguageModel`` call)
gives it to a Python thread that has not seen it yet. Within a call, :class:`StepThreads` picks each decode
step's count between that and 1, by timing the steps: spinning less is not enough once a core is really
taken, as every parallel region then waits for the thread the scheduler has put aside.
"""
from __future__ import annotations

import os
import threading

SPIN_COUNT = 20_000
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)

from threadpoolctl import ThreadpoolController, threadpool_limits  # noqa: E402  (after the environment)

from . import _attention, _blocks, _layers, _linear, _qlinear, _sampling  # noqa: E402
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


def apply_to_this_thread(n: int | None = None) -> None:
    """Give the calling Python thread ``n`` OpenMP threads, by default the count of :func:`set_num_threads`
    (OpenMP keeps one count per calling thread)."""
    n = _num_threads if n is None else n
    if getattr(_applied, "n", None) != n:
        _openmp.limit(limits=n)
        _applied.n = n


class StepThreads:
    """How many threads each decode step runs on, chosen by timing the steps.

    On a machine where other processes hold cores, a step split over every thread waits, at each of its
    parallel regions, for the thread that the scheduler has just put aside (measured here: 240 ms a step
    instead of 12 ms on one thread); one thread never waits. So the steps are timed on ``threads`` and on 1,
    the faster is kept, and the other is re-timed for one step now and then, less often each time the
    choice holds (after 16, 32, ... up to 512 steps): a machine whose load changes is followed, a steady one
    pays next to nothing. One chooser serves every generation of the process (:meth:`shared`), so short
    calls continue its schedule instead of each re-timing both counts, and a prefill runs on the current
    choice. Decode results do not depend on the count: each output row is computed by one thread whatever
    the split.
    """

    FIRST_PERIOD, LAST_PERIOD = 16, 512
    _shared: dict[int, "StepThreads"] = {}

    @classmethod
    def shared(cls, threads: int) -> "StepThreads":
        """The process's chooser for a configured count of ``threads``."""
        return cls._shared.setdefault(threads, cls(threads))

    def __init__(self, threads: int):
        self.threads, self.best, self.other = threads, threads, 1
        self.recent: dict[int, list[float]] = {threads: [], 1: []}
        self.period = self.FIRST_PERIOD
        self.plan = [threads, 1]

    def next_step(self) -> int:
        """The count for the coming step (threads calling at once may share one chooser: the GIL keeps
        its lists whole, and each step's time goes to the count it ran on)."""
        if self.threads == 1:              # one thread configured: nothing to choose
            return 1
        if not self.plan:
            # The other count's latest probe against the median of the current choice's last steps.
            best, other = sorted(self.recent[self.best]), self.recent[self.other]
            if other and (not best or other[-1] < best[len(best) // 2]):
                self.best, self.other, self.period = self.other, self.best, self.FIRST_PERIOD
            else:
                self.period = min(2 * self.period, self.LAST_PERIOD)
            self.plan = [self.best] * self.period + [self.other]
        try:
            return self.plan.pop(0)
        except IndexError:                 # another thread took the last one
            return self.best

    def record(self, threads: int, seconds: float) -> None:
        """How long a step on ``threads`` took."""
        times = self.recent[threads]
        times.append(seconds)
        del times[:-3]


def get_num_threads() -> int:
    """The thread count set by :func:`set_num_threads` (or taken from the environment at import)."""
    return _num_threads


def set_simd(enabled: bool) -> None:
    """Run the kernels' AVX2/FMA paths (True: the default where the CPU has them) or their portable
    fallbacks (False). ``FASTLM_SIMD=0`` in the environment turns them off at import."""
    for kernels in (_attention, _blocks, _layers, _linear, _qlinear, _sampling):
        kernels.set_simd(bool(enabled))


def simd_enabled() -> bool:
    """True when the AVX2/FMA paths run."""
    return all(k.simd_enabled() for k in (_attention, _blocks, _layers, _linear, _qlinear, _sampling))
