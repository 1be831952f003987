/* Tile kernels of the flash-attention kernel in attention.pyx: hand-written AVX2/FMA ones for float32 here,
 * and portable ones for float32 and float64 from attention_portable.h, included at the end.
 *
 * The AVX2 code is compiled with a target attribute, not -march, so the extension loads on any x86-64;
 * attention.pyx calls it only where cpu_isa.h's probe found AVX2 and FMA.
 *
 * One call works on one tile. M = query rows of the tile (query positions x the query heads sharing a KV
 * head), nk = keys in the tile (<= ATTN_TK), dk = head dim (any value >= 1). Buffers:
 *   qs  (M, dk)          queries, pre-multiplied by scale * log2(e) so that softmax weights are exp2(s - max)
 *   k   (nk, dk)         keys, rows of the KV cache;  v (nk, dk) values, likewise
 *   kt  (dk, ATTN_TK)    the key tile transposed, so the score kernel reads keys along contiguous columns
 *   s   (M, ATTN_TK)     scores, overwritten in place by the unnormalised probabilities P
 *   o   (M, dk)          output accumulator: sum over keys seen so far of P * v, not yet divided by l
 *   mx, l (M,)           running max (log2 units) and running sum of exp2(s - mx)
 */
#ifndef FASTLM_ATTENTION_IMPL_H
#define FASTLM_ATTENTION_IMPL_H

#include <math.h>
#include <string.h>

#include "simd_math.h"

#define ATTN_TK 64           /* keys per tile: S and K^T tiles stay in L1/L2 next to the query tile */
#define ATTN_ROWS 6          /* query rows per register block: 6 rows x 16 columns = 12 accumulators; the
                                switches below cover the 1..5 leftover rows */

/* How many of a tile's nk keys row r sees: the tile's first row sees diag of them, and each query position
 * (g rows) one more; causal, so never fewer than 0 nor more than nk. */
