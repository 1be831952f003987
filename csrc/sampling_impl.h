/* The sampling pipeline for one row of logits (V,), in C++ for std::nth_element / std::sort (introselect and
 * introsort: no quadratic case on rows full of ties) with inlined comparators. sampling.pyx drives it over
 * rows; fastlm/sampling.py has validated everything before (every row has a finite maximum, no NaN or +inf,
 * temperature >= 0, top_k >= 0, 0 < top_p <= 1), so nothing here checks.
 *
 * Semantics are those of fastlm.reference: temperature -> top-k -> top-p -> softmax -> inverse-CDF draw over
 * the vocabulary in index order. All arithmetic is double, whatever the logits' dtype (T, float or double).
 *
 * A row's candidates (Cands) live in its scratch. While no token is dropped they are the whole row, read
 * straight from the logits (dense); top-k writes its survivors' token ids to idx and their logits to w, in
 * index order; the weighting pass turns values into weights exp((z - zmax) / temperature), in w; later
 * filters compact (idx, w) in place, keeping index order, so filters compose and the draw is one scan.
 *
 * Where the rest of the field's sampler goes: logit bias and repetition / frequency / presence penalties
 * (before temperature) write an adjusted copy of the row in double and run keep_row on it (it is templated
 * on the row's type for that); min-p is one more compaction after top-p.
 */
#ifndef FASTLM_SAMPLING_IMPL_H
#define FASTLM_SAMPLING_IMPL_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#define FASTLM_SAMPLING_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace fastlm {

struct SamplerOptions {
    double temperature;  // 0: greedy (argmax)
    int64_t top_k;       // 0 or >= V: off
    double top_p;        // 1: off
};

struct Ranked {          // a candidate in the top-p ranking: weight, then position in the candidate list
    double w;
    int64_t pos;
};

constexpr int kBucketBits = 3;                   // top-p weight buckets: 8 per octave ...
constexpr int kBuckets = 64 << kBucketBits;      // ... down to 2^-64; smaller weights share the last one
constexpr int64_t kRankAll = 256;                // up to this many candidates, top-p sorts them all

struct RowScratch {      // one per thread, carved out of one block by carve_scratch
    Ranked* window;      // (V,)        top-p: the candidates being ranked
    double* w;           // (V,)        candidate values (Cands::w)
    int64_t* idx;        // (V,)        candidate token ids (Cands::idx)
    double* hist;        // (kBuckets,) top-p: weight per bucket
    void* select;        // (top_k_capacity,) top-k: logits (in the row's type) above the running k-th largest
};

inline int64_t top_k_capacity(int64_t V, int64_t k)
{
    return (k > 0 && k < V) ? std::min(V, 2 * k + 64) : 0;
}

inline size_t scratch_bytes(int64_t V, int64_t k)  // every piece is a multiple of 8 bytes: all stay aligned
{
    return V * (sizeof(Ranked) + sizeof(double) + sizeof(int64_t)) + kBuckets * sizeof(double)
           + top_k_capacity(V, k) * sizeof(double);
}

inline RowScratch carve_scratch(void* mem, int64_t V)
{
    RowScratch s;
    s.window = static_cast<Ranked*>(mem);
    s.w = reinterpret_cast<double*>(s.window + V);
    s.idx = reinterpret_cast<int64_t*>(s.w + V);
    s.hist = reinterpret_cast<double*>(s.idx + V);
    s.select = s.hist + kBuckets;                                    // sized for doubles, holds floats too
    return s;
}

struct Cands {
    double* w;
    int64_t* idx;
    int64_t n;
    bool dense;          // nothing dropped yet: candidate j is token j, its logit is x[j] and idx is unused
    int64_t token(int64_t j) const { return dense ? j : idx[j]; }
};

template <class T>
inline double row_max(const T* v, int64_t n)
{
    double m = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(v[i]));
    return m;
}

/* Greedy: the first token holding the maximum (numpy.argmax), with all the mass. */
template <class T>
inline double keep_argmax(const T* x, Cands& c)
{
    const double xmax = row_max(x, c.n);
    int64_t i = 0;
    while (x[i] != xmax) ++i;
    c.idx[0] = i;
    c.w[0] = 1.0;
    c.n = 1;
    c.dense = false;
    return 1.0;
}

/* Whether pred holds for any of v[0, 16): a fixed-length loop the compiler turns into a few vector compares,
 * so the scans below skip most of a row 16 values at a time. */
