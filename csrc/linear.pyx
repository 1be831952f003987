# Dense projections: Y = X @ W.T (+ beta * Y), through the BLAS that SciPy ships.
#
# Weights are row-major (out, in), as stored in GGUF files. Seen by column-major BLAS, that buffer is the
# (in, out) matrix W.T, so one 'T' transpose flag gives Y.T = W @ X.T, which is Y in row-major order: no
# copy of either operand.
#
# fastlm keeps one thread pool: BLAS runs single-threaded (fastlm.runtime caps it) and the output features
# are split across OpenMP threads, each calling BLAS on its own slice of W's rows. Two pools (OpenBLAS's
# and OpenMP's) taking turns on the same cores spin against each other and run many times slower.
#
# A batched decode step (a few rows, N >= 2) is bound by reading the weights, and gemm reads them far below
# memory speed at such N; the kernels of linear_impl.h stream each weight row once against all N rows instead:
# hand-written AVX2/FMA for float32 where the CPU has them (unless set_simd(False)), else generic vector C
# (float64 compiled for AVX2/FMA too). One row stays on gemv, which streams the weights already.
from cython.parallel cimport parallel, prange
from openmp cimport omp_get_max_threads
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

import os

ctypedef fused floating:
    float
    double

cdef extern from "linear_impl.h" nogil:
    int lin_cpu_has_avx2_fma()
    void lin_small_f32_avx2(const float* x, int n, int k, const float* w, int rows, float* out, int ld_out,
                            float beta)
    void lin_small_f32(const float* x, int n, int k, const float* w, int rows, float* out, int ld_out, float beta)
    void lin_small_f64(const double* x, int n, int k, const double* w, int rows, double* out, int ld_out,
                       double beta)
    void lin_small_f64_avx2(const double* x, int n, int k, const double* w, int rows, double* out, int ld_out,
                            double beta)

# Output features per slice are a multiple of this, so slices keep BLAS's vector loops full.
cdef int SLICE_ALIGN = 16
# Below this many multiply-adds one thread is faster than waking the others.
cdef double PARALLEL_MIN_FLOPS = 1 << 18
# Most rows N for the small-batch kernels: measured against gemm with the weights streamed from memory, as in
# decode (SmolLM2-135M's shapes, 2-core Zen 4). The AVX2 float32 kernel is still 1.25-1.4x faster at N = 32
# (1.1x at 48, about even at 64); the generic ones break even with gemm around N = 8-12.
cdef int SMALL_N_MAX_AVX2_F32 = 32
cdef int SMALL_N_MAX_GENERIC = 8

cdef bint _cpu_simd = lin_cpu_has_avx2_fma()
cdef bint _simd = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"


def set_simd(bint enabled):
    """Use the AVX2/FMA small-batch kernels (True, where the CPU has them) or the portable ones (False)."""
    global _simd
    _simd = enabled and _cpu_simd


def simd_enabled():
    """True when the small-batch projections run the AVX2/FMA kernels."""
    return bool(_simd)


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape as a tuple, for error messages."""
    return tuple([shape[i] for i in range(ndim)])


def linear(const floating[:, ::1] x, const floating[:, ::1] w, floating[:, ::1] out, double beta=0.0):
    """out (N, out) = x (N, in) @ w (out, in).T + beta * out, with the GIL released."""
    cdef int n = x.shape[0], k = x.shape[1], m = w.shape[0]
    if w.shape[1] != k or out.shape[0] != n or out.shape[1] != m:
        raise ValueError(f"linear: shapes x {_dims(x.shape, 2)}, w {_dims(w.shape, 2)}, "
                         f"out {_dims(out.shape, 2)} do not fit out = x @ w.T")
    if n == 0 or m == 0 or k == 0:
        raise ValueError(f"linear: empty operand, x {_dims(x.shape, 2)}, w {_dims(w.shape, 2)}")
    cdef int threads = omp_get_max_threads() if <double>n * m * k >= PARALLEL_MIN_FLOPS else 1
    cdef int per = (m + threads - 1) // threads
    per = (per + SLICE_ALIGN - 1) // SLICE_ALIGN * SLICE_ALIGN
    cdef int slices = (m + per - 1) // per, s, lo
    # Raw pointers: indexing memoryviews inside prange would put bounds-check exits in the parallel block.
    cdef const floating* xp = &x[0, 0]
    cdef const floating* wp = &w[0, 0]
    cdef floating* op = &out[0, 0]
    cdef bint simd = _simd
    cdef int small_n = SMALL_N_MAX_AVX2_F32 if floating is float and simd else SMALL_N_MAX_GENERIC
    for s in prange(slices, nogil=True, num_threads=slices, schedule="static"):
        lo = s * per
        _gemm_slice(xp, wp + <Py_ssize_t>lo * k, op + lo, n, k, min(per, m - lo), m, <floating>beta, simd, small_n)


cdef inline void _gemm_slice(const floating* x, const floating* w, floating* out, int n, int k, int rows,
                             int ld_out, floating beta, bint simd, int small_n) noexcept nogil:
    """out[:, :rows] (leading dimension ld_out) = x (n, k) @ w[:rows].T + beta * out, on one thread."""
    cdef char trans = b'T', no_trans = b'N'
    cdef int one = 1
    cdef floating alpha = 1.0
    if floating is float:
        if n == 1:   # one token: gemv streams the weights once
            sgemv(&trans, &k, &rows, &alpha, <float*>w, &k, <float*>x, &one, &beta, out, &one)
        elif n <= small_n:
            if simd:
                lin_small_f32_avx2(x, n, k, w, rows, out, ld_out, beta)
            else:
                lin_small_f32(x, n, k, w, rows, out, ld_out, beta)
        else:
            sgemm(&trans, &no_trans, &rows, &n, &k, &alpha, <float*>w, &k, <float*>x, &k, &beta, out, &ld_out)
    else:
        if n == 1:
            dgemv(&trans, &k, &rows, &alpha, <double*>w, &k, <double*>x, &one, &beta, out, &one)
        elif n <= small_n:
            if simd:
                lin_small_f64_avx2(x, n, k, w, rows, out, ld_out, beta)
            else:
                lin_small_f64(x, n, k, w, rows, out, ld_out, beta)
        else:
            dgemm(&trans, &no_trans, &rows, &n, &k, &alpha, <double*>w, &k, <double*>x, &k, &beta, out, &ld_out)
