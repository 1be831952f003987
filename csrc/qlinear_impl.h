/* Kernels of qlinear.pyx: out (n, rows) = x (n, k) @ dequant(w (rows, row_bytes)).T + beta * out on one thread,
 * with w in a GGUF block format (ggml_blocks.h). qlinear.pyx splits w's rows across the threads; the formats'
 * table (ggml_types.h, included at the end) points at the kernels here, one per format and SIMD level.
 *
 * Four paths:
 *   - integer (every quantized format, n up to the table's int_n_max): the activation rows are quantized once
 *     per call to int16 with a float scale d = max|x| / QL_QMAX per group of 32 elements (16 bits), or of 256
 *     for the 256-element formats (15 bits: the GEMM's int32 spans are twice as long), round to nearest (each
 *     element moves by at most d / 2), in the order the kernels read (QL_ORDER), with per block of 32
 *     s = d * sum(q) and the halves' sums sl, sh. Each chunk of 32 weights (blk_chunk's: x = dl * q + m, per
 *     half of 16) is unpacked to int16 and dotted with an activation block in integers (madd: int16 pairs into
 *     int32 lanes, exact), the constant offsets of some formats (QL_OFFSET) left out; the int32 sums are
 *     converted and fma'd with the scales into float lanes, and the offsets m enter as m * s (the 16-element
 *     sub-block formats: m_lo * sl + m_hi * sh). (int8 activations, ggml's Q8_0 / Q8_K, lose too much:
 *     SmolLM2-135M's teacher-forced top-1 against the float path falls from 99.9-100 % to 94.5-96.5 %.)
 *   - F16 (n below DEC_N_MIN): float activations, F16C conversion of the weights, FMA.
 *   - decode-and-dot (every format past int_n_max; F16 without AVX2): 4 rows at a time are dequantized into a
 *     per-thread float buffer (L1) and handed to linear_impl.h's small-batch float kernels.
 *   - integer GEMM (every quantized format, n from PANEL_N_MIN on, AVX2 and above): the same int16 activations
 *     packed once per call (ql_gemm_pack), panels of weight rows unpacked to int16 with the sub-scales
 *     multiplied in (ql_panel_ints_t), a 6 x 16 register block (ql_gemm_avx2_t).
 * The float panel path of large n (F16; every format without AVX2) lives in qlinear_core.pxi: ql_decode_rows()
 * below into a float panel, then linear_impl.h's GEMM (sgemm without AVX2).
 *
 * Register blocks (AVX2): integer path, 32-element formats 4 weight rows x up to QL_JMAX = 4 activation rows
 * (the 4 rows' chunk sums folded into one vector, one float accumulator per activation row), 256-element formats
 * 1 weight row x up to 4 activation rows (per chunk sums scaled by the chunk's dl, per block by d_a); F16 4 x 3.
 * Each weight chunk is loaded and unpacked once per register block, and the rows QL_PF_ROWS further on are
 * prefetched into L2 while a chunk computes (linear_impl.h's scheme).
 *
 * The activation quantization gives identical int16 values in the AVX2 and the portable code (the same float
 * operations: scale, clamp to [-QL_QMAX - 1, QL_QMAX] with NaN -> -QL_QMAX - 1, round half to even), and the
 * integer dots are exact, so the two paths differ only in the order of the float accumulation.
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

/* Where element j of a block of 32 goes in the activations (ql_act): group 32 (the 32-element formats) as is;
 * group 256 (the 256-element formats) the evens then the odds, so that a kernel unpacks the 16-bit lanes of its
 * weight bytes with shifts and masks alone (lane l of a 32-byte load: bytes 2 l and 2 l + 1) and one madd pair
 * sums the first half of the block in its low 128 bits, the second in its high ones. */
#define QL_ORDER(group, j) ((group) == 256 ? ((j) & 1) * 16 + ((j) >> 1) : (j))

/* The largest activation integer of a group: 16 bits for the 32-element formats; 15 bits for the 256-element
 * ones, whose integers with the sub-scales folded in reach 4096 (Q6_K, IQ4_XS): half the activations' range is
 * twice the GEMM's span between int32-to-float conversions (QL_GEMM_SPAN), 4-10 % of its time on Q5_K-Q6_K. */
#define QL_QMAX(group) ((group) == 256 ? 16383 : 32767)

/* x (k floats, k % group == 0, group 32 or 256) -> q (k int16, in QL_ORDER) with one scale per group,
 * d = max|x_group| / QL_QMAX, stored per block of 32; s = d * sum(q), sl, sh = d * the halves' sums, per block. */
