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
from cython.parallel cimport prange
from openmp cimport omp_get_max_threads
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

import os

ctypedef fused floating:
    float
    double

include "linear_core.pxi"

cdef bint _cpu_simd = fl_cpu_has(FL_ISA_AVX2)
include "simd_switch.pxi"


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
    with nogil:
        linear_run(&x[0, 0], &w[0, 0], &out[0, 0], n, k, m, <floating>beta, _simd)
