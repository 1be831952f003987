/* Small-batch kernels of linear.pyx: out (n, rows) = x (n, k) @ w (rows, k).T + beta * out on one thread, for
 * the few activation rows of a batched decode step (linear.pyx splits w's rows across the threads).
 *
 * At such n, BLAS's gemm packs and blocks for a large product and reads the weights at a fraction of memory
 * speed, while the step is bound by that read. These kernels stream each weight row from memory once and dot
 * it with every activation row (x stays in L1/L2): a register block is up to 4 weight rows x up to 3 (AVX2)
 * or 2 (portable) activation rows of vector accumulators along k, summed horizontally at the end. While a
 * block computes, it prefetches the rows LIN_PF_ROWS further on into L2, so that memory keeps streaming
 * during the FMAs instead of waiting for the next block's demand misses (n = 8 on a 2-core Zen 4: 33 GB/s of
 * weights instead of 16; into L1 instead, where x and the current rows live, only 23).
 *
 * x and w have row stride k, out row stride ld_out. beta == 0 never reads out, which may hold anything.
 * Column indices are size_t: Python builds extensions with -fwrapv, under which an int index is re-extended on
 * every step, and the AVX2 loop ran at half speed.
 * The AVX2/FMA code is compiled with target attributes, not -march, so the extension loads on any x86-64;
 * linear.pyx calls it only where cpu_isa.h's probe found AVX2.
 */
#ifndef FASTLM_LINEAR_IMPL_H
#define FASTLM_LINEAR_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_isa.h"

#define LIN_PF_ROWS 8       /* prefetch distance, in weight rows: two blocks ahead */

/* The address LIN_PF_ROWS rows below p, summed as an integer: near the end of w it lies past the array, where
 * a prefetch is harmless but pointer arithmetic would be undefined. */
#define LIN_AHEAD(p, k) ((const void *)((uintptr_t)(p) + (uintptr_t)LIN_PF_ROWS * (size_t)(k) * sizeof(*(p))))

/* The float GEMM's blocking (below): k per block, weight rows per register tile. Outside the x86 block, since the
 * prefill panels are sized in tiles on every machine (qlinear_core.pxi's PANEL_ROWS_MIN). */
#define LIN_GEMM_KC 256
#define LIN_GEMM_MR 6

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define LIN_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* o[:R] = the first R lanes of s (+ beta * o), R <= 4. */
LIN_AVX2_INLINE void lin_store4_avx2(float *o, __m128 s, float beta, const int R)
{
    if (R == 4) {
        if (beta != 0.0f) s = _mm_fmadd_ps(_mm_set1_ps(beta), _mm_loadu_ps(o), s);
        _mm_storeu_ps(o, s);
    } else {
        float v[4];
        _mm_storeu_ps(v, s);
        for (int i = 0; i < R; i++) o[i] = beta != 0.0f ? v[i] + beta * o[i] : v[i];
    }
}

/* out[:J, :R] = x[:J] . w[:R] (+ beta * out). R x J accumulators of 8 lanes: 4 x 3 = 12 of them and the 4
 * weight vectors fill the 16 ymm registers; the activation vector is an FMA memory operand. */
LIN_AVX2_INLINE void lin_small_f32_avx2_block(const float *x, const float *w, int k, float *out, int ld_out, float beta,
                                        const int R, const int J)
{
    __m256 acc[4][3], wv[4];
    for (int i = 0; i < 4; i++)                           /* rows >= R stay zero for the reduction below */
        for (int j = 0; j < 3; j++) acc[i][j] = _mm256_setzero_ps();
    const size_t k8 = (size_t)k & ~(size_t)7;
    size_t d = 0;
    for (; d < k8; d += 8) {
        for (int i = 0; i < R; i++) wv[i] = _mm256_loadu_ps(w + (size_t)i * k + d);
        for (int i = 0; i < R; i++) _mm_prefetch(LIN_AHEAD(w + (size_t)i * k + d, k), _MM_HINT_T1);
        for (int j = 0; j < J; j++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)j * k + d);
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (d < (size_t)k) {                                  /* k % 8 columns: masked loads stay inside the rows */
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(k & 7), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int i = 0; i < R; i++) wv[i] = _mm256_maskload_ps(w + (size_t)i * k + d, mask);
        for (int j = 0; j < J; j++) {
            const __m256 xv = _mm256_maskload_ps(x + (size_t)j * k + d, mask);
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int j = 0; j < J; j++) {
        /* Three hadds and one add leave the sum of acc[i][j] in lane i: out[j, 0..3], contiguous. */
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0][j], acc[1][j]), _mm256_hadd_ps(acc[2][j], acc[3][j]));
        lin_store4_avx2(out + (size_t)j * ld_out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)),
                        beta, R);
    }
}

