/* Quantization of float32 blocks into ggml formats: the inverse of ggml_blocks.h's decoders, one function per
 * format (the formats' table, ggml_types.h, points at them). Each equals ggml's reference quantizer
 * (quantize_row_*_ref in ggml-quants.c, mirrored by the gguf package's gguf.quants.quantize) bit for bit:
 *
 *   Q8_0  d = amax / 127, id = d ? 1/d : 0, q = roundf(x * id)                    (half away from zero)
 *   Q4_0  m = the element of largest |x| (first one, sign kept), d = m / -8, id = d ? 1/d : 0,
 *         q = min(15, (int8)(x * id + 8.5))                                         (truncation)
 *   Q5_0  as Q4_0 with d = m / -16, q = min(31, (int8)(x * id + 16.5)), the 5th bits in qh
 *   Q4_1  d = (max - min) / 15, id = d ? 1/d : 0, q = min(15, (int8)((x - min) * id + 0.5)), m = min
 *   Q5_1  as Q4_1 with d = (max - min) / 31, q up to 31, the 5th bits in qh
 *   F16   IEEE half, round to nearest even (subnormals kept, overflow to infinity)
 *
 * each step one rounded float32 operation in ggml's order. The K-quants (Q2_K ... Q6_K) and IQ4_NL / IQ4_XS
 * below search for their scales as ggml does when no importance matrix is given; the gguf package has no
 * quantizer for them, so tests/data/quant_goldens.npz holds llama.cpp's own bytes. This file is compiled
 * without floating-point contraction, so no multiply-add is ever fused into an FMA (which would round once
 * instead of twice). Bytes
 * are stored one at a time, so the output needs no alignment and does not depend on the host's byte order.
 */
#ifndef FASTLM_GGML_QUANTIZE_H
#define FASTLM_GGML_QUANTIZE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ggml_blocks.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize ("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif


static inline float blkq_bits_to_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t blkq_f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

/* float32 -> IEEE half, round to nearest even: the branch-free conversion of the FP16 library, which
   ggml's portable GGML_FP32_TO_FP16 uses (F16C's vcvtps2ph rounds the same way). NaN -> 0x7E00. */
