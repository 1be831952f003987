/* Kernels of qlinear.pyx: out (n, rows) = x (n, k) @ dequant(w (rows, row_bytes)).T + beta * out on one thread,
 * with w in a GGUF block format (ggml_blocks.h). qlinear.pyx splits w's rows across the threads.
 *
 * Three paths:
 *   - integer (Q8_0, Q4_0, Q4_1, n below qlinear.pyx's DEC_N_MIN): the activation rows are quantized once per call
 *     into blocks of 32 int16 with a float scale d = max|x| / 32767 (round to nearest: each element moves by at
 *     most d / 2) and s = d * sum(q). A weight block, widened to int16 (Q8_0 sign-extended, Q4_x's nibbles
 *     zero-extended), then dots with an activation block in integers (madd: int16 pairs into int32 lanes,
 *     |q_w| <= 128, |q_a| <= 32768, 32 products: |sum| < 2^27, exact); Q4_0's -8 offset and Q4_1's min enter
 *     as cw * s per block (cw = -8 d_w or m_w): sum (q_w - 8) q_a = sum q_w q_a - 8 sum q_a. The int32 sums
 *     are converted and fma'd with d_w * d_a into float lanes. (int8 activations, ggml's Q8_1, lost too much:
 *     greedy tokens of SmolLM2-135M agreed with the float path only 97 % of the time.)
 *   - F16 (n below DEC_N_MIN): float activations, F16C conversion of the weights, FMA.
 *   - decode-and-dot (every type from DEC_N_MIN on; Q4_K, Q6_K always; F16 without AVX2): 4 rows at a time are
 *     dequantized into a per-thread float buffer (L1) and handed to linear_impl.h's small-batch float kernels.
 * The panel path of large n (prefill) lives in qlinear.pyx: ql_decode_rows() below into a float panel, sgemm.
 *
 * Register blocks (AVX2): integer path 4 weight rows x up to QL_JMAX = 4 activation rows (the 4 rows' block sums
 * folded into one vector, one float accumulator per activation row); F16 4 x 3. Each weight block is loaded and
 * unpacked once per register block, and the rows QL_PF_ROWS further on are prefetched into L2 while a block
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

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ggml_blocks.h"
#include "linear_impl.h"

#define QL_PF_ROWS 8        /* prefetch distance, in weight rows: two blocks of 4 ahead */

/* ------------------------------------------------------------------------ activation quantization, portable */

/* x (k floats, k % 32 == 0) -> q (k int16), d = max|x_b| / 32767 and s = d * sum(q) per block of 32. */
static void ql_quant_row(const float *x, int k, int16_t *q, float *d, float *s)
{
    for (int b = 0; b < k / 32; b++, x += 32, q += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float db = amax / 32767.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            float v = x[j] * id;                          /* clamp (NaN -> -32768), then round half to even: */
            v = v != v ? -32768.0f : v < -32768.0f ? -32768.0f : v > 32767.0f ? 32767.0f : v;   /* as AVX2 */
            q[j] = (int16_t)rintf(v);
            sum += q[j];
        }
        d[b] = db;
        s[b] = db * (float)sum;
    }
}

/* ---------------------------------------------------------------------------- integer path, portable */

