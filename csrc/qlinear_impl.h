/* Kernels of qlinear.pyx: out (n, rows) = x (n, k) @ dequant(w (rows, row_bytes)).T + beta * out on one thread,
 * with w in a GGUF block format (ggml_blocks.h). qlinear.pyx splits w's rows across the threads; the formats'
 * table (ggml_types.h, included at the end) points at the kernels here, one per format and SIMD level.
 *
 * Three paths:
 *   - integer (every quantized format, n up to the table's int_n_max): the activation rows are quantized once
 *     per call into blocks of 32 int16 with a float scale d = max|x| / 32767 (round to nearest: each element
 *     moves by at most d / 2), with s = d * sum(q) and the halves' sums sl, sh. Each chunk of 32 weights
 *     (blk_chunk's: x = dl * q + m, per half of 16) is unpacked to int16 and dotted with an activation block in
 *     integers (madd: int16 pairs into int32 lanes, exact); the formats with 16-element sub-blocks (Q2_K, Q3_K,
 *     Q6_K) multiply their integers by the integer sub-scales first (|sc q| <= 4096, so 16 products stay below
 *     2^31), and an offset m enters as m * s (Q2_K: m_lo * sl + m_hi * sh). The int32 sums are converted and
 *     fma'd with dl * d into float lanes. (int8 activations, ggml's Q8_1 / Q8_K, lost too much: greedy tokens of
 *     SmolLM2-135M agreed with the float path only 97 % of the time.)
 *   - F16 (n below DEC_N_MIN): float activations, F16C conversion of the weights, FMA.
 *   - decode-and-dot (every format past int_n_max; F16 without AVX2): 4 rows at a time are dequantized into a
 *     per-thread float buffer (L1) and handed to linear_impl.h's small-batch float kernels.
 * The panel path of large n (prefill) lives in qlinear.pyx: ql_decode_rows() below into a float panel, sgemm.
 *
 * Register blocks (AVX2): integer path 4 weight rows x up to QL_JMAX = 4 activation rows (the 4 rows' block sums
 * folded into one vector, one float accumulator per activation row); F16 4 x 3. Each weight chunk is loaded and
 * unpacked once per register block, and the rows QL_PF_ROWS further on are prefetched into L2 while a chunk
 * computes (linear_impl.h's scheme).
 *
 * The activation quantization gives identical int16 values in the AVX2 and the portable code (the same float
 * operations: scale, clamp to [-32768, 32767] with NaN -> -32768, round half to even), and the integer dots are
 * exact, so the two paths differ only in the order of the float accumulation.
 *
 * Weights are read byte by byte / with unaligned loads: GGUF data needs no alignment. fp16 values are
 * assembled little-endian.
 */
#ifndef FASTLM_QLINEAR_IMPL_H
#define FASTLM_QLINEAR_IMPL_H

#ifdef FASTLM_GGML_TYPES_H
#error "qlinear_impl.h fills ggml_types.h's kernel column: include it before ggml_types.h"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu_isa.h"
#include "ggml_blocks.h"
#include "linear_impl.h"

#define QL_PF_ROWS 8        /* prefetch distance, in weight rows: two blocks of 4 ahead */
#define QL_INT_N_MAX 32     /* the most activation rows an integer-path call may have */

/* ------------------------------------------------------------------------ activation quantization, portable */

/* x (k floats, k % 32 == 0) -> q (k int16), d = max|x_b| / 32767, s = d * sum(q), sl, sh = d * the halves'
 * sums, per block of 32. */
static void ql_quant_row(const float *x, int k, int16_t *q, float *d, float *s, float *sl, float *sh)
{
    for (int b = 0; b < k / 32; b++, x += 32, q += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float db = amax / 32767.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum[2] = {0, 0};
        for (int j = 0; j < 32; j++) {
            float v = x[j] * id;                          /* clamp (NaN -> -32768), then round half to even: */
            v = v != v ? -32768.0f : v < -32768.0f ? -32768.0f : v > 32767.0f ? 32767.0f : v;   /* as AVX2 */
            q[j] = (int16_t)rintf(v);
            sum[j >> 4] += q[j];
        }
        d[b] = db;
        s[b] = db * (float)(sum[0] + sum[1]);
        sl[b] = db * (float)sum[0];
        sh[b] = db * (float)sum[1];
    }
}

/* ---------------------------------------------------------------------------- integer path, portable */

