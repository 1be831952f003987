# Projections on GGUF block-quantized weights on raw pointers, without the GIL; qlinear.pyx explains the paths
# and their measurements. Included by qlinear.pyx and blocks.pyx.
# Needs: prange, uint8_t, uintptr_t, omp_get_max_threads, sgemm, FastLMValueError.
from libc.stdint cimport int16_t

cdef extern from "qlinear_impl.h" nogil:
    enum:
        QL_INT_N_MAX
    ctypedef struct ql_act:
        const int16_t* q
        const float* d
        const float* s
        const float* sl
        const float* sh
    void ql_quant_rows(const float* x, int n, int k, int group, int16_t* q, float* d, float* s, float* sl,
                       float* sh, int simd)
    void ql_int_dot(int qtype, int isa, const int16_t* q, const float* d, const float* s, const float* sl,
                    const float* sh, int n, int k, const uint8_t* w, size_t row_bytes, int rows, float* out,
                    int ld_out, float beta)
    void* ql_dot_for(int qtype, int isa)
    void ql_small_f16_avx2(const float* x, int n, int k, const uint8_t* w, int rows, float* out, int ld_out,
                           float beta)
    void ql_small_dec(int qtype, const float* x, int n, int k, const uint8_t* w, size_t row_bytes, int rows,
                      float* out, int ld_out, float beta, float* buf, int simd)
    void ql_decode_rows(int qtype, const uint8_t* w, size_t row_bytes, int rows, int k, float* y, int simd)
    size_t ql_gemm_packed_bytes(int n, int k)
    void ql_gemm_pack(const ql_act* a, int n, int k, uint8_t* xp)
    void ql_gemm_rows(int qtype, int isa, const uint8_t* xpk, int n, int k, const uint8_t* w, size_t row_bytes,
                      int rows, int panel_rows, float* out, int ld_out, float beta, uint8_t* panel)
    # linear_impl.h's GEMM, for the decoded panels
    enum:
        LIN_GEMM_MR
    size_t lin_gemm_packed_bytes(int n, int k)
    void lin_gemm_pack_x(const float* x, int n, int k, float* xp)
    void lin_gemm_f32_avx2(const float* xp, int n, int k, const float* w, int rows, float* out, int ld_out,
                           float beta)

include "ggml_types.pxi"

# The SIMD level of the integer kernels when SIMD is on: the CPU's best (qlinear.set_isa may lower it).
cdef int _ql_isa = fl_cpu_isa()

# The types the kernels multiply by: F16 and every format with integer dot kernels.
QL_BLOCKS = {t: GGML_BLOCKS[t] for t in GGML_NAMES if t == BLK_F16 or ql_dot_for(t, FL_ISA_PORTABLE) != NULL}
NAMES = {t: GGML_NAMES[t] for t in QL_BLOCKS}

# Weight rows per panel of the prefill path: as many as fit PANEL_BYTES of float32, a multiple of the GEMM's
# register block (LIN_GEMM_MR = 6 rows), 6 to 252. Each panel reads all of packed x once, so larger panels read
# it less often (see qlinear.pyx).
cdef Py_ssize_t PANEL_BYTES = 1 << 20
cdef int PANEL_ROWS_MIN = LIN_GEMM_MR, PANEL_ROWS_MAX = 256 // LIN_GEMM_MR * LIN_GEMM_MR