/* out[j, r] for all r < rows, j < n: exact integer block dots, float accumulation per block. */
static void ql_small_q(int qtype, const int16_t *xq, const float *xd, const float *xs, int n, int k,
                       const uint8_t *w, size_t row_bytes, int rows, float *out, int ld_out, float beta)
{
    const int nb = k / 32;
    const size_t bs = qtype == BLK_Q8_0 ? 34 : qtype == BLK_Q4_0 ? 18 : 20;
    for (int r = 0; r < rows; r++) {
        const uint8_t *wr = w + (size_t)r * row_bytes;
        for (int j = 0; j < n; j++) {
            const int16_t *a = xq + (size_t)j * k;
            float acc = 0.0f;
            for (int b = 0; b < nb; b++, a += 32) {
                const uint8_t *blk = wr + (size_t)b * bs;
                const float dw = blk_fp16(blk_u16(blk)), da = xd[(size_t)j * nb + b];
                int32_t isum = 0;                         /* |q_w| <= 128, |q_a| <= 32768: |isum| < 2^27 */
                float corr = 0.0f;
                if (qtype == BLK_Q8_0) {
                    for (int l = 0; l < 32; l++) isum += (int8_t)blk[2 + l] * a[l];
                } else {
                    const uint8_t *qs = blk + (qtype == BLK_Q4_0 ? 2 : 4);
                    for (int l = 0; l < 16; l++) isum += (qs[l] & 0x0F) * a[l] + (qs[l] >> 4) * a[l + 16];
                    corr = (qtype == BLK_Q4_0 ? -8.0f * dw : blk_fp16(blk_u16(blk + 2))) * xs[(size_t)j * nb + b];
                }
                acc += dw * da * (float)isum + corr;
            }
            float *o = out + (size_t)j * ld_out + r;
            *o = beta != 0.0f ? acc + beta * *o : acc;
        }
    }
}

/* --------------------------------------------------------------------------------------------------- AVX2 */
#if defined(__x86_64__) || defined(__i386__)

#define QL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QL_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

static int ql_cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
           && __builtin_cpu_supports("f16c");
}

/* The row decoders compiled for AVX2 (the compiler vectorizes the K-quants; the 32-element formats have
 * hand-written AVX2 in ql_decode_row_avx2). */
BLK_DECODER(ql_decode_row_vec, float, QL_AVX2)

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

/* The same int16 values as ql_quant_row. */
QL_AVX2 static void ql_quant_row_avx2(const float *x, int k, int16_t *q, float *d, float *s)
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
        d[b] = db;
        s[b] = db * (float)ql_hsum_i32(_mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones)));
    }
}

#ifndef QL_JMAX
#define QL_JMAX 4           /* activation rows per register block of the integer path */
#endif

/* out[:J, :R] = int dots of R <= 4 weight rows with J <= QL_JMAX activation rows (+ beta * out). QT is a constant.
 * Per block b: each weight row's block is widened to 2 x 16 int16 once (Q4_x: elements 0-15 are the low nibbles
 * of its 16 bytes, 16-31 the high ones, so one zero-extension gives both: & 15 and >> 4; Q8_0: sign-extension)
 * and serves the J activation rows; each activation block is loaded once and serves the 4 weight rows. madd:
 * 32 products |q_w q_a| <= 128 * 32768 in int32 lanes, |sum| < 2^27. Two unpack + add levels (cheaper than hadd
 * here) fold the 4 rows' 8-lane sums into one vector (lanes r0 r1 r2 r3 | r0 r1 r2 r3), converted and fma'd
 * with (d_w of the 4 rows) * d_a into one float accumulator per activation row. Q4_0's -8 and Q4_1's min add
 * (d_w, times -8 at the end, or m_w) * s_a, the 4 rows in one xmm fma. */
