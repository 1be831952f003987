# Causal grouped-query attention, flash style: out = softmax(q k^T * scale + causal mask) v, one query tile
# at a time against key tiles, with an online (running max, running sum) softmax. The (L, T) score matrix
# never exists; each thread holds one query tile, one key tile of scores and one output accumulator.
#
# A work item is (batch row b, KV head, query tile, key split). Its M = Tq * group query rows are the Tq
# query positions of the tile times the `group` query heads that read this KV head, so every K/V tile
# loaded serves the whole group. Key tiles lying wholly in the tile's future are never visited (causal),
# and the last visited tile is cut at the tile's last position, so prefill does about half the square.
# When there are too few items to keep every thread busy (decode: L = 1, B * hkv small), each item's key
# range is split across threads and the partial (max, sum, accumulator) triples are merged afterwards.
#
# The tile kernels come in a hand-written AVX2/FMA float32 version (attention_impl.h) and a portable one in
# vector-extension C (attention_portable.h) for float32 and float64, the latter compiled twice: for the
# baseline CPU and for AVX2/FMA. The AVX2 versions run when the CPU has them, unless set_simd(False).
from cython.parallel cimport parallel, prange, threadid
cimport openmp
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

import math
import os

import numpy as np

from fastlm.errors import FastLMTypeError, FastLMValueError
from fastlm.validation import check_int

ctypedef fused floating:
    float
    double

cdef extern from "math.h" nogil:
    float exp2f(float x)
    double exp2(double x)

cdef extern from "attention_impl.h" nogil:
    enum: ATTN_TK
    int attn_cpu_has_avx2_fma()
    void attn_pack_kt_f32_avx2(const float* k, int nk, int dk, float* kt)
    void attn_scores_f32_avx2(const float* qs, int m, int dk, const float* kt, int nk, float* s)
    void attn_softmax_f32_avx2(float* s, int m, int nk, int g, int diag, float* mx, float* l, float* o, int dk)
    void attn_pv_f32_avx2(const float* s, int m, int nk, const float* v, int dk, float* o)
    # The portable kernels, same contracts.
    void attn_pack_kt_f32(const float* k, int nk, int dk, float* kt)
    void attn_scores_f32(const float* qs, int m, int dk, const float* kt, int nk, float* s)
    void attn_softmax_f32(float* s, int m, int nk, int g, int diag, float* mx, float* l, float* o, int dk)
    void attn_pv_f32(const float* s, int m, int nk, const float* v, int dk, float* o)
    void attn_pack_kt_f64(const double* k, int nk, int dk, double* kt)
    void attn_scores_f64(const double* qs, int m, int dk, const double* kt, int nk, double* s)
    void attn_softmax_f64(double* s, int m, int nk, int g, int diag, double* mx, double* l, double* o, int dk)
    void attn_pv_f64(const double* s, int m, int nk, const double* v, int dk, double* o)
    void attn_pack_kt_f64_avx2(const double* k, int nk, int dk, double* kt)
    void attn_scores_f64_avx2(const double* qs, int m, int dk, const double* kt, int nk, double* s)
    void attn_softmax_f64_avx2(double* s, int m, int nk, int g, int diag, double* mx, double* l, double* o,
                               int dk)
    void attn_pv_f64_avx2(const double* s, int m, int nk, const double* v, int dk, double* o)

cdef double LOG2E = 1.4426950408889634
cdef int TARGET_ROWS = 64          # query rows per tile (positions x group heads): reuse of each K/V tile
cdef int ITEMS_PER_THREAD = 4      # below this many work items per thread, split the key range
cdef int MIN_SPLIT_KEYS = 256      # ...but never into pieces shorter than this
cdef int ALIGN_SLACK = 16          # scratch elements spent rounding its start up to 64 bytes (8 would do for
                                   # float64; one count keeps scratch_size independent of the dtype)

cdef bint _cpu_simd = attn_cpu_has_avx2_fma()
cdef bint _simd = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"
cdef Py_ssize_t _allocations = 0   # calls that allocated their own scratch (scratch=None)


