/* The formats' table: one row per ggml tensor type fastlm knows, indexed by its GGUF type id. A row owns
 * everything about its format: block geometry, the decoders to float32 / float64 (ggml_blocks.h), the
 * quantizer of one block (ggml_quantize.h, where fastlm writes the type), and the integer dot kernels per SIMD
 * level (cpu_isa.h's levels; qlinear_impl.h's kernels). "The Q4_K dot product for AVX2" is
 * BLK_TRAITS[BLK_Q4_K].dot[FL_ISA_AVX2], defined as ql_dot_Q4_K_avx2 in qlinear_impl.h.
 *
 * The kernel column is compiled only where the kernels are (qlinear_impl.h defines BLK_KERNELS and includes
 * this file after them); elsewhere (quant.pyx, quantize.pyx) it is empty. A NULL dot at a level means: take
 * the level it falls back to (ql_dot_for); a format with no dot at all (F32, F16, BF16) never takes the
 * integer path.
 */
#ifndef FASTLM_GGML_TYPES_H
#define FASTLM_GGML_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_isa.h"
#include "ggml_blocks.h"
#include "ggml_quantize.h"

/* out (n, rows) (leading dimension ld_out) = a (n, k) . dequant(w (rows, row_bytes)).T + beta * out */
typedef void (*ql_dot_fn)(const ql_act *a, int n, int k, const uint8_t *w, size_t row_bytes, int rows, float *out,
                          int ld_out, float beta);
typedef void (*blk_decode_f32_fn)(const uint8_t *src, float *y, size_t k);
typedef void (*blk_decode_f64_fn)(const uint8_t *src, double *y, size_t k);
typedef void (*blk_quantize_fn)(const float *x, uint8_t *y);
/* rows of a type (stride row_bytes) of k elements -> the panel of qlinear_impl.h's integer GEMM */
typedef void (*blk_ints_fn)(const uint8_t *w, size_t row_bytes, int rows, int k, uint8_t *panel);

typedef struct {
    const char *name;               /* NULL: not a type fastlm knows */
    int elems, bytes;               /* one block */
    blk_decode_f32_fn decode_f32;   /* bit for bit ggml's dequantizer */
    blk_decode_f64_fn decode_f64;   /* exact */
    blk_decode_f32_fn decode_f32_vec;   /* the same values, vectorized for AVX2 (NULL without the kernels) */
    blk_quantize_fn quantize;       /* one block, bit for bit ggml's reference quantizer; NULL: fastlm does not
                                       write the type */
    ql_dot_fn dot[FL_ISA_COUNT];    /* integer dots on int16 activations, per SIMD level */
    blk_ints_fn ints_avx2;          /* the prefill GEMM's panel (AVX2; NULL without the kernels) */
    int int_n_max;                  /* the integer path serves calls of up to this many activation rows */
} blk_traits;

#ifdef BLK_KERNELS
#define BLK_DOTS(T) {ql_dot_##T##_portable, QL_AVX2_DOTS(T)}
#define BLK_VEC(T) ql_decode_avx2_##T
#define BLK_INTS(T) QL_AVX2_INTS(T)
#else
#define BLK_DOTS(T) {0, 0, 0, 0, 0}
#define BLK_VEC(T) 0
#define BLK_INTS(T) 0
#endif
#define BLK_ROW(T, quantizer, n_max)                                                                            \
    [BLK_##T] = {#T, BLK_ELEMS(BLK_##T), BLK_BYTES(BLK_##T), blk_decode_f32_##T, blk_decode_f64_##T, BLK_VEC(T),   \
                 quantizer, BLK_DOTS(T), BLK_INTS(T), n_max}
#define BLK_FLOAT_ROW(T, quantizer)                                                                             \
    [BLK_##T] = {#T, BLK_ELEMS(BLK_##T), BLK_BYTES(BLK_##T), blk_decode_f32_##T, blk_decode_f64_##T, BLK_VEC(T),   \
                 quantizer, {0, 0, 0, 0, 0}, 0, 0}

/* int_n_max: from N = int_n_max + 1 on, decoding 4 rows into float and the float small-batch kernel is as
 * fast (qlinear.pyx's measurements): 31 for Q8_0, 15 for the 4-bit formats and the rest. */
static const blk_traits BLK_TRAITS[BLK_ID_MAX + 1] = {
    BLK_FLOAT_ROW(F32, blkq_f32),
    BLK_FLOAT_ROW(F16, blkq_f16),
    BLK_FLOAT_ROW(BF16, 0),
    BLK_ROW(Q8_0, blkq_q8_0, 31),
    BLK_ROW(Q4_0, blkq_q4_0, 15),
    BLK_ROW(Q4_1, blkq_q4_1, 15),
    BLK_ROW(Q5_0, blkq_q5_0, 15),
    BLK_ROW(Q5_1, blkq_q5_1, 15),
    BLK_ROW(Q2_K, blkq_q2_k, 15),
    BLK_ROW(Q3_K, blkq_q3_k, 15),
    BLK_ROW(Q4_K, blkq_q4_k, 15),
    BLK_ROW(Q5_K, blkq_q5_k, 15),
    BLK_ROW(Q6_K, blkq_q6_k, 15),
    BLK_ROW(IQ4_NL, blkq_iq4_nl, 15),
    BLK_ROW(IQ4_XS, blkq_iq4_xs, 15),
};

/* The row of type id qtype, NULL for an id fastlm does not know. */
static inline const blk_traits *blk_traits_of(int qtype)
{
    return qtype >= 0 && qtype <= BLK_ID_MAX && BLK_TRAITS[qtype].name ? &BLK_TRAITS[qtype] : 0;
}

/* The dot kernel of qtype at SIMD level isa, or at the first level below it that has one (NULL: none). */
static inline ql_dot_fn ql_dot_for(int qtype, int isa)
{
    const blk_traits *t = blk_traits_of(qtype);
    for (; t && isa >= 0; isa = FL_ISA_FALLBACK[isa])
        if (t->dot[isa]) return t->dot[isa];
    return 0;
}

#endif
