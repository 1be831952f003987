# Causal grouped-query attention on raw pointers, without the GIL: the work plan and the tile loop of
# attention.pyx (which explains the method). Included by attention.pyx and blocks.pyx.
# Needs: floating, parallel, prange, threadid, omp_get_max_threads, INFINITY, tanh, tanhf, memset, int64_t.

cdef extern from "math.h" nogil:
    float exp2f(float x)
    double exp2(double x)

cdef extern from "attention_impl.h" nogil:
    enum: ATTN_TK
    void attn_pack_kt_f32_avx2(const float* k, int nk, int dk, float* kt)
    void attn_scores_f32_avx2(const float* qs, int m, int dk, const float* kt, int nk, float* s)
    void attn_softmax_f32_avx2(float* s, int m, int nk, int g, int diag, int lo_diag, float* mx, float* l, float* o, int dk)
    void attn_pv_f32_avx2(const float* s, int m, int nk, const float* v, int dk, float* o)
    # The portable kernels, same contracts.
    void attn_pack_kt_f32(const float* k, int nk, int dk, float* kt)
    void attn_scores_f32(const float* qs, int m, int dk, const float* kt, int nk, float* s)
    void attn_softmax_f32(float* s, int m, int nk, int g, int diag, int lo_diag, float* mx, float* l, float* o, int dk)
    void attn_pv_f32(const float* s, int m, int nk, const float* v, int dk, float* o)
    void attn_pack_kt_f64(const double* k, int nk, int dk, double* kt)
    void attn_scores_f64(const double* qs, int m, int dk, const double* kt, int nk, double* s)
    void attn_softmax_f64(double* s, int m, int nk, int g, int diag, int lo_diag, double* mx, double* l, double* o, int dk)
    void attn_pv_f64(const double* s, int m, int nk, const double* v, int dk, double* o)
    void attn_pack_kt_f64_avx2(const double* k, int nk, int dk, double* kt)
    void attn_scores_f64_avx2(const double* qs, int m, int dk, const double* kt, int nk, double* s)
    void attn_softmax_f64_avx2(double* s, int m, int nk, int g, int diag, int lo_diag, double* mx, double* l,
                               double* o, int dk)
    void attn_pv_f64_avx2(const double* s, int m, int nk, const double* v, int dk, double* o)

cdef double LOG2E = 1.4426950408889634
cdef int TARGET_ROWS = 64          # query rows per tile (positions x group heads): reuse of each K/V tile
cdef int ITEMS_PER_THREAD = 4      # below this many work items per thread, split the key range
cdef int MIN_SPLIT_KEYS = 256      # ...but never into pieces shorter than this
cdef int ALIGN_SLACK = 16          # scratch elements spent rounding its start up to 64 bytes (8 would do for
                                   # float64; one count keeps scratch_size independent of the dtype)


cdef inline Py_ssize_t _pad(Py_ssize_t n) noexcept nogil:
    return (n + 15) & ~15                       # whole 64-byte lines (float32): each buffer starts on its own


cdef inline Py_ssize_t _per_thread(Py_ssize_t m, Py_ssize_t dk) noexcept nogil:
    """Scratch of one thread, in elements: qs and o (M, dk), K^T (dk, ATTN_TK), scores (M, ATTN_TK), max and
    sum (M,), each starting on a cache line (ATTN_TK is a multiple of 16)."""
    return 2 * _pad(m * dk) + dk * ATTN_TK + m * ATTN_TK + _pad(2 * m)


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


