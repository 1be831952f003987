/* The AVX2 row kernel of layers_core.pxi's gated activations (SwiGLU, GeGLU) in float32; the portable path is
 * the Cython loop there (libm's expf for SiLU, exp in double for GELU's sigmoid form). layers_core.pxi calls it
 * only where cpu_isa.h's probe found AVX2 and FMA.
 *
 * Both activations are act(g) = g * sigmoid(z): z = g for SiLU; z = 2 y for GELU's tanh approximation,
 * y = sqrt(2 / pi) (g + 0.044715 g^3), since 0.5 (1 + tanh(y)) = sigmoid(2 y). sigmoid comes from
 * t = 2^(-|z| log2(e)) in (0, 1], which cannot overflow: 1 / (1 + t) for z >= 0, t / (1 + t) below. fl_exp2_ps
 * is within ~2 ulp, so the outputs are within a few ulp of the portable ones; NaN stays NaN. */
#ifndef FASTLM_LAYERS_IMPL_H
#define FASTLM_LAYERS_IMPL_H

#include <stddef.h>

#include "simd_math.h"

#if defined(__x86_64__) || defined(__i386__)

#define LY_SQRT_2_OVER_PI 0.7978845608028654f

/* act(g) * u for 8 lanes. */
FL_AVX2_INLINE __m256 ly_gated8(__m256 g, __m256 u, int gelu)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 c1 = _mm256_set1_ps(2 * LY_SQRT_2_OVER_PI), c3 = _mm256_set1_ps(2 * LY_SQRT_2_OVER_PI * 0.044715f);
    const __m256 z = gelu ? _mm256_mul_ps(g, _mm256_fmadd_ps(c3, _mm256_mul_ps(g, g), c1)) : g;
    const __m256 t = fl_exp2_ps(_mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), z),
                                              _mm256_set1_ps(-1.4426950408889634f)));
    const __m256 num = _mm256_blendv_ps(one, t, z);         /* t where z's sign bit is set */
    return _mm256_div_ps(_mm256_mul_ps(_mm256_mul_ps(g, u), num), _mm256_add_ps(one, t));
}

/* out[j] = act(gate[j]) * up[j] for j < f; the last f % 8 through masked loads and stores. */
__attribute__((target("avx2,fma"))) static void ly_gated_row_f32_avx2(const float *gate, const float *up,
                                                                      float *out, ptrdiff_t f, int gelu)
{
    ptrdiff_t j = 0;
    for (; j + 8 <= f; j += 8)
        _mm256_storeu_ps(out + j, ly_gated8(_mm256_loadu_ps(gate + j), _mm256_loadu_ps(up + j), gelu));
    if (j < f) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(f - j)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 v = ly_gated8(_mm256_maskload_ps(gate + j, m), _mm256_maskload_ps(up + j, m), gelu);
        _mm256_maskstore_ps(out + j, m, v);
    }
}

#else  /* not x86: no SIMD path; layers_core.pxi never calls it (fl_cpu_has(FL_ISA_AVX2) is 0) */

static void ly_gated_row_f32_avx2(const float *gate, const float *up, float *out, ptrdiff_t f, int gelu) {}

#endif
#endif
