/* The sampling pipeline for one row of logits (V,), in C++ for std::nth_element / std::sort (introselect and
 * introsort: no quadratic case on rows full of ties) with inlined comparators. sampling.pyx drives it over
 * rows; fastlm/sampling.py has validated everything before (every row has a finite maximum, no NaN or +inf,
 * temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, bias and history ids in [0, V)), so nothing
 * here checks, except what only the arithmetic can tell: whether bias and penalties overflow a row or ban
 * all of it (step_row reports it).
 *
 * Semantics are those of fastlm.reference: logit bias -> penalties -> temperature -> top-k -> top-p -> min-p
 * -> softmax -> inverse-CDF draw over the vocabulary in index order; log-probabilities of the raw row. All
 * arithmetic is double, whatever the logits' dtype (T, float or double).
 *
 * A row's candidates (Cands) live in its scratch. While no token is dropped they are the whole row, read
 * straight from the logits (dense); top-k writes its survivors' token ids to idx and their logits to w, in
 * index order; the weighting pass turns values into weights exp((z - zmax) / temperature), in w; later
 * filters compact (idx, w) in place, keeping index order, so filters compose and the draw is one scan.
 * Logit bias and penalties write an adjusted copy of the row in double (RowScratch::adjusted), and the
 * pipeline runs on that copy instead of the row.
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
    double min_p;        // 0: off
};

struct Adjustments {     // applied to a copy of the row before the pipeline: logit bias, then penalties
    const int64_t* bias_ids;  // (n_bias,) distinct token ids
    const double* bias;       // (n_bias,) finite, or -inf to ban
    int64_t n_bias;
    double repetition;        // > 0; 1: off
    double frequency;         // 0: off
    double presence;          // 0: off
    int64_t last_n;           // the penalty window: the last last_n tokens of the history; -1: all; 0: none
};

struct Ranked {          // a ranked value: top-p, a weight and its position in the candidate list; top-n, a
                         // logit and its token id
    double w;
    int64_t pos;
};

constexpr int kBucketBits = 3;                   // top-p weight buckets: 8 per octave ...
constexpr int kBuckets = 64 << kBucketBits;      // ... down to 2^-64; smaller weights share the last one
constexpr int64_t kRankAll = 256;                // up to this many candidates, top-p sorts them all

struct RowScratch {      // one per thread, carved out of one block by carve_scratch
    Ranked* window;      // (V,)        top-p: the candidates being ranked; top-n: the largest logits
    double* w;           // (V,)        candidate values (Cands::w)
    int64_t* idx;        // (V,)        candidate token ids (Cands::idx)
    double* hist;        // (kBuckets,) top-p: weight per bucket
    double* adjusted;    // (V,)        the row after logit bias and penalties
    int64_t* recent;     // (n_recent,) the penalty window's tokens
    void* select;        // (n_select,) top-k, top-n: logits (in the row's type) above the running k-th largest
};

/* The selection buffer kth_largest needs for the k-th largest of V values (none when k is 0 or >= V). */
inline int64_t top_k_capacity(int64_t V, int64_t k)
{
    return (k > 0 && k < V) ? std::min(V, 2 * k + 64) : 0;
}

/* Bytes of one thread's scratch; n_recent: the longest penalty window, n_select: the selection buffer (both
 * 0 where unused). Every piece is a multiple of 8 bytes: all stay aligned. */
inline size_t scratch_bytes(int64_t V, int64_t n_recent, int64_t n_select)
{
    return V * (sizeof(Ranked) + 3 * sizeof(double)) + kBuckets * sizeof(double)
           + n_recent * sizeof(int64_t) + n_select * sizeof(double);
}

