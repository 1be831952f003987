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
 * each step one rounded float32 operation in ggml's order. This file is compiled without floating-point
 * contraction, so no multiply-add is ever fused into an FMA (which would round once instead of twice). Bytes
 * are stored one at a time, so the output needs no alignment and does not depend on the host's byte order.
 */
#ifndef FASTLM_GGML_QUANTIZE_H
#define FASTLM_GGML_QUANTIZE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* The element of largest |x| among n (the first one, its sign kept), as ggml's Q4_0 / Q5_0 find it. */
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#if defined(__clang__)
#pragma clang fp contract(on)
#endif

#endif