/* The drivers of a register-block kernel FN##_block(x, w, k, out, ld_out, beta, R, J) whose weight rows are
 * STRIDE elements of type WT apart (STRIDE may use k), compiled for TARGET (the block's target string).
 * FN##_rows runs all n activation rows against R weight rows, 3 at a time, but 4 left go as 2 + 2, since 3 + 1
 * would end on a block of 4 accumulators, too few chains to keep both FMA pipes busy; FN runs the weight rows 4
 * at a time, then the rest with a constant R, so that every case is fully unrolled. */
#define LIN_AVX2_DRIVERS(FN, WT, STRIDE, TARGET)                                                                 \
static inline __attribute__((always_inline, target(TARGET)))                                                     \
void FN##_rows(const float *x, int n, int k, const WT *w, float *out, int ld_out, float beta, const int R)       \
{                                                                                                                \
    for (int j = 0, J; j < n; j += J) {                                                                          \
        const float *xj = x + (size_t)j * k;                                                                     \
        float *oj = out + (size_t)j * ld_out;                                                                    \
        J = n - j == 4 || n - j == 2 ? 2 : n - j == 1 ? 1 : 3;                                                   \
        if (J == 3) FN##_block(xj, w, k, oj, ld_out, beta, R, 3);                                                \
        else if (J == 2) FN##_block(xj, w, k, oj, ld_out, beta, R, 2);                                           \
        else FN##_block(xj, w, k, oj, ld_out, beta, R, 1);                                                       \
    }                                                                                                            \
}                                                                                                                \
                                                                                                                 \
__attribute__((target(TARGET)))                                                                                  \
static void FN(const float *x, int n, int k, const WT *w, int rows, float *out, int ld_out, float beta)          \
{                                                                                                                \
    const size_t stride = (size_t)(STRIDE);                                                                      \
    int r = 0;                                                                                                   \
    for (; r + 4 <= rows; r += 4) FN##_rows(x, n, k, w + r * stride, out + r, ld_out, beta, 4);                  \
    switch (rows - r) {                                                                                          \
    case 3: FN##_rows(x, n, k, w + r * stride, out + r, ld_out, beta, 3); break;                                 \
    case 2: FN##_rows(x, n, k, w + r * stride, out + r, ld_out, beta, 2); break;                                 \
    case 1: FN##_rows(x, n, k, w + r * stride, out + r, ld_out, beta, 1); break;                                 \
    }                                                                                                            \
}

LIN_AVX2_DRIVERS(lin_small_f32_avx2, float, k, "avx2,fma")

/* ---- GEMM for many activation rows (prefill) on weight rows already in float32 (qlinear's decoded panels):
 * out (n, rows) = x (n, k) @ w (rows, k).T + beta * out, with x packed once per call by lin_gemm_pack_x. The
 * register block is LIN_GEMM_MR = 6 weight rows x 16 activation rows: 12 accumulators of 8 lanes, per column
 * two vector loads of packed x and 6 broadcasts of w for 12 FMAs. k goes in blocks of LIN_GEMM_KC, so that the
 * 16 rows of packed x (16 KB) and the 6 weight rows (6 KB) of a block stay in L1 while the tiles sweep, and all
 * of x's block (n * 1 KB) in L2. Nothing is packed per panel: BLAS's sgemm packed both operands again for each
 * decoded panel (a fifth of the 1B prefill's time). */
/* Bytes of lin_gemm_pack_x's output for x (n, k). */
static inline size_t lin_gemm_packed_bytes(int n, int k) { return (size_t)(n + 15) / 16 * 16 * (size_t)k * 4; }

/* x (n, k) -> xp: per block of LIN_GEMM_KC columns (the last one shorter), per 16 rows (zeros past n), the
 * block's columns one after another, 16 values each. */