cdef inline floating _exp2(floating x) noexcept nogil:
    if floating is float:
        return exp2f(x)
    else:
        return exp2(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline void _tile_scores(const floating* k, int nk, int dk, const floating* qs, int m, floating* kt,
                              floating* s, bint simd) noexcept nogil:
    """s (M, nk) = qs (M, dk) @ k (nk, dk)^T, through the transposed key tile kt."""
    if floating is double:
        if simd:
            attn_pack_kt_f64_avx2(k, nk, dk, kt)
            attn_scores_f64_avx2(qs, m, dk, kt, nk, s)
        else:
            attn_pack_kt_f64(k, nk, dk, kt)
            attn_scores_f64(qs, m, dk, kt, nk, s)
    elif simd:
        attn_pack_kt_f32_avx2(k, nk, dk, kt)
        attn_scores_f32_avx2(qs, m, dk, kt, nk, s)
    else:
        attn_pack_kt_f32(k, nk, dk, kt)
        attn_scores_f32(qs, m, dk, kt, nk, s)


cdef inline void _tile_softmax_pv(floating* s, int m, int nk, int g, int diag, int lo_diag, floating* mx,
                                  floating* l, floating* o, const floating* v, int dk, bint simd) noexcept nogil:
    """The online softmax of the tile's scores, then o += P @ v (nk, dk)."""
    if floating is double:
        if simd:
            attn_softmax_f64_avx2(s, m, nk, g, diag, lo_diag, mx, l, o, dk)
            attn_pv_f64_avx2(s, m, nk, v, dk, o)
        else:
            attn_softmax_f64(s, m, nk, g, diag, lo_diag, mx, l, o, dk)
            attn_pv_f64(s, m, nk, v, dk, o)
    elif simd:
        attn_softmax_f32_avx2(s, m, nk, g, diag, lo_diag, mx, l, o, dk)
        attn_pv_f32_avx2(s, m, nk, v, dk, o)
    else:
        attn_softmax_f32(s, m, nk, g, diag, lo_diag, mx, l, o, dk)
        attn_pv_f32(s, m, nk, v, dk, o)


# --------------------------------------------------------------------------------------------- work item

cdef void _attend(const floating* q, Py_ssize_t q_stride, int n_pos, int g, int dk, floating qscale,
                  const floating* k, const floating* v, int64_t pos0, int64_t key_lo, int64_t key_hi,
                  int64_t window, floating cap, bint simd, floating* qs, floating* kt, floating* s,
                  floating* o, floating* mx, floating* l) noexcept nogil:
    """Accumulate keys [key_lo, key_hi) of one KV head into (o, mx, l) for M = n_pos * g query rows.

    Row r = i * g + j is query head j of the group at position pos0 + i, read from q + i * q_stride + j * dk.
    k, v point at position 0 of the head's cache, (T, dk) each. With ``window`` W > 0 a row sees only the
    keys less than W positions back; ``cap`` > 0 soft-caps the scores (cap in log2 units, as they are).
    """
    cdef int m = n_pos * g, r, d, nk, diag, lo_diag, c
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
        # ... and those it no longer sees: the window's lower edge, clamped into int range
        lo_diag = <int>max(min(pos0 - window + 1 - k0, <int64_t>ATTN_TK), -(<int64_t>1 << 30)) if window \
            else -(1 << 30)
        _tile_scores(k + k0 * dk, nk, dk, qs, m, kt, s, simd)
        if cap:
            for r in range(m):
                for c in range(nk):
                    s[r * ATTN_TK + c] = cap * _tanh(s[r * ATTN_TK + c] / cap)
        _tile_softmax_pv(s, m, nk, g, diag, lo_diag, mx, l, o, v + k0 * dk, dk, simd)
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


cdef void attention_run(const floating* q, const floating* k_cache, const floating* v_cache,
                        const int64_t* start_pos, floating* out, int B, int L, int h, int hkv, int dk,
                        Py_ssize_t T, int64_t hi, double scale, int64_t window, double softcap,
                        floating* scratch, bint simd) noexcept nogil:
    """Attention over validated arguments: q, out (B, L, h, dk), caches (B, hkv, T, dk), every start_pos in
    [0, T - L] with maximum ``hi``, B, L >= 1, ``scratch`` at least the plan's elements. ``window`` > 0:
    query i sees key j only if i - j < window (keys before a tile's window are never read); ``softcap`` > 0:
    scores become softcap * tanh(scores / softcap) before the softmax."""
    cdef int g = h // hkv, b
    cdef Plan p = _plan(B, L, h, hkv, dk, hi + L, omp_get_max_threads())   # hi + L: the longest keys
    cdef int tq = p.tq, m_max = p.m_max, n_qt = p.n_qt, nsplit = p.nsplit, nthreads = p.nthreads
    cdef Py_ssize_t n_base = p.n_base, n_items = p.n_items, per_thread = p.per_thread
    cdef Py_ssize_t per_qt = <Py_ssize_t>B * hkv * nsplit
    cdef Py_ssize_t o_len = <Py_ssize_t>m_max * dk, ml_len = 2 * m_max

    # The threads' tiles, then (split keys) each item's partial accumulator (M, dk) and max and sum (M,).
    # The start is rounded up to 64 bytes, so that vector loads never split lines.
    cdef floating* tiles = <floating*>((<size_t>scratch + 63) & ~(<size_t>63))
    cdef floating* part_o = tiles + nthreads * per_thread
    cdef floating* part_ml = part_o + p.n_parts * o_len

    cdef floating qscale = <floating>(scale * LOG2E)
    cdef floating cap = <floating>(softcap * LOG2E)       # the scores are kept in log2 units
    cdef Py_ssize_t q_stride = <Py_ssize_t>h * dk
    cdef Py_ssize_t it, base, slot
    cdef int qt, kvh, sp, q0, n_pos, m, r, d
    cdef int64_t pos0, first, span, chunk, key_lo, key_hi
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

    with parallel(num_threads=nthreads):
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
            span = pos0 + n_pos                     # keys first..span-1 are visible to some row of the tile
            first = max(0, pos0 - window + 1) if window else 0
            chunk = (span - first + nsplit - 1) // nsplit
            chunk = (chunk + ATTN_TK - 1) // ATTN_TK * ATTN_TK
            key_lo = min(first + sp * chunk, span)
            key_hi = min(key_lo + chunk, span)
            if nsplit == 1:
                _attend(q + ((<Py_ssize_t>b * L + q0) * h + kvh * g) * dk, q_stride, n_pos, g, dk, qscale,
                        k_cache + (<Py_ssize_t>b * hkv + kvh) * T * dk,
                        v_cache + (<Py_ssize_t>b * hkv + kvh) * T * dk, pos0, key_lo, key_hi, window, cap, simd,
                        qs, kt, s, o, mx, l)
                _write_rows(out + ((<Py_ssize_t>b * L + q0) * h + kvh * g) * dk, q_stride, m, g, dk, o, l)
            else:
                slot = ((<Py_ssize_t>b * hkv + kvh) * n_qt + qt) * nsplit + sp
                _attend(q + ((<Py_ssize_t>b * L + q0) * h + kvh * g) * dk, q_stride, n_pos, g, dk, qscale,
                        k_cache + (<Py_ssize_t>b * hkv + kvh) * T * dk,
                        v_cache + (<Py_ssize_t>b * hkv + kvh) * T * dk, pos0, key_lo, key_hi, window, cap, simd,
                        qs, kt, s, part_o + slot * o_len, part_ml + slot * ml_len,
                        part_ml + slot * ml_len + m_max)

    if nsplit == 1:
        return
    # Merge the splits of each (b, kv head, query tile): rescale each partial to the common max. Every row
    # sees its own position's key, so the common max is finite, and splits a row sees nothing of weigh
    # exp2(-inf) = 0.
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
            po = out + ((<Py_ssize_t>b * L + q0 + r // g) * h + kvh * g + r % g) * dk
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
