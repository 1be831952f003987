# Projections on GGUF block-quantized weights: out (N, rows) = x (N, k) @ dequant(w).T + beta * out, with w the
# raw bytes of a GGUF tensor (rows, row_bytes), never dequantized as a whole.
#
# Paths (kernels in qlinear_impl.h), chosen per call from N (thresholds DEC_N_MIN / PANEL_N_MIN below):
#   N < DEC_N_MIN[qtype] (decode, small batched decode):
#     Q8_0 / Q4_0 / Q4_1  x quantized once per call to int16 blocks of 32 (d = max|x| / 32767, round to nearest,
#                         and d * sum q), integer block dots on weights widened to int16 (AVX2 madd, int32 block
#                         sums), float accumulation; 4 weight rows x up to 4 activation rows. (int8 activations,
#                         ggml's Q8_1, cost too much accuracy: SmolLM2-135M's teacher-forced greedy tokens agreed
#                         with the float path 233 of 240 times; int16: 240 of 240.)
#     F16                 float x, F16C conversion + FMA in the kernel, 4 weight rows x 3 activation rows.
#   DEC_N_MIN <= N < PANEL_N_MIN (and the K-quants from N = 1): "decode-and-dot": 4 weight rows at a time are
#     dequantized into a per-thread float buffer (L1) and multiplied by linear_impl.h's small-batch float kernel
#     (4 x 3 register blocks); float activations, float accuracy.
#   N >= PANEL_N_MIN (prefill): as many weight rows as fit PANEL_BYTES (L2) dequantized into a per-thread float32
#     panel, then single-threaded sgemm; float accuracy.
# Output rows are split across OpenMP threads in slices (multiples of SLICE_ALIGN rows); below
# PARALLEL_MIN_WORK multiply-adds one thread does it all. Each weight block is read once per call.
#
# MEASUREMENTS (2-core AMD EPYC Zen 4 dev box, 2 threads, 1536 x 576 weights in cache, µs per call; the box was
# shared with other jobs, so figures are best-of-many and +-10 %):
#                N=1   N=2   N=3   N=4   N=8   N=16  N=32  N=128
#   Q4_0 int     20    29    48    58    112   220   438   1794
#   Q4_0 dec     52    54    63    79    130   202   339   1266
#   Q4_0 panel   (a 32-row panel: 114 at N=8; 256-row panels: 250 at N=8)            1366
#   F16 direct   20    25    64(*) 45    147   293   621   2493
#   F16 dec      51    56    59    80    112   211   336   1330
#   F16 panel                                                                        1341
#   float32 _linear.linear on the dequantized matrix:
#                26    37    37    54    85    190   326   1275
#   (*) n = 3 runs one 4 x 3 block; noisy.
# (The int rows above are the former int8-activation path; the int16 one below replaced it.)
# So: the integer path wins at small N (and is the one that reads 4.5-8.5 bits a weight at N = 1, where decode
# is bound by memory), decode-and-dot beyond DEC_N_MIN (below), and the panel path ties decode-and-dot at N = 128 (within
# noise) but keeps its speed when x outgrows L2 (N > ~400 at k = 576), so it takes N >= 96. Panel size: at
# N = 128 a panel of 32 rows cost 25 % over float32 sgemm (sgemm packs x again for every panel), 64 KiB-1 MiB
# panels: 1.30 / 1.12 / 1.09 / 1.07 / 1.04 x float32 on one thread, hence PANEL_BYTES = 1 MiB (256 rows at
# k = 576, 160 at k = 1536). N = 1 matvec of 1536 x 576: Q4_0 20 µs (26 GB/s of weights, in cache), Q8_0
# 17 µs (54 GB/s), F16 20 µs (87 GB/s), float32 sgemv 24-29 µs.
# Cold weights (copies cycled past the cache), ONE thread, µs per call, quantized / float32 of the dequantized:
#   1536 x 576    N=1: F16 71/235, Q8_0 42/241, Q4_0 40/239, Q4_1 43/242  (5.6-6x)
#                 N=8: F16 303/176, Q8_0 255/183, Q4_0 229/192, Q4_1 217/168  (0.6-0.85x: compute-bound)
#                 N=128: 2463-2490 / 2469-2540  (1.00-1.03x)
#   49152 x 576   N=1: F16 1479/8427, Q8_0 1252/8091, Q4_0 1241/8120, Q4_1 1364/7859  (5.7-6.5x)
#                 N=8: 0.62-0.88x;  N=128: 84.2-84.9 ms / 83.8-87.2 ms  (0.99-1.03x)
#
#
# int16 activations (this path since), ONE thread, 1536 x 576, µs per call, best-of-many on the shared box
# (+-10 %), integer path against decode-and-dot, warm / cold weights:
#                N=1      N=4       N=8       N=12      N=16      N=24      N=32
#   Q4_0 int     31/40    91/98     180/191   270/280   363/371
#   Q4_0 dec     96/99    143/149   196/226   256/290   377/411
#   Q4_1 int     35/43    91/95     181/187   271/282   381/392   560/576   730/757
#   Q4_1 dec     94/98    143/145   211/238   265/302   370/412   616/666   704/757
#   Q8_0 int     29/47    76/94     153/168   230/244   313/324   465/478   633/646
#   Q8_0 dec     84/88    129/146   185/256   254/339   385/459   479/565   661/730
# The int16 kernel folds 4 weight rows' block sums into one vector (unpack/add) before the float conversion, so
# it costs about what the int8 one did at N = 1 and less from N = 2 (it reuses each unpacked weight block for up
# to 4 activation rows). Decode-and-dot ties warm from N ~ 12 (Q4_x) and loses cold up to N = 32, hence
# DEC_N_MIN = 16 for Q4_0 / Q4_1 (float accuracy where they tie) and 32 for Q8_0 (its decode is the slowest).
# int8 (before) -> int16 (after), ONE thread, µs per call, warm / cold:
#   1536 x 576    N=1: Q8_0 32/48 -> 30/51, Q4_0 36/43 -> 32/41, Q4_1 40/47 -> 36/45
#                 N=8: Q8_0 194/269 -> 153/163, Q4_0 209/232 -> 183/189, Q4_1 212/242 -> 184/192  (before: dec)
#   49152 x 576   N=1: Q8_0 1260/1389 -> 1225/1352, Q4_0 1165/1353 -> 1003/1326, Q4_1 1298/1419 -> 1124/1293
#                 N=8: Q8_0 8240/8302 -> 4956/4923, Q4_0 7254/7358 -> 5834/5912, Q4_1 7381/7264 -> 5910/5917
# Whole model (fastlm bench -p 128 -n 64), tg tok/s int8 -> int16: Q4_1 113 -> 118 (1 thread), 187 -> 201 (2);
# Q4_0 115 -> 120, 203 -> 203; Q8_0 102 -> 110, 166 -> 165.
#
# Scratch (bytes, from scratch_size(n, k, threads)): 64 bytes of alignment slack, one float buffer per thread
# (4 rows x k, or PANEL_ROWS x k when N may take the panel path), then the quantized activations q (n x k int16,
# 2 bytes a value), d and s (n x k/32 float32 each). With scratch=None each call allocates it (and allocations() counts that).
from cython.parallel cimport prange
from libc.stdint cimport int8_t, uint8_t, uintptr_t
from openmp cimport omp_get_max_threads
from scipy.linalg.cython_blas cimport sgemm