/* out[j, r] for all r < rows, j < n <= QL_INT_N_MAX: exact integer dots per half chunk, float accumulation. */
static inline __attribute__((always_inline)) void ql_dot_portable_t(const int QT, const ql_act *a, int n, int k,
                                                                    const uint8_t *w, size_t row_bytes, int rows,
                                                                    float *out, int ld_out, float beta)
{
    const int nc = k / 32, cpb = BLK_ELEMS(QT) / 32;
    float acc[QL_INT_N_MAX];
    for (int r = 0; r < rows; r++) {
        const uint8_t *wr = w + (size_t)r * row_bytes;
        for (int j = 0; j < n; j++) acc[j] = 0.0f;
        for (int c = 0; c < nc; c++) {
            int16_t q[32];
            float dl[2], m[2];
            blk_chunk(QT, wr + (size_t)(c / cpb) * BLK_BYTES(QT), c % cpb, q, dl, m);
            for (int j = 0; j < n; j++) {
                const int16_t *x = a->q + (size_t)j * k + (size_t)c * 32;
                const size_t ib = (size_t)j * nc + c;
                int32_t lo = 0, hi = 0;                   /* |q_w| <= 127, |q_a| <= 32768: |sum| < 2^27 */
                for (int l = 0; l < 16; l++) {
                    lo += q[l] * x[l];
                    hi += q[l + 16] * x[l + 16];
                }
                float v = BLK_SPLIT(QT) ? a->d[ib] * (dl[0] * (float)lo + dl[1] * (float)hi)
                                        : a->d[ib] * dl[0] * (float)(lo + hi);
                if (BLK_HAS_MIN(QT)) v += BLK_SPLIT(QT) ? m[0] * a->sl[ib] + m[1] * a->sh[ib] : m[0] * a->s[ib];
                acc[j] += v;
            }
        }
        for (int j = 0; j < n; j++) {
            float *o = out + (size_t)j * ld_out + r;
            *o = beta != 0.0f ? acc[j] + beta * *o : acc[j];
        }
    }
}

#define X(T)                                                                                                   \
static void ql_dot_##T##_portable(const ql_act *a, int n, int k, const uint8_t *w, size_t row_bytes, int rows,  \
                                  float *out, int ld_out, float beta)                                          \
{ ql_dot_portable_t(BLK_##T, a, n, k, w, row_bytes, rows, out, ld_out, beta); }
BLK_QUANT_TYPES(X)
#undef X

/* --------------------------------------------------------------------------------------------------- AVX2 */
#if defined(__x86_64__) || defined(__i386__)

#define QL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QL_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

QL_AVX2_INLINE float ql_fp16_avx2(const uint8_t *p) { return _cvtsh_ss(blk_u16(p)); }

QL_AVX2_INLINE float ql_hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

QL_AVX2_INLINE int ql_hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* The same int16 values and sums as ql_quant_row. */
QL_AVX2 static void ql_quant_row_avx2(const float *x, int k, int16_t *q, float *d, float *s, float *sl, float *sh)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-32768.0f), hi = _mm256_set1_ps(32767.0f);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < k / 32; b++, x += 32, q += 32) {
        const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
                     v3 = _mm256_loadu_ps(x + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                       _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        const float amax = ql_hmax(m);
        const float db = amax / 32767.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        /* max_ps(v, lo) returns lo for a NaN v; then cvtps rounds half to even, as the portable code */
#define QL_Q16(v) _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vid), lo), hi))
        const __m256i i0 = QL_Q16(v0), i1 = QL_Q16(v1), i2 = QL_Q16(v2), i3 = QL_Q16(v3);
#undef QL_Q16
        /* packs interleave the 128-bit lanes: (i0 lo, i1 lo, i0 hi, i1 hi); permute4x64 restores the order */
        const __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8),
                      p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
        _mm256_storeu_si256((__m256i *)q, p0);
        _mm256_storeu_si256((__m256i *)(q + 16), p1);
        const int s0 = ql_hsum_i32(_mm256_madd_epi16(p0, ones)), s1 = ql_hsum_i32(_mm256_madd_epi16(p1, ones));
        d[b] = db;
        s[b] = db * (float)(s0 + s1);
        sl[b] = db * (float)s0;
        sh[b] = db * (float)s1;
    }
}

/* 16 lanes of 16 bits: bit l of bits set -> 16 in lane l, else 0 (the 5th bits of Q5_0 / Q5_1). */
QL_AVX2_INLINE __m256i ql_bits16_avx2(uint32_t bits)
{
    const __m256i sel = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                          (short)0x8000);
    const __m256i v = _mm256_and_si256(_mm256_set1_epi16((short)bits), sel);
    return _mm256_and_si256(_mm256_cmpeq_epi16(v, sel), _mm256_set1_epi16(16));
}

QL_AVX2_INLINE __m256i ql_u8x16_avx2(const uint8_t *p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)); }
QL_AVX2_INLINE __m256i ql_srl16_avx2(__m256i v, int n) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)); }

