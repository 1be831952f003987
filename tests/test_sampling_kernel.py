"""The compiled sampling pipeline (fastlm._sampling through fastlm.sampling) against fastlm.reference: the same
tokens for the same uniforms, the same kept sets, on rows small (every candidate ranked) and large (top-p
ranks only the buckets of weights where the mass crosses p), float32 and float64, one row and many, with
the AVX2 exp and with libm's."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import fastlm
from fastlm import _sampling, reference
from fastlm.sampling import sample_with_uniforms


@pytest.fixture(params=[True, False], ids=["avx2-exp", "libm-exp"])
def simd(request):
    """Run a test with the weighting pass's AVX2/FMA exp, then with libm's."""
    before = _sampling.simd_enabled()
    _sampling.set_simd(request.param)
    if _sampling.simd_enabled() != request.param:
        pytest.skip("this CPU has no AVX2/FMA")
    yield
    _sampling.set_simd(before)


def reference_filtered(logits, temperature, top_k, top_p):
    """The reference's pipeline up to the softmax: float64 rows, -inf outside the kept set."""
    scaled = reference.temperature_scale(np.atleast_2d(logits).astype(np.float64), temperature)
    return reference.top_p_filter(reference.top_k_filter(scaled, top_k), top_p)


def reference_draw(logits, uniforms, temperature, top_k, top_p):
    """The reference's sample_token with the uniforms given."""
    if temperature == 0.0:
        return np.argmax(np.atleast_2d(logits), axis=-1)
    filtered = reference_filtered(logits, temperature, top_k, top_p)
    return reference.sample_from_uniforms(reference.softmax(filtered), uniforms)


def make_rows(kind, B, V, rng):
    """Logits of a kind: normal, with -inf entries, with many ties, or one token far ahead."""
    rows = rng.normal(size=(B, V)) * 3
    if kind == "neg_inf":
        rows[rng.random((B, V)) < 0.4] = -np.inf
        rows[:, 0] = rng.normal(size=B)                     # every row keeps a finite value
    elif kind == "ties":
        rows = rng.integers(-4, 5, size=(B, V)) * 0.75
    elif kind == "peaked":
        rows[np.arange(B), rng.integers(0, V, size=B)] += 25
    return rows


def uniforms_for(B, rng):
    u = rng.random(B)
    u[:2] = [0.0, np.nextafter(1.0, 0.0)][:B]             # both ends of [0, 1)
    return u


KINDS = ["normal", "neg_inf", "ties", "peaked"]
TEMPERATURES = [0.0, 0.5, 1.0, 1.7]
TOP_PS = [1e-9, 0.3, 0.9, 0.999, 1.0]


def top_ks(V):
    return [0, 1, 5, V - 1, V]


# ----------------------------------------------------------------------------- same tokens, same kept sets

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, V", [(1, 50), (8, 50), (1, 2000), (6, 2000)])
def test_same_tokens_as_the_reference(kind, B, V, rng, simd):
    logits = make_rows(kind, B, V, rng)
    for t in TEMPERATURES:
        for k in top_ks(V):
            for p in TOP_PS:
                u = uniforms_for(B, rng)
                np.testing.assert_array_equal(sample_with_uniforms(logits, u, t, k, p),
                                              reference_draw(logits, u, t, k, p), err_msg=f"t={t} k={k} p={p}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, V", [(3, 50), (3, 2000)])
def test_same_kept_sets_as_the_reference(kind, B, V, rng, simd):
    logits = make_rows(kind, B, V, rng)
    for k in top_ks(V):
        np.testing.assert_array_equal(fastlm.top_k_filter(logits, k), reference.top_k_filter(logits, k))
    for p in TOP_PS:
        np.testing.assert_array_equal(fastlm.top_p_filter(logits, p), reference.top_p_filter(logits, p))
    for t in TEMPERATURES[1:]:                              # the whole pipeline's support, temperature included
        for k, p in [(0, 0.9), (5, 0.3), (V - 1, 0.999), (1, 1.0)]:
            out = np.empty_like(logits)
            _sampling.filter_logits(logits, t, k, p, out)
            np.testing.assert_array_equal(np.isfinite(out), np.isfinite(reference_filtered(logits, t, k, p)))
            np.testing.assert_array_equal(out[np.isfinite(out)], logits[np.isfinite(out)])


def test_seeded_sample_token_matches_the_reference(rng):
    logits = make_rows("normal", 16, 3000, rng)
    for t, k, p in [(1.0, 0, 1.0), (0.8, 40, 0.95), (1.2, 0, 0.9), (0.7, 2999, 0.5)]:
        np.testing.assert_array_equal(fastlm.sample_token(logits, t, k, p, rng=5),
                                      reference.sample_token(logits, t, k, p, rng=5))


