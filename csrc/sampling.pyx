# distutils: language = c++
# The sampling pipeline over (B, V) rows of logits: logit bias -> penalties -> temperature -> top-k -> top-p
# -> min-p -> softmax -> draw (and log-probabilities), one row per OpenMP thread. The per-row work is C++ in
# sampling_impl.h (std::nth_element / std::sort); this file only checks that the buffers match, carves each
# thread's scratch out of one block (the caller's, or allocated per call), and loops. fastlm/sampling.py
# validates the values (NaN, +inf, all -inf rows, parameter ranges, token ids) before calling here.
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
        double min_p
    cdef struct Adjustments:
        const int64_t* bias_ids
        const double* bias
        int64_t n_bias
        double repetition
        double frequency
        double presence
        int64_t last_n
    cdef struct RowScratch:
        pass
    cpp_bool use_avx2_exp
    cpp_bool cpu_has_avx2_fma()
    int64_t top_k_capacity(int64_t V, int64_t k)
    size_t scratch_bytes(int64_t V, int64_t n_recent, int64_t n_select)
    RowScratch carve_scratch(void* mem, int64_t V, int64_t n_recent)
    int64_t step_row[T](const T* x, int64_t V, const SamplerOptions& o, const Adjustments* a,
                        const int64_t* history, int64_t length, const RowScratch& s, double u, double* logprob,
                        int64_t n_top, int64_t* top_ids, double* top_logprobs)
    void filter_row[T](const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, T* out)
    cpp_bool adjust_row[T, U](const T* x, int64_t V, const Adjustments& a, const int64_t* history,
                              int64_t length, int64_t* recent, U* out)
    void softmax_row[T](const T* x, int64_t V, T* out)
    void scale_row[T](const T* x, int64_t V, double temperature, T* out)

# Below this many elements a parallel region costs more than it saves (softmax, scaling).
cdef Py_ssize_t PARALLEL_MIN = 32768

cdef bint _cpu_simd = cpu_has_avx2_fma()
use_avx2_exp = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"
cdef Py_ssize_t _allocations = 0   # calls that allocated their own scratch


def allocations():
    """How many kernel calls have allocated their own scratch in this process (sampler_step without
    ``scratch``, and the one-shot kernels): a debug counter, for tests that check a decode loop allocates
    nothing."""
    return _allocations


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


cdef SamplerOptions _options(double temperature, int64_t top_k, double top_p, double min_p) noexcept:
    cdef SamplerOptions o
    o.temperature, o.top_k, o.top_p, o.min_p = temperature, top_k, top_p, min_p
    return o


cdef Adjustments _adjustments(const int64_t[::1] bias_ids, const double[::1] bias, double repetition,
                              double frequency, double presence, int64_t last_n) noexcept:
    cdef Adjustments a
    a.n_bias = 0 if bias_ids is None else bias_ids.shape[0]
    a.bias_ids = &bias_ids[0] if a.n_bias else NULL
    a.bias = &bias[0] if a.n_bias else NULL
    a.repetition, a.frequency, a.presence, a.last_n = repetition, frequency, presence, last_n
    return a


cdef Py_ssize_t _window(Py_ssize_t H, int64_t last_n) noexcept:
    """The longest penalty window over histories of width H."""
    return H if last_n < 0 else min(H, last_n)


cdef size_t _per_thread(Py_ssize_t V, int64_t top_k, Py_ssize_t n_recent, Py_ssize_t n_top) noexcept:
    """Bytes of one thread's scratch in _run_rows (a multiple of 8)."""
    return scratch_bytes(V, n_recent, max(top_k_capacity(V, top_k), top_k_capacity(V, n_top)))


def step_scratch_size(Py_ssize_t B, Py_ssize_t V, int64_t top_k, Py_ssize_t H, int64_t last_n, Py_ssize_t n_top):
    """Elements of the float64 ``scratch`` that sampler_step needs for these arguments (history (B, H)),
    on the threads OpenMP gives it now."""
    return _threads(B, V, 0) * _per_thread(V, top_k, _window(H, last_n), n_top) // sizeof(double)


