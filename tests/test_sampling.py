"""The sampling functions' contract, checked on both the fast API and the reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fastlm
from fastlm import reference

# ---------------------------------------------------------------------------- the textbook's worked examples


@pytest.mark.parametrize("t, expected", [
    (1.0, [0.090, 0.245, 0.665]),
    (0.5, [0.0159, 0.1173, 0.8668]),   # the textbook prints [0.009, 0.066, 0.925]: wrong
    (2.0, [0.186, 0.307, 0.506]),
])
def test_temperature_softmax_worked_example(api, t, expected):
    probs = api.softmax(api.temperature_scale(np.array([1.0, 2.0, 3.0]), t))
    np.testing.assert_allclose(probs, expected, atol=6e-4)


def test_top_k_worked_example(api):
    filtered = api.top_k_filter(np.array([1.0, 5.0, 3.0, 2.0, 4.0]), 3)
    assert np.isneginf(filtered[[0, 3]]).all()
    np.testing.assert_array_equal(filtered[[1, 2, 4]], [5.0, 3.0, 4.0])
    # the textbook prints [0, 0.844, 0.042, 0, 0.114]: wrong; softmax of [5, 3, 4] is this
    np.testing.assert_allclose(api.softmax(filtered), [0, 0.665, 0.090, 0, 0.245], atol=6e-4)


def test_top_p_worked_examples(api):
    kept = np.isfinite(api.top_p_filter(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 0.9))
    assert set(np.flatnonzero(kept)) == {2, 3, 4}
    peaked = np.log(np.array([0.001, 0.002, 0.007, 0.040, 0.950]))
    kept = np.isfinite(api.top_p_filter(peaked, 0.9))
    assert list(np.flatnonzero(kept)) == [4]


# --------------------------------------------------------------------------------------------- semantics

def test_softmax_is_stable_and_normalised(api):
    probs = api.softmax(np.array([[1000.0, 1001.0, -np.inf], [0.0, 0.0, 0.0]]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    assert probs[0, 2] == 0.0


def test_temperature_zero_returns_logits_unchanged(api):
    logits = np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(api.temperature_scale(logits, 0.0), logits)
    np.testing.assert_allclose(api.temperature_scale(logits, 2.0), logits / 2)


def test_top_k_noops(api, rng):
    logits = rng.normal(size=(3, 10))
    for k in (0, 10, 11):
        np.testing.assert_array_equal(api.top_k_filter(logits, k), logits)


def test_top_k_keeps_ties_at_the_kth_value(api):
    filtered = api.top_k_filter(np.array([1.0, 3.0, 2.0, 2.0, 0.0]), 2)
    np.testing.assert_array_equal(np.isfinite(filtered), [False, True, True, True, False])


def test_top_k_rows_are_independent(api):
    logits = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    kept = np.isfinite(api.top_k_filter(logits, 2))
    np.testing.assert_array_equal(kept, [[False, False, True, True], [True, True, False, False]])


def test_top_p_one_is_noop_and_small_p_keeps_one(api, rng):
    logits = rng.normal(size=(4, 50))
    np.testing.assert_array_equal(api.top_p_filter(logits, 1.0), logits)
    kept = np.isfinite(api.top_p_filter(logits, 1e-9))
    assert (kept.sum(axis=-1) == 1).all()
    assert (np.argmax(kept, axis=-1) == np.argmax(logits, axis=-1)).all()


def test_filters_preserve_kept_values_and_dtype(api, rng):
    for dtype in (np.float32, np.float64):
        logits = rng.normal(size=(2, 30)).astype(dtype)
        for out in (api.top_k_filter(logits, 5), api.top_p_filter(logits, 0.5)):
            kept = np.isfinite(out)
            np.testing.assert_array_equal(out[kept], logits[kept])
            if api is fastlm:
                assert out.dtype == dtype


def test_functions_never_modify_their_input(api, rng):
    logits = rng.normal(size=(2, 20))
    before = logits.copy()
    api.softmax(logits), api.temperature_scale(logits, 0.7), api.top_k_filter(logits, 3)
    api.top_p_filter(logits, 0.5), api.sample_token(logits, 0.7, 3, 0.5, rng=0)
    np.testing.assert_array_equal(logits, before)


# ------------------------------------------------------------------------------------------ sample_token

def test_greedy_and_temperature_zero_are_argmax(api, rng):
    logits = rng.normal(size=(5, 40))
    expected = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(api.sample_token(logits, greedy=True), expected)
    np.testing.assert_array_equal(api.sample_token(logits, temperature=0.0), expected)


def test_return_types(api, rng):
    one = api.sample_token(rng.normal(size=10), rng=0)
    assert isinstance(one, int) and 0 <= one < 10
    many = api.sample_token(rng.normal(size=(3, 10)), rng=0)
    assert many.shape == (3,) and many.dtype == np.int64


def test_same_seed_same_tokens(api, rng):
    logits = rng.normal(size=(4, 100))
    a = api.sample_token(logits, 0.9, 20, 0.9, rng=7)
    b = api.sample_token(logits, 0.9, 20, 0.9, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_samples_never_leave_the_filtered_set(api, rng):
    logits = rng.normal(size=(64, 200)) * 3
    for _ in range(5):
        tokens = api.sample_token(logits, 1.0, 10, 0.8, rng=rng)
        allowed = np.isfinite(reference.top_p_filter(reference.top_k_filter(logits, 10), 0.8))
        assert allowed[np.arange(64), tokens].all()


def test_sampling_frequencies_match_the_filtered_distribution(api):
    logits = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15]))
    expected = reference.softmax(reference.top_p_filter(reference.top_k_filter(logits / 0.8, 4), 0.9))
    n = 20000
    rows = np.tile(logits, (n, 1))
    tokens = api.sample_token(rows, temperature=0.8, top_k=4, top_p=0.9, rng=3)
    observed = np.bincount(tokens, minlength=5)
    assert observed[expected == 0].sum() == 0
    # Pearson chi-square over the kept tokens; 3 degrees of freedom, p = 0.001 critical value 16.27.
    kept = expected > 0
    chi2 = (((observed[kept] - n * expected[kept]) ** 2) / (n * expected[kept])).sum()
    assert chi2 < 16.27


def test_fast_and_reference_draw_the_same_tokens(rng):
    logits = rng.normal(size=(32, 500)) * 2
    for t, k, p in [(1.0, 0, 1.0), (0.8, 40, 0.95), (1.3, 0, 0.7), (0.5, 5, 1.0)]:
        np.testing.assert_array_equal(fastlm.sample_token(logits, t, k, p, rng=11),
                                      reference.sample_token(logits, t, k, p, rng=11))


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error", [
    (lambda api, l: api.temperature_scale(l, -0.1), ValueError),
    (lambda api, l: api.temperature_scale(l, float("nan")), ValueError),
    (lambda api, l: api.temperature_scale(l, "hot"), TypeError),
    (lambda api, l: api.top_k_filter(l, -1), ValueError),
    (lambda api, l: api.top_k_filter(l, 2.5), TypeError),
    (lambda api, l: api.top_p_filter(l, 0.0), ValueError),
    (lambda api, l: api.top_p_filter(l, 1.5), ValueError),
    (lambda api, l: api.top_p_filter(l, -0.2), ValueError),
    (lambda api, l: api.sample_token(l, temperature=-1.0), ValueError),
    (lambda api, l: api.sample_token(l, top_k=-3), ValueError),
    (lambda api, l: api.sample_token(l, top_p=0.0), ValueError),
    (lambda api, l: api.sample_token(l, rng="seed"), TypeError),
    (lambda api, l: api.sample_token(l.astype(np.int64)), TypeError),
    (lambda api, l: api.sample_token(l[None, None]), ValueError),
    (lambda api, l: api.sample_token(np.full(4, -np.inf)), ValueError),
    (lambda api, l: api.sample_token(np.array([0.0, np.inf])), ValueError),
], ids=lambda v: getattr(v, "__name__", None))
def test_bad_arguments_raise(api, call, error):
    with pytest.raises(error):
        call(api, np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("fn", ["softmax_sample", "temperature_scale", "top_k_filter", "top_p_filter"])
def test_nan_logits_raise(api, fn):
    logits = np.array([0.1, np.nan, 0.3])
    call = {
        "softmax_sample": lambda: api.sample_token(logits),
        "temperature_scale": lambda: api.temperature_scale(logits, 1.0),
        "top_k_filter": lambda: api.top_k_filter(logits, 1),
        "top_p_filter": lambda: api.top_p_filter(logits, 0.5),
    }[fn]
    with pytest.raises(ValueError, match="NaN"):
        call()


# ------------------------------------------------------------------------------------ property-based tests

finite_rows = arrays(np.float64, st.integers(2, 60), elements=st.floats(-20, 20))


@settings(max_examples=150, deadline=None)
@given(logits=finite_rows, p=st.floats(0.01, 0.999))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    for api in (fastlm, reference):
        kept = np.isfinite(api.top_p_filter(logits, p))
        probs = reference.softmax(logits)
        assert kept.any()
        # every kept token is at least as probable as every dropped one
        if (~kept).any():
            assert probs[kept].min() >= probs[~kept].max()
        # the kept mass reaches p, and dropping the least probable kept token would fall short of it
        assert probs[kept].sum() >= p - 1e-12
        assert probs[kept].sum() - probs[kept].min() < p + 1e-12


@settings(max_examples=150, deadline=None)
@given(logits=arrays(np.float64, st.integers(1, 60), elements=st.floats(-20, 20), unique=True),
       k=st.integers(1, 70))
def test_top_k_keeps_exactly_k_without_ties(logits, k):
    for api in (fastlm, reference):
        kept = np.isfinite(api.top_k_filter(logits, k))
        assert kept.sum() == min(k, logits.size)
        if (~kept).any():
            assert logits[kept].min() > logits[~kept].max()