/* IQ4's levels of the 16 nibbles lo (bytes 0-15), as int16. */
QL_AVX2_INLINE __m256i ql_iq4_avx2(__m128i nibbles)
{
    const __m128i levels = _mm_loadu_si128((const __m128i *)BLK_IQ4_LEVELS);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, nibbles));
}

/* The scales of the block at b of 256-element type QT, once per block and weight row: per chunk cb, dl[cb] and
 * the offsets m0[cb] (elements 0-15) and m1[cb] (16-31; Q2_K only, the others have one m, in m0), with
 * x = dl * w + m for the integers w of ql_ints_avx2; the 16-element sub-block formats' integer sub-scales in
 * sc[0..15] (their dl is then d). */
QL_AVX2_INLINE void ql_scales_avx2(const int QT, const uint8_t *b, float *dl, float *m0, float *m1, int16_t *sc)
{
    switch (QT) {      /* the 256-element formats; the 32-element ones' dl and m are their fp16 d and m */
    case BLK_IQ4_XS: {
        const float d = ql_fp16_avx2(b);
        for (int c = 0; c < 8; c++) dl[c] = d * (float)blk_iq4xs_scale(b, c);
        break;
    }
    case BLK_Q2_K: {
        const float d = ql_fp16_avx2(b + 80), dmin = ql_fp16_avx2(b + 82);
        for (int c = 0; c < 8; c++) {
            dl[c] = d;
            m0[c] = -(dmin * (float)(b[2 * c] >> 4));
            m1[c] = -(dmin * (float)(b[2 * c + 1] >> 4));
        }
        for (int i = 0; i < 16; i++) sc[i] = b[i] & 15;
        break;
    }
    case BLK_Q3_K: {
        const float d = ql_fp16_avx2(b + 108);
        for (int c = 0; c < 8; c++) dl[c] = d;
        for (int i = 0; i < 16; i++) sc[i] = (int16_t)blk_k3_scale(b + 96, i);
        break;
    }
    case BLK_Q4_K: case BLK_Q5_K: {
        const float d = ql_fp16_avx2(b), dmin = ql_fp16_avx2(b + 2);
        for (int c = 0; c < 8; c++) {
            dl[c] = d * (float)blk_k4_scale(b + 4, c);
            m0[c] = -(dmin * (float)blk_k4_min(b + 4, c));
        }
        break;
    }
    case BLK_Q6_K: {
        const float d = ql_fp16_avx2(b + 208);
        for (int c = 0; c < 8; c++) dl[c] = d;
        for (int i = 0; i < 16; i++) sc[i] = (int8_t)b[192 + i];
        break;
    }
    }
}

/* Chunk c of the block at b of constant type QT as blk_chunk gives it, in two vectors of 16 int16 (elements
 * 0-15, 16-31), the 16-element sub-block formats' integers already times their sub-scales sc (ql_scales_avx2). */
