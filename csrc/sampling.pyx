# distutils: language = c++
# The sampling pipeline over (B, V) rows of logits: temperature -> top-k -> top-p -> softmax -> draw, one row
# per OpenMP thread. The per-row work is C++ in sampling_impl.h (std::nth_element / std::sort); this file only
# checks that the buffers match, carves each thread's scratch out of one block allocated per call, and loops.
# fastlm/sampling.py validates the values (NaN, +inf, all -inf rows, parameter ranges) before calling here.
# The weighting pass's exp runs four lanes wide with AVX2/FMA where the CPU has them (FASTLM_SIMD=0 or
# set_simd(False) keeps libm's), on any input dtype.
from cython.parallel cimport prange, threadid
cimport openmp
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libcpp cimport bool as cpp_bool

import os

ctypedef fused floating:
    float
    double

cdef extern from "sampling_impl.h" namespace "fastlm" nogil:
    cdef struct SamplerOptions:
        double temperature
        int64_t top_k
        double top_p
    cdef struct RowScratch:
        pass
    cpp_bool use_avx2_exp
    cpp_bool cpu_has_avx2_fma()
    size_t scratch_bytes(int64_t V, int64_t k)
    RowScratch carve_scratch(void* mem, int64_t V)
    int64_t sample_row[T](const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, double u)
    void filter_row[T](const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, T* out)
    void softmax_row[T](const T* x, int64_t V, T* out)
    void scale_row[T](const T* x, int64_t V, double temperature, T* out)

# Below this many elements a parallel region costs more than it saves (softmax, scaling).
cdef Py_ssize_t PARALLEL_MIN = 32768

cdef bint _cpu_simd = cpu_has_avx2_fma()
use_avx2_exp = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"


def set_simd(bint enabled):
    """Weigh with the AVX2/FMA exp (True, where the CPU has it) or with libm's (False)."""
    global use_avx2_exp
    use_avx2_exp = enabled and _cpu_simd


def simd_enabled():
    """True when the sampler's exp runs on AVX2/FMA."""
    return use_avx2_exp


cdef int _threads(Py_ssize_t rows, Py_ssize_t V, Py_ssize_t min_elements) noexcept nogil:
    """Threads for `rows` independent rows: one per row up to OpenMP's limit, one for little work."""
    if rows < 2 or rows * V < min_elements:
        return 1
    return <int>min(rows, <Py_ssize_t>openmp.omp_get_max_threads())


cdef SamplerOptions _options(double temperature, int64_t top_k, double top_p) noexcept:
    cdef SamplerOptions o
    o.temperature, o.top_k, o.top_p = temperature, top_k, top_p
    return o


def sample(const floating[:, ::1] logits, const double[::1] uniforms, double temperature, int64_t top_k,
           double top_p, int64_t[::1] tokens):
    """tokens[b] = the token drawn from row b of logits (B, V) with uniforms[b] in [0, 1).

    temperature 0 is greedy (argmax); top_k 0 or >= V and top_p 1 are off.
    """
    cdef Py_ssize_t B = logits.shape[0]
    if uniforms.shape[0] != B or tokens.shape[0] != B:
        raise ValueError(f"sample: logits ({B}, {logits.shape[1]}), uniforms ({uniforms.shape[0]},), "
                         f"tokens ({tokens.shape[0]},) do not match")
    _run_rows(logits, _options(temperature, top_k, top_p), &uniforms[0], &tokens[0], NULL)


def filter_logits(const floating[:, ::1] logits, double temperature, int64_t top_k, double top_p,
                  floating[:, ::1] out):
    """out = logits on the tokens the pipeline keeps (the support of the draw in `sample`), -inf elsewhere."""
    if out.shape[0] != logits.shape[0] or out.shape[1] != logits.shape[1]:
        raise ValueError(f"filter_logits: logits ({logits.shape[0]}, {logits.shape[1]}) and "
                         f"out ({out.shape[0]}, {out.shape[1]}) differ")
    _run_rows(logits, _options(temperature, top_k, top_p), NULL, NULL, &out[0, 0])


cdef int _run_rows(const floating[:, ::1] logits, SamplerOptions o, const double* uniforms, int64_t* tokens,
                   floating* out) except -1:
    """Each row through the pipeline: drawn into tokens with uniforms, or written filtered to out if given."""
    cdef Py_ssize_t B = logits.shape[0], V = logits.shape[1], b
    cdef int threads = _threads(B, V, 0)
    cdef size_t per_thread = scratch_bytes(V, o.top_k)
    cdef char* scratch = <char*>malloc(threads * per_thread)
    if scratch == NULL:
        raise MemoryError(f"sampling: no memory for {threads} x {per_thread} bytes of scratch")
    cdef RowScratch s
    # One row at a time: rows differ in cost (top-p windows), and a thread kept waiting for its core (a busy
    # machine) then holds up one row, not a fixed share of them.
    for b in prange(B, nogil=True, num_threads=threads, schedule="dynamic"):
        s = carve_scratch(scratch + threadid() * per_thread, V)
        if out == NULL:
            tokens[b] = sample_row(&logits[b, 0], V, o, s, uniforms[b])
        else:
            filter_row(&logits[b, 0], V, o, s, out + b * V)
    free(scratch)
    return 0


def softmax(const floating[:, ::1] x, floating[:, ::1] out):
    """out[b] = exp(x[b] - max) / sum over each row (B, V), in double precision."""
    cdef Py_ssize_t B = x.shape[0], V = x.shape[1], b
    if out.shape[0] != B or out.shape[1] != V:
        raise ValueError(f"softmax: x ({B}, {V}) and out ({out.shape[0]}, {out.shape[1]}) differ")
    for b in prange(B, nogil=True, num_threads=_threads(B, V, PARALLEL_MIN), schedule="static"):
        softmax_row(&x[b, 0], V, &out[b, 0])


def scale(const floating[:, ::1] x, double temperature, floating[:, ::1] out):
    """out = x / temperature (temperature > 0), rounded once to the dtype."""
    cdef Py_ssize_t B = x.shape[0], V = x.shape[1], b
    if out.shape[0] != B or out.shape[1] != V:
        raise ValueError(f"scale: x ({B}, {V}) and out ({out.shape[0]}, {out.shape[1]}) differ")
    for b in prange(B, nogil=True, num_threads=_threads(B, V, PARALLEL_MIN), schedule="static"):
        scale_row(&x[b, 0], V, temperature, &out[b, 0])