def test_single_row_returns_an_int(rng):
    logits = rng.normal(size=300)
    token = sample_with_uniforms(logits, 0.5, 0.9, 10, 0.9)
    assert isinstance(token, int)
    assert token == reference_draw(logits, np.array([0.5]), 0.9, 10, 0.9)[0]


# The next two build rows where top-p's window must grow (each path seen taken in an instrumented build).

def test_top_p_window_grows_down_when_rounding_hides_the_cut():
    # The top token comes last in index order, so the total counts the tiny weights, but ranked after it
    # each one's probability rounds away in the running sum: the sum never reaches p in the two buckets where
    # the histogram put the crossing, and the window grows down to the end. Every token is kept, as in the
    # reference.
    logits = np.concatenate([np.full(299, np.log(3e-17)), np.full(5, np.log(1e-18)), np.full(5, np.log(1e-19)),
                             [0.0]])
    kept = np.isfinite(fastlm.top_p_filter(logits, 1.0 - 4e-15))
    assert kept.all()
    np.testing.assert_array_equal(kept, np.isfinite(reference.top_p_filter(logits, 1.0 - 4e-15)))


@pytest.mark.parametrize("simd", [False], indirect=True)
@pytest.mark.parametrize("seed, p", [(35, 0.5234956726216031), (40, 0.5682193842646157)])
def test_top_p_window_grows_up_when_its_first_candidate_is_cut(seed, p, simd):
    # p is, to the last bit, the probability of the buckets above the crossing bucket (computed with libm's
    # exp and the kernel's sums): the window's first candidate is already dropped, so the last kept one lies
    # above the window.
    logits = np.random.default_rng(seed).normal(size=1000) * 3
    np.testing.assert_array_equal(fastlm.top_p_filter(logits, p), reference.top_p_filter(logits, p))


# ------------------------------------------------------------------------------------------ properties