QL_AVX2_INLINE void ql_ints_avx2(const int QT, const uint8_t *b, const int c, const int16_t *sc, __m256i *w0,
                                 __m256i *w1)
{
    const __m256i m4 = _mm256_set1_epi16(15), m2 = _mm256_set1_epi16(3), one = _mm256_set1_epi16(1);
    switch (QT) {
    case BLK_Q8_0:
        *w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
        *w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
        break;
    case BLK_Q4_0: case BLK_Q4_1: {
        const __m256i t = ql_u8x16_avx2(b + (QT == BLK_Q4_1 ? 4 : 2)), off = _mm256_set1_epi16(QT == BLK_Q4_0 ? 8 : 0);
        *w0 = _mm256_sub_epi16(_mm256_and_si256(t, m4), off);
        *w1 = _mm256_sub_epi16(_mm256_srli_epi16(t, 4), off);
        break;
    }
    case BLK_Q5_0: case BLK_Q5_1: {
        const int o = QT == BLK_Q5_1 ? 2 : 0;
        const uint32_t qh = blk_u32(b + 2 + o);
        const __m256i t = ql_u8x16_avx2(b + 6 + o), off = _mm256_set1_epi16(QT == BLK_Q5_0 ? 16 : 0);
        *w0 = _mm256_sub_epi16(_mm256_or_si256(_mm256_and_si256(t, m4), ql_bits16_avx2(qh & 0xFFFF)), off);
        *w1 = _mm256_sub_epi16(_mm256_or_si256(_mm256_srli_epi16(t, 4), ql_bits16_avx2(qh >> 16)), off);
        break;
    }
    case BLK_IQ4_NL: case BLK_IQ4_XS: {
        const __m128i t = _mm_loadu_si128((const __m128i *)(b + (QT == BLK_IQ4_NL ? 2 : 8 + 16 * c)));
        const __m128i n4 = _mm_set1_epi8(15);
        *w0 = ql_iq4_avx2(_mm_and_si128(t, n4));
        *w1 = ql_iq4_avx2(_mm_and_si128(_mm_srli_epi16(t, 4), n4));
        break;
    }
    case BLK_Q2_K: {
        const uint8_t *qs = b + 16 + 32 * (c >> 2);
        const int sh = 2 * (c & 3);
        *w0 = _mm256_mullo_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs), sh), m2),
                                 _mm256_set1_epi16(sc[2 * c]));
        *w1 = _mm256_mullo_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs + 16), sh), m2),
                                 _mm256_set1_epi16(sc[2 * c + 1]));
        break;
    }
    case BLK_Q3_K: {
        const uint8_t *qs = b + 32 + 32 * (c >> 2);
        const int sh = 2 * (c & 3);
        const __m256i four = _mm256_set1_epi16(4);
        /* q = low 2 bits - 4 + 4 * (bit c of hmask) */
        const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(b), c), one), 2);
        const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(b + 16), c), one), 2);
        const __m256i q0 = _mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs), sh), m2);
        const __m256i q1 = _mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs + 16), sh), m2);
        *w0 = _mm256_mullo_epi16(_mm256_sub_epi16(_mm256_add_epi16(q0, h0), four), _mm256_set1_epi16(sc[2 * c]));
        *w1 = _mm256_mullo_epi16(_mm256_sub_epi16(_mm256_add_epi16(q1, h1), four), _mm256_set1_epi16(sc[2 * c + 1]));
        break;
    }
    case BLK_Q4_K: case BLK_Q5_K: {
        const int five = QT == BLK_Q5_K;
        const uint8_t *qs = b + (five ? 48 : 16) + 32 * (c >> 1);
        const int sh = 4 * (c & 1);
        __m256i v0 = _mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs), sh), m4);
        __m256i v1 = _mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qs + 16), sh), m4);
        if (five) {
            v0 = _mm256_or_si256(v0, _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(b + 16), c), one), 4));
            v1 = _mm256_or_si256(v1, _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(b + 32), c), one), 4));
        }
        *w0 = v0;
        *w1 = v1;
        break;
    }
    case BLK_Q6_K: {
        const uint8_t *ql = b + 64 * (c >> 2) + 32 * (c & 1), *qh = b + 128 + 32 * (c >> 2);
        const int sl = 4 * ((c & 3) >> 1), sh = 2 * (c & 3);
        const __m256i off = _mm256_set1_epi16(32);
        const __m256i v0 = _mm256_or_si256(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(ql), sl), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qh), sh), m2), 4));
        const __m256i v1 = _mm256_or_si256(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(ql + 16), sl), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(ql_srl16_avx2(ql_u8x16_avx2(qh + 16), sh), m2), 4));
        *w0 = _mm256_mullo_epi16(_mm256_sub_epi16(v0, off), _mm256_set1_epi16(sc[2 * c]));
        *w1 = _mm256_mullo_epi16(_mm256_sub_epi16(v1, off), _mm256_set1_epi16(sc[2 * c + 1]));
        break;
    }
    }
}

/* madd(w0, a0) + madd(w1, a1) in int32 lanes: two madds and an add (AVX2), or a madd and one vpdpwssd
 * (AVX-VNNI's VEX form, or AVX-512 VNNI's EVEX form on ymm registers), the same exact sums. vpdpwssd is written
 * as inline assembly so that this AVX2-compiled template serves all three levels; cpu_isa.h's probe picks a
 * VNNI kernel only where the CPU has the instruction. */
QL_AVX2_INLINE __m256i ql_pair_dot(const int ISA, __m256i w0, __m256i a0, __m256i w1, __m256i a1)
{
    __m256i acc = _mm256_madd_epi16(w0, a0);
    if (ISA == FL_ISA_AVX_VNNI)
        __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w1), "x"(a1));
    else if (ISA == FL_ISA_AVX512_VNNI)
        __asm__("%{evex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w1), "x"(a1));
    else
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(w1, a1));
    return acc;
}

/* The 32-element formats, whose dl (and m) per block are its fp16 d (and m) as stored. */
#define QL_FP16_SCALES(qt) (BLK_ELEMS(qt) == 32)

/* The fp16 values at byte off of the 4 blocks p[0..3], as floats. Assembled in a general register and moved
 * once: four 16-bit stores read back as one vector would stall store-to-load forwarding (half the kernel's time). */
QL_AVX2_INLINE __m128 ql_fp16x4(const uint8_t *const *p, int off)
{
    const uint64_t v = (uint64_t)blk_u16(p[0] + off) | (uint64_t)blk_u16(p[1] + off) << 16
                       | (uint64_t)blk_u16(p[2] + off) << 32 | (uint64_t)blk_u16(p[3] + off) << 48;
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)v));
}