QL_AVX2_INLINE void ql_block_q_avx2(const int QT, const uint8_t *w, size_t row_bytes, int nb, const int16_t *xq,
                                    const float *xd, const float *xs, int k, float *out, int ld_out, float beta,
                                    const int R, const int J)
{
    const size_t bs = QT == BLK_Q8_0 ? 34 : QT == BLK_Q4_0 ? 18 : 20;
    const __m256i m4 = _mm256_set1_epi16(0x0F);
    __m256 acc[QL_JMAX];
    __m128 corr[QL_JMAX];
    for (int j = 0; j < J; j++) { acc[j] = _mm256_setzero_ps(); corr[j] = _mm_setzero_ps(); }
    for (int b = 0; b < nb; b++) {
        __m256i w0[4], w1[4];
        uint16_t hd[4] = {0, 0, 0, 0}, hm[4] = {0, 0, 0, 0};
        for (int i = 0; i < 4; i++) {
            if (i >= R) { w0[i] = w1[i] = _mm256_setzero_si256(); continue; }
            const uint8_t *blk = w + (size_t)i * row_bytes + (size_t)b * bs;
            _mm_prefetch((const char *)((uintptr_t)blk + QL_PF_ROWS * row_bytes), _MM_HINT_T1);
            hd[i] = blk_u16(blk);
            if (QT == BLK_Q8_0) {
                w0[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 2)));
                w1[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 18)));
            } else {
                const __m128i nibbles = _mm_loadu_si128((const __m128i *)(blk + (QT == BLK_Q4_0 ? 2 : 4)));
                const __m256i t = _mm256_cvtepu8_epi16(nibbles);
                w0[i] = _mm256_and_si256(t, m4);
                w1[i] = _mm256_srli_epi16(t, 4);
                if (QT == BLK_Q4_1) hm[i] = blk_u16(blk + 2);
            }
        }
        const __m128 dw4 = _mm_cvtph_ps(_mm_setr_epi16((short)hd[0], (short)hd[1], (short)hd[2], (short)hd[3],
                                                       0, 0, 0, 0));
        const __m256 dw8 = _mm256_set_m128(dw4, dw4);
        const __m128 cw4 = QT == BLK_Q4_1 ? _mm_cvtph_ps(_mm_setr_epi16((short)hm[0], (short)hm[1], (short)hm[2],
                                                                        (short)hm[3], 0, 0, 0, 0))
                                          : dw4;
        for (int j = 0; j < J; j++) {
            const int16_t *a = xq + (size_t)j * k + (size_t)b * 32;
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)a);
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + 16));
            __m256i p[4];
            for (int i = 0; i < 4; i++)
                p[i] = i < R ? _mm256_add_epi32(_mm256_madd_epi16(w0[i], a0), _mm256_madd_epi16(w1[i], a1))
                             : _mm256_setzero_si256();
            const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
            const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
            const __m256i h = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw8, _mm256_broadcast_ss(xd + (size_t)j * nb + b)),
                                     _mm256_cvtepi32_ps(h), acc[j]);
            if (QT != BLK_Q8_0) corr[j] = _mm_fmadd_ps(cw4, _mm_broadcast_ss(xs + (size_t)j * nb + b), corr[j]);
        }
    }
    for (int j = 0; j < J; j++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[j]), _mm256_extractf128_ps(acc[j], 1));
        if (QT == BLK_Q4_0) s = _mm_fmadd_ps(_mm_set1_ps(-8.0f), corr[j], s);
        else if (QT == BLK_Q4_1) s = _mm_add_ps(s, corr[j]);
        lin_store4_avx2(out + (size_t)j * ld_out, s, beta, R);
    }
}

QL_AVX2_INLINE void ql_rows_q_avx2(const int QT, const int16_t *xq, const float *xd, const float *xs, int n, int k,
                                   const uint8_t *w, size_t row_bytes, float *out, int ld_out, float beta, const int R)
{
    const int nb = k / 32;
    for (int j = 0, J; j < n; j += J) {
        const int left = n - j;
        J = left < QL_JMAX ? left : QL_JMAX;
        const int16_t *xj = xq + (size_t)j * k;
        const float *dj = xd + (size_t)j * nb, *sj = xs + (size_t)j * nb;
        float *oj = out + (size_t)j * ld_out;
        if (QL_JMAX >= 4 && J == 4) ql_block_q_avx2(QT, w, row_bytes, nb, xj, dj, sj, k, oj, ld_out, beta, R, 4);
        else if (QL_JMAX >= 3 && J == 3) ql_block_q_avx2(QT, w, row_bytes, nb, xj, dj, sj, k, oj, ld_out, beta, R, 3);
        else if (J == 2) ql_block_q_avx2(QT, w, row_bytes, nb, xj, dj, sj, k, oj, ld_out, beta, R, 2);
        else ql_block_q_avx2(QT, w, row_bytes, nb, xj, dj, sj, k, oj, ld_out, beta, R, 1);
    }
}