template <class T, class Pred>
inline bool any16(const T* v, Pred pred)
{
    bool any = false;
    for (int t = 0; t < 16; ++t) any |= pred(v[t]);
    return any;
}

/* The k-th largest value (with multiplicity) of v[0, n), 0 < k < n, in one pass: `buf` collects values above
 * the k-th largest seen so far and, when full, is cut back to its k largest. For small k almost every value
 * costs one vector comparison; any k is O(n). -inf when fewer than k values exceed -inf. */
template <class T>
inline T kth_largest(const T* v, int64_t n, int64_t k, T* buf, int64_t capacity)
{
    T floor = -std::numeric_limits<T>::infinity();  // a value <= floor cannot change the answer
    int64_t m = 0;
    for (int64_t i = 0; i < n; i += 16) {
        if (i + 16 <= n && !any16(v + i, [floor](T a) { return a > floor; })) continue;
        for (int64_t t = i; t < std::min(n, i + 16); ++t) {
            if (v[t] > floor) {
                buf[m++] = v[t];
                if (m == capacity) {
                    std::nth_element(buf, buf + k - 1, buf + m, std::greater<T>());
                    m = k;
                    floor = buf[k - 1];
                }
            }
        }
    }
    if (m < k) return -std::numeric_limits<T>::infinity();
    std::nth_element(buf, buf + k - 1, buf + m, std::greater<T>());
    return buf[k - 1];
}

/* Top-k, the first filter (it reads the row): keep every logit >= the k-th largest (ties survive). */
template <class T>
inline void keep_top_k(const T* x, Cands& c, int64_t k, const RowScratch& s)
{
    const T kth = kth_largest(x, c.n, k, static_cast<T*>(s.select), top_k_capacity(c.n, k));
    int64_t n = 0;
    for (int64_t i = 0; i < c.n; i += 16) {
        if (i + 16 <= c.n && !any16(x + i, [kth](T a) { return a >= kth; })) continue;
        for (int64_t t = i; t < std::min(c.n, i + 16); ++t) {
            if (x[t] >= kth) {
                c.idx[n] = t;
                c.w[n++] = x[t];
            }
        }
    }
    c.n = n;
    c.dense = false;
}

/* Keep the candidates for which keep(w, position) holds, in order; returns the sum of the kept values.
 * In place: the write position never overtakes the read position. */
template <class Keep>
inline double compact(Cands& c, Keep keep)
{
    int64_t n = 0;
    double sum = 0.0;
    for (int64_t j = 0; j < c.n; ++j) {
        const double v = c.w[j];
        if (keep(v, j)) {
            c.idx[n] = c.token(j);
            c.w[n++] = v;
            sum += v;
        }
    }
    c.n = n;
    c.dense = false;
    return sum;
}

/* The weighting pass's exp: libm's, or four lanes at a time where the CPU has AVX2 and FMA. sampling.pyx sets
 * this once at import (and set_simd switches it); it is only read while kernels run. */
inline bool use_avx2_exp = false;

inline bool cpu_has_avx2_fma()
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

#if defined(__x86_64__)
FASTLM_SAMPLING_AVX2 inline __m256d pow2_avx2(__m128i k)  // 2^k for -1022 <= k <= 1023, built in the exponent
{
    const __m128i biased = _mm_add_epi32(k, _mm_set1_epi32(1023));
    return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepi32_epi64(biased), 52));
}

/* exp(x) for x <= 0 (-inf included) to about 1 ulp, like libm's: x = n ln2 + r, |r| <= ln2 / 2, with ln2 in
 * two parts (fdlibm's) so r carries no extra error; exp(r) by its Taylor series to r^13 (truncation below
 * 2^-57); 2^n applied in two halves, so that results under 2^-1022 round to subnormals once. exp(0) is 1. */
FASTLM_SAMPLING_AVX2 inline __m256d exp_avx2_pd(__m256d x)
{
    x = _mm256_max_pd(x, _mm256_set1_pd(-746.0));                    // exp(-746) already rounds to 0
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    static constexpr double inv_factorial[] = {  // 1 / 13!, 1 / 12!, ..., 1 / 0!, each rounded once
        1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
        1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    __m256d p = _mm256_set1_pd(inv_factorial[0]);
    for (int k = 1; k < 14; ++k) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(inv_factorial[k]));
    const __m128i ni = _mm256_cvtpd_epi32(n);                          // n in [-1076, 0]
    const __m128i half = _mm_srai_epi32(ni, 1);
    return _mm256_mul_pd(_mm256_mul_pd(p, pow2_avx2(half)), pow2_avx2(_mm_sub_epi32(ni, half)));
}