/* Q4_K / Q5_K: the 8 chunk scales dl and offsets m of the blocks of 4 rows, transposed so that chunk c's 4 rows
 * are dlT[c], mT[c]. The 12 bytes of 6-bit scales and mins are unpacked as words (blk_k4_scale / blk_k4_min's
 * bits, 4 at a time), widened and multiplied by d and -dmin in vectors: the same single roundings as the scalar
 * decoder, in a tenth of its instructions. */
#define QL_K4(qt) ((qt) == BLK_Q4_K || (qt) == BLK_Q5_K)

QL_AVX2_INLINE __m256 ql_u8x8_ps(uint64_t v)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
}

QL_AVX2_INLINE void ql_transpose4x8(const __m256 *r, float t[8][4])
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 c04 = _mm256_shuffle_ps(t0, t2, 0x44), c15 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 c26 = _mm256_shuffle_ps(t1, t3, 0x44), c37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm256_store_ps(t[0], _mm256_permute2f128_ps(c04, c15, 0x20));
    _mm256_store_ps(t[2], _mm256_permute2f128_ps(c26, c37, 0x20));
    _mm256_store_ps(t[4], _mm256_permute2f128_ps(c04, c15, 0x31));
    _mm256_store_ps(t[6], _mm256_permute2f128_ps(c26, c37, 0x31));
}

QL_AVX2_INLINE void ql_k4_scales_x4(const uint8_t *const *bp, float dlT[8][4], float mT[8][4])
{
    __m256 dl[4], m[4];
    for (int i = 0; i < 4; i++) {
        const uint8_t *q = bp[i] + 4;
        const uint32_t u0 = blk_u32(q), u1 = blk_u32(q + 4), u2 = blk_u32(q + 8);
        const uint64_t sc = (u0 & 0x3F3F3F3Fu) | (uint64_t)((u2 & 0x0F0F0F0Fu) | ((u0 >> 2) & 0x30303030u)) << 32;
        const uint64_t mn = (u1 & 0x3F3F3F3Fu) | (uint64_t)(((u2 >> 4) & 0x0F0F0F0Fu) | ((u1 >> 2) & 0x30303030u)) << 32;
        dl[i] = _mm256_mul_ps(_mm256_set1_ps(ql_fp16_avx2(bp[i])), ql_u8x8_ps(sc));
        m[i] = _mm256_mul_ps(_mm256_set1_ps(-ql_fp16_avx2(bp[i] + 2)), ql_u8x8_ps(mn));
    }
    ql_transpose4x8(dl, dlT);
    ql_transpose4x8(m, mT);
}

#ifndef QL_JMAX
#define QL_JMAX 4           /* activation rows per register block of the integer path */
#endif

/* out[:J, :R] = int dots of R <= 4 weight rows with J <= QL_JMAX activation rows (+ beta * out). QT and J are
 * constants (rows past R are computed on row 0's blocks, not stored: no branch per row in the loops). Per
 * weight block, each row's scales are decoded once (ql_scales_avx2) and its lines of the rows QL_PF_ROWS further
 * on prefetched; per chunk c of 32: each weight row's chunk is unpacked to 2 x 16 int16 once
 * and serves the J activation rows; each activation block is loaded once and serves the 4 weight rows. madd:
 * int16 pairs into int32 lanes (|w| <= 4096, |q_a| <= 32768: 16 products per lane after the folds stay within
 * int32). Two unpack + add levels (cheaper than hadd here) fold the 4 rows' 8-lane sums into one vector (lanes
 * r0 r1 r2 r3 | r0 r1 r2 r3), converted and fma'd with (dl of the 4 rows) * d_a into one float accumulator per
 * activation row; the offsets m add m * s_a, the 4 rows in one xmm fma. */