inline RowScratch carve_scratch(void* mem, int64_t V, int64_t n_recent)
{
    RowScratch s;
    s.window = static_cast<Ranked*>(mem);
    s.w = reinterpret_cast<double*>(s.window + V);
    s.idx = reinterpret_cast<int64_t*>(s.w + V);
    s.hist = reinterpret_cast<double*>(s.idx + V);
    s.adjusted = s.hist + kBuckets;
    s.recent = reinterpret_cast<int64_t*>(s.adjusted + V);
    s.select = s.recent + n_recent;                                  // sized for doubles, holds floats too
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

/* The k-th largest of x[0, n) for 0 < k <= n (-inf for k == n: everything makes the cut). */
template <class T>
inline T kth_or_all(const T* x, int64_t n, int64_t k, const RowScratch& s)
{
    if (k == n) return -std::numeric_limits<T>::infinity();
    return kth_largest(x, n, k, static_cast<T*>(s.select), top_k_capacity(n, k));
}

/* emit(i) for every i with x[i] >= floor, in index order, skipping 16 values at a time where none is. */
template <class T, class Emit>
inline void for_each_at_least(const T* x, int64_t n, T floor, Emit emit)
{
    for (int64_t i = 0; i < n; i += 16) {
        if (i + 16 <= n && !any16(x + i, [floor](T a) { return a >= floor; })) continue;
        for (int64_t t = i; t < std::min(n, i + 16); ++t)
            if (x[t] >= floor) emit(t);
    }
}

/* Top-k, the first filter (it reads the row): keep every logit >= the k-th largest (ties survive). */
template <class T>
inline void keep_top_k(const T* x, Cands& c, int64_t k, const RowScratch& s)
{
    int64_t n = 0;
    for_each_at_least(x, c.n, kth_or_all(x, c.n, k, s), [&](int64_t t) {
        c.idx[n] = t;
        c.w[n++] = x[t];
    });
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

/* Inverse CDF in index order, in the reference's arithmetic: probabilities w / total, their running sum
 * (written over w), and the first candidate whose running sum exceeds u times the sum's end; the last
 * candidate with any probability when rounding lets u times the end reach it. */
inline int64_t draw_normalised(Cands& c, double total, double u)
{
    double cum = 0.0;
    int64_t last = 0;
    for (int64_t j = 0; j < c.n; ++j) {
        const double p = c.w[j] / total;
        if (p > 0.0) last = j;
        cum += p;
        c.w[j] = cum;
    }
    const int64_t first = std::upper_bound(c.w, c.w + c.n, u * cum) - c.w;
    return c.token(std::min(first, last));
}

/* Inverse CDF in index order: the first candidate whose cumulative weight exceeds u * total, in one scan
 * that stops there. Where the target lies within rounding of the boundary found (or past the end), the two
 * arithmetics may disagree, so the draw is redone in the reference's (draw_normalised): on rows of ties a
 * uniform such as 0.5 lands exactly on a boundary, and only the same arithmetic picks the same side. */
inline int64_t draw(Cands& c, double total, double u)
{
    const double target = u * total;
    const double slack = 4.0 * c.n * std::numeric_limits<double>::epsilon() * total;  // > both sums' error
    double cum = 0.0;
    for (int64_t j = 0; j < c.n; ++j) {
        const double before = cum;
        cum += c.w[j];
        if (cum > target) {
            if (cum - target > slack && target - before > slack) return c.token(j);
            break;
        }
    }
    return draw_normalised(c, total, u);
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
    // min-p: probability >= min_p x the top one's; the top candidate's weight is exp(0) = 1 exactly.
    if (o.min_p > 0.0) *total = compact(c, [&o](double w, int64_t) { return w >= o.min_p; });
    return c;
}

/* The token drawn from row x with the uniform u in [0, 1). */
template <class T>
inline int64_t sample_row(const T* x, int64_t V, const SamplerOptions& o, const RowScratch& s, double u)
{
    double total;
    Cands c = keep_row(x, V, o, s, &total);
    return draw(c, total, u);
}

/* out = x after the logit bias, then llama.cpp's penalties over the window, the last a.last_n tokens of
 * history[0, length) (all of them for -1): each distinct token t seen c times there gets z = z * repetition
 * if z <= 0 else z / repetition, then z -= c * frequency + presence. Arithmetic in double, rounded once to U.
 * `recent` (the window's length) is scratch. Returns false where a value came out NaN or +inf (an overflow:
 * the pipeline cannot weigh such a row). */
template <class T, class U>
inline bool adjust_row(const T* x, int64_t V, const Adjustments& a, const int64_t* history, int64_t length,
                       int64_t* recent, U* out)
{
    bool ok = true;
    auto set = [&](int64_t t, double z) {
        ok &= !(std::isnan(z) || z == std::numeric_limits<double>::infinity());
        out[t] = static_cast<U>(z);
    };
    std::copy(x, x + V, out);
    for (int64_t j = 0; j < a.n_bias; ++j) set(a.bias_ids[j], out[a.bias_ids[j]] + a.bias[j]);
    const int64_t start = a.last_n < 0 ? 0 : std::max<int64_t>(0, length - a.last_n);
    const int64_t n = length - start;
    std::copy(history + start, history + length, recent);
    std::sort(recent, recent + n);                       // each distinct token becomes one run: its count
    for (int64_t i = 0, end; i < n; i = end) {
        const int64_t t = recent[i];
        for (end = i + 1; end < n && recent[end] == t; ++end) {}
        const double z = out[t] <= 0 ? out[t] * a.repetition : out[t] / a.repetition;
        set(t, z - (static_cast<double>(end - i) * a.frequency + a.presence));
    }
    return ok;
}

/* The n largest values of x (0 < n <= V) with their ids in s.window[0, n): largest first, ties by lower id. */
template <class T>
inline void top_n(const T* x, int64_t V, int64_t n, const RowScratch& s)
{
    int64_t m = 0;                                       // every value >= the n-th largest: n of them or more
    for_each_at_least(x, V, kth_or_all(x, V, n, s), [&](int64_t t) { s.window[m++] = Ranked{x[t], t}; });
    std::partial_sort(s.window, s.window + n, s.window + m, ranks_before);
}

/* Log-probabilities under the raw row x, log-softmax (x - max) - log sum exp(x - max): that of `token`,
 * and the top_n most probable tokens with theirs (most probable first, ties by lower id). Uses s.w. */
template <class T>
inline void raw_logprobs(const T* x, int64_t V, int64_t token, int64_t n_top, const RowScratch& s,
                         double* logprob, int64_t* top_ids, double* top_logprobs)
{
    const double xmax = row_max(x, V);
    const double log_total = std::log(weigh(x, s.w, V, xmax, 1.0));
    *logprob = (x[token] - xmax) - log_total;
    if (n_top == 0) return;
    top_n(x, V, n_top, s);
    for (int64_t j = 0; j < n_top; ++j) {
        top_ids[j] = s.window[j].pos;
        top_logprobs[j] = (s.window[j].w - xmax) - log_total;
    }
}

/* One row of a Sampler step: the token drawn from row x (through `a`'s bias and penalties first, where
 * given, over history[0, length)), and its log-probabilities where `logprob` is given. Returns the token,
 * or -1 (nothing else written) where bias and penalties overflow the row or leave it no finite logit. */
template <class T>
inline int64_t step_row(const T* x, int64_t V, const SamplerOptions& o, const Adjustments* a,
                        const int64_t* history, int64_t length, const RowScratch& s, double u, double* logprob,
                        int64_t n_top, int64_t* top_ids, double* top_logprobs)
{
    int64_t token;
    if (a != nullptr) {
        if (!adjust_row(x, V, *a, history, length, s.recent, s.adjusted)
            || row_max(s.adjusted, V) == -std::numeric_limits<double>::infinity())
            return -1;
        token = sample_row(s.adjusted, V, o, s, u);
    } else {
        token = sample_row(x, V, o, s, u);
    }
    if (logprob != nullptr) raw_logprobs(x, V, token, n_top, s, logprob, top_ids, top_logprobs);
    return token;
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