static void ql_quant_row(const float *x, int k, int group, int16_t *q, float *d, float *s, float *sl, float *sh)
{
    for (int g = 0; g < k / group; g++) {
        float amax = 0.0f;
        for (int j = 0; j < group; j++) amax = fmaxf(amax, fabsf(x[g * group + j]));
        const float qmax = (float)QL_QMAX(group), qmin = -qmax - 1.0f;
        const float db = amax / qmax, id = db != 0.0f ? 1.0f / db : 0.0f;
        for (int b = g * group / 32; b < (g + 1) * group / 32; b++) {
            int sum[2] = {0, 0};
            for (int j = 32 * b; j < 32 * b + 32; j++) {
                float v = x[j] * id;                      /* clamp (NaN -> qmin), then round half to even: */
                v = v != v ? qmin : v < qmin ? qmin : v > qmax ? qmax : v;                         /* as AVX2 */
                const int16_t r = (int16_t)rintf(v);
                q[32 * b + QL_ORDER(group, j - 32 * b)] = r;
                sum[(j >> 4) & 1] += r;
            }
            d[b] = db;
            s[b] = db * (float)(sum[0] + sum[1]);
            sl[b] = db * (float)sum[0];
            sh[b] = db * (float)sum[1];
        }
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
                int32_t lo = 0, hi = 0;                   /* |q_w| <= 128, |q_a| <= 32768: |sum| < 2^27 */
                for (int l = 0; l < 16; l++) {
                    lo += q[l] * x[QL_ORDER(BLK_ELEMS(QT), l)];
                    hi += q[l + 16] * x[QL_ORDER(BLK_ELEMS(QT), l + 16)];
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

/* ---- the prefill path's integer GEMM (N >= PANEL_N_MIN): the int16 activations of the integer path, packed
 * once per call, times panels of weight rows unpacked to int16. The sub-scales of the 256-element formats and
 * the constant offsets (QL_OFFSET) are folded into the weights' integers (at most 4096 in magnitude: Q6_K's
 * -128 x -32), so the float scales left are one per block of the format, d (x the activations' d_a), and the
 * mins m per sub-block (x the activations' sums s_a):
 *   out[t, r] = sum over blocks b of d_a[t, b] d[r, b] I[t, r, b] + sum over sub-blocks u of m[r, u] s_a[t, u],
 * I the exact dot of the block, summed in int32 over spans of QL_GEMM_SPAN(qt) elements (the longest for which
 * QL_QMAX, the largest activation, times the largest integer times the span stays below 2^31; only a NaN's
 * -QL_QMAX - 1 could reach it, for Q6_K) and in float32 across spans.
 * madd sums int16 pairs, so the register block is 6 weight rows x 16 activation rows, a pair of k at a time:
 * two loads of packed x (16 rows' pairs as int32 words) and 6 broadcasts of the weight rows' pairs for 12 madds
 * and 12 adds (or 12 vpdpwssd), 192 multiply-adds where float32 FMAs do 96 in as many operations. */
#define QL_GEMM_MR LIN_GEMM_MR     /* 6: the float GEMM's, whose tile store it shares */
#define QL_GEMM_KC 512      /* k per block: 16 activation rows' pairs (16 KB) and 6 weight rows (6 KB) in L1 */
#define QL_GEMM_SPAN(qt) ((qt) == BLK_Q2_K || (qt) == BLK_Q3_K ? 256 : (qt) == BLK_Q4_K ? 128                     \
                          : (qt) == BLK_Q5_K ? 64 : 32)
#define QL_GEMM_MINS(qt) (!BLK_HAS_MIN(qt) ? 0 : BLK_SPLIT(qt) ? 16 : 32)   /* elements per min, 0: none */

/* Bytes of ql_gemm_pack's output for n activation rows of k. */
static inline size_t ql_gemm_packed_bytes(int n, int k)
{
    const size_t rows = (size_t)(n + 15) / 16 * 16;
    return rows * (size_t)k * 2 + 4 * rows * (size_t)(k / 32) * 4;
}

/* The activations a (ql_quant_rows' n rows of k) -> xp, per block of 16 rows (zeros past n): per pair p of k,
 * the 16 rows' pair p as int32 words. Then, per block of 16 rows, the rows' d_a per chunk; their s_a per chunk
 * (d_a * the chunk's sum, s); their s_a per half chunk (sl, sh). */
static void ql_gemm_pack(const ql_act *a, int n, int k, uint8_t *xp)
{
    const int nb = (n + 15) / 16, nc = k / 32;
    int32_t *pairs = (int32_t *)xp;
    float *dp = (float *)(xp + (size_t)nb * 16 * k * 2), *s32 = dp + (size_t)nb * 16 * nc,
          *s16 = s32 + (size_t)nb * 16 * nc;
    for (int jb = 0; jb < nb; jb++)
        for (int t = 0; t < 16; t++) {
            const int j = 16 * jb + t, in = j < n;
            for (int p = 0; p < k / 2; p++) {
                int32_t v = 0;
                if (in) memcpy(&v, a->q + (size_t)j * k + 2 * p, 4);
                pairs[((size_t)jb * (k / 2) + p) * 16 + t] = v;
            }
            for (int c = 0; c < nc; c++) {
                const size_t ib = (size_t)j * nc + c, o = ((size_t)jb * nc + c) * 16 + t;
                dp[o] = in ? a->d[ib] : 0.0f;
                s32[o] = in ? a->s[ib] : 0.0f;
                s16[o + 16 * ((size_t)jb * nc + c)] = in ? a->sl[ib] : 0.0f;
                s16[o + 16 * ((size_t)jb * nc + c) + 16] = in ? a->sh[ib] : 0.0f;
            }
        }
}

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

QL_AVX2_INLINE float ql_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

QL_AVX2_INLINE int ql_hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* The same int16 values and sums as ql_quant_row. */
QL_AVX2 static void ql_quant_row_avx2(const float *x, int k, int group, int16_t *q, float *d, float *s, float *sl,
                                      float *sh)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), hi = _mm256_set1_ps((float)QL_QMAX(group)),
                 lo = _mm256_set1_ps(-(float)QL_QMAX(group) - 1.0f);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int g = 0; g < k / group; g++) {
        __m256 m = _mm256_setzero_ps();
        for (int j = g * group; j < (g + 1) * group; j += 8)     /* max_ps(NaN, m) is m: NaNs skipped, as fmaxf */
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m);
        const float amax = ql_hmax(m);
        const float db = amax / (float)QL_QMAX(group), id = db != 0.0f ? 1.0f / db : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        for (int b = g * group / 32; b < (g + 1) * group / 32; b++) {
            const float *xb = x + 32 * b;
            /* max_ps(v, lo) returns lo for a NaN v; then cvtps rounds half to even, as the portable code */
#define QL_Q16(v) _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(v), vid), lo), hi))
            const __m256i i0 = QL_Q16(xb), i1 = QL_Q16(xb + 8), i2 = QL_Q16(xb + 16), i3 = QL_Q16(xb + 24);
#undef QL_Q16
            /* packs interleave the 128-bit lanes: (i0 lo, i1 lo, i0 hi, i1 hi); permute4x64 restores the order */
            const __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8),
                          p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
            const int s0 = ql_hsum_i32(_mm256_madd_epi16(p0, ones)), s1 = ql_hsum_i32(_mm256_madd_epi16(p1, ones));
            if (group == 256) {     /* QL_ORDER: per 128-bit lane its even words then its odd ones, then the lanes */
                const __m256i eo = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                    0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
                const __m256i e0 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(p0, eo), 0xD8),
                              e1 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(p1, eo), 0xD8);
                _mm256_storeu_si256((__m256i *)(q + 32 * b), _mm256_permute2x128_si256(e0, e1, 0x20));
                _mm256_storeu_si256((__m256i *)(q + 32 * b + 16), _mm256_permute2x128_si256(e0, e1, 0x31));
            } else {
                _mm256_storeu_si256((__m256i *)(q + 32 * b), p0);
                _mm256_storeu_si256((__m256i *)(q + 32 * b + 16), p1);
            }
            d[b] = db;
            s[b] = db * (float)(s0 + s1);
            sl[b] = db * (float)s0;
            sh[b] = db * (float)s1;
        }
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

/* IQ4's levels of the 16 nibbles lo (bytes 0-15), as int16. */
QL_AVX2_INLINE __m256i ql_iq4_avx2(__m128i nibbles)
{
    const __m128i levels = _mm_loadu_si128((const __m128i *)BLK_IQ4_LEVELS);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(levels, nibbles));
}

/* The constant offsets of the formats' integers (blk_chunk's q = stored - offset): left out of the integer dots
 * and added as offset * dl * the activations' sums, which saves a subtraction per 16 weights. */
#define QL_OFFSET(qt) ((qt) == BLK_Q4_0 ? -8 : (qt) == BLK_Q5_0 ? -16 : (qt) == BLK_Q3_K ? -4                        \
                       : (qt) == BLK_Q6_K ? -32 : 0)

/* The scales of the block at b of 256-element type QT, once per block and weight row: dl = d * the sub-scale,
 * per chunk (Q4_K, Q5_K, IQ4_XS: dl[c]) or per half chunk (the 16-element sub-block formats Q2_K, Q3_K, Q6_K:
 * half h of chunk c at dl[8 h + c]); the offsets m of each sub-block (x = dl * w + m for the integers w of
 * ql_ints_avx2), to be multiplied by the activations' sums: Q4_K's and Q5_K's one per chunk in mlo (times s),
 * the 16-element sub-block formats' one per half chunk, mlo for the first halves (times sl) and mhi for the
 * second (times sh): Q2_K's mins, Q3_K's and Q6_K's QL_OFFSET * dl. The same single roundings as the scalar
 * decoder: d * scale, -(dmin * min). */
QL_AVX2_INLINE __m256 ql_u8x8_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
QL_AVX2_INLINE __m256 ql_i8x8_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