static void lin_gemm_pack_x(const float *x, int n, int k, float *xp)
{
    const int nb = (n + 15) / 16;
    for (int k0 = 0; k0 < k; k0 += LIN_GEMM_KC) {
        const int kc = k - k0 < LIN_GEMM_KC ? k - k0 : LIN_GEMM_KC;
        for (int jb = 0; jb < nb; jb++) {
            float *dst = xp + (size_t)k0 * nb * 16 + (size_t)jb * kc * 16;
            for (int t = 0; t < 16; t++) {
                const int j = 16 * jb + t;
                for (int l = 0; l < kc; l++) dst[16 * l + t] = j < n ? x[(size_t)j * k + k0 + l] : 0.0f;
            }
        }
    }
}

/* TILE(R) for the rows left (of a matrix or panel), R = min(left, LIN_GEMM_MR) as a constant, so that the
 * tile's loops over its rows unroll (also qlinear_impl.h's integer GEMM). */
#define LIN_GEMM_TILES(left, TILE)                                                                             \
    switch ((left) < LIN_GEMM_MR ? (left) : LIN_GEMM_MR) {                                                      \
    case 6: TILE(6); break;                                                                                    \
    case 5: TILE(5); break;                                                                                    \
    case 4: TILE(4); break;                                                                                    \
    case 3: TILE(3); break;                                                                                    \
    case 2: TILE(2); break;                                                                                    \
    default: TILE(1); break;                                                                                   \
    }

/* A tile's sums acc[i] (weight row i, activation rows 0-7 and 8-15) into out[:T, :R]: stored (+ beta * out)
 * for the first block of k, added to out for the later ones. */
LIN_AVX2_INLINE void lin_gemm_store_avx2(__m256 (*acc)[2], float *out, int ld_out, int T, float beta, int first,
                                         const int R)
{
    float v[LIN_GEMM_MR][16];
    for (int i = 0; i < R; i++) {
        _mm256_storeu_ps(v[i], acc[i][0]);
        _mm256_storeu_ps(v[i] + 8, acc[i][1]);
    }
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * ld_out;
        for (int i = 0; i < R; i++)
            o[i] = !first ? o[i] + v[i][t] : beta != 0.0f ? v[i][t] + beta * o[i] : v[i][t];
    }
}

/* out[:T, :R] (+)= the tile of R <= 6 weight rows w (stride k) x 16 packed activation rows over kc columns;
 * the first block of k stores acc (+ beta * out), the later ones add to out. */
LIN_AVX2_INLINE void lin_gemm_tile_avx2(const float *xp, const float *w, size_t k, int kc, float *out, int ld_out,
                                        int T, float beta, int first, const int R)
{
    __m256 acc[LIN_GEMM_MR][2];
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int l = 0; l < kc; l++) {
        const __m256 b0 = _mm256_loadu_ps(xp + 16 * l), b1 = _mm256_loadu_ps(xp + 16 * l + 8);
        for (int i = 0; i < R; i++) {
            const __m256 a = _mm256_broadcast_ss(w + (size_t)i * k + l);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
    }
    lin_gemm_store_avx2(acc, out, ld_out, T, beta, first, R);
}

__attribute__((target("avx2,fma")))
static void lin_gemm_f32_avx2(const float *xp, int n, int k, const float *w, int rows, float *out, int ld_out,
                              float beta)
{
    const int nb = (n + 15) / 16;
    for (int k0 = 0; k0 < k; k0 += LIN_GEMM_KC) {
        const int kc = k - k0 < LIN_GEMM_KC ? k - k0 : LIN_GEMM_KC, first = k0 == 0;
        const float *xb = xp + (size_t)k0 * nb * 16;
        for (int r = 0; r < rows; r += LIN_GEMM_MR) {
            const float *wr = w + (size_t)r * k + k0;
            for (int jb = 0; jb < nb; jb++) {
                const int T = n - 16 * jb < 16 ? n - 16 * jb : 16;
                const float *xt = xb + (size_t)jb * kc * 16;
                float *o = out + (size_t)16 * jb * ld_out + r;
#define LIN_TILE(RC) lin_gemm_tile_avx2(xt, wr, k, kc, o, ld_out, T, beta, first, RC)
                LIN_GEMM_TILES(rows - r, LIN_TILE);
#undef LIN_TILE
            }
        }
    }
}

#else  /* not x86: no AVX2 path; linear.pyx never calls it (fl_cpu_has(FL_ISA_AVX2) is 0) */