def sample(const floating[:, ::1] logits, const double[::1] uniforms, double temperature, int64_t top_k,
           double top_p, int64_t[::1] tokens):
    """tokens[b] = the token drawn from row b of logits (B, V) with uniforms[b] in [0, 1).

    temperature 0 is greedy (argmax); top_k 0 or >= V and top_p 1 are off.
    """
    cdef Py_ssize_t B = logits.shape[0]
    if uniforms.shape[0] != B or tokens.shape[0] != B:
        raise ValueError(f"sample: logits ({B}, {logits.shape[1]}), uniforms ({uniforms.shape[0]},), "
                         f"tokens ({tokens.shape[0]},) do not match")
    _run_rows(logits, _options(temperature, top_k, top_p, 0.0), NULL, NULL, 0, NULL, 0, &uniforms[0], &tokens[0],
              NULL, 0, NULL, NULL, NULL, NULL)


def sampler_step(const floating[:, ::1] logits, const double[::1] uniforms, double temperature, int64_t top_k,
                 double top_p, double min_p, const int64_t[::1] bias_ids, const double[::1] bias,
                 double repetition, double frequency, double presence, int64_t last_n,
                 const int64_t[:, ::1] history, const int64_t[::1] lengths, int64_t[::1] tokens,
                 double[::1] logprobs, int64_t[:, ::1] top_ids, double[:, ::1] top_logprobs,
                 double[::1] scratch=None):
    """One step of fastlm.Sampler over the rows of logits (B, V), into tokens (B,).

    Row b goes through the logit bias (ids (n,), values (n,); None: none), then the penalties over its history
    history[b, :lengths[b]] (None: none; last_n 0: off), then the pipeline of `sample` with min_p (0: off).
    tokens[b] is -1 where bias and penalties overflow row b or leave it no finite logit. logprobs (B,), if
    not None, receives the chosen tokens' log-probabilities under the raw rows, and top_ids / top_logprobs
    (B, n), if not None, the n most probable raw tokens of each row with theirs. scratch: working memory of
    at least step_scratch_size() elements (None: allocated for the call).
    """
    cdef Py_ssize_t B = logits.shape[0], V = logits.shape[1]
    cdef Py_ssize_t n_top = 0 if top_ids is None else top_ids.shape[1]
    if (uniforms.shape[0] != B or tokens.shape[0] != B
            or (history is not None and (history.shape[0] != B or lengths is None or lengths.shape[0] != B))
            or (bias_ids is not None and (bias is None or bias.shape[0] != bias_ids.shape[0]))
            or (logprobs is not None and logprobs.shape[0] != B)
            or (top_ids is not None and (logprobs is None or top_logprobs is None or top_ids.shape[0] != B
                                         or top_logprobs.shape[0] != B or top_logprobs.shape[1] != n_top
                                         or n_top > V))):
        raise ValueError(f"sampler_step: the buffers do not match logits ({B}, {V})")
    cdef Py_ssize_t H = 0 if history is None else history.shape[1]
    cdef Adjustments a = _adjustments(bias_ids, bias, repetition, frequency, presence, last_n)
    cdef Py_ssize_t n_recent = _window(H, last_n)
    cdef const int64_t* hist = NULL
    cdef const int64_t* length = NULL
    cdef double* lp = NULL
    cdef int64_t* tid = NULL
    cdef double* tlp = NULL
    if H:
        hist, length = &history[0, 0], &lengths[0]
    if logprobs is not None:
        lp = &logprobs[0]
    if n_top:
        tid, tlp = &top_ids[0, 0], &top_logprobs[0, 0]
    cdef char* block = NULL
    cdef size_t need
    if scratch is not None:
        need = _threads(B, V, 0) * _per_thread(V, top_k, n_recent, n_top)
        if scratch.shape[0] * sizeof(double) < need:
            raise ValueError(f"sampler_step: scratch holds {scratch.shape[0]} elements, fewer than the "
                             f"{need // sizeof(double)} of step_scratch_size()")
        block = <char*>&scratch[0]
    _run_rows(logits, _options(temperature, top_k, top_p, min_p), &a if a.n_bias or n_recent else NULL, hist, H,
              length, n_recent, &uniforms[0], &tokens[0], lp, n_top, tid, tlp, NULL, block)


