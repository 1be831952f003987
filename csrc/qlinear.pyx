# Projections on GGUF block-quantized weights: out (N, rows) = x (N, k) @ dequant(w).T + beta * out, with w the
# raw bytes of a GGUF tensor (rows, row_bytes), never dequantized as a whole. The driver is qlinear_core.pxi
# (shared with blocks.pyx), the kernels qlinear_impl.h.
#
# Paths, chosen per call from N (DEC_N_MIN / PANEL_N_MIN per type):
#   N < DEC_N_MIN (decode, small batches):
#     block formats       x rounded once per call to int16 with a scale per 32, d = max|x| / 32767 (per 256 for
#                         the 256-element formats, evens before odds, d = max|x| / 16383); d * sum q and the
#                         halves' sums per 32,
#                         integer chunk dots on the weights unpacked to int16 (AVX2 madd or VNNI vpdpwssd, int32
#                         sums), float accumulation; 4 weight rows (256-element formats: 1) x up to 4 activation
#                         rows. With one activation row the 256-element formats fold 4 chunks' int32 dots into
#                         one vector before their sub-scales multiply (1B Q4_K_M tg 22.0 -> 24.7 tok/s, Zen 3).
#                         ggml's int8 activations (Q8_1 / Q8_K) cost too much: SmolLM2-135M's teacher-forced
#                         greedy choices agreed with the float path 233 of 240 times with them, 240 of 240 with
#                         int16, at the same speed. The kernel per format and SIMD level is ggml_types.h's.
#     F16                 float x, F16C conversion + FMA, 4 weight rows x 3 activation rows.
#   DEC_N_MIN <= N < PANEL_N_MIN, "decode-and-dot": 4 weight rows at a time decoded into a per-thread float
#     buffer (L1) and multiplied by linear_impl.h's small-batch float kernel.
#   N >= PANEL_N_MIN (prefill), per thread a panel of as many weight rows as PANEL_BYTES of float32 hold:
#     block formats, with SIMD (GEMM_TYPES): x rounded to int16 as on the integer path and packed once per call,
#     the panel's rows unpacked to int16 with the sub-scales and constant offsets multiplied in (a float scale
#     per block and the mins left), qlinear_impl.h's integer GEMM (6 weight rows x 16 activation rows, exact
#     int32 sums over spans as long as no sum can overflow: 32 elements for Q6_K up to 256 for Q2_K / Q3_K; the
#     15-bit activations of the 256-element formats doubled them, Q5_K-IQ4_XS's GEMM 1.04-1.10x).
#     A madd does twice the multiply-adds of an FMA per operation. 1B prefill of 128 tokens (Zen 3,
#     2 threads, tok/s) against the float32 panels: Q8_0 51 -> 66, Q6_K 53 -> 61, Q2_K 51 -> 73, Q3_K_M
#     63 -> 82, Q4_K_M 51 -> 60. A first version that kept the sub-scales as float scales per 16 elements was
#     slower than float32 on Q6_K (47 against 57): its conversions doubled.
#     F16, and every type without SIMD: rows decoded to float32, then linear_impl.h's GEMM (AVX2; sgemm on the
#     portable path) on x packed once per call: float32 accuracy. sgemm packed x and the panel again for each
#     panel, a fifth of the 1B model's prefill (perf); the GEMM's 6 x 16 register block runs at 45 GMAC/s on
#     hot data, one Zen 3 core (FMA peak ~46).
# Output rows are split across the OpenMP threads in slices (multiples of QL_SLICE_ALIGN rows); below
# PARALLEL_MIN_WORK multiply-adds one thread does it all. Each weight block is read once per call.
#
# Measured on the 2-core Zen 4 box, one thread, 1536 x 576, µs per call, warm / cold weights:
#                N=1      N=4       N=8       N=12      N=16      N=32      N=128
#   Q4_0 int     31/40    91/98     180/191   270/280   363/371
#   Q4_0 dec     96/99    143/149   196/226   256/290   377/411             1266 (2 threads, warm)
#   Q4_1 int     35/43    91/95     181/187   271/282   381/392   730/757
#   Q4_1 dec     94/98    143/145   211/238   265/302   370/412   704/757
#   Q8_0 int     29/47    76/94     153/168   230/244   313/324   633/646
#   Q8_0 dec     84/88    129/146   185/256   254/339   385/459   661/730
#   float32 sgemv on the decoded matrix, N=1: ~240 cold, so decode reads the blocks 5-6x faster.
# Decode-and-dot ties the integer path warm from N ~ 12 (Q4_x) and loses cold up to N = 32, hence DEC_N_MIN 16
# for Q4_x (float accuracy where they tie) and 32 for Q8_0. The panel path ties decode-and-dot at N = 128 but
# keeps its speed once x outgrows L2, hence PANEL_N_MIN 96. Panels of 64 KiB to 1 MiB cost 1.30 to 1.04x
# float32 sgemm at N = 128 (sgemm packs x again for each one), hence PANEL_BYTES = 1 MiB; the GEMM, too, reads
# all of packed x once per panel.
#
# Scratch (bytes, scratch_size(n, k, threads)): 64 bytes of alignment slack, one float buffer per thread (4 rows,
# or a panel), then the rounded activations (n x k int16, and d, s, sl, sh per block of 32), and for the integer
# GEMM those packed; or x packed for the float GEMM. With scratch=None each
# call allocates it (and allocations() counts that).
from cython.parallel cimport prange
from libc.stdint cimport int8_t, uint8_t, uintptr_t
from openmp cimport omp_get_max_threads
from scipy.linalg.cython_blas cimport sgemm

import os

import numpy as np

from fastlm.errors import FastLMValueError

include "qlinear_core.pxi"

cdef bint _cpu_simd = fl_cpu_has(FL_ISA_AVX2)
include "simd_switch.pxi"


def isa():
    """The SIMD level of the integer kernels when SIMD is on (one of ISA_NAMES; the CPU's best by default)."""
    return ISA_NAMES[_ql_isa]


def set_isa(str name):
    """Run the integer kernels of SIMD level ``name`` (one of CPU_ISAS, the levels this CPU has; a level
    without its own kernel for a type runs the one it falls back to), to test each level's kernels."""
    global _ql_isa
    if name not in CPU_ISAS:
        raise FastLMValueError(f"set_isa: {name!r} is not a SIMD level this CPU runs; it runs {CPU_ISAS}")
    _ql_isa = ISA_NAMES.index(name)


cdef Py_ssize_t _allocations = 0   # calls that allocated their own scratch (scratch=None)


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
    if row_bytes != <Py_ssize_t>_row_bytes(qtype, k):
        raise FastLMValueError(f"qlinear: w rows hold {row_bytes} bytes, but {k} elements of {NAMES[qtype]} take "
                               f"{_row_bytes(qtype, k)}")
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