static void lin_small_f32_avx2(const float *x, int n, int k, const float *w, int rows, float *out, int ld_out,
                               float beta) {}
static inline size_t lin_gemm_packed_bytes(int n, int k) { return 0; }
static void lin_gemm_pack_x(const float *x, int n, int k, float *xp) {}
static void lin_gemm_f32_avx2(const float *xp, int n, int k, const float *w, int rows, float *out, int ld_out,
                              float beta) {}

#endif

/* The portable kernel, the same contract for element type T, as FN, compiled for TARGET (empty, or a target
 * attribute). Its register block is 4 weight rows x 2 activation rows of GCC/Clang vectors of VB bytes, the
 * target's register width, so the compiler emits whatever SIMD the target has; the k % lanes columns are added
 * in scalar code. */
#define LIN_PORTABLE(T, FN, TARGET, VB)                                                                            \
typedef T FN##_vec __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));                                \
                                                                                                                   \
TARGET static inline __attribute__((always_inline)) void FN##_block(const T *x, const T *w, int k, T *out,        \
                                                                    int ld_out, T beta, const int R, const int J)  \
{                                                                                                                  \
    const size_t lanes = VB / sizeof(T), kv = (size_t)k - (size_t)k % lanes;                                      \
    FN##_vec acc[4][2] = {{{0}}}, wv[4];                                                                           \
    for (size_t d = 0; d < kv; d += lanes) {                                                                       \
        for (int i = 0; i < R; i++) wv[i] = *(const FN##_vec *)(w + (size_t)i * k + d);                            \
        for (int i = 0; i < R; i++) __builtin_prefetch(LIN_AHEAD(w + (size_t)i * k + d, k), 0, 2);   /* to L2 */  \
        for (int j = 0; j < J; j++) {                                                                              \
            const FN##_vec xv = *(const FN##_vec *)(x + (size_t)j * k + d);                                        \
            for (int i = 0; i < R; i++) acc[i][j] += wv[i] * xv;                                                   \
        }                                                                                                          \
    }                                                                                                              \
    for (int j = 0; j < J; j++)                                                                                    \
        for (int i = 0; i < R; i++) {                                                                              \
            T s = 0;                                                                                               \
            for (size_t l = 0; l < lanes; l++) s += acc[i][j][l];                                                  \
            for (size_t d = kv; d < (size_t)k; d++) s += w[(size_t)i * k + d] * x[(size_t)j * k + d];             \
            T *o = out + (size_t)j * ld_out + i;                                                                   \
            *o = beta != 0 ? s + beta * *o : s;                                                                    \
        }                                                                                                          \
}                                                                                                                  \
                                                                                                                   \
TARGET static inline __attribute__((always_inline)) void FN##_rows(const T *x, int n, int k, const T *w, T *out,  \
                                                                   int ld_out, T beta, const int R)                \
{                                                                                                                  \
    int j = 0;                                                                                                     \
    for (; j + 2 <= n; j += 2) FN##_block(x + (size_t)j * k, w, k, out + (size_t)j * ld_out, ld_out, beta, R, 2);  \
    if (j < n) FN##_block(x + (size_t)j * k, w, k, out + (size_t)j * ld_out, ld_out, beta, R, 1);                  \
}                                                                                                                  \
                                                                                                                   \
TARGET static void FN(const T *x, int n, int k, const T *w, int rows, T *out, int ld_out, T beta)                 \
{                                                                                                                  \
    int r = 0;                                                                                                     \
    for (; r + 4 <= rows; r += 4) FN##_rows(x, n, k, w + (size_t)r * k, out + r, ld_out, beta, 4);                 \
    for (; r < rows; r++) FN##_rows(x, n, k, w + (size_t)r * k, out + r, ld_out, beta, 1);                         \
}

/* Baseline builds (SSE2 on x86-64, NEON on arm64), and float64 again for AVX2/FMA (a plain copy elsewhere). */
LIN_PORTABLE(float, lin_small_f32, , 16)
LIN_PORTABLE(double, lin_small_f64, , 16)
#if defined(__x86_64__) || defined(__i386__)
LIN_PORTABLE(double, lin_small_f64_avx2, __attribute__((target("avx2,fma"))), 32)
#else
LIN_PORTABLE(double, lin_small_f64_avx2, , 16)
#endif

#undef LIN_PORTABLE

#endif