FASTLM_SAMPLING_AVX2 inline __m256d load4_avx2(const double* p) { return _mm256_loadu_pd(p); }
FASTLM_SAMPLING_AVX2 inline __m256d load4_avx2(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

template <class T>
FASTLM_SAMPLING_AVX2 inline __m256d weights4_avx2(const T* z, __m256d zmax, __m256d temperature)
{
    return exp_avx2_pd(_mm256_div_pd(_mm256_sub_pd(load4_avx2(z), zmax), temperature));
}

template <class T>
FASTLM_SAMPLING_AVX2 inline double weigh_avx2(const T* z, double* w, int64_t n, double zmax, double temperature)
{
    const __m256d vmax = _mm256_set1_pd(zmax), vt = _mm256_set1_pd(temperature);
    __m256d acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const __m256d e = weights4_avx2(z + j, vmax, vt);
        _mm256_storeu_pd(w + j, e);
        acc = _mm256_add_pd(acc, e);
    }
    if (j < n) {  // the tail through the same exp, so tied logits keep exactly tied weights; pads weigh 0
        T pad[4];
        std::fill(pad, pad + 4, -std::numeric_limits<T>::infinity());
        std::copy(z + j, z + n, pad);
        double tail[4];
        const __m256d e = weights4_avx2(pad, vmax, vt);
        _mm256_storeu_pd(tail, e);
        acc = _mm256_add_pd(acc, e);
        std::copy(tail, tail + (n - j), w + j);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, acc);
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}
#endif

/* w = exp((z - zmax) / temperature) for zmax >= every z: weights in [0, 1] (zero for -inf); returns their
 * sum. The temperature is folded in here, and z - zmax <= 0 cannot overflow whatever the temperature. z may
 * be w itself. */
template <class T>
inline double weigh(const T* z, double* w, int64_t n, double zmax, double temperature)
{
#if defined(__x86_64__)
    if (use_avx2_exp) return weigh_avx2(z, w, n, zmax, temperature);
#endif
    double total = 0.0;
    for (int64_t j = 0; j < n; ++j) {
        w[j] = std::exp((z[j] - zmax) / temperature);
        total += w[j];
    }
    return total;
}

/* Bucket of a weight w in [0, 1]: its octave below 1 and top kBucketBits mantissa bits. Non-negative doubles
 * order like their bit patterns, so a larger weight never has a larger bucket. */
inline int bucket(double w)
{
    constexpr uint64_t one = 0x3FF0000000000000ull;  // the bits of 1.0
    uint64_t bits;
    std::memcpy(&bits, &w, sizeof bits);
    return static_cast<int>(std::min<uint64_t>((one - bits) >> (52 - kBucketBits), kBuckets - 1));
}

inline bool ranks_before(const Ranked& a, const Ranked& b)
{
    return a.w > b.w || (a.w == b.w && a.pos < b.pos);
}

/* Top-p on weights whose sum is `total`: rank by weight (ties: lower token id first, which is lower position)
 * and drop a candidate once the probability ranked strictly before it reaches p. Returns the kept mass.
 *
 * Only a window of the ranking is sorted: a histogram of the weights by bucket finds the bucket where the
 * mass crosses p; the buckets above it are kept unsorted, and that bucket and the next non-empty one (whose
 * first candidate is usually the first dropped) are ranked: a few hundred candidates where the row has 10^5.
 * The scan inside the window is the reference's arithmetic: a running sum of probabilities w / total, and a
 * candidate is dropped when that sum less its own probability reaches p, so rows of ties whose mass lands
 * exactly on p agree with it. Where rounding moves the cut out of the window, the window grows by the next
 * non-empty bucket on that side and is ranked again. The kept set is then given by the cut (weight,
 * position) of the last kept candidate: heavier, or as heavy and not later. */