QL_AVX2_INLINE void ql_block_avx2(const int ISA, const int QT, const uint8_t *w, size_t row_bytes, int nc,
                                  const ql_act *a, int k, float *out, int ld_out, float beta, int R, const int J)
{
    const int CPB = BLK_ELEMS(QT) / 32, BS = BLK_BYTES(QT);
    __m256 acc[QL_JMAX];
    __m128 corr[QL_JMAX];
    const uint8_t *row[4];                      /* rows past R compute on row 0's blocks and are not stored */
    for (int i = 0; i < 4; i++) row[i] = w + (size_t)(i < R ? i : 0) * row_bytes;
    for (int j = 0; j < J; j++) { acc[j] = _mm256_setzero_ps(); corr[j] = _mm_setzero_ps(); }
    for (int blk = 0; blk < nc / CPB; blk++) {
        float dl[4][8], m0[4][8], m1[4][8];
        __attribute__((aligned(32))) float dlT[8][4], mT[8][4];
        int16_t sc[4][16];
        const uint8_t *bp[4];
        for (int i = 0; i < 4; i++) {
            bp[i] = row[i] + (size_t)blk * BS;
            for (int o = 0; o < BS; o += 64)
                _mm_prefetch((const char *)((uintptr_t)bp[i] + o + QL_PF_ROWS * row_bytes), _MM_HINT_T1);
            if (!QL_FP16_SCALES(QT) && !QL_K4(QT)) ql_scales_avx2(QT, bp[i], dl[i], m0[i], m1[i], sc[i]);
        }
        if (QL_K4(QT)) ql_k4_scales_x4(bp, dlT, mT);
        for (int cb = 0; cb < CPB; cb++) {
            const int c = blk * CPB + cb;
            __m256i w0[4], w1[4];
            for (int i = 0; i < 4; i++) ql_ints_avx2(QT, bp[i], cb, sc[i], &w0[i], &w1[i]);
            const __m128 dw4 = QL_FP16_SCALES(QT) ? ql_fp16x4(bp, 0) : QL_K4(QT) ? _mm_load_ps(dlT[cb])
                               : _mm_setr_ps(dl[0][cb], dl[1][cb], dl[2][cb], dl[3][cb]);
            const __m256 dw8 = _mm256_set_m128(dw4, dw4);
            const __m128 m04 = !BLK_HAS_MIN(QT) ? _mm_setzero_ps() : QL_FP16_SCALES(QT) ? ql_fp16x4(bp, 2)
                               : QL_K4(QT) ? _mm_load_ps(mT[cb]) : _mm_setr_ps(m0[0][cb], m0[1][cb], m0[2][cb], m0[3][cb]);
            const __m128 m14 = BLK_SPLIT(QT) && BLK_HAS_MIN(QT) ? _mm_setr_ps(m1[0][cb], m1[1][cb], m1[2][cb], m1[3][cb])
                                                               : _mm_setzero_ps();
            for (int j = 0; j < J; j++) {
                const int16_t *q = a->q + (size_t)j * k + (size_t)c * 32;
                const size_t ib = (size_t)j * nc + c;
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)q);
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(q + 16));
                __m256i p[4];
                for (int i = 0; i < 4; i++) p[i] = ql_pair_dot(ISA, w0[i], a0, w1[i], a1);
                const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
                const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
                const __m256i h = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
                acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw8, _mm256_broadcast_ss(a->d + ib)), _mm256_cvtepi32_ps(h),
                                         acc[j]);
                if (BLK_HAS_MIN(QT)) {
                    if (BLK_SPLIT(QT))
                        corr[j] = _mm_fmadd_ps(m14, _mm_broadcast_ss(a->sh + ib),
                                               _mm_fmadd_ps(m04, _mm_broadcast_ss(a->sl + ib), corr[j]));
                    else
                        corr[j] = _mm_fmadd_ps(m04, _mm_broadcast_ss(a->s + ib), corr[j]);
                }
            }
        }
    }
    for (int j = 0; j < J; j++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[j]), _mm256_extractf128_ps(acc[j], 1));
        if (BLK_HAS_MIN(QT)) s = _mm_add_ps(s, corr[j]);
        lin_store4_avx2(out + (size_t)j * ld_out, s, beta, R);
    }
}

/* Rows r of w in register blocks of 4 (the last one R < 4), the activation rows in blocks of QL_JMAX. */
QL_AVX2_INLINE void ql_dot_avx2_t(const int ISA, const int QT, const ql_act *a, int n, int k, const uint8_t *w,
                                  size_t row_bytes, int rows, float *out, int ld_out, float beta)
{
    const int nc = k / 32;
    for (int r = 0; r < rows; r += 4) {
        const int R = rows - r < 4 ? rows - r : 4;
        const uint8_t *wr = w + (size_t)r * row_bytes;
        for (int j = 0, J; j < n; j += J) {
            J = n - j < QL_JMAX ? n - j : QL_JMAX;
            const ql_act aj = {a->q + (size_t)j * k, a->d + (size_t)j * nc, a->s + (size_t)j * nc,
                               a->sl + (size_t)j * nc, a->sh + (size_t)j * nc};
            float *oj = out + (size_t)j * ld_out + r;
            if (QL_JMAX >= 4 && J == 4) ql_block_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, R, 4);
            else if (QL_JMAX >= 3 && J == 3) ql_block_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, R, 3);
            else if (J == 2) ql_block_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, R, 2);
            else ql_block_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, R, 1);
        }
    }
}