def filter_logits(const floating[:, ::1] logits, double temperature, int64_t top_k, double top_p,
                  floating[:, ::1] out, double min_p=0.0):
    """out = logits on the tokens the pipeline keeps (the support of the draw in `sample`), -inf elsewhere."""
    if out.shape[0] != logits.shape[0] or out.shape[1] != logits.shape[1]:
        raise ValueError(f"filter_logits: logits ({logits.shape[0]}, {logits.shape[1]}) and "
                         f"out ({out.shape[0]}, {out.shape[1]}) differ")
    _run_rows(logits, _options(temperature, top_k, top_p, min_p), NULL, NULL, 0, NULL, 0, NULL, NULL, NULL, 0,
              NULL, NULL, &out[0, 0], NULL)


cdef int _run_rows(const floating[:, ::1] logits, SamplerOptions o, const Adjustments* a,
                   const int64_t* history, Py_ssize_t H, const int64_t* lengths, Py_ssize_t n_recent,
                   const double* uniforms, int64_t* tokens, double* logprobs, Py_ssize_t n_top, int64_t* top_ids,
                   double* top_logprobs, floating* out, char* block) except -1:
    """Each row through step_row, or written filtered to out if given. a, history (B, H) with lengths (B,)
    (penalty windows up to n_recent long), logprobs and top_* (B, n_top) may be NULL. The threads' scratch
    is carved from block (8-byte aligned, as large as step_scratch_size() says), or allocated here where
    block is NULL."""
    global _allocations
    cdef Py_ssize_t B = logits.shape[0], V = logits.shape[1], b
    cdef int threads = _threads(B, V, 0)
    cdef size_t per_thread = _per_thread(V, o.top_k, n_recent, n_top)
    cdef char* scratch = block
    if block == NULL:
        scratch = <char*>malloc(threads * per_thread)
        if scratch == NULL:
            raise MemoryError(f"sampling: no memory for {threads} x {per_thread} bytes of scratch")
        _allocations += 1
    cdef RowScratch s
    # One row at a time: rows differ in cost (top-p windows), and a thread kept waiting for its core (a busy
    # machine) then holds up one row, not a fixed share of them.
    for b in prange(B, nogil=True, num_threads=threads, schedule="dynamic"):
        s = carve_scratch(scratch + threadid() * per_thread, V, n_recent)
        if out != NULL:
            filter_row(&logits[b, 0], V, o, s, out + b * V)
        else:
            tokens[b] = step_row(&logits[b, 0], V, o, a, history + b * H, lengths[b] if lengths != NULL else 0, s,
                                 uniforms[b], logprobs + b if logprobs != NULL else NULL, n_top,
                                 top_ids + b * n_top, top_logprobs + b * n_top)
    if block == NULL:
        free(scratch)
    return 0


def penalize(const floating[:, ::1] logits, const int64_t[:, ::1] history, const int64_t[::1] lengths,
             double repetition, double frequency, double presence, int64_t last_n, floating[:, ::1] out):
    """out[b] = logits[b] after the penalties over history[b, :lengths[b]] (see adjust_row), per row."""
    global _allocations
    cdef Py_ssize_t B = logits.shape[0], V = logits.shape[1], H = history.shape[1], b
    if (out.shape[0] != B or out.shape[1] != V or history.shape[0] != B or lengths.shape[0] != B):
        raise ValueError(f"penalize: logits ({B}, {V}), history ({history.shape[0]}, {H}), "
                         f"lengths ({lengths.shape[0]},) and out ({out.shape[0]}, {out.shape[1]}) do not match")
    cdef Adjustments a = _adjustments(None, None, repetition, frequency, presence, last_n)
    cdef Py_ssize_t n_recent = _window(H, last_n)
    cdef const int64_t* hist = &history[0, 0] if H else NULL
    cdef int threads = _threads(B, V, PARALLEL_MIN)
    cdef int64_t* recent = <int64_t*>malloc(threads * max(n_recent, 1) * sizeof(int64_t))
    if recent == NULL:
        raise MemoryError(f"penalize: no memory for {threads} x {n_recent} token ids")
    _allocations += 1
    for b in prange(B, nogil=True, num_threads=threads, schedule="static"):
        adjust_row(&logits[b, 0], V, a, hist + b * H, lengths[b], recent + threadid() * n_recent, &out[b, 0])
    free(recent)
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