@st.composite
def large_rows(draw):
    """Rows past the all-ranked size (256), so top-p goes through its weight histogram."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    V = draw(st.integers(257, 3000))
    logits = rng.normal(size=V) * draw(st.floats(0.1, 8.0))
    if draw(st.booleans()):
        logits = np.round(logits)                           # many ties
    return logits


@settings(max_examples=120, deadline=None)
@given(logits=large_rows(), p=st.floats(0.001, 0.999))
def test_top_p_keeps_the_smallest_set_reaching_p_on_large_rows(logits, p):
    kept = np.isfinite(fastlm.top_p_filter(logits, p))
    probs = reference.softmax(logits)
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()
    assert probs[kept].sum() >= p - 1e-12
    assert probs[kept].sum() - probs[kept].min() < p + 1e-12
    np.testing.assert_array_equal(kept, np.isfinite(reference.top_p_filter(logits, p)))


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), V=st.integers(2, 3000), data=st.data())
def test_top_k_keeps_exactly_k_of_unique_values(seed, V, data):
    logits = np.random.default_rng(seed).permutation(np.linspace(-10.0, 10.0, V))
    k = data.draw(st.integers(1, V - 1))
    kept = np.isfinite(fastlm.top_k_filter(logits, k))
    assert kept.sum() == k
    assert logits[kept].min() > logits[~kept].max()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), V=st.integers(1, 600), k=st.integers(0, 600),
       p=st.floats(1e-6, 1.0), t=st.sampled_from([0.0, 0.3, 1.0, 2.5]), u=st.floats(0.0, 1.0, exclude_max=True))
def test_any_settings_draw_the_reference_token(seed, V, k, p, t, u):
    logits = make_rows("ties" if seed % 2 else "normal", 1, V, np.random.default_rng(seed))
    assert sample_with_uniforms(logits, [u], t, k, p) == reference_draw(logits, np.array([u]), t, k, p)


# ------------------------------------------------------------------------------ dtypes, sizes, threads

def test_float32_logits(rng):
    logits = make_rows("normal", 4, 1000, rng).astype(np.float32)
    for out in (fastlm.top_k_filter(logits, 7), fastlm.top_p_filter(logits, 0.8),
                fastlm.temperature_scale(logits, 0.7), fastlm.softmax(logits)):
        assert out.dtype == np.float32
    np.testing.assert_array_equal(fastlm.top_p_filter(logits, 0.8), reference.top_p_filter(logits, 0.8))
    np.testing.assert_allclose(fastlm.softmax(logits), reference.softmax(logits.astype(np.float64)), rtol=1e-6)
    # The kernel works float32 values in double, exactly like the reference's cast: the same tokens.
    np.testing.assert_array_equal(fastlm.sample_token(logits, 0.8, 40, 0.95, rng=3),
                                  reference.sample_token(logits, 0.8, 40, 0.95, rng=3))


def test_other_float_dtypes_become_float32(rng):
    logits = rng.normal(size=(2, 30)).astype(np.float16)
    assert fastlm.top_k_filter(logits, 3).dtype == np.float32
    assert fastlm.softmax(logits).dtype == np.float32
    np.testing.assert_array_equal(fastlm.sample_token(logits, 0.9, 5, 0.9, rng=1),
                                  reference.sample_token(logits, 0.9, 5, 0.9, rng=1))


@pytest.mark.parametrize("t, k, p", [(0.8, 40, 0.95), (0.8, 0, 0.95), (1.0, 0, 1.0), (0.0, 0, 1.0)])
def test_llama3_vocabulary(t, k, p, rng, simd):
    V = 128256
    logits = (rng.normal(size=(2, V)) * 3).astype(np.float32)
    u = rng.random(2)
    np.testing.assert_array_equal(sample_with_uniforms(logits, u, t, k, p), reference_draw(logits, u, t, k, p))
    if t:
        out = np.empty_like(logits)
        _sampling.filter_logits(logits, t, k, p, out)
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(reference_filtered(logits, t, k, p)))


@pytest.mark.parametrize("t, k, p", [(0.8, 40, 0.95), (1.0, 0, 0.9), (0.6, 0, 1.0), (0.0, 0, 1.0)])
def test_parallel_rows_match_one_row_at_a_time(t, k, p, rng):
    logits = make_rows("normal", 64, 5000, rng)
    u = rng.random(64)
    together = sample_with_uniforms(logits, u, t, k, p)
    one_by_one = [sample_with_uniforms(row, ui, t, k, p) for row, ui in zip(logits, u)]
    np.testing.assert_array_equal(together, one_by_one)
    with threadpool_limits(1, user_api="openmp"):
        np.testing.assert_array_equal(sample_with_uniforms(logits, u, t, k, p), together)
    np.testing.assert_array_equal(fastlm.top_p_filter(logits, 0.9),
                                  np.stack([fastlm.top_p_filter(row, 0.9) for row in logits]))


def test_softmax_along_other_axes(rng):
    x = rng.normal(size=(3, 4, 5))
    for axis in (0, 1, -1):
        np.testing.assert_allclose(fastlm.softmax(x, axis=axis), reference.softmax(x, axis=axis), rtol=1e-14)


def test_non_contiguous_logits(rng):
    logits = rng.normal(size=(4, 600))[:, ::2]
    u = rng.random(4)
    np.testing.assert_array_equal(sample_with_uniforms(logits, u, 0.9, 20, 0.9),
                                  reference_draw(logits, u, 0.9, 20, 0.9))
    np.testing.assert_array_equal(fastlm.top_k_filter(logits, 20), reference.top_k_filter(logits, 20))


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("uniforms, error", [
    ([0.5], ValueError),                    # one uniform for two rows
    ([0.5, 1.0], ValueError),               # 1 is outside [0, 1)
    ([-0.1, 0.5], ValueError),
    ([np.nan, 0.5], ValueError),
    (["a", "b"], TypeError),
    ([True, False], TypeError),
])
def test_bad_uniforms_raise(uniforms, error):
    with pytest.raises(error):
        sample_with_uniforms(np.zeros((2, 5)), uniforms)


def test_kernel_refuses_mismatched_buffers():
    logits = np.zeros((2, 5))
    with pytest.raises(ValueError):
        _sampling.sample(logits, np.zeros(3), 1.0, 0, 1.0, np.empty(2, dtype=np.int64))
    with pytest.raises(ValueError):
        _sampling.filter_logits(logits, 1.0, 2, 1.0, np.empty((2, 4)))
    with pytest.raises(ValueError):                                # float64 logits, float32 out
        _sampling.filter_logits(logits, 1.0, 2, 1.0, np.empty((2, 5), dtype=np.float32))


def test_sampler_step_takes_the_callers_scratch(rng):
    """Scratch of step_scratch_size() elements, whatever it held: the same draws as the kernel's own, and no
    allocation; one element short is refused."""
    B, V, n_top = 3, 500, 4
    logits, u = rng.normal(size=(B, V)), rng.random(B)
    history, lengths = rng.integers(0, V, size=(B, 10)), np.full(B, 10)

    def step(scratch):
        result = np.empty(B, np.int64), np.empty(B), np.empty((B, n_top), np.int64), np.empty((B, n_top))
        _sampling.sampler_step(logits, u, 0.9, 20, 0.9, 0.05, None, None, 1.2, 0.1, 0.1, 8, history, lengths,
                               *result, scratch)
        return result
    size = _sampling.step_scratch_size(B, V, 20, history.shape[1], 8, n_top)
    before = _sampling.allocations()
    given = step(np.full(size, np.nan))
    assert _sampling.allocations() == before
    own = step(None)
    assert _sampling.allocations() == before + 1
    for a, b in zip(given, own):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="scratch"):
        step(np.empty(size - 1))