static inline int attn_row_keys(int diag, int r, int g, int nk)
{
    const int n = diag + r / g;
    return n < 0 ? 0 : (n > nk ? nk : n);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define ATTN_AVX2 __attribute__((target("avx2,fma")))
#define ATTN_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

ATTN_AVX2_INLINE float attn_hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

ATTN_AVX2_INLINE float attn_hmax_ps(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

ATTN_AVX2_INLINE void attn_transpose8_ps(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* kt = k^T, columns nk .. round16(nk) zero-filled so the score kernel runs whole 16-column blocks. */
ATTN_AVX2 static void attn_pack_kt_f32_avx2(const float *k, int nk, int dk, float *kt)
{
    const int d8 = dk & ~7, ncols = (nk + 15) & ~15;
    int c0 = 0;
    for (; c0 + 8 <= nk; c0 += 8) {
        for (int d0 = 0; d0 < d8; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(k + (size_t)(c0 + i) * dk + d0);
            attn_transpose8_ps(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(kt + (size_t)(d0 + j) * ATTN_TK + c0, r[j]);
        }
        for (int d = d8; d < dk; d++)
            for (int i = 0; i < 8; i++) kt[(size_t)d * ATTN_TK + c0 + i] = k[(size_t)(c0 + i) * dk + d];
    }
    for (int d = 0; d < dk; d++)
        for (int c = c0; c < ncols; c++)
            kt[(size_t)d * ATTN_TK + c] = c < nk ? k[(size_t)c * dk + d] : 0.0f;
}

/* s[R rows, 16 columns from c] = qs rows . kt columns: a register-blocked outer-product loop over dk. */
ATTN_AVX2_INLINE void attn_scores_block(const float *qs, int dk, const float *kt, int c, float *s,
                                        const int R)
{
    __m256 acc[ATTN_ROWS][2];
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float *b = kt + c;
    for (int d = 0; d < dk; d++, b += ATTN_TK) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        for (int i = 0; i < R; i++) {
            __m256 a = _mm256_broadcast_ss(qs + (size_t)i * dk + d);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < R; i++) {
        _mm256_storeu_ps(s + (size_t)i * ATTN_TK + c, acc[i][0]);
        _mm256_storeu_ps(s + (size_t)i * ATTN_TK + c + 8, acc[i][1]);
    }
}

/* s (M, round16(nk)) = qs (M, dk) @ kt (dk, round16(nk)). */
ATTN_AVX2 static void attn_scores_f32_avx2(const float *qs, int m, int dk, const float *kt, int nk, float *s)
{
    const int ncols = (nk + 15) & ~15;
    for (int r = 0; r < m; r += ATTN_ROWS) {
        const float *q = qs + (size_t)r * dk;
        float *sr = s + (size_t)r * ATTN_TK;
        for (int c = 0; c < ncols; c += 16)
            switch (m - r) {                              /* constant R: each case is fully unrolled */
            case 1: attn_scores_block(q, dk, kt, c, sr, 1); break;
            case 2: attn_scores_block(q, dk, kt, c, sr, 2); break;
            case 3: attn_scores_block(q, dk, kt, c, sr, 3); break;
            case 4: attn_scores_block(q, dk, kt, c, sr, 4); break;
            case 5: attn_scores_block(q, dk, kt, c, sr, 5); break;
            default: attn_scores_block(q, dk, kt, c, sr, ATTN_ROWS);
            }
    }
}

/* Online softmax for one tile. Row r (query position r / g of the tile) sees the first
 * clamp(diag + r / g, 0, nk) keys; the rest are masked (causal). Turns s into P = exp2(s - new max),
 * zero where masked, and rescales l and the o row by exp2(old max - new max). */
ATTN_AVX2 static void attn_softmax_f32_avx2(float *s, int m, int nk, int g, int diag, int lo_diag, float *mx,
                                            float *l, float *o, int dk)
{
    for (int r = 0; r < m; r++) {
        float *row = s + (size_t)r * ATTN_TK;
        const int n = attn_row_keys(diag, r, g, nk), lo = attn_row_keys(lo_diag, r, g, nk);
        if (lo >= n) {                         /* every key of this tile lies in the row's future or past window */
            memset(row, 0, (size_t)nk * sizeof(float));
            continue;
        }
        const int n8 = (n + 7) & ~7;                      /* <= ATTN_TK: whole vectors stay inside the row */
        for (int c = 0; c < lo; c++) row[c] = -INFINITY;
        for (int c = n; c < n8; c++) row[c] = -INFINITY;
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        for (int c = 0; c < n8; c += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + c));
        const float tile_max = attn_hmax_ps(vmax);
        const float m_new = mx[r] > tile_max ? mx[r] : tile_max;
        const __m256 vm = _mm256_set1_ps(m_new);
        __m256 vsum = _mm256_setzero_ps();
        for (int c = 0; c < n8; c += 8) {
            __m256 p = fl_exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(row + c), vm));
            _mm256_storeu_ps(row + c, p);
            vsum = _mm256_add_ps(vsum, p);
        }
        for (int c = n8; c < nk; c++) row[c] = 0.0f;
        /* 0 on the row's first tile (mx = -inf); 1, without a call, once the max has settled */
        const float alpha = m_new == mx[r] ? 1.0f : exp2f(mx[r] - m_new);
        l[r] = l[r] * alpha + attn_hsum_ps(vsum);
        mx[r] = m_new;
        if (alpha != 1.0f) {
            float *orow = o + (size_t)r * dk;
            const __m256 va = _mm256_set1_ps(alpha);
            int d = 0;
            for (; d + 8 <= dk; d += 8)
                _mm256_storeu_ps(orow + d, _mm256_mul_ps(va, _mm256_loadu_ps(orow + d)));
            for (; d < dk; d++) orow[d] *= alpha;
        }
    }
}

/* o[R rows, W vectors from column d] += P rows @ v[:, d : d + 8W]. */
ATTN_AVX2_INLINE void attn_pv_block(const float *s, int nk, const float *v, int dk, int d, float *o,
                                    const int R, const int W)
{
    __m256 acc[ATTN_ROWS][2];
    for (int i = 0; i < R; i++)
        for (int w = 0; w < W; w++) acc[i][w] = _mm256_loadu_ps(o + (size_t)i * dk + d + 8 * w);
    const float *vc = v + d;
    for (int c = 0; c < nk; c++, vc += dk) {
        __m256 b[2];
        for (int w = 0; w < W; w++) b[w] = _mm256_loadu_ps(vc + 8 * w);
        for (int i = 0; i < R; i++) {
            __m256 p = _mm256_broadcast_ss(s + (size_t)i * ATTN_TK + c);
            for (int w = 0; w < W; w++) acc[i][w] = _mm256_fmadd_ps(p, b[w], acc[i][w]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int w = 0; w < W; w++) _mm256_storeu_ps(o + (size_t)i * dk + d + 8 * w, acc[i][w]);
}

ATTN_AVX2_INLINE void attn_pv_rows(const float *s, int nk, const float *v, int dk, float *o, const int R)
{
    int d = 0;
    for (; d + 16 <= dk; d += 16) attn_pv_block(s, nk, v, dk, d, o, R, 2);
    if (d + 8 <= dk) {
        attn_pv_block(s, nk, v, dk, d, o, R, 1);
        d += 8;
    }
    for (; d < dk; d++)                                   /* dk % 8 leftover columns */
        for (int i = 0; i < R; i++) {
            float acc = o[(size_t)i * dk + d];
            for (int c = 0; c < nk; c++) acc += s[(size_t)i * ATTN_TK + c] * v[(size_t)c * dk + d];
            o[(size_t)i * dk + d] = acc;
        }
}

/* o (M, dk) += P (M, nk) @ v (nk, dk). */
ATTN_AVX2 static void attn_pv_f32_avx2(const float *s, int m, int nk, const float *v, int dk, float *o)
{
    for (int r = 0; r < m; r += ATTN_ROWS) {
        const float *sr = s + (size_t)r * ATTN_TK;
        float *orow = o + (size_t)r * dk;
        switch (m - r) {
        case 1: attn_pv_rows(sr, nk, v, dk, orow, 1); break;
        case 2: attn_pv_rows(sr, nk, v, dk, orow, 2); break;
        case 3: attn_pv_rows(sr, nk, v, dk, orow, 3); break;
        case 4: attn_pv_rows(sr, nk, v, dk, orow, 4); break;
        case 5: attn_pv_rows(sr, nk, v, dk, orow, 5); break;
        default: attn_pv_rows(sr, nk, v, dk, orow, ATTN_ROWS);
        }
    }
}

#else  /* not x86: no SIMD path; attention.pyx never calls these (fl_cpu_has(FL_ISA_AVX2) is 0) */

static void attn_pack_kt_f32_avx2(const float *k, int nk, int dk, float *kt) {}
static void attn_scores_f32_avx2(const float *qs, int m, int dk, const float *kt, int nk, float *s) {}
static void attn_softmax_f32_avx2(float *s, int m, int nk, int g, int diag, int lo_diag, float *mx, float *l,
                                  float *o, int dk) {}
static void attn_pv_f32_avx2(const float *s, int m, int nk, const float *v, int dk, float *o) {}

#endif

/* The portable kernels: attn_pack_kt_f32 ... attn_pv_f32 and attn_pack_kt_f64 ... attn_pv_f64; and the
 * float64 ones again as *_f64_avx2, where the compiler may use AVX2 and FMA (a plain copy on other CPUs). */
#define ATTN_TARGET
#define ATTN_VEC_BYTES 16          /* SSE2 (x86-64 baseline), NEON */
#define ATTN_T float
#define ATTN_FN(name) name##_f32
#define ATTN_EXP2 exp2f
#include "attention_portable.h"
#undef ATTN_T
#undef ATTN_FN
#undef ATTN_EXP2

#define ATTN_T double
#define ATTN_FN(name) name##_f64
#define ATTN_EXP2 exp2
#include "attention_portable.h"
#undef ATTN_FN
#undef ATTN_TARGET
#undef ATTN_VEC_BYTES

#if defined(__x86_64__) || defined(__i386__)
#define ATTN_TARGET __attribute__((target("avx2,fma")))
#define ATTN_VEC_BYTES 32
#else
#define ATTN_TARGET
#define ATTN_VEC_BYTES 16
#endif
#define ATTN_FN(name) name##_f64_avx2
#include "attention_portable.h"
#undef ATTN_T
#undef ATTN_FN
#undef ATTN_EXP2
#undef ATTN_TARGET
#undef ATTN_VEC_BYTES

#endif
