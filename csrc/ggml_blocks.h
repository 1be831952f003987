/* ggml's tensor formats in C, bit by bit: fp16 / bf16 conversion, each block format's unpacking into integers
 * and scales, and the row decoders built on it. The formats' table (ggml_types.h) points here; quant.pyx
 * (dequantize, gather_rows) and the kernels of qlinear_impl.h use it.
 *
 * Every format is a sequence of fixed-size blocks (F32, F16 and BF16 are blocks of one element); fastlm's
 * weights/quant.py documents the layouts. Bytes are assembled one at a time, so the source needs no alignment
 * and the result does not depend on the host's byte order.
 *
 * A block of a quantized format is read in chunks of 32 elements (1 chunk for the 32-element formats, 8 for
 * the 256-element K-quants and IQ4_XS): blk_chunk() gives each chunk's integers q[32] and, per half of 16
 * elements, a float scale dl and offset m, with x = dl * q + m (m = 0 for the formats without one). dl is the
 * fp16 scale times a small integer (6-bit or int8 sub-scales), m likewise: both are exact in float32, as in
 * ggml, and dl * q + m is ggml's expression in ggml's order: decoded to float32 every value equals ggml's
 * reference dequantizer bit for bit (dl * q is exact except for IQ4_XS, where ggml rounds it once too; then at
 * most the one addition rounds, so fused or not the result is the same). Decoded to float64 nothing rounds,
 * so the float64 value rounded to float32 is ggml's.
 */
#ifndef FASTLM_GGML_BLOCKS_H
#define FASTLM_GGML_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ggml type ids, as GGUF tensor infos store them. */
enum { BLK_F32 = 0, BLK_F16 = 1, BLK_Q4_0 = 2, BLK_Q4_1 = 3, BLK_Q5_0 = 6, BLK_Q5_1 = 7, BLK_Q8_0 = 8,
       BLK_Q2_K = 10, BLK_Q3_K = 11, BLK_Q4_K = 12, BLK_Q5_K = 13, BLK_Q6_K = 14, BLK_IQ4_NL = 20,
       BLK_IQ4_XS = 23, BLK_BF16 = 30, BLK_ID_MAX = 30 };

/* Elements and bytes of a block, and whether x = dl * q + m has an m: compile-time constants wherever qt is. */
#define BLK_ELEMS(qt) ((qt) == BLK_F32 || (qt) == BLK_F16 || (qt) == BLK_BF16 ? 1                                  \
                       : (qt) == BLK_Q2_K || (qt) == BLK_Q3_K || (qt) == BLK_Q4_K || (qt) == BLK_Q5_K              \
                         || (qt) == BLK_Q6_K || (qt) == BLK_IQ4_XS ? 256 : 32)
#define BLK_BYTES(qt) ((qt) == BLK_F32 ? 4 : (qt) == BLK_F16 || (qt) == BLK_BF16 ? 2 : (qt) == BLK_Q4_0 ? 18       \
                       : (qt) == BLK_Q4_1 ? 20 : (qt) == BLK_Q5_0 ? 22 : (qt) == BLK_Q5_1 ? 24                      \
                       : (qt) == BLK_Q8_0 ? 34 : (qt) == BLK_Q2_K ? 84 : (qt) == BLK_Q3_K ? 110                     \
                       : (qt) == BLK_Q4_K ? 144 : (qt) == BLK_Q5_K ? 176 : (qt) == BLK_Q6_K ? 210                   \
                       : (qt) == BLK_IQ4_NL ? 18 : (qt) == BLK_IQ4_XS ? 136 : 0)
#define BLK_HAS_MIN(qt) ((qt) == BLK_Q4_1 || (qt) == BLK_Q5_1 || (qt) == BLK_Q2_K || (qt) == BLK_Q4_K            \
                         || (qt) == BLK_Q5_K)
/* Formats whose two halves of a chunk have their own scale (16-element sub-blocks); Q2_K also its own m. */
#define BLK_SPLIT(qt) ((qt) == BLK_Q2_K || (qt) == BLK_Q3_K || (qt) == BLK_Q6_K)