QL_AVX2_INLINE void ql_small_q_avx2_t(const int QT, const int16_t *xq, const float *xd, const float *xs, int n,
                                      int k, const uint8_t *w, size_t row_bytes, int rows, float *out, int ld_out,
                                      float beta)
{
    int r = 0;
    for (; r + 4 <= rows; r += 4)
        ql_rows_q_avx2(QT, xq, xd, xs, n, k, w + (size_t)r * row_bytes, row_bytes, out + r, ld_out, beta, 4);
    const uint8_t *wr = w + (size_t)r * row_bytes;
    switch (rows - r) {
    case 3: ql_rows_q_avx2(QT, xq, xd, xs, n, k, wr, row_bytes, out + r, ld_out, beta, 3); break;
    case 2: ql_rows_q_avx2(QT, xq, xd, xs, n, k, wr, row_bytes, out + r, ld_out, beta, 2); break;
    case 1: ql_rows_q_avx2(QT, xq, xd, xs, n, k, wr, row_bytes, out + r, ld_out, beta, 1); break;
    }
}

QL_AVX2 static void ql_small_q_avx2(int qtype, const int16_t *xq, const float *xd, const float *xs, int n, int k,
                                    const uint8_t *w, size_t row_bytes, int rows, float *out, int ld_out, float beta)
{
    if (qtype == BLK_Q8_0) ql_small_q_avx2_t(BLK_Q8_0, xq, xd, xs, n, k, w, row_bytes, rows, out, ld_out, beta);
    else if (qtype == BLK_Q4_0) ql_small_q_avx2_t(BLK_Q4_0, xq, xd, xs, n, k, w, row_bytes, rows, out, ld_out, beta);
    else ql_small_q_avx2_t(BLK_Q4_1, xq, xd, xs, n, k, w, row_bytes, rows, out, ld_out, beta);
}

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

/* ---- hand-vectorized row decoders of the 32-element formats and F16, for the prefill panels */
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
    } else {
        ql_decode_row_vec(qtype, src, y, k);
    }
}

#else  /* not x86: the AVX2 entry points are never called (ql_cpu_has_avx2() is 0) */

static int ql_cpu_has_avx2(void) { return 0; }
static void ql_quant_row_avx2(const float *x, int k, int16_t *q, float *d, float *s) {}
static void ql_small_q_avx2(int qtype, const int16_t *xq, const float *xd, const float *xs, int n, int k,
                            const uint8_t *w, size_t row_bytes, int rows, float *out, int ld_out, float beta) {}
static void ql_small_f16_avx2(const float *x, int n, int k, const uint8_t *w, int rows, float *out, int ld_out,
                              float beta) {}
static void ql_decode_row_avx2(int qtype, const uint8_t *src, float *y, int k) {}

#endif

/* ------------------------------------------------------------------------------------ shared entry points */

/* rows consecutive rows (stride row_bytes) into y (rows, k). */
static void ql_decode_rows(int qtype, const uint8_t *w, size_t row_bytes, int rows, int k, float *y, int simd)
{
    for (int r = 0; r < rows; r++) {
        if (simd) ql_decode_row_avx2(qtype, w + (size_t)r * row_bytes, y + (size_t)r * k, k);
        else blk_decode_f32(qtype, w + (size_t)r * row_bytes, y + (size_t)r * k, (size_t)k);
    }
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

static void ql_quant_rows(const float *x, int n, int k, int16_t *q, float *d, float *s, int simd)
{
    const int nb = k / 32;
    for (int j = 0; j < n; j++) {
        if (simd) ql_quant_row_avx2(x + (size_t)j * k, k, q + (size_t)j * k, d + (size_t)j * nb, s + (size_t)j * nb);
        else ql_quant_row(x + (size_t)j * k, k, q + (size_t)j * k, d + (size_t)j * nb, s + (size_t)j * nb);
    }
}


#endif
