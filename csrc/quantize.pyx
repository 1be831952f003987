# Quantization of float32 data into ggml block formats: the inverse of quant.pyx's dequantizers.
#
# Every result equals ggml's reference quantizers (quantize_row_*_ref in ggml-quants.c, mirrored by the
# gguf package's gguf.quants.quantize) bit for bit:
#
#   Q8_0  d = amax / 127, id = d ? 1/d : 0, q = roundf(x * id)                    (half away from zero)
#   Q4_0  m = the element of largest |x| (first one, sign kept), d = m / -8, id = d ? 1/d : 0,
#         q = min(15, (int8)(x * id + 8.5))                                         (truncation)
#   Q4_1  d = (max - min) / 15, id = d ? 1/d : 0, q = min(15, (int8)((x - min) * id + 0.5)), m = min
#   F16   IEEE half, round to nearest even (subnormals kept, overflow to infinity)
#
# each step one rounded float32 operation in ggml's order. The C below is compiled without floating-point
# contraction, so no multiply-add is ever fused into an FMA (which would round once instead of twice).
#
# Work splits into chunks of whole blocks quantized in parallel; bytes are stored one at a time, so the
# output needs no alignment and does not depend on the host's byte order.
from cython.parallel cimport prange
from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC optimize ("fp-contract=off")
    #endif
    #if defined(__clang__)
    #pragma clang fp contract(off)
    #endif
    #include <stdint.h>
    #include <string.h>
    #include <math.h>

    static inline float fastlmq_bits_to_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
    static inline uint32_t fastlmq_f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

    /* float32 -> IEEE half, round to nearest even: the branch-free conversion of the FP16 library, which
       ggml's portable GGML_FP32_TO_FP16 uses (F16C's vcvtps2ph rounds the same way). NaN -> 0x7E00. */
    static inline uint16_t fastlmq_fp32_to_fp16(float f) {
        const float scale_to_inf = 0x1.0p+112f;
        const float scale_to_zero = 0x1.0p-110f;
        float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
        const uint32_t w = fastlmq_f32_to_bits(f);
        const uint32_t shl1_w = w + w;
        const uint32_t sign = w & 0x80000000u;
        uint32_t bias = shl1_w & 0xFF000000u;
        if (bias < 0x71000000u) bias = 0x71000000u;
        base = fastlmq_bits_to_f32((bias >> 1) + 0x07800000u) + base;
        const uint32_t bits = fastlmq_f32_to_bits(base);
        const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
        const uint32_t mantissa_bits = bits & 0x00000FFFu;
        const uint32_t nonsign = exp_bits + mantissa_bits;
        return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
    }

    static inline void fastlmq_put16(uint8_t* p, uint16_t h) { p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

    static inline void fastlmq_f32(const float* x, uint8_t* y) {
        const uint32_t w = fastlmq_f32_to_bits(*x);
        y[0] = (uint8_t)w; y[1] = (uint8_t)(w >> 8); y[2] = (uint8_t)(w >> 16); y[3] = (uint8_t)(w >> 24);
    }

    static inline void fastlmq_f16(const float* x, uint8_t* y) { fastlmq_put16(y, fastlmq_fp32_to_fp16(*x)); }

    /* fp16 d, int8 q[32] */
    static inline void fastlmq_q8_0(const float* x, uint8_t* y) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = fabsf(x[j]);
            amax = amax > v ? amax : v;      /* MAX(amax, v), as ggml: a NaN v is skipped */
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        fastlmq_put16(y, fastlmq_fp32_to_fp16(d));
        for (int j = 0; j < 32; j++) {
            const float x0 = x[j] * id;
            y[2 + j] = (uint8_t)(int8_t)roundf(x0);
        }
    }

    /* fp16 d, 16 bytes: low nibble q[j], high nibble q[j + 16] */
    static inline void fastlmq_q4_0(const float* x, uint8_t* y) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = x[j];
            if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        fastlmq_put16(y, fastlmq_fp32_to_fp16(d));
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[j + 16] * id;
            const int t0 = (int)(x0 + 8.5f);
            const int t1 = (int)(x1 + 8.5f);
            const uint8_t q0 = (uint8_t)(t0 < 15 ? t0 : 15);
            const uint8_t q1 = (uint8_t)(t1 < 15 ? t1 : 15);
            y[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }

    /* fp16 d, fp16 m, 16 bytes of nibbles as Q4_0 */
    static inline void fastlmq_q4_1(const float* x, uint8_t* y) {
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            const float v = x[j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        fastlmq_put16(y, fastlmq_fp32_to_fp16(d));
        fastlmq_put16(y + 2, fastlmq_fp32_to_fp16(min));
        for (int j = 0; j < 16; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[j + 16] - min) * id;
            const int t0 = (int)(x0 + 0.5f);
            const int t1 = (int)(x1 + 0.5f);
            const uint8_t q0 = (uint8_t)(t0 < 15 ? t0 : 15);
            const uint8_t q1 = (uint8_t)(t1 < 15 ? t1 : 15);
            y[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
    """
    void put_f32 "fastlmq_f32"(const float* x, uint8_t* y) noexcept nogil
    void put_f16 "fastlmq_f16"(const float* x, uint8_t* y) noexcept nogil
    void put_q8_0 "fastlmq_q8_0"(const float* x, uint8_t* y) noexcept nogil
    void put_q4_0 "fastlmq_q4_0"(const float* x, uint8_t* y) noexcept nogil
    void put_q4_1 "fastlmq_q4_1"(const float* x, uint8_t* y) noexcept nogil

include "ggml_types.pxi"

# The types that encode, and their blocks.
BLOCKS = {t: GGML_BLOCKS[t] for t in (T_F32, T_F16, T_Q4_0, T_Q4_1, T_Q8_0)}

# Below this many elements a parallel region costs more than it saves; a chunk is one unit of parallel work.
cdef Py_ssize_t PARALLEL_MIN = 65536
cdef Py_ssize_t CHUNK_ELEMENTS = 16384

ctypedef void (*block_fn)(const float*, uint8_t*) noexcept nogil


cdef void _run(block_fn fn, const float* x, uint8_t* y, Py_ssize_t n_blocks, Py_ssize_t elements,
               Py_ssize_t nbytes, Py_ssize_t per_chunk, Py_ssize_t n_chunks, bint parallel) noexcept nogil:
    cdef Py_ssize_t c, b, end
    if parallel:
        for c in prange(n_chunks, schedule="dynamic"):   # dynamic: a descheduled thread delays no one
            end = min((c + 1) * per_chunk, n_blocks)
            for b in range(c * per_chunk, end):
                fn(x + b * elements, y + b * nbytes)
    else:
        for b in range(n_blocks):
            fn(x + b * elements, y + b * nbytes)


def quantize(const float[::1] x, int qtype, uint8_t[::1] out):
    """Encode the float32 values ``x`` as ggml type ``qtype`` (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0) into
    ``out``, which must hold exactly ``len(x) / elements * bytes`` of the type's blocks (see ``BLOCKS``)."""
    if qtype not in BLOCKS:
        raise ValueError(f"qtype must be one of {sorted(BLOCKS)} (F32, F16, Q4_0, Q4_1, Q8_0), got {qtype}")
    cdef Py_ssize_t elements = BLOCKS[qtype][0], nbytes = BLOCKS[qtype][1]
    cdef Py_ssize_t n = x.shape[0]
    if n % elements:
        raise ValueError(f"x must hold whole {elements}-element blocks of type {qtype}, got {n} elements")
    cdef Py_ssize_t n_blocks = n // elements
    if out.shape[0] != n_blocks * nbytes:
        raise ValueError(f"out must hold {n_blocks * nbytes} bytes ({n_blocks} blocks of {nbytes}), "
                         f"got {out.shape[0]}")
    if n_blocks == 0:
        return
    cdef block_fn fn
    if qtype == T_F32:
        fn = put_f32
    elif qtype == T_F16:
        fn = put_f16
    elif qtype == T_Q8_0:
        fn = put_q8_0
    elif qtype == T_Q4_0:
        fn = put_q4_0
    else:
        fn = put_q4_1
    cdef Py_ssize_t per_chunk = max(CHUNK_ELEMENTS // elements, 1)
    cdef Py_ssize_t n_chunks = (n_blocks + per_chunk - 1) // per_chunk
    cdef bint parallel = n >= PARALLEL_MIN
    with nogil:
        _run(fn, &x[0], &out[0], n_blocks, elements, nbytes, per_chunk, n_chunks, parallel)
