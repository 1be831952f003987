/* Vector math shared by the kernels' AVX2 paths (attention's softmax, the gated activations). Target
 * attributes, not -march: callers run it only where cpu_isa.h's probe found AVX2 and FMA. */
#ifndef FASTLM_SIMD_MATH_H
#define FASTLM_SIMD_MATH_H

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define FL_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* 2^x for x <= 0 (Cephes exp2f polynomial on the fraction, ~2 ulp); 0 below -126, so masked -inf scores
 * give exactly zero weight; NaN stays NaN. */
FL_AVX2_INLINE __m256 fl_exp2_ps(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-126.0f);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ);
    x = _mm256_max_ps(lo, x);
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);                                          /* in [-0.5, 0.5] */
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

#endif
#endif
