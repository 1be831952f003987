# Per-token layers of the transformer block: RMSNorm, RoPE (fused with the Q/K/V split and the write into
# the K/V cache) and SwiGLU. Each loops over tokens in parallel; the inner loops are plain contiguous
# arithmetic that the compiler vectorises. Callers validate shapes; the checks here guard the kernels.
from cython.parallel cimport prange
from libc.math cimport exp, expf, sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy

ctypedef fused floating:
    float
    double


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape as a tuple, for error messages."""
    return tuple([shape[i] for i in range(ndim)])

# Below this many elements a parallel region costs more than it saves.
cdef Py_ssize_t PARALLEL_MIN = 32768


def rmsnorm(const floating[:, ::1] x, const floating[::1] weight, double eps, floating[:, ::1] out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for each row t of x (N, d). out may be x."""
    cdef Py_ssize_t N = x.shape[0], d = x.shape[1], t
    if weight.shape[0] != d or out.shape[0] != N or out.shape[1] != d:
        raise ValueError(f"rmsnorm: x {_dims(x.shape, 2)}, weight ({weight.shape[0]},), "
                         f"out {_dims(out.shape, 2)} do not match")
    # Raw pointers: indexing memoryviews inside prange would put bounds-check exits in the parallel block.
    cdef const floating* xp = &x[0, 0]
    cdef const floating* wp = &weight[0]
    cdef floating* op = &out[0, 0]
    for t in prange(N, nogil=True, schedule="static", num_threads=1 if N * d < PARALLEL_MIN else 0):
        _rmsnorm_row(xp + t * d, wp, eps, op + t * d, d)


cdef inline void _rmsnorm_row(const floating* x, const floating* w, double eps, floating* out,
                              Py_ssize_t d) noexcept nogil:
    cdef double sum_sq = 0.0  # accumulate in double: d can be thousands of float32 squares
    cdef Py_ssize_t i
    for i in range(d):
        sum_sq += <double>x[i] * x[i]
    cdef floating inv_rms = <floating>(1.0 / sqrt(sum_sq / d + eps))
    for i in range(d):
        out[i] = x[i] * inv_rms * w[i]


def rope_qkv(const floating[:, :, ::1] qkv, const floating[:, ::1] cos, const floating[:, ::1] sin,
             const int64_t[::1] start_pos, floating[:, :, :, ::1] q_out,
             floating[:, :, :, ::1] k_cache, floating[:, :, :, ::1] v_cache):
    """Split the fused projection qkv (B, L, (h + 2 hkv) dk) into heads, rotate Q and K, and write
    q_out (B, L, h, dk) and the K/V caches (B, hkv, T, dk) at positions start_pos[b] + i.

    RoPE rotates interleaved pairs (x[2j], x[2j+1]) by the angle whose cos/sin sit at cos[pos, j]
    (tables (max_len, dk/2), computed once per model).
    """
    cdef Py_ssize_t B = qkv.shape[0], L = qkv.shape[1]
    cdef Py_ssize_t h = q_out.shape[2], dk = q_out.shape[3], hkv = k_cache.shape[1], T = k_cache.shape[2]
    cdef Py_ssize_t half = dk // 2, b
    if (qkv.shape[2] != (h + 2 * hkv) * dk or q_out.shape[0] != B or q_out.shape[1] != L
            or _dims(k_cache.shape, 4) != _dims(v_cache.shape, 4) or k_cache.shape[0] != B
            or k_cache.shape[3] != dk or dk % 2 or cos.shape[1] != half or _dims(sin.shape, 2) != _dims(cos.shape, 2)
            or start_pos.shape[0] != B):
        raise ValueError(f"rope_qkv: inconsistent shapes qkv {_dims(qkv.shape, 3)}, q_out {_dims(q_out.shape, 4)}, "
                         f"k_cache {_dims(k_cache.shape, 4)}, v_cache {_dims(v_cache.shape, 4)}, "
                         f"cos {_dims(cos.shape, 2)}, start_pos ({start_pos.shape[0]},)")
    for b in range(B):
        if start_pos[b] < 0 or start_pos[b] + L > min(T, cos.shape[0]):
            raise ValueError(f"rope_qkv: start_pos[{b}] = {start_pos[b]} with L = {L} does not fit "
                             f"the cache ({T}) and RoPE table ({cos.shape[0]}) lengths")
    cdef Py_ssize_t n = B * L, width = qkv.shape[2], t, i, head, pos
    # Raw pointers: indexing memoryviews inside prange would put bounds-check exits in the parallel block.
    cdef const floating* qkv_p = &qkv[0, 0, 0]
    cdef const floating* cos_p = &cos[0, 0]
    cdef const floating* sin_p = &sin[0, 0]
    cdef const int64_t* start_p = &start_pos[0]
    cdef floating* q_p = &q_out[0, 0, 0, 0]
    cdef floating* k_p = &k_cache[0, 0, 0, 0]
    cdef floating* v_p = &v_cache[0, 0, 0, 0]
    cdef const floating* row
    cdef Py_ssize_t cache_row
    for t in prange(n, nogil=True, schedule="static", num_threads=1 if n * width < PARALLEL_MIN else 0):
        b = t // L
        i = t % L
        pos = start_p[b] + i
        row = qkv_p + t * width
        for head in range(h):
            _rotate(row + head * dk, cos_p + pos * half, sin_p + pos * half, q_p + (t * h + head) * dk, half)
        for head in range(hkv):
            cache_row = ((b * hkv + head) * T + pos) * dk          # k_cache[b, head, pos, :]
            _rotate(row + (h + head) * dk, cos_p + pos * half, sin_p + pos * half, k_p + cache_row, half)
            memcpy(v_p + cache_row, row + (h + hkv + head) * dk, dk * sizeof(floating))


cdef inline void _rotate(const floating* x, const floating* cos, const floating* sin, floating* out,
                         Py_ssize_t half) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating even, odd
    for j in range(half):
        even = x[2 * j]
        odd = x[2 * j + 1]
        out[2 * j] = even * cos[j] - odd * sin[j]
        out[2 * j + 1] = even * sin[j] + odd * cos[j]


def swiglu(const floating[:, ::1] gate_up, floating[:, ::1] out):
    """out (N, f) = silu(gate) * up, where gate_up (N, 2f) holds [gate | up] per row."""
    cdef Py_ssize_t N = out.shape[0], f = out.shape[1], t, j
    if gate_up.shape[0] != N or gate_up.shape[1] != 2 * f:
        raise ValueError(f"swiglu: gate_up {_dims(gate_up.shape, 2)} must be (N, 2f) for out {_dims(out.shape, 2)}")
    cdef const floating* gu = &gate_up[0, 0]
    cdef floating* op = &out[0, 0]
    for t in prange(N, nogil=True, schedule="static", num_threads=1 if N * f < PARALLEL_MIN else 0):
        _swiglu_row(gu + 2 * f * t, gu + 2 * f * t + f, op + f * t, f)


cdef inline void _swiglu_row(const floating* gate, const floating* up, floating* out, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(f):
        if floating is float:
            out[j] = gate[j] / (1.0 + expf(-gate[j])) * up[j]
        else:
            out[j] = gate[j] / (1.0 + exp(-gate[j])) * up[j]