/* ql_dot_<T>_avx2, ql_dot_<T>_avx_vnni, ql_dot_<T>_avx512_vnni: the kernel of each level for every format. */
#define QL_DOT_ISA(T, SUFFIX, ISA)                                                                             \
QL_AVX2 static void ql_dot_##T##_##SUFFIX(const ql_act *a, int n, int k, const uint8_t *w, size_t row_bytes,       \
                                         int rows, float *out, int ld_out, float beta)                         \
{ ql_dot_avx2_t(ISA, BLK_##T, a, n, k, w, row_bytes, rows, out, ld_out, beta); }
#define X(T) QL_DOT_ISA(T, avx2, FL_ISA_AVX2) QL_DOT_ISA(T, avx_vnni, FL_ISA_AVX_VNNI)                          \
             QL_DOT_ISA(T, avx512_vnni, FL_ISA_AVX512_VNNI)
BLK_QUANT_TYPES(X)
#undef X
#undef QL_DOT_ISA
#define QL_AVX2_DOTS(T) ql_dot_##T##_avx2, ql_dot_##T##_avx_vnni, 0, ql_dot_##T##_avx512_vnni

/* ---- F16: float activations, 4 weight rows x 3 activation rows, weights converted by F16C */
QL_AVX2_INLINE void ql_small_f16_avx2_block(const float *x, const uint8_t *w, int k, float *out, int ld_out, float beta,
                                      const int R, const int J)
{
    const size_t rb = (size_t)k * 2;
    __m256 acc[4][3], wv[4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) acc[i][j] = _mm256_setzero_ps();
    const size_t k8 = (size_t)k & ~(size_t)7;
    for (size_t d = 0; d < k8; d += 8) {
        for (int i = 0; i < R; i++) wv[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i * rb + 2 * d)));
        if ((d & 31) == 0)                                /* one prefetch per 64-byte line */
            for (int i = 0; i < R; i++)
                _mm_prefetch((const char *)((uintptr_t)(w + i * rb + 2 * d) + QL_PF_ROWS * rb), _MM_HINT_T1);
        for (int j = 0; j < J; j++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)j * k + d);
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int j = 0; j < J; j++) {
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0][j], acc[1][j]), _mm256_hadd_ps(acc[2][j], acc[3][j]));
        float v[4];
        _mm_storeu_ps(v, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        float *o = out + (size_t)j * ld_out;
        for (int i = 0; i < R; i++) {
            for (size_t d = k8; d < (size_t)k; d++)
                v[i] += _cvtsh_ss(blk_u16(w + i * rb + 2 * d)) * x[(size_t)j * k + d];
            o[i] = beta != 0.0f ? v[i] + beta * o[i] : v[i];
        }
    }
}

LIN_AVX2_DRIVERS(ql_small_f16_avx2, uint8_t, 2 * k, "avx2,fma,f16c")

/* ---- row decoders for the prefill panels and decode-and-dot: hand-vectorized for F16 and the 32-element
 * formats of SmolLM2's files, vectorized by the compiler for the rest (the same values as ggml_blocks.h's) */
QL_AVX2 static void ql_decode_row_avx2(int qtype, const uint8_t *src, float *y, int k)
{
    if (qtype == BLK_F16) {
        int i = 0;
        for (; i + 8 <= k; i += 8)
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
        for (; i < k; i++) y[i] = _cvtsh_ss(blk_u16(src + 2 * i));
    } else if (qtype == BLK_Q8_0 || qtype == BLK_Q4_0 || qtype == BLK_Q4_1) {
        /* 32 integers per block, as two 16-byte halves (Q4: the low nibbles are elements 0-15, the high 16-31),
           then 8 at a time: y = d * (q - offset), or d * q + m for Q4_1. */
        const int q4 = qtype != BLK_Q8_0, with_min = qtype == BLK_Q4_1;
        const size_t block = qtype == BLK_Q8_0 ? 34 : qtype == BLK_Q4_0 ? 18 : 20;
        const __m256i offset = _mm256_set1_epi32(qtype == BLK_Q4_0 ? 8 : 0);
        const __m128i nibble = _mm_set1_epi8(0x0F);
        for (int b = 0; b < k / 32; b++, src += block, y += 32) {
            const __m256 d = _mm256_set1_ps(ql_fp16_avx2(src));
            const __m256 m = _mm256_set1_ps(with_min ? ql_fp16_avx2(src + 2) : 0.0f);
            const uint8_t *q = src + (with_min ? 4 : 2);
            __m128i lo = _mm_loadu_si128((const __m128i *)q), hi;
            if (q4) {
                hi = _mm_and_si128(_mm_srli_epi16(lo, 4), nibble);
                lo = _mm_and_si128(lo, nibble);
            } else {
                hi = _mm_loadu_si128((const __m128i *)(q + 16));
            }
            const __m128i parts[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
            for (int p = 0; p < 4; p++) {
                const __m256i v = q4 ? _mm256_cvtepu8_epi32(parts[p]) : _mm256_cvtepi8_epi32(parts[p]);
                const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(v, offset));
                _mm256_storeu_ps(y + 8 * p, with_min ? _mm256_fmadd_ps(d, f, m) : _mm256_mul_ps(d, f));
            }
        }
    }
}