/* Bytes 0, 2, ..., 14 then 1, 3, ..., 15 of v: the first halves' sub-block values, then the second halves'. */
QL_AVX2_INLINE __m128i ql_evens_odds(__m128i v)
{
    return _mm_shuffle_epi8(v, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
}

/* The sub-scales of the block at b of 256-element type QT as bytes, and its d: the 16-element sub-block formats'
 * 16 signed ones (the first halves' of chunks 0-7, then the second halves'), Q4_K's and Q5_K's 8 (6-bit),
 * IQ4_XS's 8 signed ones. */
QL_AVX2_INLINE __m128i ql_ksub_avx2(const int QT, const uint8_t *b, float *d)
{
    const __m128i n4 = _mm_set1_epi8(15);
    switch (QT) {
    case BLK_Q2_K:              /* 16 bytes: low nibble the scale, high nibble the min, of half chunk i */
        *d = ql_fp16_avx2(b + 80);
        return ql_evens_odds(_mm_and_si128(_mm_loadu_si128((const __m128i *)b), n4));
    case BLK_Q3_K: {            /* blk_k3_scale's bits, 16 at a time: low nibbles from bytes 0-7, the top 2 bits of
                                   scale i at bit 2 (i / 4) of byte 8 + i % 4 */
        const __m128i s = _mm_loadl_epi64((const __m128i *)(b + 96));
        const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(s, n4), _mm_and_si128(_mm_srli_epi16(s, 4), n4));
        const __m128i top = _mm_set1_epi32((int)blk_u32(b + 104));
        const __m128i hi = _mm_and_si128(_mm_srlv_epi32(top, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
        *d = ql_fp16_avx2(b + 108);
        return ql_evens_odds(_mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32)));
    }
    case BLK_Q6_K:
        *d = ql_fp16_avx2(b + 208);
        return ql_evens_odds(_mm_loadu_si128((const __m128i *)(b + 192)));
    case BLK_Q4_K: case BLK_Q5_K: {     /* blk_k4_scale's bits, 4 at a time, from the 12 bytes at 4 */
        const uint32_t u0 = blk_u32(b + 4), u2 = blk_u32(b + 12);
        *d = ql_fp16_avx2(b);
        return _mm_cvtsi64_si128((long long)((u0 & 0x3F3F3F3Fu)
                                             | (uint64_t)((u2 & 0x0F0F0F0Fu) | ((u0 >> 2) & 0x30303030u)) << 32));
    }
    default: {                  /* IQ4_XS: blk_iq4xs_scale's bits, 8 at a time: nibble c % 2 of byte 4 + c / 2,
                                   2 bits 2 c of the u16 at byte 2 */
        const __m128i s = _mm_cvtsi32_si128((int)blk_u32(b + 4));
        const __m256i lo = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_and_si128(s, n4),
                                                                  _mm_and_si128(_mm_srli_epi16(s, 4), n4)));
        const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(blk_u16(b + 2)),
                                                              _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                            _mm256_set1_epi32(3));
        const __m256i s32 = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
        const __m128i s16 = _mm_packs_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        *d = ql_fp16_avx2(b);
        return _mm_packs_epi16(s16, s16);
    }
    }
}

/* The mins -(dmin * min) of the block at b of a 256-element type with mins: Q4_K's and Q5_K's one per chunk in
 * mlo; Q2_K's one per half chunk, the first halves' in mlo, the second halves' in mhi. */
QL_AVX2_INLINE void ql_kmins_avx2(const int QT, const uint8_t *b, __m256 *mlo, __m256 *mhi)
{
    if (QT == BLK_Q2_K) {           /* the high nibbles of the 16 scale bytes */
        const __m128i mins = ql_evens_odds(_mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)b), 4),
                                                         _mm_set1_epi8(15)));
        const __m256 ndmin = _mm256_set1_ps(-ql_fp16_avx2(b + 82));
        *mlo = _mm256_mul_ps(ndmin, ql_u8x8_ps(mins));
        *mhi = _mm256_mul_ps(ndmin, ql_u8x8_ps(_mm_srli_si128(mins, 8)));
    } else {                        /* Q4_K, Q5_K: blk_k4_min's bits, as the scales' from bytes 8, 12 */
        const uint32_t u1 = blk_u32(b + 8), u2 = blk_u32(b + 12);
        const uint64_t mns = (u1 & 0x3F3F3F3Fu)
                             | (uint64_t)(((u2 >> 4) & 0x0F0F0F0Fu) | ((u1 >> 2) & 0x30303030u)) << 32;
        *mlo = _mm256_mul_ps(_mm256_set1_ps(-ql_fp16_avx2(b + 2)), ql_u8x8_ps(_mm_cvtsi64_si128((long long)mns)));
    }
}

QL_AVX2_INLINE void ql_kscales_avx2(const int QT, const uint8_t *b, float *dl, __m256 *mlo, __m256 *mhi)
{
    float d;
    const __m128i sc = ql_ksub_avx2(QT, b, &d);
    const __m256 dv = _mm256_set1_ps(d);
    if (BLK_HAS_MIN(QT)) ql_kmins_avx2(QT, b, mlo, mhi);
    if (QT == BLK_Q4_K || QT == BLK_Q5_K || QT == BLK_IQ4_XS) {
        _mm256_store_ps(dl, _mm256_mul_ps(dv, ql_i8x8_ps(sc)));
        return;
    }
    const __m256 lo = _mm256_mul_ps(dv, ql_i8x8_ps(sc)), hi = _mm256_mul_ps(dv, ql_i8x8_ps(_mm_srli_si128(sc, 8)));
    _mm256_store_ps(dl, lo);
    _mm256_store_ps(dl + 8, hi);
    if (!BLK_HAS_MIN(QT)) {         /* Q3_K's and Q6_K's offsets */
        *mlo = _mm256_mul_ps(_mm256_set1_ps((float)QL_OFFSET(QT)), lo);
        *mhi = _mm256_mul_ps(_mm256_set1_ps((float)QL_OFFSET(QT)), hi);
    }
}

/* Chunks that share their bytes, unpacked together: Q4_K's and Q5_K's pairs (the low and high nibbles of 32
 * bytes), Q2_K's, Q3_K's and Q6_K's fours (2-bit fields of the same bytes), one chunk of the others. */
#define QL_GROUP(qt) ((qt) == BLK_Q4_K || (qt) == BLK_Q5_K ? 2 : (qt) == BLK_Q2_K || (qt) == BLK_Q3_K                \
                      || (qt) == BLK_Q6_K ? 4 : 1)

/* Bits [lo, lo + width) of each byte of v moved to bit `at`, (v >> lo & mask) << at per byte: 16-bit shifts
 * (constants once the callers' loops unroll), the mask dropping what crossed from the neighbouring byte. */
QL_AVX2_INLINE __m256i ql_field(__m256i v, int lo, int width, int at)
{
    const __m256i mask = _mm256_set1_epi8((char)(((1 << width) - 1) << at));
    return _mm256_and_si256(lo > at ? _mm256_srli_epi16(v, lo - at) : lo < at ? _mm256_slli_epi16(v, at - lo) : v,
                            mask);
}

/* 32 bytes of unsigned (u8) or signed (i8) values in byte order -> the 16 even ones in w[0], the odd in w[1]. */
QL_AVX2_INLINE void ql_split_u8(__m256i v, __m256i *w)
{
    w[0] = _mm256_and_si256(v, _mm256_set1_epi16(0xFF));
    w[1] = _mm256_srli_epi16(v, 8);
}

QL_AVX2_INLINE void ql_split_i8(__m256i v, __m256i *w)
{
    w[0] = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
    w[1] = _mm256_srai_epi16(v, 8);
}

/* Group g of QL_GROUP(QT) chunks of the block at b of constant type QT as blk_chunk gives them but for the
 * constant offsets QL_OFFSET, which the kernels add as offset * dl * the activations' sums: chunk g * QL_GROUP + i in
 * w[2 i] and w[2 i + 1], 16 int16 each, in QL_ORDER (the 32-element formats elements 0-15 and 16-31, the
 * 256-element formats the evens and the odds). */