def set_simd(bint enabled):
    """Use the AVX2/FMA kernels (True, where the CPU has them) or the baseline portable ones (False)."""
    global _simd
    _simd = enabled and _cpu_simd


def simd_enabled():
    """True when attention runs the AVX2/FMA kernels."""
    return bool(_simd)


def allocations():
    """How many attention() calls have allocated their own scratch (no ``scratch`` given) in this process: a
    debug counter, for tests that check a decode loop allocates nothing."""
    return _allocations


def num_threads():
    """The thread count attention() plans for now (OpenMP's maximum for the calling thread), the
    ``num_threads`` of scratch_size."""
    return openmp.omp_get_max_threads()


def query_tile(num_heads, num_kv_heads):
    """Query positions per tile, Tq: Tq * (num_heads // num_kv_heads) rows share each loaded K/V tile."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise FastLMValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads "
                               f"({num_kv_heads})")
    return max(1, TARGET_ROWS // (num_heads // num_kv_heads))


cdef inline Py_ssize_t _pad(Py_ssize_t n) noexcept nogil:
    return (n + 15) & ~15                       # whole 64-byte lines (float32): each buffer starts on its own


cdef inline Py_ssize_t _per_thread(Py_ssize_t m, Py_ssize_t dk) noexcept nogil:
    """Scratch of one thread, in elements: qs and o (M, dk), K^T (dk, ATTN_TK), scores (M, ATTN_TK), max and
    sum (M,), each starting on a cache line (ATTN_TK is a multiple of 16)."""
    return 2 * _pad(m * dk) + dk * ATTN_TK + m * ATTN_TK + _pad(2 * m)


def scratch_elements(L, num_heads, num_kv_heads, head_dim):
    """Per-thread scratch, in elements, for queries of length L: independent of L beyond one query tile of
    M = Tq * (num_heads // num_kv_heads) rows."""
    m = max(1, min(query_tile(num_heads, num_kv_heads), L)) * (num_heads // num_kv_heads)
    return _per_thread(m, head_dim)


cdef struct Plan:
    int tq                 # query positions per tile
    int m_max              # rows per tile: tq * group
    int n_qt               # query tiles per row
    int nsplit             # pieces each work item's key range is split into
    int nthreads           # threads that run
    Py_ssize_t n_base      # work items before splitting: rows x KV heads x query tiles
    Py_ssize_t n_items     # work items: n_base * nsplit
    Py_ssize_t n_parts     # split partials (0 without splitting)
    Py_ssize_t per_thread  # scratch of one thread, as _per_thread
    Py_ssize_t elements    # all the scratch: the slack, the threads' tiles, the partials (M dk + 2 M each)


cdef Plan _plan(Py_ssize_t B, int L, int h, int hkv, int dk, int64_t keys, int threads) noexcept nogil:
    """How a call over B x L queries spreads over `threads` threads, and its scratch. keys: the longest key
    range of any row, start_pos + L; the split, so the scratch, grows with it."""
    cdef Plan p
    cdef int g = h // hkv
    p.tq = max(1, min(max(1, TARGET_ROWS // g), L))
    p.m_max = p.tq * g
    p.n_qt = (L + p.tq - 1) // p.tq
    p.n_base = B * hkv * p.n_qt
    p.nsplit = 1
    if 0 < p.n_base < ITEMS_PER_THREAD * threads:
        p.nsplit = <int>max(1, min((ITEMS_PER_THREAD * threads + p.n_base - 1) // p.n_base,
                                   keys // MIN_SPLIT_KEYS))
    p.n_items = p.n_base * p.nsplit
    p.nthreads = <int>min(<Py_ssize_t>threads, p.n_items)
    p.n_parts = p.n_items if p.nsplit > 1 else 0
    p.per_thread = _per_thread(p.m_max, dk)
    p.elements = 0
    if p.n_items:
        p.elements = (ALIGN_SLACK + p.nthreads * p.per_thread
                      + p.n_parts * (<Py_ssize_t>p.m_max * dk + 2 * p.m_max))
    return p


def scratch_size(B, L, num_heads, num_kv_heads, head_dim, T, num_threads):
    """Elements of the ``scratch`` that attention() needs for q (B, L, num_heads, head_dim) against caches
    of T positions on num_threads threads (num_threads()): the worst case over start_pos, whose largest
    values split the key ranges most."""
    for name, value, low in (("B", B, 0), ("L", L, 0), ("num_heads", num_heads, 1),
                             ("num_kv_heads", num_kv_heads, 1), ("head_dim", head_dim, 1), ("T", T, 0),
                             ("num_threads", num_threads, 1)):
        check_int(name, value, low)
    query_tile(num_heads, num_kv_heads)                       # a positive multiple
    return _plan(B, L, num_heads, num_kv_heads, head_dim, T, num_threads).elements


def max_scratch_size(tokens, num_heads, num_kv_heads, head_dim, T, num_threads):
    """At least the scratch_size() of any call over B x L <= tokens queries: one scratch serves them all.

    A call's need grows with its rows per query tile, at most those of min(tokens, Tq) positions, and
    depends on its count of (row, query tile) pairs through the key split: a count of at most tokens, and
    nothing is split from ITEMS_PER_THREAD x num_threads on. Calls over B rows of that one tile, for every
    such count B, bound them all."""
    check_int("tokens", tokens, 1)
    L = min(tokens, query_tile(num_heads, num_kv_heads))
    return max(scratch_size(B, L, num_heads, num_kv_heads, head_dim, T, num_threads)
               for B in range(1, min(tokens, ITEMS_PER_THREAD * num_threads) + 1))


cdef inline floating _exp2(floating x) noexcept nogil:
    if floating is float:
        return exp2f(x)
    else:
        return exp2(x)


# --------------------------------------------------------------------------------------------- work item

cdef void _attend(const floating* q, Py_ssize_t q_stride, int n_pos, int g, int dk, floating qscale,
                  const floating* k, const floating* v, int64_t pos0, int64_t key_lo, int64_t key_hi,
                  bint simd, floating* qs, floating* kt, floating* s,
                  floating* o, floating* mx, floating* l) noexcept nogil:
    """Accumulate keys [key_lo, key_hi) of one KV head into (o, mx, l) for M = n_pos * g query rows.

    Row r = i * g + j is query head j of the group at position pos0 + i, read from q + i * q_stride + j * dk.
    k, v point at position 0 of the head's cache, (T, dk) each.
    """
    cdef int m = n_pos * g, r, d, nk, diag
    cdef int64_t k0
    cdef const floating* qrow
    for r in range(m):                              # scale folded into the queries once, not into scores
        qrow = q + (r // g) * q_stride + (r % g) * dk
        for d in range(dk):
            qs[r * dk + d] = qrow[d] * qscale
        mx[r] = -INFINITY
        l[r] = 0
    memset(o, 0, m * dk * sizeof(floating))
    k0 = key_lo
    while k0 < key_hi:
        nk = <int>min(<int64_t>ATTN_TK, key_hi - k0)
        diag = <int>min(pos0 - k0 + 1, <int64_t>ATTN_TK)   # keys of this tile seen by the tile's first row
        if floating is double:
            if simd:
                attn_pack_kt_f64_avx2(k + k0 * dk, nk, dk, kt)
                attn_scores_f64_avx2(qs, m, dk, kt, nk, s)
                attn_softmax_f64_avx2(s, m, nk, g, diag, mx, l, o, dk)
                attn_pv_f64_avx2(s, m, nk, v + k0 * dk, dk, o)
            else:
                attn_pack_kt_f64(k + k0 * dk, nk, dk, kt)
                attn_scores_f64(qs, m, dk, kt, nk, s)
                attn_softmax_f64(s, m, nk, g, diag, mx, l, o, dk)
                attn_pv_f64(s, m, nk, v + k0 * dk, dk, o)
        elif simd:
            attn_pack_kt_f32_avx2(k + k0 * dk, nk, dk, kt)
            attn_scores_f32_avx2(qs, m, dk, kt, nk, s)
            attn_softmax_f32_avx2(s, m, nk, g, diag, mx, l, o, dk)
            attn_pv_f32_avx2(s, m, nk, v + k0 * dk, dk, o)
        else:
            attn_pack_kt_f32(k + k0 * dk, nk, dk, kt)
            attn_scores_f32(qs, m, dk, kt, nk, s)
            attn_softmax_f32(s, m, nk, g, diag, mx, l, o, dk)
            attn_pv_f32(s, m, nk, v + k0 * dk, dk, o)
        k0 += ATTN_TK


cdef void _write_rows(floating* out, Py_ssize_t out_stride, int m, int g, int dk, const floating* o,
                      const floating* l) noexcept nogil:
    """out row (r // g, head r % g) = o[r] / l[r]."""
    cdef int r, d
    cdef floating inv
    cdef floating* orow
    for r in range(m):
        inv = 1 / l[r]
        orow = out + (r // g) * out_stride + (r % g) * dk
        for d in range(dk):
            orow[d] = o[r * dk + d] * inv


# ----------------------------------------------------------------------------------------------- entry

def _check_array(name, a, ndim, dtype=None):
    if not isinstance(a, np.ndarray):
        raise FastLMTypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != ndim:
        raise FastLMValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise FastLMTypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise FastLMValueError(f"{name} must be C-contiguous (strides {a.strides} for shape {a.shape})")


def attention(q, k_cache, v_cache, start_pos, out, double scale, *, scratch=None):
    """Causal grouped-query attention over a KV cache, written into ``out``.

    q (B, L, h, dk): queries at absolute positions start_pos[b] + i, RoPE applied. k_cache, v_cache
    (B, hkv, T, dk): keys (RoPE applied) and values of positions 0..T-1; positions up to
    start_pos[b] + L - 1 must be filled. start_pos (B,) int64. out (B, L, h, dk) is overwritten; it may be
    q itself. Query head j reads KV head j // (h // hkv); the query at position P sees keys 0..P. q, the
    caches and out share one dtype, float32 or float64, and are C-contiguous. ``scale`` multiplies the
    scores (1 / sqrt(dk)).

    ``scratch``: working memory, a writeable 1-D C-contiguous array of q's dtype with at least
    ``scratch_size(B, L, h, hkv, dk, T, num_threads())`` elements, overlapping no other argument; its
    contents are overwritten. Without it each call allocates its own.
    """
    _check_array("q", q, 4)
    if q.dtype not in (np.float32, np.float64):
        raise FastLMTypeError(f"q must have dtype float32 or float64, got {q.dtype}")
    _check_array("k_cache", k_cache, 4, q.dtype)
    _check_array("v_cache", v_cache, 4, q.dtype)
    _check_array("start_pos", start_pos, 1, np.int64)
    _check_array("out", out, 4, q.dtype)
    B, L, h, dk = q.shape
    hkv, T = k_cache.shape[1], k_cache.shape[2]
    if dk < 1:
        raise FastLMValueError(f"q head_dim must be >= 1, got shape {q.shape}")
    if h < 1 or hkv < 1 or h % hkv:
        raise FastLMValueError(f"q heads ({h}) must be a positive multiple of k_cache heads ({hkv})")
    if k_cache.shape != (B, hkv, T, dk):
        raise FastLMValueError(f"k_cache must have shape (B, hkv, T, dk) = ({B}, hkv, T, {dk}) to match q "
                               f"{q.shape}, got {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise FastLMValueError(f"v_cache must have the shape of k_cache {k_cache.shape}, got {v_cache.shape}")
    if start_pos.shape != (B,):
        raise FastLMValueError(f"start_pos must have shape ({B},), got {start_pos.shape}")
    if out.shape != q.shape:
        raise FastLMValueError(f"out must have the shape of q {q.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise FastLMValueError("out must be writeable")
    if np.may_share_memory(out, k_cache) or np.may_share_memory(out, v_cache):
        raise FastLMValueError("out must not overlap k_cache or v_cache")
    if out is not q and np.may_share_memory(out, q):
        raise FastLMValueError("out must be q itself or not overlap it")
    if not math.isfinite(scale):
        raise FastLMValueError(f"scale must be finite, got {scale}")
    if scratch is not None:
        _check_scratch(scratch, q, k_cache, v_cache, out)
    if q.dtype == np.float32:
        _attention[float](q, k_cache, v_cache, start_pos, out, scale, scratch)
    else:
        _attention[double](q, k_cache, v_cache, start_pos, out, scale, scratch)


cdef int _check_scratch(scratch, q, k_cache, v_cache, out) except -1:
    _check_array("scratch", scratch, 1, q.dtype)
    B, L, h, dk = q.shape
    need = _plan(B, L, h, k_cache.shape[1], dk, k_cache.shape[2], openmp.omp_get_max_threads()).elements
    if scratch.shape[0] < need:
        raise FastLMValueError(f"scratch holds {scratch.shape[0]} elements, fewer than the {need} of "
                               f"scratch_size() for q {q.shape} and T = {k_cache.shape[2]} on "
                               f"{openmp.omp_get_max_threads()} threads")
    if not scratch.flags.writeable:
        raise FastLMValueError("scratch must be writeable")
    if (np.may_share_memory(scratch, q) or np.may_share_memory(scratch, k_cache)
            or np.may_share_memory(scratch, v_cache) or np.may_share_memory(scratch, out)):
        raise FastLMValueError("scratch must not overlap q, k_cache, v_cache or out")
    return 0


cdef int _attention(const floating[:, :, :, ::1] q, const floating[:, :, :, ::1] k_cache,
                    const floating[:, :, :, ::1] v_cache, const int64_t[::1] start_pos,
                    floating[:, :, :, ::1] out, double scale, floating[::1] scratch) except -1:
    """The kernel behind attention(), which has validated every argument but the range of start_pos."""
    global _allocations
    cdef int B = q.shape[0], L = q.shape[1], h = q.shape[2], dk = q.shape[3]
    cdef int hkv = k_cache.shape[1], g = h // hkv
    cdef Py_ssize_t T = k_cache.shape[2]
    cdef int64_t lo = start_pos[0] if B else 0, hi = lo
    cdef int b
    for b in range(B):
        lo = min(lo, start_pos[b])
        hi = max(hi, start_pos[b])
    if lo < 0 or hi + L > T:
        raise FastLMValueError(f"start_pos must lie in [0, T - L] = [0, {T - L}] (T = {T}, L = {L}), got "
                               f"values from {lo} to {hi}")
    if B == 0 or L == 0:
        return 0
    cdef Plan p = _plan(B, L, h, hkv, dk, hi + L, openmp.omp_get_max_threads())   # hi + L: the longest keys
    cdef int tq = p.tq, m_max = p.m_max, n_qt = p.n_qt, nsplit = p.nsplit, nthreads = p.nthreads
    cdef Py_ssize_t n_base = p.n_base, n_items = p.n_items, per_thread = p.per_thread
    cdef Py_ssize_t per_qt = <Py_ssize_t>B * hkv * nsplit
    cdef Py_ssize_t o_len = <Py_ssize_t>m_max * dk, ml_len = 2 * m_max

    if scratch is None:
        scratch = np.empty(p.elements, dtype=np.float32 if floating is float else np.float64)
        _allocations += 1
    # The threads' tiles, then (split keys) each item's partial accumulator (M, dk) and max and sum (M,).
    # The start is rounded up to 64 bytes, so that vector loads never split lines.
    cdef floating* tiles = <floating*>((<size_t>&scratch[0] + 63) & ~(<size_t>63))
    cdef floating* part_o = tiles + nthreads * per_thread
    cdef floating* part_ml = part_o + p.n_parts * o_len

    cdef floating qscale = <floating>(scale * LOG2E)
    cdef bint simd = _simd
    cdef Py_ssize_t q_stride = <Py_ssize_t>h * dk
    cdef Py_ssize_t it, base, slot
    cdef int qt, kvh, sp, q0, n_pos, m, r, d
    cdef int64_t pos0, span, chunk, key_lo, key_hi
    # Set per thread in the parallel block; initialised because Cython makes them firstprivate.
    cdef int tid = 0
    cdef floating *qs = NULL
    cdef floating *kt = NULL
    cdef floating *s = NULL
    cdef floating *o = NULL
    cdef floating *mx = NULL
    cdef floating *l = NULL
    cdef floating *po
    cdef floating *pml
    cdef floating w, top, denom

    with nogil, parallel(num_threads=nthreads):
        tid = threadid()
        qs = tiles + tid * per_thread               # (M, dk)
        o = qs + _pad(m_max * dk)                   # (M, dk)
        kt = o + _pad(m_max * dk)                   # (dk, ATTN_TK)
        s = kt + dk * ATTN_TK                       # (M, ATTN_TK)
        mx = s + m_max * ATTN_TK                    # (M,)
        l = mx + m_max                              # (M,)
        # Latest query tiles first: they see the most keys, so dynamic scheduling ends balanced.
        for it in prange(n_items, schedule="dynamic"):
            qt = n_qt - 1 - <int>(it // per_qt)
            b = <int>((it % per_qt) // (hkv * nsplit))
            kvh = <int>((it % (hkv * nsplit)) // nsplit)
            sp = <int>(it % nsplit)
            q0 = qt * tq
            n_pos = min(tq, L - q0)
            m = n_pos * g
            pos0 = start_pos[b] + q0
            span = pos0 + n_pos                     # keys 0..span-1 are visible to some row of the tile
            chunk = (span + nsplit - 1) // nsplit
            chunk = (chunk + ATTN_TK - 1) // ATTN_TK * ATTN_TK
            key_lo = min(sp * chunk, span)
            key_hi = min(key_lo + chunk, span)
            if nsplit == 1:
                _attend(&q[b, q0, kvh * g, 0], q_stride, n_pos, g, dk, qscale,
                        &k_cache[b, kvh, 0, 0], &v_cache[b, kvh, 0, 0], pos0, key_lo, key_hi, simd,
                        qs, kt, s, o, mx, l)
                _write_rows(&out[b, q0, kvh * g, 0], q_stride, m, g, dk, o, l)
            else:
                slot = ((<Py_ssize_t>b * hkv + kvh) * n_qt + qt) * nsplit + sp
                _attend(&q[b, q0, kvh * g, 0], q_stride, n_pos, g, dk, qscale,
                        &k_cache[b, kvh, 0, 0], &v_cache[b, kvh, 0, 0], pos0, key_lo, key_hi, simd,
                        qs, kt, s, part_o + slot * o_len, part_ml + slot * ml_len,
                        part_ml + slot * ml_len + m_max)

    if nsplit == 1:
        return 0
    # Merge the splits of each (b, kv head, query tile): rescale each partial to the common max. Split 0
    # holds key 0, which every row sees, so the common max is finite and empty splits weigh exp2(-inf) = 0.
    with nogil:
        for base in prange(n_base, schedule="static", num_threads=nthreads):
            qt = <int>(base % n_qt)
            kvh = <int>((base // n_qt) % hkv)
            b = <int>(base // (n_qt * hkv))
            q0 = qt * tq
            m = min(tq, L - q0) * g
            for r in range(m):
                top = -INFINITY
                for sp in range(nsplit):
                    top = max(top, part_ml[(base * nsplit + sp) * ml_len + r])
                denom = 0
                po = &out[b, q0 + r // g, kvh * g + r % g, 0]
                for d in range(dk):
                    po[d] = 0
                for sp in range(nsplit):
                    pml = part_ml + (base * nsplit + sp) * ml_len
                    w = _exp2(pml[r] - top)
                    denom = denom + w * pml[m_max + r]
                    for d in range(dk):
                        po[d] += w * part_o[(base * nsplit + sp) * o_len + r * dk + d]
                w = 1 / denom
                for d in range(dk):
                    po[d] *= w
    return 0