static inline float blk_bits_to_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t blk_f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }
static inline uint16_t blk_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t blk_u32(const uint8_t *p)
{
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline float blk_f32(const uint8_t *p) { return blk_bits_to_f32(blk_u32(p)); }

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
static inline float blk_h(const uint8_t *p) { return blk_fp16(blk_u16(p)); }

/* Q4_K's and Q5_K's eight 6-bit (scale, min) pairs in 12 bytes: pairs 0-3 in the low 6 bits of bytes 0-3
 * (scales) and 4-7 (mins); pairs 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits from the spare
 * top bits of bytes 0-7. */
static inline int blk_k4_scale(const uint8_t *q, int j)
{
    return j < 4 ? q[j] & 63 : (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
}

static inline int blk_k4_min(const uint8_t *q, int j)
{
    return j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
}

/* Q3_K's sixteen 6-bit scales in 12 bytes: low 4 bits of scale i in byte i (i < 8) or the high nibble of byte
 * i - 8; top 2 bits in byte 8 + i % 4 at bit 2 * (i / 4); stored + 32. */
static inline int blk_k3_scale(const uint8_t *s, int i)
{
    const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    return (lo | (((s[8 + (i & 3)] >> (2 * (i >> 2))) & 3) << 4)) - 32;
}

/* IQ4_NL's and IQ4_XS's 16 non-uniform levels. */
static const int8_t BLK_IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* IQ4_XS's 6-bit scale of sub-block ib (0-7): 4 low bits in nibble ib % 2 of byte 4 + ib / 2, 2 high bits in
 * the u16 at byte 2; stored + 32. */
static inline int blk_iq4xs_scale(const uint8_t *b, int ib)
{
    return (((b[4 + ib / 2] >> (4 * (ib & 1))) & 15) | (((blk_u16(b + 2) >> (2 * ib)) & 3) << 4)) - 32;
}

/* Chunk c (32 elements) of the block at b of quantized type qt: integers q, and per half of 16 elements the
 * scale dl and offset m, x = dl * q + m (see the top). The layouts, element e = 32 c + l:
 *   Q8_0    d, int8 q[32]                                       q = q[l]
 *   Q4_0    d, qs[16]: low nibbles elements 0-15, high 16-31   q = nibble - 8
 *   Q4_1    d, m, qs[16] as Q4_0                               q = nibble, m
 *   Q5_0    d, qh (u32: bit l = 5th bit of element l), qs[16]  q = (nibble | bit << 4) - 16
 *   Q5_1    d, m, qh, qs[16]                                   q = nibble | bit << 4, m
 *   IQ4_NL  d, qs[16] as Q4_0                                  q = LEVELS[nibble]
 *   Q2_K    scales[16] (low nibble scale, high min), qs[64], d, dmin: 2 bits at shift 2 (c % 4) of
 *           qs[32 (c / 4) + l]; dl = d scale, m = -dmin min per 16 elements
 *   Q3_K    hmask[32], qs[64], scales[12], d: 2 bits as Q2_K, minus 4 unless bit c of hmask[l]; dl = d scale
 *   Q4_K    d, dmin, scales[12], qs[128]: nibble c % 2 of qs[32 (c / 2) + l]; dl = d scale, m = -dmin min
 *   Q5_K    d, dmin, scales[12], qh[32], qs[128]: as Q4_K, 5th bit = bit c of qh[l]
 *   Q6_K    ql[128], qh[64], int8 scales[16], d: low 4 bits nibble (c % 4) / 2 of ql[64 (c / 4) + 32 (c % 2)
 *           + l], high 2 at shift 2 (c % 4) of qh[32 (c / 4) + l], minus 32; dl = d scale per 16 elements
 *   IQ4_XS  d, scales_h (u16), scales_l[4], qs[128]: as IQ4_NL on qs[16 c ...]; dl = d scale */
static inline __attribute__((always_inline)) void blk_chunk(const int qt, const uint8_t *b, int c, int16_t *q,
                                                            float *dl, float *m)
{
    m[0] = m[1] = 0.0f;
    switch (qt) {
    case BLK_Q8_0:
        dl[0] = dl[1] = blk_h(b);
        for (int l = 0; l < 32; l++) q[l] = (int8_t)b[2 + l];
        break;
    case BLK_Q4_0: case BLK_Q4_1: case BLK_IQ4_NL: {
        const uint8_t *qs = b + (qt == BLK_Q4_1 ? 4 : 2);
        dl[0] = dl[1] = blk_h(b);
        if (qt == BLK_Q4_1) m[0] = m[1] = blk_h(b + 2);
        for (int l = 0; l < 16; l++) {
            const int lo = qs[l] & 15, hi = qs[l] >> 4;
            q[l] = qt == BLK_IQ4_NL ? BLK_IQ4_LEVELS[lo] : qt == BLK_Q4_0 ? lo - 8 : lo;
            q[l + 16] = qt == BLK_IQ4_NL ? BLK_IQ4_LEVELS[hi] : qt == BLK_Q4_0 ? hi - 8 : hi;
        }
        break;
    }
    case BLK_Q5_0: case BLK_Q5_1: {
        const int o = qt == BLK_Q5_1 ? 2 : 0, off = qt == BLK_Q5_0 ? 16 : 0;
        const uint32_t qh = blk_u32(b + 2 + o);
        const uint8_t *qs = b + 6 + o;
        dl[0] = dl[1] = blk_h(b);
        if (qt == BLK_Q5_1) m[0] = m[1] = blk_h(b + 2);
        for (int l = 0; l < 16; l++) {
            q[l] = (int16_t)(((qs[l] & 15) | (((qh >> l) & 1) << 4)) - off);
            q[l + 16] = (int16_t)(((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - off);
        }
        break;
    }
    case BLK_IQ4_XS: {
        const uint8_t *qs = b + 8 + 16 * c;
        dl[0] = dl[1] = blk_h(b) * (float)blk_iq4xs_scale(b, c);
        for (int l = 0; l < 16; l++) {
            q[l] = BLK_IQ4_LEVELS[qs[l] & 15];
            q[l + 16] = BLK_IQ4_LEVELS[qs[l] >> 4];
        }
        break;
    }
    case BLK_Q2_K: {
        const uint8_t *qs = b + 16 + 32 * (c >> 2);
        const int sh = 2 * (c & 3);
        const float d = blk_h(b + 80), dmin = blk_h(b + 82);
        for (int h = 0; h < 2; h++) {
            dl[h] = d * (float)(b[2 * c + h] & 15);
            m[h] = -(dmin * (float)(b[2 * c + h] >> 4));
        }
        for (int l = 0; l < 32; l++) q[l] = (qs[l] >> sh) & 3;
        break;
    }
    case BLK_Q3_K: {
        const uint8_t *qs = b + 32 + 32 * (c >> 2);
        const int sh = 2 * (c & 3);
        const float d = blk_h(b + 108);
        for (int h = 0; h < 2; h++) dl[h] = d * (float)blk_k3_scale(b + 96, 2 * c + h);
        for (int l = 0; l < 32; l++) q[l] = (int16_t)(((qs[l] >> sh) & 3) - (((b[l] >> c) & 1) ? 0 : 4));
        break;
    }
    case BLK_Q4_K: case BLK_Q5_K: {
        const int five = qt == BLK_Q5_K;
        const uint8_t *qs = b + (five ? 48 : 16) + 32 * (c >> 1);
        const int sh = 4 * (c & 1);
        dl[0] = dl[1] = blk_h(b) * (float)blk_k4_scale(b + 4, c);
        m[0] = m[1] = -(blk_h(b + 2) * (float)blk_k4_min(b + 4, c));
        for (int l = 0; l < 32; l++)
            q[l] = (int16_t)(((qs[l] >> sh) & 15) | (five ? ((b[16 + l] >> c) & 1) << 4 : 0));
        break;
    }
    case BLK_Q6_K: {
        const uint8_t *ql = b + 64 * (c >> 2) + 32 * (c & 1), *qh = b + 128 + 32 * (c >> 2);
        const int sl = 4 * ((c & 3) >> 1), sh = 2 * (c & 3);
        const float d = blk_h(b + 208);
        for (int h = 0; h < 2; h++) dl[h] = d * (float)(int8_t)b[192 + 2 * c + h];
        for (int l = 0; l < 32; l++) q[l] = (int16_t)((((ql[l] >> sl) & 15) | (((qh[l] >> sh) & 3) << 4)) - 32);
        break;
    }
    }
}

/* The activations of an integer-path call, rounded once (qlinear_impl.h), which the integer dot kernels of
 * ggml_types.h's table take: n rows of k int16 q (row stride k), each block of 32 in the order its kernels read
 * (QL_ORDER: as is for the 32-element formats, its even elements then its odd ones for the 256-element formats);
 * per row and block of 32 (index row * k / 32 + block), the scale d, s = d * sum(q), and the sums of the two
 * halves, sl = d * sum(q[0:16]) and sh = d * sum(q[16:32]) (the elements' halves, whatever the order). */
typedef struct {
    const int16_t *q;
    const float *d, *s, *sl, *sh;
} ql_act;

/* The quantized formats, for the per-format functions that ggml_types.h's table points at. */
#define BLK_QUANT_TYPES(X) X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K)       \
                           X(IQ4_NL) X(IQ4_XS)

/* The body of a decoder of the k elements (whole blocks) of constant type QT at src into y, of type T. */
#define BLK_DECODE_BODY(QT, T)                                                                                 \
    for (size_t b = 0; b < k / BLK_ELEMS(QT); b++, src += BLK_BYTES(QT)) {                                    \
        for (int c = 0; c < BLK_ELEMS(QT) / 32; c++, y += 32) {                                                 \
            int16_t q[32];                                                                                     \
            float dl[2], m[2];                                                                                 \
            blk_chunk(QT, src, c, q, dl, m);                                                                   \
            for (int l = 0; l < 32; l++)                                                                       \
                y[l] = BLK_HAS_MIN(QT) ? (T)dl[l >> 4] * q[l] + (T)m[l >> 4] : (T)dl[l >> 4] * q[l];           \
        }                                                                                                      \
    }

/* blk_decode_f32_<T> / blk_decode_f64_<T>(src, y, k) for every format; PREFIX##T##SUFFIX compiled for TARGET
 * (empty, or a target attribute: the compiler then vectorizes the loops for it). */
#define BLK_DECODERS(NAME, T, TARGET)                                                                          \
TARGET static void NAME##F32(const uint8_t *src, T *y, size_t k)                                               \
{ for (size_t i = 0; i < k; i++) y[i] = blk_f32(src + 4 * i); }                                                \
TARGET static void NAME##F16(const uint8_t *src, T *y, size_t k)                                               \
{ for (size_t i = 0; i < k; i++) y[i] = blk_h(src + 2 * i); }                                                  \
TARGET static void NAME##BF16(const uint8_t *src, T *y, size_t k)                                              \
{ for (size_t i = 0; i < k; i++) y[i] = blk_bf16(blk_u16(src + 2 * i)); }
#define BLK_DECODER_Q(NAME, T, TARGET, QT)                                                                     \
TARGET static void NAME##QT(const uint8_t *src, T *y, size_t k) { BLK_DECODE_BODY(BLK_##QT, T) }

BLK_DECODERS(blk_decode_f32_, float, )
BLK_DECODERS(blk_decode_f64_, double, )
#define X(QT) BLK_DECODER_Q(blk_decode_f32_, float, , QT) BLK_DECODER_Q(blk_decode_f64_, double, , QT)
BLK_QUANT_TYPES(X)
#undef X

#endif