QL_AVX2_INLINE void ql_ints_avx2(const int QT, const uint8_t *b, const int g, __m256i *w)
{
    switch (QT) {
    case BLK_Q8_0:
        w[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
        w[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
        break;
    case BLK_Q4_0: case BLK_Q4_1: {
        const __m256i t = ql_u8x16_avx2(b + (QT == BLK_Q4_1 ? 4 : 2));
        w[0] = _mm256_and_si256(t, _mm256_set1_epi16(15));
        w[1] = _mm256_srli_epi16(t, 4);
        break;
    }
    case BLK_Q5_0: case BLK_Q5_1: {
        const int o = QT == BLK_Q5_1 ? 2 : 0;
        const uint32_t qh = blk_u32(b + 2 + o);
        const __m256i t = ql_u8x16_avx2(b + 6 + o);
        w[0] = _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi16(15)), ql_bits16_avx2(qh & 0xFFFF));
        w[1] = _mm256_or_si256(_mm256_srli_epi16(t, 4), ql_bits16_avx2(qh >> 16));
        break;
    }
    case BLK_IQ4_NL: {
        const __m128i t = _mm_loadu_si128((const __m128i *)(b + 2));
        const __m128i n4 = _mm_set1_epi8(15);
        w[0] = ql_iq4_avx2(_mm_and_si128(t, n4));
        w[1] = ql_iq4_avx2(_mm_and_si128(_mm_srli_epi16(t, 4), n4));
        break;
    }
    /* The 256-element formats, in QL_ORDER: each 32-byte load holds a chunk's weights (or bit fields of them)
     * in byte order, so the 16-bit lanes' low bytes are its even elements and the high bytes its odd ones. The
     * fields of several chunks in the same bytes are assembled per byte (bits [lo, lo + width) of each byte to
     * bit `at`: ql_field), then split into the lanes' two bytes. */
    case BLK_IQ4_XS: {  /* chunk g: the 16 bytes at 8 + 16 g, low nibbles elements 0-15, high ones 16-31 */
        const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(b + 8 + 16 * g)));
        const __m256i n = _mm256_and_si256(_mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                                           _mm256_set1_epi8(15));
        const __m256i v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(
                                                  _mm_loadu_si128((const __m128i *)BLK_IQ4_LEVELS)), n);
        ql_split_i8(v, w);
        break;
    }
    case BLK_Q2_K: case BLK_Q3_K: {     /* chunk 4 g + i: bits 2 i of qs[32 g + l] (Q3_K: | 4 * hmask bit) */
        const __m256i t = _mm256_loadu_si256((const __m256i *)(b + (QT == BLK_Q2_K ? 16 : 32) + 32 * g));
        const __m256i h = QT == BLK_Q3_K ? _mm256_loadu_si256((const __m256i *)b) : t;
        for (int i = 0; i < 4; i++) {
            __m256i v = ql_field(t, 2 * i, 2, 0);
            if (QT == BLK_Q3_K) v = _mm256_or_si256(v, ql_field(h, 4 * g + i, 1, 2));
            ql_split_u8(v, w + 2 * i);
        }
        break;
    }
    case BLK_Q4_K: case BLK_Q5_K: {     /* chunk 2 g + i: nibble i of qs[32 g + l] (Q5_K: + 16 * qh bit) */
        const __m256i t = _mm256_loadu_si256((const __m256i *)(b + (QT == BLK_Q5_K ? 48 : 16) + 32 * g));
        if (QT == BLK_Q4_K) {           /* the nibbles of the lanes straight away */
            const __m256i n4 = _mm256_set1_epi16(15);
            w[0] = _mm256_and_si256(t, n4);
            w[1] = _mm256_and_si256(_mm256_srli_epi16(t, 8), n4);
            w[2] = _mm256_and_si256(_mm256_srli_epi16(t, 4), n4);
            w[3] = _mm256_srli_epi16(t, 12);
        } else {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
            for (int i = 0; i < 2; i++)
                ql_split_u8(_mm256_or_si256(ql_field(t, 4 * i, 4, 0), ql_field(h, 2 * g + i, 1, 4)), w + 2 * i);
        }
        break;
    }
    case BLK_Q6_K: {    /* chunk 4 g + i: nibble i / 2 of ql[64 g + 32 (i % 2) + l] | 2 bits 2 i of qh[32 g + l] */
        const __m256i l[2] = {_mm256_loadu_si256((const __m256i *)(b + 64 * g)),
                              _mm256_loadu_si256((const __m256i *)(b + 64 * g + 32))};
        const __m256i h = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * g));
        for (int i = 0; i < 4; i++)
            ql_split_u8(_mm256_or_si256(ql_field(l[i & 1], 4 * (i >> 1), 4, 0), ql_field(h, 2 * i, 2, 4)), w + 2 * i);
        break;
    }
    }
}

/* acc + madd(w, a) in int32 lanes: madd and add (AVX2), or one vpdpwssd (AVX-VNNI's VEX form, or AVX-512
 * VNNI's EVEX form on ymm registers), the same exact sums. vpdpwssd is written as inline assembly so that this
 * AVX2-compiled template serves all three levels; cpu_isa.h's probe picks a VNNI kernel only where the CPU has
 * the instruction. */
QL_AVX2_INLINE __m256i ql_dot_acc(const int ISA, __m256i acc, __m256i w, __m256i a)
{
    if (ISA == FL_ISA_AVX_VNNI)
        __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w), "x"(a));
    else if (ISA == FL_ISA_AVX512_VNNI)
        __asm__("%{evex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w), "x"(a));
    else
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
    return acc;
}

/* The fp16 values at byte off of the 4 blocks p[0..3], as floats. Assembled in a general register and moved
 * once: four 16-bit stores read back as one vector would stall store-to-load forwarding (half the kernel's time). */
QL_AVX2_INLINE __m128 ql_fp16x4(const uint8_t *const *p, int off)
{
    const uint64_t v = (uint64_t)blk_u16(p[0] + off) | (uint64_t)blk_u16(p[1] + off) << 16
                       | (uint64_t)blk_u16(p[2] + off) << 32 | (uint64_t)blk_u16(p[3] + off) << 48;
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)v));
}

/* Four 8-lane int32 vectors t[0..3] folded into one by two unpack + add levels: lane i (i < 4) the sum of t[i]'s
 * lanes 0-3, lane 4 + i that of its lanes 4-7 (one 128-bit half each). */