inline double keep_top_p(Cands& c, double total, double p, const RowScratch& s)
{
    auto next_down = [&s](int b) { do ++b; while (b < kBuckets - 1 && s.hist[b] == 0.0); return b; };
    auto next_up = [&s](int b) { do --b; while (b > 0 && s.hist[b] == 0.0); return b; };
    int lo = 0, hi = kBuckets - 1;        // the window: candidates whose bucket is in [lo, hi]
    if (c.n > kRankAll) {
        std::fill(s.hist, s.hist + kBuckets, 0.0);
        for (int64_t j = 0; j < c.n; ++j) s.hist[bucket(c.w[j])] += c.w[j];
        for (double above = 0.0; lo < kBuckets - 1 && above + s.hist[lo] < p * total;) above += s.hist[lo++];
        hi = lo < kBuckets - 1 ? next_down(lo) : lo;
    }
    for (;;) {
        double above = 0.0;               // weight of the buckets above the window
        for (int b = 0; b < lo; ++b) above += s.hist[b];
        int64_t m = 0;
        for (int64_t j = 0; j < c.n; ++j) {
            const int b = bucket(c.w[j]);
            if (b >= lo && b <= hi) s.window[m++] = Ranked{c.w[j], j};
        }
        std::sort(s.window, s.window + m, ranks_before);
        int64_t i = 0;
        for (double cum = above / total; i < m; ++i) {
            const double prob = s.window[i].w / total, next = cum + prob;
            if (next - prob >= p) break;
            cum = next;
        }
        if (i > 0 && i < m) {
            const Ranked last = s.window[i - 1];
            return compact(c, [last](double w, int64_t j) {
                return w > last.w || (w == last.w && j <= last.pos);
            });
        }
        if (i == m) {                     // every candidate of the window is kept
            if (hi == kBuckets - 1) return total;
            hi = next_down(hi);
        } else {                          // i == 0 (so lo > 0: at lo == 0 the first candidate has nothing above)
            lo = next_up(lo);
        }
    }
}

/* Inverse CDF in index order: the first candidate whose cumulative weight exceeds u * total; the last
 * candidate with any weight when rounding lets u * total reach the end. */
inline int64_t draw(const Cands& c, double total, double u)
{
    const double target = u * total;
    double cum = 0.0;
    int64_t last = 0;
    for (int64_t j = 0; j < c.n; ++j) {
        if (c.w[j] > 0.0) {
            cum += c.w[j];
            if (cum > target) return c.token(j);
            last = j;
        }
    }
    return c.token(last);
}

/* The kept candidates of row x (V,), with unnormalised weights, and through `total` their sum. */
template <class T>
inline Cands keep_row(const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, double* total)
{
    Cands c{s.w, s.idx, V, true};
    if (o.temperature == 0.0) {
        *total = keep_argmax(x, c);
        return c;
    }
    if (o.top_k > 0 && o.top_k < V) keep_top_k(x, c, o.top_k, s);
    if (c.dense)
        *total = weigh(x, c.w, c.n, row_max(x, c.n), o.temperature);
    else
        *total = weigh(c.w, c.w, c.n, row_max(c.w, c.n), o.temperature);
    if (o.top_p < 1.0) *total = keep_top_p(c, *total, o.top_p, s);
    return c;
}

/* The token drawn from row x with the uniform u in [0, 1). */
template <class T>
inline int64_t sample_row(const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, double u)
{
    double total;
    const Cands c = keep_row(x, V, o, s, &total);
    return draw(c, total, u);
}

/* out = x on the kept tokens, -inf elsewhere. */
template <class T>
inline void filter_row(const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, T* out)
{
    double total;
    const Cands c = keep_row(x, V, o, s, &total);
    if (c.dense) {
        std::copy(x, x + V, out);
        return;
    }
    std::fill(out, out + V, -std::numeric_limits<T>::infinity());
    for (int64_t j = 0; j < c.n; ++j) out[c.idx[j]] = x[c.idx[j]];
}

/* out = exp(x - max) / sum. The exponentials are computed in double by the weighting pass's exp, through a
 * small buffer a block at a time, and summed before the one division. */
template <class T>
inline void softmax_row(const T* x, int64_t V, T* out)
{
    constexpr int64_t kBlock = 256;
    const double xmax = row_max(x, V);
    double total = 0.0, block[kBlock];
    for (int64_t i = 0; i < V; i += kBlock) {
        const int64_t n = std::min(kBlock, V - i);
        total += weigh(x + i, block, n, xmax, 1.0);
        std::copy(block, block + n, out + i);
    }
    for (int64_t i = 0; i < V; ++i) out[i] = static_cast<T>(out[i] / total);
}

/* out = x / temperature, rounded once from double. */
template <class T>
inline void scale_row(const T* x, int64_t V, double temperature, T* out)
{
    for (int64_t i = 0; i < V; ++i) out[i] = static_cast<T>(x[i] / temperature);
}

}  // namespace fastlm

#endif
