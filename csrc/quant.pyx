# Dequantization of GGUF / safetensors tensor data: raw little-endian bytes -> float32 or float64.
#
# Every format is a sequence of fixed-size blocks (F16 and BF16 are blocks of one element), so the work
# splits into chunks of whole blocks decoded in parallel. Bytes are assembled one at a time, so the source
# needs no alignment and the result does not depend on the host's byte order.
#
# Results equal ggml's reference dequantizers bit for bit in float32: each element is a product of an fp16
# scale and small integers (exact in float32) plus at most one rounded operation, computed in the same
# order as ggml. In float64 nothing rounds at all, so a float64 result rounded to float32 is ggml's value.
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t, uint32_t

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* IEEE half -> single, exact for every finite value and infinity (NaN stays NaN): the branch-free
       conversion of the FP16 library that ggml's portable path also uses. */
    static inline float fastlm_bits_to_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
    static inline uint32_t fastlm_f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

    static inline float fastlm_fp16_to_fp32(uint16_t h) {
        const uint32_t w = (uint32_t)h << 16;
        const uint32_t sign = w & 0x80000000u;
        const uint32_t two_w = w + w;
        const float normalized = fastlm_bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
        const float denormalized = fastlm_bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
        const uint32_t bits = two_w < (1u << 27) ? fastlm_f32_to_bits(denormalized)
                                                 : fastlm_f32_to_bits(normalized);
        return fastlm_bits_to_f32(sign | bits);
    }

    static inline float fastlm_bf16_to_fp32(uint16_t h) { return fastlm_bits_to_f32((uint32_t)h << 16); }
    """
    float bits_to_f32 "fastlm_bits_to_f32"(uint32_t w) noexcept nogil
    float fp16_to_fp32 "fastlm_fp16_to_fp32"(uint16_t h) noexcept nogil
    float bf16_to_fp32 "fastlm_bf16_to_fp32"(uint16_t h) noexcept nogil

include "ggml_types.pxi"

BLOCKS = GGML_BLOCKS        # every type decodes

# Below this many elements a parallel region costs more than it saves; a chunk is one unit of parallel work.
cdef Py_ssize_t PARALLEL_MIN = 65536
cdef Py_ssize_t CHUNK_ELEMENTS = 16384


cdef inline uint16_t _u16(const uint8_t* p) noexcept nogil:
    return p[0] | (p[1] << 8)


cdef inline float _f32(const uint8_t* p) noexcept nogil:
    return bits_to_f32(p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24))


cdef inline void _q8_0(const uint8_t* b, floating* y) noexcept nogil:
    # fp16 d, int8 q[32]: y = d * q
    cdef floating d = fp16_to_fp32(_u16(b))
    cdef int j
    for j in range(32):
        y[j] = d * (<int8_t>b[2 + j])


cdef inline void _q4_0(const uint8_t* b, floating* y) noexcept nogil:
    # fp16 d, 16 bytes: low nibble of byte j is element j, high nibble element j + 16; y = d * (q - 8)
    cdef floating d = fp16_to_fp32(_u16(b))
    cdef const uint8_t* qs = b + 2
    cdef int j
    for j in range(16):
        y[j] = d * ((qs[j] & 0x0F) - 8)
        y[j + 16] = d * ((qs[j] >> 4) - 8)


cdef inline void _q4_1(const uint8_t* b, floating* y) noexcept nogil:
    # fp16 d, fp16 m, 16 bytes of nibbles as in Q4_0; y = d * q + m
    cdef floating d = fp16_to_fp32(_u16(b))
    cdef floating m = fp16_to_fp32(_u16(b + 2))
    cdef const uint8_t* qs = b + 4
    cdef int j
    for j in range(16):
        y[j] = d * (qs[j] & 0x0F) + m
        y[j + 16] = d * (qs[j] >> 4) + m


cdef inline void _q4_k(const uint8_t* b, floating* y) noexcept nogil:
    # fp16 d, fp16 dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes of nibbles. Each 64-element
    # group j uses 32 bytes: low nibbles with pair 2j, high nibbles with pair 2j + 1; y = d*sc*q - dmin*m.
    cdef floating d = fp16_to_fp32(_u16(b))
    cdef floating dmin = fp16_to_fp32(_u16(b + 2))
    cdef const uint8_t* scales = b + 4
    cdef const uint8_t* qs = b + 16
    cdef floating d1, m1, d2, m2
    cdef int group, l
    for group in range(4):
        d1 = d * _k4_scale(scales, 2 * group)
        m1 = dmin * _k4_min(scales, 2 * group)
        d2 = d * _k4_scale(scales, 2 * group + 1)
        m2 = dmin * _k4_min(scales, 2 * group + 1)
        for l in range(32):
            y[l] = d1 * (qs[l] & 0x0F) - m1
            y[l + 32] = d2 * (qs[l] >> 4) - m2
        qs += 32
        y += 64


cdef inline int _k4_scale(const uint8_t* q, int j) noexcept nogil:
    # Pairs 0-3 sit in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 take their low 4 bits
    # from bytes 8-11 and their top 2 bits from the spare top bits of bytes 0-7 (ggml's get_scale_min_k4).
    if j < 4:
        return q[j] & 63
    return (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)


cdef inline int _k4_min(const uint8_t* q, int j) noexcept nogil:
    if j < 4:
        return q[j + 4] & 63
    return (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


cdef inline void _q6_k(const uint8_t* b, floating* y) noexcept nogil:
    # ql[128] low 4 bits, qh[64] high 2 bits, int8 scales[16] (one per 16 elements), fp16 d;
    # y = d * scale * (q - 32). Each half of 128 elements uses 64 ql bytes, 32 qh bytes and 8 scales.
    cdef const uint8_t* ql = b
    cdef const uint8_t* qh = b + 128
    cdef const int8_t* sc = <const int8_t*>(b + 192)
    cdef floating d = fp16_to_fp32(_u16(b + 208))
    cdef int half, l, s
    for half in range(2):
        for l in range(32):
            s = l // 16
            y[l] = d * sc[s] * (((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32)
            y[l + 32] = d * sc[s + 2] * (((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32)
            y[l + 64] = d * sc[s + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32)
            y[l + 96] = d * sc[s + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32)
        ql += 64
        qh += 32
        sc += 8
        y += 128


cdef void _decode(int qtype, const uint8_t* src, floating* dst, Py_ssize_t nblocks) noexcept nogil:
    """Decode ``nblocks`` consecutive blocks of ``qtype`` from ``src`` into ``dst``."""
    cdef Py_ssize_t i
    if qtype == T_F32:
        for i in range(nblocks):
            dst[i] = _f32(src + 4 * i)
    elif qtype == T_F16:
        for i in range(nblocks):
            dst[i] = fp16_to_fp32(_u16(src + 2 * i))
    elif qtype == T_BF16:
        for i in range(nblocks):
            dst[i] = bf16_to_fp32(_u16(src + 2 * i))
    elif qtype == T_Q8_0:
        for i in range(nblocks):
            _q8_0(src + 34 * i, dst + 32 * i)
    elif qtype == T_Q4_0:
        for i in range(nblocks):
            _q4_0(src + 18 * i, dst + 32 * i)
    elif qtype == T_Q4_1:
        for i in range(nblocks):
            _q4_1(src + 20 * i, dst + 32 * i)
    elif qtype == T_Q4_K:
        for i in range(nblocks):
            _q4_k(src + 144 * i, dst + 256 * i)
    elif qtype == T_Q6_K:
        for i in range(nblocks):
            _q6_k(src + 210 * i, dst + 256 * i)


def dequantize(const uint8_t[::1] raw, int qtype, floating[::1] out):
    """Decode ``raw`` (whole blocks of ggml type ``qtype``) into ``out``, chunks of blocks in parallel."""
    if qtype not in BLOCKS:
        raise ValueError(f"dequantize: unsupported ggml type {qtype}")
    cdef Py_ssize_t block_elements = BLOCKS[qtype][0], block_bytes = BLOCKS[qtype][1]
    cdef Py_ssize_t n = out.shape[0]
    if n % block_elements or raw.shape[0] != n // block_elements * block_bytes:
        raise ValueError(f"dequantize: {raw.shape[0]} bytes of ggml type {qtype} do not hold {n} elements")
    if n == 0:
        return
    cdef Py_ssize_t nblocks = n // block_elements
    cdef Py_ssize_t per_chunk = max(1, CHUNK_ELEMENTS // block_elements)
    cdef Py_ssize_t nchunks = (nblocks + per_chunk - 1) // per_chunk, c, first
    cdef const uint8_t* src = &raw[0]
    cdef floating* dst = &out[0]
    for c in prange(nchunks, nogil=True, schedule="static", num_threads=1 if n < PARALLEL_MIN else 0):
        first = c * per_chunk
        _decode(qtype, src + first * block_bytes, dst + first * block_elements, min(per_chunk, nblocks - first))


def gather_rows(const uint8_t[:, ::1] table, int qtype, const int64_t[:, ::1] ids, floating[:, :, ::1] out):
    """out[b, l, :] = dequant(table[ids[b, l]]): the embedding lookup from a quantized (V, row_bytes) table,
    bit for bit dequantize()'s values. Rows are decoded in parallel when there are enough elements."""
    if qtype not in BLOCKS:
        raise ValueError(f"gather_rows: unsupported ggml type {qtype}")
    cdef Py_ssize_t block_elements = BLOCKS[qtype][0], block_bytes = BLOCKS[qtype][1]
    cdef Py_ssize_t V = table.shape[0], row_bytes = table.shape[1], k = out.shape[2]
    cdef Py_ssize_t B = ids.shape[0], L = ids.shape[1]
    if out.shape[0] != B or out.shape[1] != L:
        raise ValueError(f"gather_rows: out has shape ({out.shape[0]}, {out.shape[1]}, {k}), ids ({B}, {L})")
    if k % block_elements or row_bytes != k // block_elements * block_bytes:
        raise ValueError(f"gather_rows: table rows of {row_bytes} bytes of ggml type {qtype} do not hold "
                         f"{k} elements (out's last dimension)")
    cdef Py_ssize_t b, l, i, nrows = B * L
    cdef int64_t t
    for b in range(B):
        for l in range(L):
            t = ids[b, l]
            if t < 0 or t >= V:
                raise ValueError(f"gather_rows: id {t} at [{b}, {l}] outside the table's rows [0, {V})")
    if nrows == 0 or k == 0:
        return
    cdef const uint8_t* src = &table[0, 0]
    cdef const int64_t* idp = &ids[0, 0]
    cdef floating* dst = &out[0, 0, 0]
    cdef Py_ssize_t nblocks = k // block_elements
    for i in prange(nrows, nogil=True, schedule="static", num_threads=1 if nrows * k < PARALLEL_MIN else 0):
        _decode(qtype, src + idp[i] * row_bytes, dst + i * k, nblocks)