cdef inline int _panel_rows(Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r = PANEL_BYTES // (4 * k) // PANEL_ROWS_MIN * PANEL_ROWS_MIN
    return <int>(PANEL_ROWS_MIN if r < PANEL_ROWS_MIN else PANEL_ROWS_MAX if r > PANEL_ROWS_MAX else r)

# Smallest N that takes the prefill paths (by measurement, see qlinear.pyx), the same for every type.
cdef int _panel_min_any = 96
PANEL_N_MIN = {t: _panel_min_any for t in QL_BLOCKS}
# The types whose prefill takes the integer GEMM where SIMD is on (F16 decodes float32 panels).
GEMM_TYPES = frozenset(t for t in QL_BLOCKS if blk_traits_of(t).ints_avx2 != NULL)
# Smallest N that takes the decode-and-dot path instead of the integer or F16C kernel, per type: the table's
# int_n_max + 1 (the integer path's scratch grows with it: 2 * N * k bytes of activations); F16C up to 4 rows.
DEC_N_MIN = {t: 5 if t == BLK_F16 else blk_traits_of(t).int_n_max + 1 for t in QL_BLOCKS}
cdef int _dec_min[BLK_ID_MAX + 1]
for _t, _v in DEC_N_MIN.items():
    _dec_min[_t] = _v
cdef int _act_below = max(DEC_N_MIN.values())
assert _act_below - 1 <= QL_INT_N_MAX


# Output rows per slice are a multiple of this (the register block is 4 rows).
cdef int QL_SLICE_ALIGN = 16
# Below this many multiply-adds (N * rows * k) one thread is faster than waking the others.
cdef double PARALLEL_MIN_WORK = 1 << 18

cdef enum:
    M_INT = 0       # int16 activations, integer dots
    M_F16 = 1       # AVX2 F16 kernel
    M_DEC = 2       # decode 4 rows, float kernel
    M_PANEL = 3     # decode a panel of rows to float32, GEMM (AVX2) or sgemm
    M_GEMM = 4      # int16 activations, a panel of rows unpacked to int16, integer GEMM (AVX2 and above)


cdef inline Py_ssize_t _align(Py_ssize_t b) noexcept nogil:
    return (b + 63) & ~(<Py_ssize_t>63)


cdef inline Py_ssize_t _buf_bytes(Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """One thread's float buffer for a call over x (n, k)."""
    return _align((_panel_rows(k) if n >= _panel_min_any else 4) * k * 4)


cdef inline Py_ssize_t _act_bytes(Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The rounded activations of x (n, k): int16 q (2 bytes a value), float d, s, sl, sh per block of 32."""
    return _align(n * k * 2) + 4 * _align(n * (k // 32) * 4)


cdef inline Py_ssize_t _packed_bytes(Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """What a prefill call over x (n, k) (if n takes the prefill paths) needs of x: packed for the float GEMM
    (the float panels), or rounded to int16 and packed for the integer GEMM."""
    if n < _panel_min_any:
        return 0
    return max(_align(lin_gemm_packed_bytes(n, k)), _act_bytes(n, k) + _align(ql_gemm_packed_bytes(n, k)))


cdef Py_ssize_t qlinear_scratch_size(Py_ssize_t n, Py_ssize_t k, int threads) noexcept nogil:
    """Bytes of scratch that serve every call over x (n', k') with n' <= n, k' <= k on up to ``threads``
    threads: 64 bytes of alignment slack, the threads' float buffers (a panel holds at most PANEL_BYTES, or
    PANEL_ROWS_MIN rows), then the rounded activations of the most rows that take the integer path, or x
    packed for the prefill GEMMs, whichever is larger (a call uses one or the other)."""
    cdef Py_ssize_t buf = _buf_bytes(n, k)
    if n >= _panel_min_any:
        buf = max(buf, _align(max(PANEL_BYTES, PANEL_ROWS_MIN * k * 4)))
    return 64 + threads * buf + max(_act_bytes(min(n, _act_below - 1), k), _packed_bytes(n, k))


cdef int check_qtype(int qtype, Py_ssize_t k) except -1:
    """Raise unless the kernels multiply by rows of k elements of ggml type ``qtype``."""
    if qtype not in QL_BLOCKS:
        raise FastLMValueError(f"qlinear: unsupported ggml type {qtype}; supported: "
                               + ", ".join(f"{v}={t}" for t, v in NAMES.items()))
    cdef int elems = blk_traits_of(qtype).elems
    if k < 1 or k % elems:
        raise FastLMValueError(f"qlinear: k = {k} is not a positive multiple of {NAMES[qtype]}'s block of {elems}")
    if k > (1 << 24):
        raise FastLMValueError(f"qlinear: rows of {k} elements are too long")
    return 0


cdef struct QPart:
    const uint8_t* data     # rows of GGUF blocks
    int qtype
    int rows


cdef inline size_t _row_bytes(int qtype, Py_ssize_t k) noexcept nogil:
    cdef const blk_traits* t = blk_traits_of(qtype)
    return <size_t>(k // t.elems) * t.bytes


cdef inline int _mode(int qtype, Py_ssize_t n, bint simd) noexcept nogil:
    """The path a call over n activation rows takes for weights of ``qtype``."""
    if n >= _panel_min_any:
        return M_GEMM if simd and _ql_isa >= FL_ISA_AVX2 and blk_traits_of(qtype).ints_avx2 != NULL else M_PANEL
    if n >= _dec_min[qtype]:
        return M_DEC
    if qtype != BLK_F16:
        return M_INT
    return M_F16 if simd else M_DEC


cdef void qlinear_run(const float* xp, const uint8_t* wp, int qtype, float* op, int ni, int ki, int mi,
                      float fbeta, uint8_t* sp, bint simd) noexcept nogil:
    """out (n, m) = x (n, k) @ dequant(w).T + beta * out for validated operands (check_qtype; n, m >= 1), with
    qlinear_scratch_size(n, k, omp_get_max_threads()) bytes of scratch at sp."""
    cdef QPart part
    part.data, part.qtype, part.rows = wp, qtype, mi
    qlinear_parts(xp, &part, 1, op, ni, ki, fbeta, sp, simd)


cdef inline int _prep(int qtype, Py_ssize_t n, bint simd) noexcept nogil:
    """What a part's path needs done to x once per pass: round it to int16 in groups of this many elements
    (the integer paths, 32 or 256: the format's block), pack it for the float GEMM (-1: the float panels on AVX2),
    or nothing (0)."""
    cdef int mode = _mode(qtype, n, simd)
    if mode == M_INT or mode == M_GEMM:
        return blk_traits_of(qtype).elems
    return -1 if mode == M_PANEL and simd else 0


cdef void qlinear_parts(const float* xp, const QPart* parts, int nparts, float* op, int ni, int ki, float fbeta,
                        uint8_t* sp, bint simd) noexcept nogil:
    """qlinear_run for up to 3 matrices that share the input x, their outputs side by side in each row of out
    (Q, K and V; gate and up): one pass of the threads over all their rows, x rounded to integers once. The
    integer kernels of the 32- and of the 256-element formats take the activations in different groups and
    orders (ql_quant_rows), and the float panels x as floats: consecutive parts that need x alike share a pass
    (Q4_K_M's Q4_K query and key, then its Q6_K value)."""
    cdef int p, q, mi = 0, first = 0, prep, need
    for p in range(nparts):
        mi += parts[p].rows
    p = 0
    while p < nparts:
        prep, q = _prep(parts[p].qtype, ni, simd), p + 1
        while q < nparts:
            need = _prep(parts[q].qtype, ni, simd)
            if need and prep and need != prep:
                break
            prep = prep or need
            q += 1
        _parts_pass(xp, &parts[p], q - p, op + first, mi, ni, ki, fbeta, sp, simd, prep)
        while p < q:
            first += parts[p].rows
            p += 1


cdef void _parts_pass(const float* xp, const QPart* parts, int nparts, float* op, int ld_out, int ni, int ki,
                      float fbeta, uint8_t* sp, bint simd, int prep) noexcept nogil:
    """qlinear_parts' pass over parts that need x prepared as ``prep`` says (_prep); their outputs at op,
    leading dimension ld_out."""
    cdef Py_ssize_t n = ni, k = ki
    cdef int p, mi = 0
    for p in range(nparts):
        mi += parts[p].rows
    cdef int threads = omp_get_max_threads() if <double>ni * mi * ki >= PARALLEL_MIN_WORK else 1

    # Layout: align the base to 64 bytes; per-thread float buffers, then the quantized activations (then,
    # for the integer GEMM, those packed), or x packed for the float GEMM.
    cdef uint8_t* base = <uint8_t*>((<uintptr_t>sp + 63) & ~(<uintptr_t>63))
    cdef Py_ssize_t buf_bytes = _buf_bytes(n, k), blocks = _align(n * (k // 32) * 4)
    cdef uint8_t* act = base + threads * buf_bytes
    cdef uint8_t* packed = act
    cdef int16_t* xq = <int16_t*>act
    cdef float* xd = <float*>(act + _align(n * k * 2))
    cdef float* xs = <float*>(<uint8_t*>xd + blocks)
    cdef float* xsl = <float*>(<uint8_t*>xd + 2 * blocks)
    cdef float* xsh = <float*>(<uint8_t*>xd + 3 * blocks)
    cdef ql_act act_q
    act_q.q, act_q.d, act_q.s, act_q.sl, act_q.sh = xq, xd, xs, xsl, xsh
    if prep > 0:
        ql_quant_rows(xp, ni, ki, prep, xq, xd, xs, xsl, xsh, simd)
        if n >= _panel_min_any:             # every part takes the integer GEMM
            packed = act + _act_bytes(n, k)
            ql_gemm_pack(&act_q, ni, ki, packed)
    elif prep < 0:                          # every part takes the float panels: x packed once for their GEMM
        lin_gemm_pack_x(xp, ni, ki, <float*>act)

    # Slices of the rows of all the parts together; a slice crossing a part boundary does a piece of each.
    cdef int per = (mi + threads - 1) // threads
    per = (per + QL_SLICE_ALIGN - 1) // QL_SLICE_ALIGN * QL_SLICE_ALIGN
    cdef int slices = (mi + per - 1) // per, s, lo, hi, first, a, b
    cdef size_t row_bytes
    for s in prange(slices, num_threads=slices, schedule="static"):
        lo = s * per
        hi = min(lo + per, mi)
        first = 0
        for p in range(nparts):
            a = max(lo, first)
            b = min(hi, first + parts[p].rows)
            if a < b:
                row_bytes = _row_bytes(parts[p].qtype, ki)
                _slice(_mode(parts[p].qtype, n, simd), parts[p].qtype, xp, packed, &act_q, ni, ki,
                       parts[p].data + <Py_ssize_t>(a - first) * row_bytes, row_bytes, b - a, op + a, ld_out, fbeta,
                       base + s * buf_bytes, simd)
            first = first + parts[p].rows


cdef void _slice(int mode, int qtype, const float* x, const uint8_t* packed, const ql_act* a, int n, int k,
                 const uint8_t* w, size_t row_bytes, int rows, float* out, int ld_out, float beta, uint8_t* buf,
                 bint simd) noexcept nogil:
    """out[:, :rows] (leading dimension ld_out) for w's first rows rows, on one thread; a: x rounded to int16
    (the integer paths), packed: x packed for the prefill GEMMs."""
    cdef char trans = b'T', no_trans = b'N'
    cdef float one = 1.0
    cdef int p0, pr
    if mode == M_INT:
        ql_int_dot(qtype, _ql_isa if simd else FL_ISA_PORTABLE, a.q, a.d, a.s, a.sl, a.sh, n, k, w, row_bytes, rows,
                   out, ld_out, beta)
    elif mode == M_GEMM:
        ql_gemm_rows(qtype, _ql_isa, packed, n, k, w, row_bytes, rows, _panel_rows(k), out, ld_out, beta, buf)
    elif mode == M_F16:
        ql_small_f16_avx2(x, n, k, w, rows, out, ld_out, beta)
    elif mode == M_DEC:
        ql_small_dec(qtype, x, n, k, w, row_bytes, rows, out, ld_out, beta, <float*>buf, simd)
    else:
        p0 = 0
        while p0 < rows:
            pr = min(_panel_rows(k), rows - p0)
            ql_decode_rows(qtype, w + <size_t>p0 * row_bytes, row_bytes, pr, k, <float*>buf, simd)
            if simd:
                lin_gemm_f32_avx2(<const float*>packed, n, k, <float*>buf, pr, out + p0, ld_out, beta)
            else:
                sgemm(&trans, &no_trans, &pr, &n, &k, &one, <float*>buf, &k, <float*>x, &k, &beta, out + p0, &ld_out)
            p0 += pr
