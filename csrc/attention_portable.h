/* Portable tile kernels of the flash-attention kernel, one copy per element type.
 *
 * attention_impl.h includes this file once per instantiation, with ATTN_T (float, double), ATTN_FN(name) (the
 * name with its suffix), ATTN_EXP2, ATTN_TARGET (empty, or a target attribute) and ATTN_VEC_BYTES (the
 * target's vector register width) defined. The contracts are those of the AVX2 kernels there, with columns
 * padded to ATTN_PC instead of 16. Register blocks are GCC/Clang vector types as wide as the target's
 * registers (wider ones compile to spills), so the compiler emits whatever SIMD the target has (SSE2 on
 * x86-64, NEON on arm64) without having to guess which loop to vectorise.
 */
#define ATTN_LANES ((int)(ATTN_VEC_BYTES / sizeof(ATTN_T)))
#define ATTN_PC (2 * ATTN_LANES)   /* columns per register block: two vectors */
#define ATTN_PR 4                  /* query rows per register block: 4 x 2 = 8 accumulators */
#define ATTN_VEC ATTN_FN(attn_vec)
#define ATTN_UVEC ATTN_FN(attn_uvec)
#define ATTN_BLOCK ATTN_TARGET static inline __attribute__((always_inline))

typedef ATTN_T ATTN_VEC __attribute__((vector_size(ATTN_VEC_BYTES)));
/* The same vector at any element-aligned address that may alias the arrays: for loads and stores. */
typedef ATTN_T ATTN_UVEC __attribute__((vector_size(ATTN_VEC_BYTES), aligned(sizeof(ATTN_T)), may_alias));
#define ATTN_LOAD(p) (*(const ATTN_UVEC *)(p))
#define ATTN_STORE(p, x) (*(ATTN_UVEC *)(p) = (x))

/* kt = k^T, columns nk .. round_up(nk, ATTN_PC) zero. */
ATTN_TARGET static void ATTN_FN(attn_pack_kt)(const ATTN_T *k, int nk, int dk, ATTN_T *kt)
{
    const int ncols = (nk + ATTN_PC - 1) / ATTN_PC * ATTN_PC;
    for (int d = 0; d < dk; d++) {
        ATTN_T *row = kt + (size_t)d * ATTN_TK;
        for (int c = 0; c < nk; c++) row[c] = k[(size_t)c * dk + d];
        for (int c = nk; c < ncols; c++) row[c] = 0;
    }
}

