# The per-token layers on raw pointers, without the GIL: RMSNorm, RoPE fused with the Q/K/V split and the
# write into the K/V cache, the gated activations (SwiGLU, GeGLU) and the residual add. Included by layers.pyx
# (their checked Python entry points) and by blocks.pyx (the fused forward pass); callers have validated every
# shape and index.
# Needs: floating (fused float/double), prange, exp, expf, sqrt, memcpy, int64_t.

cdef extern from "layers_impl.h" nogil:
    void ly_gated_row_f32_avx2(const float* gate, const float* up, float* out, Py_ssize_t f, int gelu)

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


cdef struct RopeSpec:
    # How a layer turns its fused Q/K/V rows into heads; NULL vectors are components the model lacks.
    const void* bias          # (h + 2 hkv) dk: added to the projection (Qwen2)
    const void* q_norm        # (dk,): RMSNorm scale of every query head (Qwen3, Gemma 3)
    const void* k_norm        # (dk,): likewise for key heads
    double eps
    const void* cos           # (max_len, rope_dim / 2) tables of this layer
    const void* sin
    int rope_dim              # values of a head that rotate (the rest pass through)
    bint neox                 # pairs (x[j], x[j + rope_dim/2]); else interleaved (x[2j], x[2j+1])


cdef void rope_qkv_run(const floating* qkv, const RopeSpec* spec, const int64_t* start_pos, floating* q,
                       floating* k_cache, floating* v_cache, Py_ssize_t B, Py_ssize_t L, Py_ssize_t h,
                       Py_ssize_t hkv, Py_ssize_t dk, Py_ssize_t T) noexcept nogil:
    """Split qkv (B, L, (h + 2 hkv) dk) into heads (adding the bias, normalising q and k heads where the
    spec says so), rotate Q and K, and write q (B, L, h, dk) and the caches (B, hkv, T, dk) at positions
    start_pos[b] + i. Pair j of a head turns by the angle whose cos / sin sit at [pos, j] of the tables."""
    cdef Py_ssize_t n = B * L, half = spec.rope_dim // 2, width = (h + 2 * hkv) * dk, t, b, i, head, pos
    cdef Py_ssize_t cache_row
    cdef const floating* row
    cdef const floating* bias
    cdef const floating* cos = <const floating*>spec.cos
    cdef const floating* sin = <const floating*>spec.sin
    for t in prange(n, schedule="static", num_threads=1 if n * width < LAYERS_PARALLEL_MIN else 0):
        b = t // L
        i = t % L
        pos = start_pos[b] + i
        row = qkv + t * width
        bias = <const floating*>spec.bias
        for head in range(h):
            _head(row + head * dk, NULL if bias == NULL else bias + head * dk, <const floating*>spec.q_norm,
                  spec, cos + pos * half, sin + pos * half, q + (t * h + head) * dk, dk)
        for head in range(hkv):
            cache_row = ((b * hkv + head) * T + pos) * dk          # cache[b, head, pos, :]
            _head(row + (h + head) * dk, NULL if bias == NULL else bias + (h + head) * dk,
                  <const floating*>spec.k_norm, spec, cos + pos * half, sin + pos * half, k_cache + cache_row,
                  dk)
            _head(row + (h + hkv + head) * dk, NULL if bias == NULL else bias + (h + hkv + head) * dk,
                  NULL, NULL, NULL, NULL, v_cache + cache_row, dk)


cdef inline void _head(const floating* x, const floating* bias, const floating* norm, const RopeSpec* spec,
                       const floating* cos, const floating* sin, floating* out, Py_ssize_t dk) noexcept nogil:
    """out = rope(norm(x + bias)) for one head; no spec: out = x + bias (a value head)."""
    cdef Py_ssize_t j, half
    cdef floating a, c
    if bias == NULL:
        memcpy(out, x, dk * sizeof(floating))
    else:
        for j in range(dk):
            out[j] = x[j] + bias[j]
    if spec == NULL:
        return
    if norm != NULL:
        _rmsnorm_row(out, norm, spec.eps, out, dk)
    half = spec.rope_dim // 2
    if spec.neox:
        for j in range(half):
            a = out[j]
            c = out[j + half]
            out[j] = a * cos[j] - c * sin[j]
            out[j + half] = a * sin[j] + c * cos[j]
    else:
        for j in range(half):
            a = out[2 * j]
            c = out[2 * j + 1]
            out[2 * j] = a * cos[j] - c * sin[j]
            out[2 * j + 1] = a * sin[j] + c * cos[j]


cdef void gated_run(const floating* gate_up, floating* out, Py_ssize_t N, Py_ssize_t f, bint gelu,
                    bint simd) noexcept nogil:
    """out (N, f) = act(gate) * up, where gate_up (N, 2f) holds [gate | up] per row; act is silu (SwiGLU) or,
    with ``gelu``, GELU's tanh approximation (GeGLU). ``simd``: float32 rows on layers_impl.h's AVX2 kernel."""
    cdef Py_ssize_t t
    for t in prange(N, schedule="static", num_threads=1 if N * f < LAYERS_PARALLEL_MIN else 0):
        if floating is float and simd:
            ly_gated_row_f32_avx2(gate_up + 2 * f * t, gate_up + 2 * f * t + f, out + f * t, f, gelu)
        elif gelu:
            _geglu_row(gate_up + 2 * f * t, gate_up + 2 * f * t + f, out + f * t, f)
        else:
            _swiglu_row(gate_up + 2 * f * t, gate_up + 2 * f * t + f, out + f * t, f)


cdef inline void _swiglu_row(const floating* gate, const floating* up, floating* out, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(f):
        if floating is float:
            out[j] = gate[j] / (1.0 + expf(-gate[j])) * up[j]
        else:
            out[j] = gate[j] / (1.0 + exp(-gate[j])) * up[j]


cdef double SQRT_2_OVER_PI = 0.7978845608028654


cdef inline void _geglu_row(const floating* gate, const floating* up, floating* out, Py_ssize_t f) noexcept nogil:
    # 0.5 g (1 + tanh(y)) as g sigmoid(2 y), in double: 1 + tanh(y) cancels for g below -2 (8e-5 relative
    # at -3.5 with tanhf), the sigmoid does not.
    cdef Py_ssize_t j
    cdef double g
    for j in range(f):
        g = gate[j]
        out[j] = g / (1.0 + exp(-2.0 * SQRT_2_OVER_PI * (g + 0.044715 * g * g * g))) * up[j]


cdef void add_run(floating* x, const floating* y, Py_ssize_t N, Py_ssize_t d) noexcept nogil:
    """x (N, d) += y (N, d): a residual add after a post-norm."""
    cdef Py_ssize_t t, j
    for t in prange(N, schedule="static", num_threads=1 if N * d < LAYERS_PARALLEL_MIN else 0):
        for j in range(d):
            x[t * d + j] += y[t * d + j]