import os

import numpy as np

from fastlm.errors import FastLMValueError

include "qlinear_core.pxi"

cdef bint _cpu_simd = ql_cpu_has_avx2()
cdef bint _simd = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"
cdef Py_ssize_t _allocations = 0   # calls that allocated their own scratch (scratch=None)


def set_simd(bint enabled):
    """Use the AVX2/FMA/F16C kernels (True, where the CPU has them) or the portable ones (False)."""
    global _simd
    _simd = enabled and _cpu_simd


def simd_enabled():
    """True when the quantized projections run the AVX2/FMA/F16C kernels."""
    return bool(_simd)


def allocations():
    """How many linear() calls have allocated their own scratch (no ``scratch`` given) in this process."""
    return _allocations


def num_threads():
    """The thread count linear() plans for now (OpenMP's maximum), the ``threads`` of scratch_size()."""
    return omp_get_max_threads()


def scratch_size(int n, int k, int threads):
    """Bytes of scratch that linear() needs for any x of up to (n, k) on up to ``threads`` threads, any type."""
    if n < 1 or k < 1 or threads < 1:
        raise FastLMValueError(f"scratch_size: n ({n}), k ({k}) and threads ({threads}) must be >= 1")
    return qlinear_scratch_size(n, k, threads)


cdef inline bint _overlaps(const void* a, Py_ssize_t na, const void* b, Py_ssize_t nb) noexcept:
    cdef uintptr_t pa = <uintptr_t>a, pb = <uintptr_t>b
    return pa < pb + <uintptr_t>nb and pb < pa + <uintptr_t>na


