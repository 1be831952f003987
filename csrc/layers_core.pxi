# The per-token layers on raw pointers, without the GIL: RMSNorm, RoPE fused with the Q/K/V split and the
# write into the K/V cache, and SwiGLU. Included by layers.pyx (their checked Python entry points) and by
# blocks.pyx (the fused forward pass); callers have validated every shape and index.
# Needs: floating (fused float/double), prange, exp, expf, sqrt, memcpy, int64_t.

# Below this many elements a parallel region costs more than it saves.
cdef Py_ssize_t LAYERS_PARALLEL_MIN = 32768


cdef void rmsnorm_run(const floating* x, const floating* w, double eps, floating* out, Py_ssize_t N,
                      Py_ssize_t d) noexcept nogil:
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w for the N rows of x (N, d); out may be x."""
    cdef Py_ssize_t t
    for t in prange(N, schedule="static", num_threads=1 if N * d < LAYERS_PARALLEL_MIN else 0):
        _rmsnorm_row(x + t * d, w, eps, out + t * d, d)


cdef inline void _rmsnorm_row(const floating* x, const floating* w, double eps, floating* out,
                              Py_ssize_t d) noexcept nogil:
    cdef double sum_sq = 0.0  # accumulate in double: d can be thousands of float32 squares
    cdef Py_ssize_t i
    for i in range(d):
        sum_sq += <double>x[i] * x[i]
    cdef floating inv_rms = <floating>(1.0 / sqrt(sum_sq / d + eps))
    for i in range(d):
        out[i] = x[i] * inv_rms * w[i]


cdef void rope_qkv_run(const floating* qkv, const floating* cos, const floating* sin, const int64_t* start_pos,
                       floating* q, floating* k_cache, floating* v_cache, Py_ssize_t B, Py_ssize_t L,
                       Py_ssize_t h, Py_ssize_t hkv, Py_ssize_t dk, Py_ssize_t T) noexcept nogil:
    """Split qkv (B, L, (h + 2 hkv) dk) into heads, rotate Q and K, and write q (B, L, h, dk) and the caches
    (B, hkv, T, dk) at positions start_pos[b] + i. RoPE rotates interleaved pairs (x[2j], x[2j+1]) by the
    angle whose cos / sin sit at [pos, j] of the (max_len, dk / 2) tables."""
    cdef Py_ssize_t n = B * L, half = dk // 2, width = (h + 2 * hkv) * dk, t, b, i, head, pos, cache_row
    cdef const floating* row
    for t in prange(n, schedule="static", num_threads=1 if n * width < LAYERS_PARALLEL_MIN else 0):
        b = t // L
        i = t % L
        pos = start_pos[b] + i
        row = qkv + t * width
        for head in range(h):
            _rotate(row + head * dk, cos + pos * half, sin + pos * half, q + (t * h + head) * dk, half)
        for head in range(hkv):
            cache_row = ((b * hkv + head) * T + pos) * dk          # cache[b, head, pos, :]
            _rotate(row + (h + head) * dk, cos + pos * half, sin + pos * half, k_cache + cache_row, half)
            memcpy(v_cache + cache_row, row + (h + hkv + head) * dk, dk * sizeof(floating))


cdef inline void _rotate(const floating* x, const floating* cos, const floating* sin, floating* out,
                         Py_ssize_t half) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating even, odd
    for j in range(half):
        even = x[2 * j]
        odd = x[2 * j + 1]
        out[2 * j] = even * cos[j] - odd * sin[j]
        out[2 * j + 1] = even * sin[j] + odd * cos[j]


cdef void swiglu_run(const floating* gate_up, floating* out, Py_ssize_t N, Py_ssize_t f) noexcept nogil:
    """out (N, f) = silu(gate) * up, where gate_up (N, 2f) holds [gate | up] per row."""
    cdef Py_ssize_t t
    for t in prange(N, schedule="static", num_threads=1 if N * f < LAYERS_PARALLEL_MIN else 0):
        _swiglu_row(gate_up + 2 * f * t, gate_up + 2 * f * t + f, out + f * t, f)


cdef inline void _swiglu_row(const floating* gate, const floating* up, floating* out, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(f):
        if floating is float:
            out[j] = gate[j] / (1.0 + expf(-gate[j])) * up[j]
        else:
            out[j] = gate[j] / (1.0 + exp(-gate[j])) * up[j]