static inline uint16_t blkq_fp32_to_fp16(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = blkq_f32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = blkq_bits_to_f32((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = blkq_f32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline void blkq_put16(uint8_t* p, uint16_t h) { p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

static inline void blkq_f32(const float* x, uint8_t* y) {
    const uint32_t w = blkq_f32_to_bits(*x);
    y[0] = (uint8_t)w; y[1] = (uint8_t)(w >> 8); y[2] = (uint8_t)(w >> 16); y[3] = (uint8_t)(w >> 24);
}

static inline void blkq_f16(const float* x, uint8_t* y) { blkq_put16(y, blkq_fp32_to_fp16(*x)); }

/* The element of largest |x| among n (the first one, its sign kept), as ggml finds it for Q4_0 / Q5_0 and the
   K-quants' scales; its fabsf is that largest |x|. */
static inline float blkq_absmax_signed(const float* x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        const float v = x[j];
        if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
    }
    return max;
}

/* fp16 d, int8 q[32] */
static inline void blkq_q8_0(const float* x, uint8_t* y) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float v = fabsf(x[j]);
        amax = amax > v ? amax : v;      /* MAX(amax, v), as ggml: a NaN v is skipped */
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blkq_put16(y, blkq_fp32_to_fp16(d));
    for (int j = 0; j < 32; j++) {
        const float x0 = x[j] * id;
        y[2 + j] = (uint8_t)(int8_t)roundf(x0);
    }
}

/* fp16 d, 16 bytes: low nibble q[j], high nibble q[j + 16] */
static inline void blkq_q4_0(const float* x, uint8_t* y) {
    const float d = blkq_absmax_signed(x, 32) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blkq_put16(y, blkq_fp32_to_fp16(d));
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
static inline void blkq_q4_1(const float* x, uint8_t* y) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
        const float v = x[j];
        if (v < min) min = v;
        if (v > max) max = v;
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blkq_put16(y, blkq_fp32_to_fp16(d));
    blkq_put16(y + 2, blkq_fp32_to_fp16(min));
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

/* Q5_0 / Q5_1: 16 bytes of low nibbles as Q4_0 at qs, the 32 fifth bits as a little-endian u32 at qh. */
static inline void blkq_put5(const int* q, uint8_t* qh, uint8_t* qs) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
        h |= ((uint32_t)(q[j] & 0x10) >> 4) << j;
        h |= ((uint32_t)(q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    qh[0] = (uint8_t)h; qh[1] = (uint8_t)(h >> 8); qh[2] = (uint8_t)(h >> 16); qh[3] = (uint8_t)(h >> 24);
}

/* fp16 d, qh[4], qs[16] */
static inline void blkq_q5_0(const float* x, uint8_t* y) {
    const float d = blkq_absmax_signed(x, 32) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    blkq_put16(y, blkq_fp32_to_fp16(d));
    for (int j = 0; j < 32; j++) {
        const int t = (int8_t)(x[j] * id + 16.5f);
        q[j] = t < 31 ? t : 31;
    }
    blkq_put5(q, y + 2, y + 6);
}

/* fp16 d, fp16 m, qh[4], qs[16] */
static inline void blkq_q5_1(const float* x, uint8_t* y) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    blkq_put16(y, blkq_fp32_to_fp16(d));
    blkq_put16(y + 2, blkq_fp32_to_fp16(min));
    for (int j = 0; j < 32; j++) {
        const int t = (uint8_t)((x[j] - min) * id + 0.5f);
        q[j] = t < 31 ? t : 31;
    }
    blkq_put5(q, y + 4, y + 8);
}

/* ------------------------------------------------------------------------------------------------------------
 * The 256-element K-quants and the non-linear IQ4 formats, as ggml writes them without an importance matrix
 * (ggml-quants.c: quantize_q2_K ... quantize_q6_K fall back to quantize_row_*_ref then; quantize_iq4_nl and
 * quantize_iq4_xs run their search with 7 trial scales either side, which is what llama-quantize writes).
 *
 * Each format fits a scale (and for Q2_K, Q4_K, Q5_K an offset) per sub-block by a small search, stores the
 * sub-scales as 4-, 6- or 8-bit multiples of one fp16 super-scale, then re-rounds every element against the
 * stored (fp16-rounded) scales. The searches compare sums of squares, so one differently rounded product
 * would pick another scale: every expression below keeps ggml's operand order and its int -> float
 * conversions, and nothing is fused (see the pragma above).
 * ------------------------------------------------------------------------------------------------------------ */

/* Round to the nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer, offset by
   2^22, in the low 23 bits of the sum (ggml's nearest_int; the FPU's rounding mode does the rounding). Outside
   that range the result is meaningless but the same as ggml's. */
static inline int blkq_nearest_int(float v) {
    const float shifted = v + 12582912.0f;
    const int32_t bits = (int32_t)blkq_f32_to_bits(shifted);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int blkq_clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Below this largest |x| a sub-block counts as all zeros (ggml's GROUP_MAX_EPS). */
#define BLKQ_ZERO_GROUP 1e-15f

/* Symmetric levels q in [-nmax, nmax - 1] for n values, x ~ scale * q, the scale chosen among 19 trial
   reciprocals -(nmax + k/10) / peak (k = 0, +-1 ... +-9) to maximise (sum w x q)^2 / sum w q^2 with w = x^2
   (ggml's make_qx_quants with rmse_type 1). Writes q + nmax to L; returns the scale. Q6_K's sub-blocks. */
static float blkq_fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
    const float max = blkq_absmax_signed(x, n), amax = fabsf(max);
    if (amax < BLKQ_ZERO_GROUP) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = (float)(-nmax) / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int q = blkq_clamp(blkq_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(q + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)q;
        suml2 += w * (float)q * (float)q;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)k) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const int q = blkq_clamp(blkq_nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * (float)q;
            suml2 += w * (float)q * (float)q;
        }
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + blkq_clamp(blkq_nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's sub-blocks: levels q in [-nmax, nmax - 1] from -nmax / peak, then up to 5 sweeps that move single
   elements to the level the others' least-squares scale suggests whenever that raises (sum w x q)^2 /
   sum w q^2, w = x^2 (ggml's make_q3_quants with do_rmse). Writes q + nmax to L; returns the scale. */
static float blkq_fit_q3(int n, int nmax, const float* x, int8_t* L) {
    const float max = blkq_absmax_signed(x, n), amax = fabsf(max);
    if (amax < BLKQ_ZERO_GROUP) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    const float iscale = (float)(-nmax) / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int q = blkq_clamp(blkq_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)q;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)q;
        suml2 += w * (float)q * (float)q;
    }
    for (int sweep = 0; sweep < 5; sweep++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];          /* the sums without element i */
            if (slx > 0.0f) {
                float sl2 = suml2 - w * (float)L[i] * (float)L[i];
                const int q = blkq_clamp(blkq_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (q != L[i]) {
                    slx += w * x[i] * (float)q;
                    sl2 += w * (float)q * (float)q;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)q;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Levels q in [0, nmax] with x ~ scale * q - offset (offset >= 0: the minimum is never above 0), by weighted
   least squares over nsteps + 1 trial reciprocals (rmin + step * k + nmax) / (max - min), keeping the one of
   least weighted error (|error| with absolute, squared otherwise) (ggml's make_qkx2_quants). Writes q to L and
   the offset to *offset; returns the scale. Q2_K's, Q4_K's and Q5_K's sub-blocks. */
static float blkq_fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* offset,
                             float rmin, float step, int nsteps, int absolute) {
    uint8_t trial[32];
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *offset = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    float best_error = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)blkq_clamp(blkq_nearest_int(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * (float)L[i] + min - x[i];
        diff = absolute ? fabsf(diff) : diff * diff;
        best_error += w[i] * diff;
    }
    for (int k = 0; k <= nsteps; k++) {
        iscale = (rmin + step * (float)k + (float)nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int q = blkq_clamp(blkq_nearest_int(iscale * (x[i] - min)), 0, nmax);
            trial[i] = (uint8_t)q;
            sum_l += w[i] * (float)q;
            sum_l2 += w[i] * (float)q * (float)q;
            sum_xl += w[i] * (float)q * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            float error = 0.0f;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * (float)trial[i] + this_min - x[i];
                diff = absolute ? fabsf(diff) : diff * diff;
                error += w[i] * diff;
            }
            if (error < best_error) {
                for (int i = 0; i < n; i++) L[i] = trial[i];
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *offset = -min;
    return scale;
}

/* 256 2-bit levels into 64 bytes: per 128 elements, byte l holds elements l, l + 32, l + 64, l + 96 (low bits
   first). Q2_K's and Q3_K's qs. */
static inline void blkq_pack2(const uint8_t* L, uint8_t* qs) {
    for (int h = 0; h < 256; h += 128)
        for (int l = 0; l < 32; l++)
            qs[h / 4 + l] = (uint8_t)(L[h + l] | (L[h + l + 32] << 2) | (L[h + l + 64] << 4) | (L[h + l + 96] << 6));
}

/* Q2_K, 84 bytes: scales[16] (low nibble: the sub-block's scale, high nibble: its offset, in units of d and
   dmin), qs[64] (2-bit levels, 4 per byte: elements l, l + 32, l + 64, l + 96 of each 128), fp16 d, fp16 dmin.
   16 sub-blocks of 16, weights |x|. */
static inline void blkq_q2_k(const float* x, uint8_t* y) {
    uint8_t L[256];
    float w[16], scales[16], mins[16];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = blkq_fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t* sc = y;
    if (max_scale > 0.0f) {
        const float iscale = 15.0f / max_scale;
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)blkq_nearest_int(iscale * scales[j]);
        blkq_put16(y + 80, blkq_fp32_to_fp16(max_scale / 15.0f));
    } else {
        for (int j = 0; j < 16; j++) sc[j] = 0;
        blkq_put16(y + 80, blkq_fp32_to_fp16(0.0f));
    }
    if (max_min > 0.0f) {
        const float iscale = 15.0f / max_min;
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)(sc[j] | (blkq_nearest_int(iscale * mins[j]) << 4));
        blkq_put16(y + 82, blkq_fp32_to_fp16(max_min / 15.0f));
    } else {
        blkq_put16(y + 82, blkq_fp32_to_fp16(0.0f));
    }
    const float d_all = blk_h(y + 80), m_all = blk_h(y + 82);
    for (int j = 0; j < 16; j++) {              /* re-round against the stored scales (a zero scale keeps L) */
        const float d = d_all * (float)(sc[j] & 0xF);
        if (d == 0.0f) continue;
        const float dm = m_all * (float)(sc[j] >> 4);
        for (int l = 0; l < 16; l++)
            L[16 * j + l] = (uint8_t)blkq_clamp(blkq_nearest_int((x[16 * j + l] + dm) / d), 0, 3);
    }
    blkq_pack2(L, y + 16);
}

/* Q3_K, 110 bytes: hmask[32] (bit j / 32 of byte j % 32: the third bit of element j), qs[64] (low 2 bits, as
   Q2_K), scales[12] (16 6-bit sub-scales + 32, see blk_k3_scale), fp16 d. Levels -4..3, 16 sub-blocks. */
static inline void blkq_q3_k(const float* x, uint8_t* y) {
    int8_t L[256];
    float scales[16];
    for (int j = 0; j < 16; j++) scales[j] = blkq_fit_q3(16, 4, x + 16 * j, L + 16 * j);
    const float max_scale = blkq_absmax_signed(scales, 16);
    uint8_t* sc = y + 96;
    memset(sc, 0, 12);
    if (max_scale != 0.0f) {
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            int8_t l = (int8_t)blkq_nearest_int(iscale * scales[j]);       /* ggml keeps it in an int8 */
            l = (int8_t)(blkq_clamp(l, -32, 31) + 32);
            if (j < 8) sc[j] = (uint8_t)(l & 0xF);
            else sc[j - 8] = (uint8_t)(sc[j - 8] | ((l & 0xF) << 4));
            sc[8 + j % 4] = (uint8_t)(sc[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
        }
        blkq_put16(y + 108, blkq_fp32_to_fp16(1.0f / iscale));
    } else {
        blkq_put16(y + 108, blkq_fp32_to_fp16(0.0f));
    }
    const float d_all = blk_h(y + 108);
    for (int j = 0; j < 16; j++) {
        const float d = d_all * (float)blk_k3_scale(sc, j);
        if (d == 0.0f) continue;
        for (int l = 0; l < 16; l++)
            L[16 * j + l] = (int8_t)(blkq_clamp(blkq_nearest_int(x[16 * j + l] / d), -4, 3) + 4);
    }
    uint8_t* hmask = y;
    memset(hmask, 0, 32);
    for (int j = 0; j < 256; j++) {
        if (L[j] > 3) {
            hmask[j % 32] = (uint8_t)(hmask[j % 32] | (1u << (j / 32)));
            L[j] = (int8_t)(L[j] - 4);
        }
    }
    blkq_pack2((const uint8_t*)L, y + 32);          /* every level is 0..3 by now */
}

/* Q4_K / Q5_K's first half: 8 sub-blocks of 32 fitted affinely (weights rms(x) + |x|), the 6-bit scales and
   offsets packed at y + 4 (see blk_k4_scale), fp16 d and dmin at y, y + 2; then every element re-rounded to
   [0, nmax] against the stored values (a sub-block whose stored scale is 0 keeps the fit's levels). */
static inline void blkq_k4_fit(const float* x, uint8_t* y, uint8_t* L, int nmax, float rmin, int nsteps) {
    float w[32], scales[8], mins[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; j++) {
        const float* xs = x + 32 * j;
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        const float rms = sqrtf(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++) w[l] = rms + fabsf(xs[l]);
        scales[j] = blkq_fit_affine(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nsteps, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t* sc = y + 4;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)blkq_nearest_int(inv_scale * scales[j]);     /* wraps like ggml's uint8_t */
        uint8_t lm = (uint8_t)blkq_nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] = (uint8_t)(sc[j - 4] | ((ls >> 4) << 6));
            sc[j] = (uint8_t)(sc[j] | ((lm >> 4) << 6));
        }
    }
    blkq_put16(y, blkq_fp32_to_fp16(max_scale / 63.0f));
    blkq_put16(y + 2, blkq_fp32_to_fp16(max_min / 63.0f));
    const float d_all = blk_h(y), m_all = blk_h(y + 2);
    for (int j = 0; j < 8; j++) {
        const float d = d_all * (float)blk_k4_scale(sc, j);
        if (d == 0.0f) continue;
        const float dm = m_all * (float)blk_k4_min(sc, j);
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)blkq_clamp(blkq_nearest_int((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

/* Q4_K, 144 bytes: fp16 d, fp16 dmin, scales[12], qs[128] (per 64 elements: 32 bytes, low nibble element l,
   high nibble element l + 32). x = d * scale * q - dmin * min. */
static inline void blkq_q4_k(const float* x, uint8_t* y) {
    uint8_t L[256];
    blkq_k4_fit(x, y, L, 15, -1.0f, 20);
    uint8_t* q = y + 16;
    for (int h = 0; h < 256; h += 64, q += 32)
        for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[h + l] | (L[h + l + 32] << 4));
}

/* Q5_K, 176 bytes: fp16 d, fp16 dmin, scales[12], qh[32] (the fifth bits: element h + l of each 64 at bit
   2 * (h / 64) of byte l, element h + l + 32 at the bit above), qs[128] (low nibbles, as Q4_K). */
static inline void blkq_q5_k(const float* x, uint8_t* y) {
    uint8_t L[256];
    blkq_k4_fit(x, y, L, 31, -0.5f, 15);
    uint8_t* qh = y + 16;
    uint8_t* ql = y + 48;
    memset(qh, 0, 32);
    for (int h = 0, bit = 0; h < 256; h += 64, bit += 2, ql += 32) {
        for (int l = 0; l < 32; l++) {
            const int lo = L[h + l], hi = L[h + l + 32];
            qh[l] = (uint8_t)(qh[l] | ((lo >> 4) << bit) | ((hi >> 4) << (bit + 1)));
            ql[l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
        }
    }
}

/* Q6_K, 210 bytes: ql[128] (low nibbles: per 128 elements, 64 bytes, byte l holding elements l and l + 64,
   byte l + 32 elements l + 32 and l + 96), qh[64] (top 2 bits: per 128, byte l holds elements l, l + 32,
   l + 64, l + 96), int8 scales[16], fp16 d. Levels -32..31, 16 sub-blocks of 16. */
static inline void blkq_q6_k(const float* x, uint8_t* y) {
    int8_t L[256];
    float scales[16];
    for (int j = 0; j < 16; j++) scales[j] = blkq_fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
    const float max_scale = blkq_absmax_signed(scales, 16);
    if (fabsf(max_scale) < BLKQ_ZERO_GROUP) {                 /* an all-zero block: every byte 0 */
        memset(y, 0, 210);
        return;
    }
    const float iscale = -128.0f / max_scale;
    blkq_put16(y + 208, blkq_fp32_to_fp16(1.0f / iscale));
    int8_t* sc = (int8_t*)(y + 192);
    for (int j = 0; j < 16; j++) {
        const int s = blkq_nearest_int(iscale * scales[j]);
        sc[j] = (int8_t)(s < 127 ? s : 127);
    }
    const float d_all = blk_h(y + 208);
    for (int j = 0; j < 16; j++) {
        const float d = d_all * (float)sc[j];
        if (d == 0.0f) continue;
        for (int l = 0; l < 16; l++)
            L[16 * j + l] = (int8_t)(blkq_clamp(blkq_nearest_int(x[16 * j + l] / d), -32, 31) + 32);
    }
    uint8_t* ql = y;
    uint8_t* qh = y + 128;
    for (int h = 0; h < 256; h += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; l++) {
            const int a = L[h + l], b = L[h + l + 32], c = L[h + l + 64], e = L[h + l + 96];
            ql[l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
            ql[l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
            qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
    }
}

/* The index of the IQ4 level nearest to v (bisection; a tie between two levels goes to the upper one). */
static inline int blkq_iq4_level(float v) {
    const int8_t* lv = BLK_IQ4_LEVELS;
    if (v <= (float)lv[0]) return 0;
    if (v >= (float)lv[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (v < (float)lv[mid]) hi = mid; else lo = mid;
    }
    return v - (float)lv[hi - 1] < (float)lv[hi] - v ? hi - 1 : hi;
}

/* The scale of 32 values on the IQ4 levels: from the peak, then the best (sum w x q)^2 / sum w q^2, w = x^2,
   over 15 trial reciprocals (k - 127) / peak, k = -7..7 (ggml's quantize_row_iq4_nl_impl with ntry 7 and no
   importance weights). 0 for an all-zero sub-block. */
static float blkq_iq4_fit(const float* x) {
    const float max = blkq_absmax_signed(x, 32), amax = fabsf(max);
    if (amax < BLKQ_ZERO_GROUP) return 0.0f;
    const float lv0 = (float)BLK_IQ4_LEVELS[0];
    float d = -max / lv0;
    float id = 1.0f / d;
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float q = (float)BLK_IQ4_LEVELS[blkq_iq4_level(id * x[j])];
        const float w = x[j] * x[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int k = -7; k <= 7; k++) {
        id = (float)(k + BLK_IQ4_LEVELS[0]) / max;
        sumqx = sumq2 = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float q = (float)BLK_IQ4_LEVELS[blkq_iq4_level(id * x[j])];
            const float w = x[j] * x[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

/* 32 values as IQ4 level indices against scale d: 16 bytes, low nibble element j, high nibble element j + 16. */
static inline void blkq_iq4_put(const float* x, float d, uint8_t* qs) {
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)(blkq_iq4_level(id * x[j]) | (blkq_iq4_level(id * x[j + 16]) << 4));
}

/* IQ4_NL, 18 bytes: fp16 d, qs[16]; x = d * level[q]. The indices use the unrounded d, as ggml. */
static inline void blkq_iq4_nl(const float* x, uint8_t* y) {
    const float d = blkq_iq4_fit(x);
    blkq_put16(y, blkq_fp32_to_fp16(d));
    blkq_iq4_put(x, d, y + 2);
}

/* IQ4_XS, 136 bytes: fp16 d, u16 scales_h, scales_l[4], qs[128]: 8 sub-blocks of 32 as IQ4_NL's, each with a
   6-bit scale l + 32 (see blk_iq4xs_scale), x = d * l * level[q]. The sub-scale and the indices use the
   unrounded d = -(the sub-scale of largest |.|) / 32. */
static inline void blkq_iq4_xs(const float* x, uint8_t* y) {
    float scales[8];
    for (int ib = 0; ib < 8; ib++) scales[ib] = blkq_iq4_fit(x + 32 * ib);
    const float max_scale = blkq_absmax_signed(scales, 8);
    const float d = -max_scale / 32.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    blkq_put16(y, blkq_fp32_to_fp16(d));
    uint16_t scales_h = 0;
    for (int ib = 0; ib < 8; ib++) {
        int l = blkq_clamp(blkq_nearest_int(id * scales[ib]), -32, 31);
        blkq_iq4_put(x + 32 * ib, d * (float)l, y + 8 + 16 * ib);
        l += 32;
        if (ib % 2 == 0) y[4 + ib / 2] = (uint8_t)(l & 0xF);
        else y[4 + ib / 2] = (uint8_t)(y[4 + ib / 2] | ((l & 0xF) << 4));
        scales_h = (uint16_t)(scales_h | ((l >> 4) << (2 * ib)));
    }
    blkq_put16(y + 2, scales_h);
}


#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#if defined(__clang__)
#pragma clang fp contract(on)
#endif

#endif
