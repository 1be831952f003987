/* ggml's tensor formats in C: fp16 / bf16 conversion and the row decoders, shared by quant.pyx (dequantize,
 * gather_rows) and qlinear_impl.h (decode-and-dot, prefill panels).
 *
 * Every format is a sequence of fixed-size blocks (F32, F16 and BF16 are blocks of one element); fastlm's
 * weights/quant.py documents the layouts. Bytes are assembled one at a time, so the source needs no alignment
 * and the result does not depend on the host's byte order.
 *
 * Decoded to float32 the values equal ggml's reference dequantizers bit for bit: each is a product of fp16
 * scales and small integers (exact in float32) plus at most one rounded operation, in ggml's order; fused or
 * not, d * q + m rounds once. Decoded to float64 nothing rounds at all, so the float64 value rounded to
 * float32 is ggml's.
 */
#ifndef FASTLM_GGML_BLOCKS_H
#define FASTLM_GGML_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ggml type ids, as GGUF tensor infos store them. */
enum { BLK_F32 = 0, BLK_F16 = 1, BLK_Q4_0 = 2, BLK_Q4_1 = 3, BLK_Q8_0 = 8, BLK_Q4_K = 12, BLK_Q6_K = 14,
       BLK_BF16 = 30 };

static inline float blk_bits_to_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t blk_f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }
static inline uint16_t blk_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float blk_f32(const uint8_t *p)
{
    return blk_bits_to_f32(p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24));
}

/* IEEE half -> single, exact for every finite value and infinity (NaN stays NaN): the branch-free conversion of
 * the FP16 library that ggml's portable path also uses. */
static inline float blk_fp16(uint16_t h)
{
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = blk_bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = blk_bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? blk_f32_to_bits(denormalized) : blk_f32_to_bits(normalized);
    return blk_bits_to_f32(sign | bits);
}

static inline float blk_bf16(uint16_t h) { return blk_bits_to_f32((uint32_t)h << 16); }

/* Q4_K's eight 6-bit (scale, min) pairs in 12 bytes: pairs 0-3 in the low 6 bits of bytes 0-3 (scales) and
 * 4-7 (mins); pairs 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits from the spare top bits of
 * bytes 0-7 (ggml's get_scale_min_k4). */
static inline int blk_k4_scale(const uint8_t *q, int j)
{
    return j < 4 ? q[j] & 63 : (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
}

static inline int blk_k4_min(const uint8_t *q, int j)
{
    return j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
}

/* FN(qtype, src, y, k): the k elements (whole blocks) of qtype at src into y, of type T, compiled for TARGET
 * (empty, or a target attribute: the compiler then vectorizes the loops for it). */
#define BLK_DECODER(FN, T, TARGET)                                                                               \
TARGET static void FN(int qtype, const uint8_t *src, T *y, size_t k)                                             \
{                                                                                                                \
    if (qtype == BLK_F32) {                                                                                      \
        for (size_t i = 0; i < k; i++) y[i] = blk_f32(src + 4 * i);                                              \
    } else if (qtype == BLK_F16) {                                                                               \
        for (size_t i = 0; i < k; i++) y[i] = blk_fp16(blk_u16(src + 2 * i));                                    \
    } else if (qtype == BLK_BF16) {                                                                              \
        for (size_t i = 0; i < k; i++) y[i] = blk_bf16(blk_u16(src + 2 * i));                                    \
    } else if (qtype == BLK_Q8_0) {                 /* d, int8 q[32]: x = d * q */                               \
        for (size_t b = 0; b < k / 32; b++, src += 34, y += 32) {                                                \
            const T d = blk_fp16(blk_u16(src));                                                                  \
            for (int j = 0; j < 32; j++) y[j] = d * (int8_t)src[2 + j];                                          \
        }                                                                                                        \
    } else if (qtype == BLK_Q4_0) {                 /* d, 16 bytes: low nibble j, high nibble j + 16 */           \
        for (size_t b = 0; b < k / 32; b++, src += 18, y += 32) {                                                \
            const T d = blk_fp16(blk_u16(src));                                                                  \
            for (int j = 0; j < 16; j++) {                                                                       \
                y[j] = d * ((src[2 + j] & 0x0F) - 8);                                                            \
                y[j + 16] = d * ((src[2 + j] >> 4) - 8);                                                         \
            }                                                                                                    \
        }                                                                                                        \
    } else if (qtype == BLK_Q4_1) {                 /* d, m, nibbles as Q4_0: x = d * q + m */                   \
        for (size_t b = 0; b < k / 32; b++, src += 20, y += 32) {                                                \
            const T d = blk_fp16(blk_u16(src)), m = blk_fp16(blk_u16(src + 2));                                  \
            for (int j = 0; j < 16; j++) {                                                                       \
                y[j] = d * (src[4 + j] & 0x0F) + m;                                                              \
                y[j + 16] = d * (src[4 + j] >> 4) + m;                                                           \
            }                                                                                                    \
        }                                                                                                        \
    } else if (qtype == BLK_Q4_K) {                 /* 4 groups of 64: low nibbles pair 2g, high 2g + 1 */       \
        for (size_t b = 0; b < k / 256; b++, src += 144) {                                                       \
            const T d = blk_fp16(blk_u16(src)), dmin = blk_fp16(blk_u16(src + 2));                               \
            const uint8_t *sc = src + 4, *qs = src + 16;                                                         \
            for (int g = 0; g < 4; g++, qs += 32, y += 64) {                                                     \
                const T d1 = d * blk_k4_scale(sc, 2 * g), m1 = dmin * blk_k4_min(sc, 2 * g);                     \
                const T d2 = d * blk_k4_scale(sc, 2 * g + 1), m2 = dmin * blk_k4_min(sc, 2 * g + 1);             \
                for (int l = 0; l < 32; l++) {                                                                   \
                    y[l] = d1 * (qs[l] & 0x0F) - m1;                                                             \
                    y[l + 32] = d2 * (qs[l] >> 4) - m2;                                                          \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
    } else if (qtype == BLK_Q6_K) {                 /* two halves of 128: 64 ql, 32 qh, 8 scales each */         \
        for (size_t b = 0; b < k / 256; b++, src += 210) {                                                       \
            const uint8_t *ql = src, *qh = src + 128;                                                            \
            const int8_t *sc = (const int8_t *)(src + 192);                                                      \
            const T d = blk_fp16(blk_u16(src + 208));                                                            \
            for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {                        \
                for (int l = 0; l < 32; l++) {                                                                   \
                    const int s = l / 16;                                                                        \
                    y[l] = d * sc[s] * (((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);                      \
                    y[l + 32] = d * sc[s + 2] * (((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);        \
                    y[l + 64] = d * sc[s + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);               \
                    y[l + 96] = d * sc[s + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);          \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
    }                                                                                                            \
}

BLK_DECODER(blk_decode_f32, float, )
BLK_DECODER(blk_decode_f64, double, )

#endif