def linear(const float[:, ::1] x, const uint8_t[:, ::1] w, int qtype, float[:, ::1] out, double beta=0.0,
           uint8_t[::1] scratch=None):
    """out (N, rows) = x (N, k) @ dequant(w).T + beta * out, w (rows, row_bytes) the raw bytes of rows of k
    elements of ggml type ``qtype``. beta == 0 never reads out. ``scratch``: at least scratch_size(N, k,
    num_threads()) bytes, overlapping nothing else; without it each call allocates its own. Raises ValueError
    on any inconsistency."""
    global _allocations
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], rows = w.shape[0], row_bytes = w.shape[1]
    if n < 1 or k < 1 or rows < 1:
        raise FastLMValueError(f"qlinear: empty operand, x ({n}, {k}), w ({rows}, {row_bytes})")
    check_qtype(qtype, k)
    if row_bytes != k // _block_elements[qtype] * _block_bytes[qtype]:
        raise FastLMValueError(f"qlinear: w rows hold {row_bytes} bytes, but {k} elements of {NAMES[qtype]} take "
                               f"{k // _block_elements[qtype] * _block_bytes[qtype]}")
    if out.shape[0] != n or out.shape[1] != rows:
        raise FastLMValueError(f"qlinear: out has shape ({out.shape[0]}, {out.shape[1]}), expected ({n}, {rows})")
    if rows > (1 << 30) or n > (1 << 24):
        raise FastLMValueError(f"qlinear: dimensions too large: x ({n}, {k}), w rows {rows}")
    cdef const float* xp = &x[0, 0]
    cdef const uint8_t* wp = &w[0, 0]
    cdef float* op = &out[0, 0]
    if _overlaps(op, n * rows * 4, xp, n * k * 4) or _overlaps(op, n * rows * 4, wp, rows * row_bytes):
        raise FastLMValueError("qlinear: out must not overlap x or w")
    cdef int threads = omp_get_max_threads()
    cdef Py_ssize_t need = qlinear_scratch_size(n, k, threads)
    if scratch is None:
        scratch = np.empty(need, np.uint8)
        _allocations += 1
    elif scratch.shape[0] < need:
        raise FastLMValueError(f"qlinear: scratch holds {scratch.shape[0]} bytes, fewer than the {need} of "
                               f"scratch_size({n}, {k}, {threads})")
    cdef uint8_t* sp = &scratch[0]
    if (_overlaps(sp, scratch.shape[0], xp, n * k * 4) or _overlaps(sp, scratch.shape[0], op, n * rows * 4)
            or _overlaps(sp, scratch.shape[0], wp, rows * row_bytes)):
        raise FastLMValueError("qlinear: scratch must not overlap x, w or out")
    with nogil:
        qlinear_run(xp, wp, qtype, op, <int>n, <int>k, <int>rows, <float>beta, sp, _simd)