/* s[R rows, ATTN_PC columns] = qs rows . kt columns. */
ATTN_BLOCK void ATTN_FN(attn_scores_block)(const ATTN_T *qs, int dk, const ATTN_T *kt, ATTN_T *s, const int R)
{
    ATTN_VEC acc[ATTN_PR][2] = {{{0}}};
    for (int d = 0; d < dk; d++) {
        const ATTN_VEC b0 = ATTN_LOAD(kt + (size_t)d * ATTN_TK);
        const ATTN_VEC b1 = ATTN_LOAD(kt + (size_t)d * ATTN_TK + ATTN_LANES);
        for (int i = 0; i < R; i++) {
            const ATTN_T a = qs[(size_t)i * dk + d];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    for (int i = 0; i < R; i++) {
        ATTN_STORE(s + (size_t)i * ATTN_TK, acc[i][0]);
        ATTN_STORE(s + (size_t)i * ATTN_TK + ATTN_LANES, acc[i][1]);
    }
}

/* s (M, round_up(nk, ATTN_PC)) = qs (M, dk) @ kt. */
ATTN_TARGET static void ATTN_FN(attn_scores)(const ATTN_T *qs, int m, int dk, const ATTN_T *kt, int nk,
                                             ATTN_T *s)
{
    int r = 0;
    for (; r + ATTN_PR <= m; r += ATTN_PR)
        for (int c = 0; c < nk; c += ATTN_PC)
            ATTN_FN(attn_scores_block)(qs + (size_t)r * dk, dk, kt + c, s + (size_t)r * ATTN_TK + c, ATTN_PR);
    for (; r < m; r++)
        for (int c = 0; c < nk; c += ATTN_PC)
            ATTN_FN(attn_scores_block)(qs + (size_t)r * dk, dk, kt + c, s + (size_t)r * ATTN_TK + c, 1);
}

/* Online softmax for one tile; see attn_softmax_f32_avx2. */
ATTN_TARGET static void ATTN_FN(attn_softmax)(ATTN_T *s, int m, int nk, int g, int diag, int lo_diag,
                                              ATTN_T *mx, ATTN_T *l, ATTN_T *o, int dk)
{
    for (int r = 0; r < m; r++) {
        ATTN_T *row = s + (size_t)r * ATTN_TK;
        const int n = attn_row_keys(diag, r, g, nk), lo = attn_row_keys(lo_diag, r, g, nk);
        if (lo >= n) {                         /* every key of this tile lies in the row's future or past window */
            memset(row, 0, (size_t)nk * sizeof(ATTN_T));
            continue;
        }
        for (int c = 0; c < lo; c++) row[c] = 0;
        ATTN_T tile_max = row[lo];
        for (int c = lo + 1; c < n; c++) tile_max = row[c] > tile_max ? row[c] : tile_max;
        const ATTN_T m_new = mx[r] > tile_max ? mx[r] : tile_max;
        ATTN_T total = 0;
        for (int c = lo; c < n; c++) {
            row[c] = ATTN_EXP2(row[c] - m_new);
            total += row[c];
        }
        for (int c = n; c < nk; c++) row[c] = 0;
        /* 0 on the row's first tile (mx = -inf); 1, without a call, once the max has settled */
        const ATTN_T alpha = m_new == mx[r] ? 1 : ATTN_EXP2(mx[r] - m_new);
        l[r] = l[r] * alpha + total;
        mx[r] = m_new;
        if (alpha != 1)
            for (int d = 0; d < dk; d++) o[(size_t)r * dk + d] *= alpha;
    }
}

/* o[R rows, ATTN_PC columns] += P rows @ v[:, ATTN_PC columns]; o and v have row stride dk. */
ATTN_BLOCK void ATTN_FN(attn_pv_block)(const ATTN_T *s, int nk, const ATTN_T *v, int dk, ATTN_T *o, const int R)
{
    ATTN_VEC acc[ATTN_PR][2];
    for (int i = 0; i < R; i++) {
        acc[i][0] = ATTN_LOAD(o + (size_t)i * dk);
        acc[i][1] = ATTN_LOAD(o + (size_t)i * dk + ATTN_LANES);
    }
    for (int c = 0; c < nk; c++) {
        const ATTN_VEC b0 = ATTN_LOAD(v + (size_t)c * dk);
        const ATTN_VEC b1 = ATTN_LOAD(v + (size_t)c * dk + ATTN_LANES);
        for (int i = 0; i < R; i++) {
            const ATTN_T p = s[(size_t)i * ATTN_TK + c];
            acc[i][0] += p * b0;
            acc[i][1] += p * b1;
        }
    }
    for (int i = 0; i < R; i++) {
        ATTN_STORE(o + (size_t)i * dk, acc[i][0]);
        ATTN_STORE(o + (size_t)i * dk + ATTN_LANES, acc[i][1]);
    }
}

ATTN_BLOCK void ATTN_FN(attn_pv_rows)(const ATTN_T *s, int nk, const ATTN_T *v, int dk, ATTN_T *o, const int R)
{
    int d = 0;
    for (; d + ATTN_PC <= dk; d += ATTN_PC) ATTN_FN(attn_pv_block)(s, nk, v + d, dk, o + d, R);
    for (; d < dk; d++)                                   /* dk % ATTN_PC leftover columns */
        for (int i = 0; i < R; i++) {
            ATTN_T acc = o[(size_t)i * dk + d];
            for (int c = 0; c < nk; c++) acc += s[(size_t)i * ATTN_TK + c] * v[(size_t)c * dk + d];
            o[(size_t)i * dk + d] = acc;
        }
}

/* o (M, dk) += P (M, nk) @ v (nk, dk). */
ATTN_TARGET static void ATTN_FN(attn_pv)(const ATTN_T *s, int m, int nk, const ATTN_T *v, int dk, ATTN_T *o)
{
    int r = 0;
    for (; r + ATTN_PR <= m; r += ATTN_PR)
        ATTN_FN(attn_pv_rows)(s + (size_t)r * ATTN_TK, nk, v, dk, o + (size_t)r * dk, ATTN_PR);
    for (; r < m; r++)
        ATTN_FN(attn_pv_rows)(s + (size_t)r * ATTN_TK, nk, v, dk, o + (size_t)r * dk, 1);
}

#undef ATTN_LOAD
#undef ATTN_STORE
#undef ATTN_BLOCK
#undef ATTN_UVEC
#undef ATTN_VEC
#undef ATTN_LANES
#undef ATTN_PC
#undef ATTN_PR