QL_AVX2_INLINE __m256i ql_fold4(const __m256i *t)
{
    const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(t[0], t[1]), _mm256_unpackhi_epi32(t[0], t[1]));
    const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(t[2], t[3]), _mm256_unpackhi_epi32(t[2], t[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
}

#ifndef QL_JMAX
#define QL_JMAX 4           /* activation rows per register block of the integer path */
#endif

/* The 32-element formats: out[:J, :R] = int dots of R <= 4 weight rows with J <= QL_JMAX activation rows
 * (+ beta * out). QT and J are constants (rows past R are computed on row 0's blocks, not stored: no branch per
 * row in the loops). Per block: the lines of the rows QL_PF_ROWS further on are prefetched; each weight row's
 * chunk is unpacked to 2 x 16 int16 once and serves the J activation rows; each activation block is loaded once
 * and serves the 4 weight rows. madd: int16 pairs into int32 lanes (|w| <= 128, |q_a| <= 32768). ql_fold4
 * (cheaper than hadd here) folds the 4 rows' 8-lane sums into one vector (lanes r0 r1 r2 r3 | r0 r1
 * r2 r3), converted and fma'd with (the 4 rows' fp16 d) * d_a into one float accumulator per activation row;
 * the offsets m (Q4_1's and Q5_1's m, Q4_0's and Q5_0's QL_OFFSET * d) add m * s_a, the 4 rows in one xmm fma. */
QL_AVX2_INLINE void ql_block_avx2(const int ISA, const int QT, const uint8_t *w, size_t row_bytes, int nc,
                                  const ql_act *a, int k, float *out, int ld_out, float beta, int R, const int J)
{
    __m256 acc[QL_JMAX];
    __m128 corr[QL_JMAX];
    const uint8_t *row[4];                      /* rows past R compute on row 0's blocks and are not stored */
    for (int i = 0; i < 4; i++) row[i] = w + (size_t)(i < R ? i : 0) * row_bytes;
    for (int j = 0; j < J; j++) { acc[j] = _mm256_setzero_ps(); corr[j] = _mm_setzero_ps(); }
    for (int c = 0; c < nc; c++) {
        const uint8_t *bp[4];
        __m256i wi[4][2];
        for (int i = 0; i < 4; i++) {
            bp[i] = row[i] + (size_t)c * BLK_BYTES(QT);
            _mm_prefetch((const char *)((uintptr_t)bp[i] + QL_PF_ROWS * row_bytes), _MM_HINT_T1);
            ql_ints_avx2(QT, bp[i], 0, wi[i]);
        }
        const __m128 dw4 = ql_fp16x4(bp, 0);
        const __m256 dw8 = _mm256_set_m128(dw4, dw4);
        const __m128 m4 = BLK_HAS_MIN(QT) ? ql_fp16x4(bp, 2) : _mm_mul_ps(_mm_set1_ps((float)QL_OFFSET(QT)), dw4);
        for (int j = 0; j < J; j++) {
            const int16_t *q = a->q + (size_t)j * k + (size_t)c * 32;
            const size_t ib = (size_t)j * nc + c;
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)q);
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(q + 16));
            __m256i p[4];
            for (int i = 0; i < 4; i++) p[i] = ql_dot_acc(ISA, _mm256_madd_epi16(wi[i][0], a0), wi[i][1], a1);
            const __m256i h = ql_fold4(p);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw8, _mm256_broadcast_ss(a->d + ib)), _mm256_cvtepi32_ps(h),
                                     acc[j]);
            if (BLK_HAS_MIN(QT) || QL_OFFSET(QT)) corr[j] = _mm_fmadd_ps(m4, _mm_broadcast_ss(a->s + ib), corr[j]);
        }
    }
    for (int j = 0; j < J; j++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[j]), _mm256_extractf128_ps(acc[j], 1));
        if (BLK_HAS_MIN(QT) || QL_OFFSET(QT)) s = _mm_add_ps(s, corr[j]);
        lin_store4_avx2(out + (size_t)j * ld_out, s, beta, R);
    }
}

/* The 256-element formats: out[j * ld_out] for one weight row and J <= QL_JMAX activation rows (+ beta * out).
 * Their activations share one scale d_a per 256 (ql_quant_rows' group), which therefore multiplies a block's
 * sum once. In QL_ORDER a chunk's madd pair sums its first half in the low 128 bits and its second in the high
 * ones, so the 16-element sub-blocks' two dl go in one vector. The chunks' exact integer dots are scaled by
 * their dl in one of two ways:
 *   - J = 1 (one sequence's decode): per 4 chunks the dots are folded into one vector (ql_fold4: lanes 0-3 the
 *     chunks' first halves, 4-7 their second halves), so a block takes two conversions and two multiplies by
 *     its dl (lanes as the folds': for Q4_K, Q5_K, IQ4_XS the halves are added first, then one of each) where
 *     one per chunk took 15 % (Q5_K: 2 %) of Q2_K-Q6_K's time more on Zen 3, whose two multiply pipes the
 *     fmas shared with the madds. Its 14 shuffles and 7 adds go to the other pipes.
 *   - J > 1: the folds' live vectors would spill (30 % slower); per chunk the dot is converted and fma'd with
 *     its dl into the block's sums, 4 / J independent chains per activation row (an fma's latency).
 * Per block the sums are fma'd with d_a, and the offsets enter as their vector times the activations' sums.
 * The sub-scales stay out of the integer products: on Zen 3 a vector integer multiply takes the port the madds
 * need, and scaling the integers (mullo, int32 sums per block) measured 20 % (Q4_K) to 50 % (Q6_K) slower.
 * Each weight group is unpacked once (by shifts and masks, no byte-to-word conversions) and serves the J
 * activation rows (read from L1); the matrix streams in row order, the lines QL_PF_ROWS rows further on
 * prefetched. */
QL_AVX2_INLINE void ql_row_k_avx2(const int ISA, const int QT, const uint8_t *w, size_t row_bytes, int nc,
                                  const ql_act *a, int k, float *out, int ld_out, float beta, const int J)
{
    const int G = QL_GROUP(QT), NA = 4 / J, FOLD = J == 1;
    const size_t nb = (size_t)nc;
    __m256 acc[QL_JMAX];
    const int16_t *q = a->q;                    /* the block's activations: row j at q + j * k */
    const float *d = a->d, *s = BLK_SPLIT(QT) ? a->sl : a->s, *sh = a->sh;     /* per block: row j at + j * nb */
    for (int j = 0; j < J; j++) acc[j] = _mm256_setzero_ps();
    for (const uint8_t *b = w, *end = w + (nb / 8) * BLK_BYTES(QT); b < end; b += BLK_BYTES(QT), q += 256) {
        for (int o = 0; o < BLK_BYTES(QT); o += 64)
            _mm_prefetch((const char *)((uintptr_t)b + o + QL_PF_ROWS * row_bytes), _MM_HINT_T1);
        __attribute__((aligned(32))) float dl[16];
        __m256 mlo = _mm256_setzero_ps(), mhi = mlo, part[QL_JMAX][4];
        __m256i dt[4], fold[2];                 /* J = 1: the last 4 chunks' dots; the folds of chunks 0-3, 4-7 */
        ql_kscales_avx2(QT, b, dl, &mlo, &mhi);
        /* the 16-element sub-blocks' dl as lanes (dl[c] | dl[8 + c]) for c < 4 and for c >= 4 (unused otherwise) */
        const __m256 dlo = _mm256_load_ps(dl), dhi = BLK_SPLIT(QT) ? _mm256_load_ps(dl + 8) : dlo;
        const __m256 dl03 = _mm256_permute2f128_ps(dlo, dhi, 0x20), dl47 = _mm256_permute2f128_ps(dlo, dhi, 0x31);
        for (int j = 0; j < J; j++)
            for (int i = 0; i < NA; i++) part[j][i] = _mm256_setzero_ps();
        for (int g = 0; g < 8 / G; g++) {
            __m256i wi[8];
            ql_ints_avx2(QT, b, g, wi);
            for (int i = 0; i < G; i++) {
                const int c = G * g + i;
                /* J > 1: the chunk's dl in every lane; the 16-element sub-blocks': the first half's in the low
                   128 bits, where QL_ORDER puts its sums, the second's high */
                const __m256 dlv = FOLD ? dlo : BLK_SPLIT(QT) ? _mm256_permute_ps(c < 4 ? dl03 : dl47, (c & 3) * 0x55)
                                                              : _mm256_broadcast_ss(dl + c);
                for (int j = 0; j < J; j++) {
                    const int16_t *qc = q + (size_t)j * k + 32 * c;
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)qc);
                    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(qc + 16));
                    const __m256i t = ql_dot_acc(ISA, _mm256_madd_epi16(wi[2 * i], a0), wi[2 * i + 1], a1);
                    if (FOLD) {
                        dt[c & 3] = t;
                        if ((c & 3) == 3) fold[c >> 2] = ql_fold4(dt);
                    } else {
                        part[j][c % NA] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), dlv, part[j][c % NA]);
                    }
                }
            }
        }
        for (int j = 0; j < J; j++) {
            const size_t ib = (size_t)j * nb;
            __m256 sum = part[j][0];
            if (FOLD && BLK_SPLIT(QT))
                sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold[1]), dl47,
                                      _mm256_mul_ps(_mm256_cvtepi32_ps(fold[0]), dl03));
            else if (FOLD) {        /* the halves added: lane c the dot of chunk c */
                const __m256i t = _mm256_add_epi32(_mm256_permute2x128_si256(fold[0], fold[1], 0x20),
                                                   _mm256_permute2x128_si256(fold[0], fold[1], 0x31));
                sum = _mm256_mul_ps(_mm256_cvtepi32_ps(t), dlo);
            }
            else
                for (int i = 1; i < NA; i++) sum = _mm256_add_ps(sum, part[j][i]);
            acc[j] = _mm256_fmadd_ps(sum, _mm256_broadcast_ss(d + ib), acc[j]);
            if (BLK_SPLIT(QT))          /* Q2_K's mins, Q3_K's and Q6_K's offsets */
                acc[j] = _mm256_fmadd_ps(mhi, _mm256_loadu_ps(sh + ib), _mm256_fmadd_ps(mlo, _mm256_loadu_ps(s + ib),
                                                                                        acc[j]));
            else if (BLK_HAS_MIN(QT))   /* Q4_K's and Q5_K's mins */
                acc[j] = _mm256_fmadd_ps(mlo, _mm256_loadu_ps(s + ib), acc[j]);
        }
        d += 8; s += 8; sh += 8;
    }
    for (int j = 0; j < J; j++) {
        const float v = ql_hsum(acc[j]);
        float *o = out + (size_t)j * ld_out;
        *o = beta != 0.0f ? v + beta * *o : v;
    }
}