#define QL_HAND_DECODER(T)                                                                                     \
QL_AVX2 static void ql_decode_avx2_##T(const uint8_t *src, float *y, size_t k) { ql_decode_row_avx2(BLK_##T, src, y, (int)k); }
QL_HAND_DECODER(F16)
QL_HAND_DECODER(Q8_0)
QL_HAND_DECODER(Q4_0)
QL_HAND_DECODER(Q4_1)
#undef QL_HAND_DECODER
QL_AVX2 static void ql_decode_avx2_F32(const uint8_t *src, float *y, size_t k) { blk_decode_f32_F32(src, y, k); }
QL_AVX2 static void ql_decode_avx2_BF16(const uint8_t *src, float *y, size_t k) { blk_decode_f32_BF16(src, y, k); }
#define X(QT) BLK_DECODER_Q(ql_decode_avx2_, float, QL_AVX2, QT)
X(Q5_0) X(Q5_1) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) X(IQ4_NL) X(IQ4_XS)
#undef X

#else  /* not x86: no AVX2 kernels (fl_cpu_isa() is FL_ISA_PORTABLE), the vectorized decoders are the portable */

#define QL_AVX2_DOTS(T) 0, 0, 0, 0
#define ql_decode_avx2_F32 blk_decode_f32_F32
#define ql_decode_avx2_F16 blk_decode_f32_F16
#define ql_decode_avx2_BF16 blk_decode_f32_BF16
#define X(T) static void ql_decode_avx2_##T(const uint8_t *src, float *y, size_t k) { blk_decode_f32_##T(src, y, k); }
BLK_QUANT_TYPES(X)
#undef X
static void ql_quant_row_avx2(const float *x, int k, int16_t *q, float *d, float *s, float *sl, float *sh) {}
static void ql_small_f16_avx2(const float *x, int n, int k, const uint8_t *w, int rows, float *out, int ld_out,
                              float beta) {}

#endif

/* --------------------------------------------------------------------------- the formats' table, filled */
#define BLK_KERNELS 1
#include "ggml_types.h"

/* ------------------------------------------------------------------------------------ shared entry points */

/* rows consecutive rows (stride row_bytes) into y (rows, k); simd: the vectorized decoders. */
static void ql_decode_rows(int qtype, const uint8_t *w, size_t row_bytes, int rows, int k, float *y, int simd)
{
    const blk_decode_f32_fn decode = simd ? BLK_TRAITS[qtype].decode_f32_vec : BLK_TRAITS[qtype].decode_f32;
    for (int r = 0; r < rows; r++) decode(w + (size_t)r * row_bytes, y + (size_t)r * k, (size_t)k);
}

/* Decode-and-dot: 4 rows at a time into buf (4 * k floats), then the float small-batch kernel. */
static void ql_small_dec(int qtype, const float *x, int n, int k, const uint8_t *w, size_t row_bytes, int rows,
                         float *out, int ld_out, float beta, float *buf, int simd)
{
    for (int r = 0; r < rows; r += 4) {
        const int R = rows - r < 4 ? rows - r : 4;
        ql_decode_rows(qtype, w + (size_t)r * row_bytes, row_bytes, R, k, buf, simd);
        if (simd) lin_small_f32_avx2(x, n, k, buf, R, out + r, ld_out, beta);
        else lin_small_f32(x, n, k, buf, R, out + r, ld_out, beta);
    }
}

/* x (n, k) rounded into the int16 activations at q, d, s, sl, sh (ql_act's layout). */
static void ql_quant_rows(const float *x, int n, int k, int16_t *q, float *d, float *s, float *sl, float *sh,
                          int simd)
{
    const int nb = k / 32;
    for (int j = 0; j < n; j++) {
        const size_t o = (size_t)j * nb;
        if (simd) ql_quant_row_avx2(x + (size_t)j * k, k, q + (size_t)j * k, d + o, s + o, sl + o, sh + o);
        else ql_quant_row(x + (size_t)j * k, k, q + (size_t)j * k, d + o, s + o, sl + o, sh + o);
    }
}

/* The integer dot of qtype at SIMD level isa (or the level it falls back to), on the activations at q ...;
 * NULL for a format without one. */
static void ql_int_dot(int qtype, int isa, const int16_t *q, const float *d, const float *s, const float *sl,
                       const float *sh, int n, int k, const uint8_t *w, size_t row_bytes, int rows, float *out,
                       int ld_out, float beta)
{
    const ql_act a = {q, d, s, sl, sh};
    ql_dot_for(qtype, isa)(&a, n, k, w, row_bytes, rows, out, ld_out, beta);
}

#endif
