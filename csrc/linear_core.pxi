# Dense projections on raw pointers, without the GIL: out (n, m) = x (n, k) @ w (m, k).T + beta * out, the
# output features split across the OpenMP threads (see linear.pyx). Included by linear.pyx and blocks.pyx.
# Needs: floating, prange, sgemm/sgemv/dgemm/dgemv from scipy.linalg.cython_blas, omp_get_max_threads.

cdef extern from "cpu_isa.h" nogil:
    enum:
        FL_ISA_AVX2
    int fl_cpu_has(int isa)

cdef extern from "linear_impl.h" nogil:
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


cdef void linear_run(const floating* x, const floating* w, floating* out, int n, int k, int m, floating beta,
                     bint simd) noexcept nogil:
    """The product on validated, contiguous operands (n, m, k >= 1); simd picks the AVX2/FMA small-batch
    kernels, which the caller has checked the CPU has."""
    cdef int threads = omp_get_max_threads() if <double>n * m * k >= PARALLEL_MIN_FLOPS else 1
    cdef int per = (m + threads - 1) // threads
    per = (per + SLICE_ALIGN - 1) // SLICE_ALIGN * SLICE_ALIGN
    cdef int slices = (m + per - 1) // per, s, lo
    cdef int small_n = SMALL_N_MAX_AVX2_F32 if floating is float and simd else SMALL_N_MAX_GENERIC
    for s in prange(slices, num_threads=slices, schedule="static"):
        lo = s * per
        _gemm_slice(x, w + <Py_ssize_t>lo * k, out + lo, n, k, min(per, m - lo), m, beta, simd, small_n)


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