/* Rows r of w in register blocks of 4 (the last one R < 4; the 256-element formats row by row), the activation
 * rows in blocks of QL_JMAX. */
QL_AVX2_INLINE void ql_dot_avx2_t(const int ISA, const int QT, const ql_act *a, int n, int k, const uint8_t *w,
                                  size_t row_bytes, int rows, float *out, int ld_out, float beta)
{
    const int nc = k / 32, RB = BLK_ELEMS(QT) == 256 ? 1 : 4;
    for (int r = 0; r < rows; r += RB) {
        const int R = rows - r < RB ? rows - r : RB;
        const uint8_t *wr = w + (size_t)r * row_bytes;
        for (int j = 0, J; j < n; j += J) {
            J = n - j < QL_JMAX ? n - j : QL_JMAX;
            const ql_act aj = {a->q + (size_t)j * k, a->d + (size_t)j * nc, a->s + (size_t)j * nc,
                               a->sl + (size_t)j * nc, a->sh + (size_t)j * nc};
            float *oj = out + (size_t)j * ld_out + r;
#define QL_BLOCK(JC) (RB == 1 ? ql_row_k_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, JC)          \
                              : ql_block_avx2(ISA, QT, wr, row_bytes, nc, &aj, k, oj, ld_out, beta, R, JC))
            if (QL_JMAX >= 4 && J == 4) QL_BLOCK(4);
            else if (QL_JMAX >= 3 && J == 3) QL_BLOCK(3);
            else if (J == 2) QL_BLOCK(2);
            else QL_BLOCK(1);
#undef QL_BLOCK
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


/* The 256-element formats: each group of chunks unpacked as the integer kernels do (ql_ints_avx2, QL_ORDER), the
 * even and odd words interleaved back into element order, the constant offsets QL_OFFSET added back, and
 * y = dl * q (+ the min) per half chunk with ql_kscales_avx2's dl and mins: ggml's roundings, bit for bit. */
QL_AVX2_INLINE void ql_decode_k_avx2(const int QT, const uint8_t *src, float *y, size_t k)
{
    const int G = QL_GROUP(QT);
    for (size_t blk = 0; blk < k / 256; blk++, src += BLK_BYTES(QT)) {
        __attribute__((aligned(32))) float dl[16], m[16];
        __m256 mlo = _mm256_setzero_ps(), mhi = mlo;
        ql_kscales_avx2(QT, src, dl, &mlo, &mhi);
        _mm256_store_ps(m, mlo);
        _mm256_store_ps(m + 8, mhi);
        for (int g = 0; g < 8 / G; g++) {
            __m256i w[8];
            ql_ints_avx2(QT, src, g, w);
            for (int i = 0; i < G; i++, y += 32) {
                const int c = G * g + i, h = BLK_SPLIT(QT) ? 8 : 0;     /* the second half's dl and m */
                const __m256i lo = _mm256_unpacklo_epi16(w[2 * i], w[2 * i + 1]),  /* elements 0-7 | 16-23 */
                              hi = _mm256_unpackhi_epi16(w[2 * i], w[2 * i + 1]);  /* 8-15 | 24-31 */
                const __m128i part[4] = {_mm256_castsi256_si128(lo), _mm256_castsi256_si128(hi),
                                         _mm256_extracti128_si256(lo, 1), _mm256_extracti128_si256(hi, 1)};
                for (int p = 0; p < 4; p++) {
                    const __m256i qi = _mm256_cvtepi16_epi32(part[p]);
                    const __m256 q = _mm256_cvtepi32_ps(QL_OFFSET(QT) ? _mm256_add_epi32(qi, _mm256_set1_epi32(
                                                                            QL_OFFSET(QT))) : qi);
                    const int sub = c + (p >> 1) * h;
                    const __m256 y8 = _mm256_mul_ps(_mm256_set1_ps(dl[sub]), q);
                    _mm256_storeu_ps(y + 8 * p, BLK_HAS_MIN(QT) ? _mm256_add_ps(y8, _mm256_set1_ps(m[sub])) : y8);
                }
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
#define X(QT) QL_AVX2 static void ql_decode_avx2_##QT(const uint8_t *src, float *y, size_t k)                \
{ ql_decode_k_avx2(BLK_##QT, src, y, k); }
X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) X(IQ4_XS)
#undef X
#define X(QT) BLK_DECODER_Q(ql_decode_avx2_, float, QL_AVX2, QT)
X(Q5_0) X(Q5_1) X(IQ4_NL)
#undef X

/* acc[0] += madd(w pair, x0), acc[1] += madd(w pair, x1), the pair broadcast from memory: one statement, so
 * that the 12 accumulators, x0, x1, the pair and one product are all the registers a tile needs (as separate
 * intrinsics GCC issued the 12 madds first and spilled the accumulators). */
QL_AVX2_INLINE void ql_gemm_step(const int ISA, __m256i *acc, const int32_t *wp, __m256i x0, __m256i x1)
{
    __m256i b, t;
    if (ISA == FL_ISA_AVX2)
        __asm__("vpbroadcastd %[w], %[b]\n\t"
                "vpmaddwd %[x0], %[b], %[t]\n\t"
                "vpaddd %[t], %[a0], %[a0]\n\t"
                "vpmaddwd %[x1], %[b], %[t]\n\t"
                "vpaddd %[t], %[a1], %[a1]"
                : [a0] "+x"(acc[0]), [a1] "+x"(acc[1]), [b] "=&x"(b), [t] "=&x"(t)
                : [x0] "x"(x0), [x1] "x"(x1), [w] "m"(*wp));
    else {
        b = _mm256_set1_epi32((int)blk_u32((const uint8_t *)wp));
        acc[0] = ql_dot_acc(ISA, acc[0], b, x0);
        acc[1] = ql_dot_acc(ISA, acc[1], b, x1);
    }
}

/* ---- the prefill path's integer GEMM (see ql_gemm_pack): one tile, out[:T, :R] (+)= R <= 6 panel rows
 * (w: int16 in QL_ORDER, stride k; d per block of B elements, stride ld; m per MINS elements, stride lm) x 16
 * packed activation rows (pairs xp, d_a per chunk dp, s_a per chunk s32 and per half chunk s16) over kc
 * columns; the first block of k stores (+ beta * out), the later ones add to out. */
QL_AVX2_INLINE void ql_gemm_tile_avx2(const int ISA, const int B, const int SPAN, const int MINS, const int32_t *xp,
                                      const float *dp, const float *s32, const float *s16, const int16_t *w,
                                      size_t k, const float *d, size_t ld, const float *m, size_t lm, int kc,
                                      float *out, int ld_out, int T, float beta, int first, const int R)
{
    __m256 f[QL_GEMM_MR][2];
    for (int i = 0; i < R; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int blk = 0; blk < kc / B; blk++) {
        __m256 fb[QL_GEMM_MR][2];       /* the block's integer sums, as floats */
        for (int sp = 0; sp < B / SPAN; sp++) {
            __m256i acc[QL_GEMM_MR][2];
            for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
            for (int pp = 0; pp < SPAN / 2; pp++) {
                const int p = blk * B / 2 + sp * SPAN / 2 + pp;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xp + 16 * p)),
                              x1 = _mm256_loadu_si256((const __m256i *)(xp + 16 * p + 8));
                for (int i = 0; i < R; i++) ql_gemm_step(ISA, acc[i], (const int32_t *)(w + i * k + 2 * p), x0, x1);
            }
            for (int i = 0; i < R; i++)
                for (int h = 0; h < 2; h++)
                    fb[i][h] = sp ? _mm256_add_ps(fb[i][h], _mm256_cvtepi32_ps(acc[i][h]))
                                  : _mm256_cvtepi32_ps(acc[i][h]);
        }
        const float *da = dp + 16 * (blk * B / 32);     /* the activations' scale: that of the block's chunks */
        const __m256 d0 = _mm256_loadu_ps(da), d1 = _mm256_loadu_ps(da + 8);
        for (int i = 0; i < R; i++) {
            const __m256 db = _mm256_broadcast_ss(d + i * ld + blk);
            f[i][0] = _mm256_fmadd_ps(fb[i][0], _mm256_mul_ps(d0, db), f[i][0]);
            f[i][1] = _mm256_fmadd_ps(fb[i][1], _mm256_mul_ps(d1, db), f[i][1]);
        }
        for (int u = 0; MINS && u < B / MINS; u++) {
            const float *sa = MINS == 16 ? s16 + 16 * (blk * B / 16 + u) : s32 + 16 * (blk * B / 32 + u);
            const __m256 sa0 = _mm256_loadu_ps(sa), sa1 = _mm256_loadu_ps(sa + 8);
            for (int i = 0; i < R; i++) {
                const __m256 mb = _mm256_broadcast_ss(m + i * lm + blk * (B / MINS) + u);
                f[i][0] = _mm256_fmadd_ps(sa0, mb, f[i][0]);
                f[i][1] = _mm256_fmadd_ps(sa1, mb, f[i][1]);
            }
        }
    }
    lin_gemm_store_avx2(f, out, ld_out, T, beta, first, R);
}

/* out (n, rows) (+ beta * out) = the activations packed at xpk (ql_gemm_pack) times the panel of a format of B,
 * SPAN, MINS (ql_panel_ints_t's rows: the int16, then d per block, then m per MINS elements). k in blocks of
 * QL_GEMM_KC, then tiles of 6 weight rows, then the blocks of 16 activation rows: a tile's weight rows stay in
 * L1 across them, the block of x in L2. */
QL_AVX2_INLINE void ql_gemm_avx2_t(const int ISA, const int B, const int SPAN, const int MINS, const uint8_t *xpk,
                                   int n, int k, const uint8_t *panel, int rows, float *out, int ld_out, float beta)
{
    const int nb = (n + 15) / 16;
    const size_t nc = (size_t)k / 32, ld = (size_t)k / B, lm = MINS ? (size_t)k / MINS : 0;
    const int32_t *pairs = (const int32_t *)xpk;
    const float *dp = (const float *)(xpk + (size_t)nb * 16 * k * 2), *s32 = dp + (size_t)nb * 16 * nc,
                *s16 = s32 + (size_t)nb * 16 * nc;
    const int16_t *wq = (const int16_t *)panel;
    const float *d = (const float *)(panel + (size_t)rows * k * 2), *m = d + (size_t)rows * ld;
    for (int k0 = 0; k0 < k; k0 += QL_GEMM_KC) {
        const int kc = k - k0 < QL_GEMM_KC ? k - k0 : QL_GEMM_KC, first = k0 == 0;
        const size_t c0 = (size_t)k0 / 32;
        for (int r = 0; r < rows; r += QL_GEMM_MR) {
            const int16_t *wr = wq + (size_t)r * k + k0;
            const float *dr = d + r * ld + k0 / B, *mr = MINS ? m + r * lm + k0 / MINS : 0;
            for (int jb = 0; jb < nb; jb++) {
                const int T = n - 16 * jb < 16 ? n - 16 * jb : 16;
                const int32_t *xt = pairs + ((size_t)jb * (k / 2) + k0 / 2) * 16;
                const size_t o32 = ((size_t)jb * nc + c0) * 16;
                float *o = out + (size_t)16 * jb * ld_out + r;
#define QL_TILE(RC) ql_gemm_tile_avx2(ISA, B, SPAN, MINS, xt, dp + o32, s32 + o32, s16 + 2 * o32, wr, k, dr, ld,  \
                                      mr, lm, kc, o, ld_out, T, beta, first, RC)
                LIN_GEMM_TILES(rows - r, QL_TILE);
#undef QL_TILE
            }
        }
    }
}

/* The formats' (block, span, elements per min), and ql_gemm_<block>_<span>_<mins>_<level>: the GEMM of each at
 * each SIMD level of the integer dots. */
#define QL_GEMM_CONFIGS(X) X(32, 32, 0) X(32, 32, 32) X(256, 256, 0) X(256, 256, 16) X(256, 128, 32)               \
                           X(256, 64, 32) X(256, 32, 0)
#define QL_GEMM_ISA(B, S, M, SUFFIX, ISA)                                                                      \
QL_AVX2 static void ql_gemm_##B##_##S##_##M##_##SUFFIX(const uint8_t *xpk, int n, int k, const uint8_t *panel,      \
                                                     int rows, float *out, int ld_out, float beta)             \
{ ql_gemm_avx2_t(ISA, B, S, M, xpk, n, k, panel, rows, out, ld_out, beta); }
#define X(B, S, M) QL_GEMM_ISA(B, S, M, avx2, FL_ISA_AVX2) QL_GEMM_ISA(B, S, M, avx_vnni, FL_ISA_AVX_VNNI)       \
                   QL_GEMM_ISA(B, S, M, avx512_vnni, FL_ISA_AVX512_VNNI)
QL_GEMM_CONFIGS(X)
#undef X
#undef QL_GEMM_ISA

static void ql_gemm(int qtype, int isa, const uint8_t *xpk, int n, int k, const uint8_t *panel, int rows,
                    float *out, int ld_out, float beta)
{
    const int b = BLK_ELEMS(qtype), s = QL_GEMM_SPAN(qtype), m = QL_GEMM_MINS(qtype);
#define X(B, S, M)                                                                                             \
    if (b == B && s == S && m == M) {                                                                          \
        (isa == FL_ISA_AVX512_VNNI ? ql_gemm_##B##_##S##_##M##_avx512_vnni                                      \
         : isa == FL_ISA_AVX_VNNI ? ql_gemm_##B##_##S##_##M##_avx_vnni : ql_gemm_##B##_##S##_##M##_avx2)(         \
            xpk, n, k, panel, rows, out, ld_out, beta);                                                        \
        return;                                                                                                \
    }
    QL_GEMM_CONFIGS(X)
#undef X
}

/* rows of w (stride row_bytes) of constant type QT -> the GEMM's panel: their integers as blk_chunk gives them
 * (ql_ints_avx2's plus the constant offsets QL_OFFSET), times their sub-scales for the 256-element formats, in
 * QL_ORDER, rows x k int16; then per row and block its d; then, for the formats with mins, per row its mins
 * (-dmin * min, or Q4_1's and Q5_1's m, per QL_GEMM_MINS elements). */
QL_AVX2_INLINE void ql_panel_ints_t(const int QT, const uint8_t *w, size_t row_bytes, int rows, int k,
                                    uint8_t *panel)
{
    const int G = QL_GROUP(QT), nblk = k / BLK_ELEMS(QT);
    const size_t lm = QL_GEMM_MINS(QT) ? (size_t)k / QL_GEMM_MINS(QT) : 0;
    int16_t *wq = (int16_t *)panel;
    float *d = (float *)(panel + (size_t)rows * k * 2), *m = d + (size_t)rows * nblk;
    const __m256i offset = _mm256_set1_epi16(QL_OFFSET(QT));
    for (int r = 0; r < rows; r++) {
        const uint8_t *b = w + (size_t)r * row_bytes;
        int16_t *q = wq + (size_t)r * k;
        float *dr = d + (size_t)r * nblk, *mr = m + r * lm;
        for (int blk = 0; blk < nblk; blk++, b += BLK_BYTES(QT), q += BLK_ELEMS(QT)) {
            if (BLK_ELEMS(QT) == 32) {
                __m256i wi[2];
                ql_ints_avx2(QT, b, 0, wi);
                _mm256_storeu_si256((__m256i *)q, _mm256_add_epi16(wi[0], offset));
                _mm256_storeu_si256((__m256i *)(q + 16), _mm256_add_epi16(wi[1], offset));
                dr[blk] = ql_fp16_avx2(b);
                if (BLK_HAS_MIN(QT)) mr[blk] = ql_fp16_avx2(b + 2);
                continue;
            }
            __attribute__((aligned(16))) int8_t sc[16];
            _mm_store_si128((__m128i *)sc, ql_ksub_avx2(QT, b, dr + blk));
            if (BLK_HAS_MIN(QT)) {
                __attribute__((aligned(32))) float mb[16];
                __m256 mlo = _mm256_setzero_ps(), mhi = mlo;
                ql_kmins_avx2(QT, b, &mlo, &mhi);
                _mm256_store_ps(mb, mlo);
                _mm256_store_ps(mb + 8, mhi);
                for (int u = 0; u < 256 / QL_GEMM_MINS(QT); u++)    /* Q2_K: half h of chunk c at 2 c + h */
                    mr[blk * (256 / QL_GEMM_MINS(QT)) + u] = BLK_SPLIT(QT) ? mb[(u & 1) * 8 + (u >> 1)] : mb[u];
            }
            for (int g = 0; g < 8 / G; g++) {
                __m256i wi[8];
                ql_ints_avx2(QT, b, g, wi);
                for (int i = 0; i < G; i++) {
                    const int c = G * g + i;
                    /* in QL_ORDER lanes 0-7 of both vectors hold the chunk's first half, 8-15 its second */
                    const __m256i s = BLK_SPLIT(QT)
                                          ? _mm256_setr_m128i(_mm_set1_epi16(sc[c]), _mm_set1_epi16(sc[8 + c]))
                                          : _mm256_set1_epi16(sc[c]);
                    for (int h = 0; h < 2; h++)
                        _mm256_storeu_si256((__m256i *)(q + 32 * c + 16 * h),
                                            _mm256_mullo_epi16(_mm256_add_epi16(wi[2 * i + h], offset), s));
                }
            }
        }
    }
}
#define X(T)                                                                                                   \
QL_AVX2 static void ql_panel_ints_avx2_##T(const uint8_t *w, size_t row_bytes, int rows, int k, uint8_t *panel) \
{ ql_panel_ints_t(BLK_##T, w, row_bytes, rows, k, panel); }
BLK_QUANT_TYPES(X)
#undef X
#define QL_AVX2_INTS(T) ql_panel_ints_avx2_##T

#else  /* not x86: no AVX2 kernels (fl_cpu_isa() is FL_ISA_PORTABLE), the vectorized decoders are the portable */

#define QL_AVX2_DOTS(T) 0, 0, 0, 0
#define ql_decode_avx2_F32 blk_decode_f32_F32
#define ql_decode_avx2_F16 blk_decode_f32_F16
#define ql_decode_avx2_BF16 blk_decode_f32_BF16
#define X(T) static void ql_decode_avx2_##T(const uint8_t *src, float *y, size_t k) { blk_decode_f32_##T(src, y, k); }
BLK_QUANT_TYPES(X)
#undef X
static void ql_quant_row_avx2(const float *x, int k, int group, int16_t *q, float *d, float *s, float *sl, float *sh) {}
static void ql_small_f16_avx2(const float *x, int n, int k, const uint8_t *w, int rows, float *out, int ld_out,
                              float beta) {}
#define QL_AVX2_INTS(T) 0
static void ql_gemm(int qtype, int isa, const uint8_t *xpk, int n, int k, const uint8_t *panel, int rows,
                    float *out, int ld_out, float beta) {}

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

/* x (n, k) rounded into the int16 activations at q, d, s, sl, sh (ql_act's layout), one scale per group of 32
 * or 256 elements in QL_ORDER: the group is the block of the formats whose kernels take them. */
static void ql_quant_rows(const float *x, int n, int k, int group, int16_t *q, float *d, float *s, float *sl,
                          float *sh, int simd)
{
    const int nb = k / 32;
    for (int j = 0; j < n; j++) {
        const size_t o = (size_t)j * nb;
        if (simd) ql_quant_row_avx2(x + (size_t)j * k, k, group, q + (size_t)j * k, d + o, s + o, sl + o, sh + o);
        else ql_quant_row(x + (size_t)j * k, k, group, q + (size_t)j * k, d + o, s + o, sl + o, sh + o);
    }
}

/* The prefill path's integer GEMM at SIMD level isa (AVX2 or above) on x packed by ql_gemm_pack: rows of w in
 * panels of panel_rows, unpacked into panel (panel_rows * k * 4 bytes hold one) by the table's ints_avx2. */
static void ql_gemm_rows(int qtype, int isa, const uint8_t *xpk, int n, int k, const uint8_t *w, size_t row_bytes,
                         int rows, int panel_rows, float *out, int ld_out, float beta, uint8_t *panel)
{
    for (int p0 = 0; p0 < rows; p0 += panel_rows) {
        const int pr = rows - p0 < panel_rows ? rows - p0 : panel_rows;
        BLK_TRAITS[qtype].ints_avx2(w + (size_t)p0 * row_bytes, row_bytes, pr, k, panel);
        ql_gemm(qtype, isa, xpk, n, k, panel, pr, out + p0, ld_out, beta);
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
