"""The full sampler: logit bias and penalties, min-p, log-probabilities, and fastlm.sampling.Sampler against
fastlm.reference.Sampler (the same tokens for the same uniforms), with hand-computed cases for every formula."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from fastlm import _sampling, reference, sampling

SAMPLERS = [sampling.Sampler, reference.Sampler]


@pytest.fixture(params=[sampling, reference], ids=["fastlm", "reference"])
def api(request):
    """The fast module and the reference: both hold min_p_filter, apply_penalties and Sampler."""
    return request.param


def both(**options):
    """The fast and the reference sampler with the same settings."""
    return sampling.Sampler(**options), reference.Sampler(**options)


def assert_same_result(fast, ref):
    np.testing.assert_array_equal(fast.tokens, ref.tokens)
    assert fast.tokens.dtype == np.int64
    for name in ("logprobs", "top_logprobs"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == np.float64
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=name)
    if ref.top_ids is not None:
        assert fast.top_ids.dtype == np.int64
    np.testing.assert_array_equal(fast.top_ids, ref.top_ids)


# ------------------------------------------------------------------------------- penalties, by hand

# Token 0 (positive logit) is seen 3 times, 1 (negative) twice, 2 (positive) and 3 (zero: the <= 0 branch)
# once; 4 and 5 never. Every value below is exact in binary.
LOGITS = np.array([2.0, -1.0, 0.5, 0.0, -3.0, 1.5])
HISTORY = np.array([0, 1, 0, 2, 3, 0, 1])
PENALTIES = dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
# whole history: 2/2 - (3*.5 + .25), -1*2 - (2*.5 + .25), .5/2 - (.5 + .25), 0*2 - (.5 + .25), unchanged
WHOLE = [-0.75, -3.25, -0.5, -0.75, -3.0, 1.5]
# last 3 tokens [3, 0, 1], each once: 2/2 - .75, -1*2 - .75, 0 - .75
LAST_3 = [0.25, -2.75, 0.5, -0.75, -3.0, 1.5]


@pytest.mark.parametrize("last_n, expected", [(-1, WHOLE), (64, WHOLE), (7, WHOLE), (3, LAST_3), (0, LOGITS)])
def test_penalties_by_hand(api, last_n, expected):
    out = api.apply_penalties(LOGITS, HISTORY, None, penalty_last_n=last_n, **PENALTIES)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == LOGITS.shape and out is not LOGITS


def test_each_penalty_alone(api):
    one = dict(penalty_last_n=-1)
    np.testing.assert_array_equal(api.apply_penalties(LOGITS, HISTORY, None, repetition_penalty=2.0, **one),
                                  [1.0, -2.0, 0.25, 0.0, -3.0, 1.5])
    np.testing.assert_array_equal(api.apply_penalties(LOGITS, HISTORY, None, frequency_penalty=0.5, **one),
                                  [0.5, -2.0, 0.0, -0.5, -3.0, 1.5])
    np.testing.assert_array_equal(api.apply_penalties(LOGITS, HISTORY, None, presence_penalty=-0.25, **one),
                                  [2.25, -0.75, 0.75, 0.25, -3.0, 1.5])     # negative: a bonus, as llama.cpp


def test_penalties_rows_lengths_and_padding(api):
    # Row 0 uses its first 7 tokens (the last 3 of them: [3, 0, 1]); row 1 none; row 2 all 4. The padding
    # past each length (-1, not even a token id) is never read.
    history = np.array([[0, 1, 0, 2, 3, 0, 1, -1], [5, 5, -1, -1, -1, -1, -1, -1], [4, 4, 5, 4, -1, -1, -1, -1]])
    logits = np.tile(LOGITS, (3, 1))
    out = api.apply_penalties(logits, history, np.array([7, 0, 4]), penalty_last_n=3, **PENALTIES)
    np.testing.assert_array_equal(out[0], LAST_3)
    np.testing.assert_array_equal(out[1], LOGITS)
    # row 2's window [4, 5, 4]: -3*2 - (2*.5 + .25); 1.5/2 - (.5 + .25)
    np.testing.assert_array_equal(out[2], [2.0, -1.0, 0.5, 0.0, -7.25, 0.0])


def test_penalties_without_history_change_nothing(api):
    np.testing.assert_array_equal(api.apply_penalties(LOGITS, None, None, **PENALTIES), LOGITS)


def test_penalties_keep_the_fast_dtype_and_match_the_reference(rng):
    logits = rng.normal(size=(5, 300)) * 4
    history = rng.integers(0, 40, size=(5, 90))                 # a small set of ids: many repeats
    lengths = np.array([90, 0, 1, 64, 70])
    for last_n in (-1, 0, 1, 16, 64, 200):
        options = dict(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=-0.2, penalty_last_n=last_n)
        expected = reference.apply_penalties(logits, history, lengths, **options)
        np.testing.assert_array_equal(sampling.apply_penalties(logits, history, lengths, **options), expected)
        fast32 = sampling.apply_penalties(logits.astype(np.float32), history, lengths, **options)
        assert fast32.dtype == np.float32                       # double arithmetic, rounded once
        np.testing.assert_array_equal(fast32, reference.apply_penalties(logits.astype(np.float32), history,
                                                                        lengths, **options).astype(np.float32))


# --------------------------------------------------------------------------------------------- logit bias

@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_logit_bias(Sampler):
    logits = np.array([[1.0, 2.0, 3.0, 0.5]])
    assert Sampler(greedy=True, logit_bias={2: -np.inf})(logits, None).tokens[0] == 1
    assert Sampler(greedy=True, logit_bias={0: 5.0})(logits, None).tokens[0] == 0
    assert Sampler(greedy=True, logit_bias={2: -1.5, 1: 0.25})(logits, None).tokens[0] == 1
    # banned tokens are never drawn; every uniform lands on one of the rest
    banned = Sampler(logit_bias={1: -np.inf, 2: -np.inf})
    rows = np.tile(logits, (200, 1))
    tokens = banned(rows, np.linspace(0, 1, 200, endpoint=False)).tokens
    assert set(tokens) == {0, 3}


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_bias_comes_before_the_penalties(Sampler):
    # bias first: 1 - 3 = -2, then * 2 = -4 < -3 (token 1 wins); penalty first would give 1/2 - 3 = -2.5
    sampler = Sampler(greedy=True, logit_bias={0: -3.0}, repetition_penalty=2.0)
    assert sampler(np.array([[1.0, -3.0]]), None, np.array([[0]])).tokens[0] == 1


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_rows_left_without_a_finite_logit_raise(Sampler):
    logits = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, -np.inf]])
    with pytest.raises(ValueError, match="row 1 .* without a finite maximum"):          # every token banned
        Sampler(logit_bias={0: -np.inf, 1: -np.inf})(logits, [0.5, 0.5])
    with pytest.raises(ValueError, match="row 0 .* without a finite maximum"), np.errstate(over="ignore"):
        Sampler(repetition_penalty=0.5)(np.array([[1e308, 0.0]]), [0.5], np.array([[0]]))  # 1e308 / 0.5 = inf


# ---------------------------------------------------------------------------------------------------- min-p

def test_min_p_by_hand(api):
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04]))
    # the top probability is 0.5: min_p 0.15 keeps probabilities >= 0.075
    np.testing.assert_array_equal(np.isfinite(api.min_p_filter(logits, 0.15)), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(np.isfinite(api.min_p_filter(logits, 0.7)), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(api.min_p_filter(logits, 0.0), logits)
    # min_p 1 keeps the top token and its ties
    np.testing.assert_array_equal(np.isfinite(api.min_p_filter(np.array([2.0, 3.0, 3.0, 1.0]), 1.0)), [0, 1, 1, 0])


def test_min_p_masks_match_the_reference(rng):
    logits = rng.normal(size=(6, 2000)) * 3
    logits[rng.random(logits.shape) < 0.2] = -np.inf
    logits[:, 0] = 0.0
    for min_p in (1e-6, 0.01, 0.05, 0.3, 0.9, 1.0):
        for dtype in (np.float64, np.float32):
            fast = sampling.min_p_filter(logits.astype(dtype), min_p)
            assert fast.dtype == dtype
            np.testing.assert_array_equal(fast, reference.min_p_filter(logits.astype(dtype), min_p))


# ----------------------------------------------------------------------------------- the whole chain

CHAINS = [
    dict(),
    dict(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.3, top_p=0.8, repetition_penalty=1.3, penalty_last_n=16),
    dict(temperature=0.9, top_k=5, frequency_penalty=0.5, presence_penalty=0.3, penalty_last_n=-1),
    dict(temperature=1.0, min_p=0.2, repetition_penalty=0.8, frequency_penalty=-0.3, logit_bias={3: 2.0}),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.2, frequency_penalty=0.1,
         presence_penalty=0.1, penalty_last_n=64, logit_bias={0: -np.inf, 7: 1.5, 11: -4.0}, logprobs=True,
         top_logprobs=5),
    dict(greedy=True, repetition_penalty=1.5, presence_penalty=1.0, logprobs=True, top_logprobs=3),
    dict(temperature=0.0, logit_bias={1: -np.inf}, frequency_penalty=2.0),
]


def history_for(B, V, rng, H=120):
    """A token buffer with many repeats (ids from a small set) and a length per row, padded with -1."""
    history = rng.integers(0, min(V, 30), size=(B, H))
    lengths = rng.integers(0, H + 1, size=B)
    lengths[0] = H
    history[np.arange(H) >= lengths[:, np.newaxis]] = -1
    return history, lengths


@pytest.mark.parametrize("options", CHAINS, ids=range(len(CHAINS)))
@pytest.mark.parametrize("B, V", [(1, 50), (7, 50), (1, 3000), (5, 3000)])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_the_chain_draws_the_reference_tokens(options, B, V, kind, rng):
    fast, ref = both(**options)
    for _ in range(8):
        logits = rng.normal(size=(B, V)) * 3 if kind == "normal" else rng.integers(-4, 5, size=(B, V)) * 0.75
        history, lengths = history_for(B, V, rng)
        u = rng.random(B)          # random: a u exactly on a CDF boundary would test rounding, not semantics
        u[0] = [0.0, np.nextafter(1.0, 0.0), u[0]][_ % 3]
        assert_same_result(fast(logits, u, history, lengths), ref(logits, u, history, lengths))


@pytest.mark.parametrize("options", CHAINS[1:6:2], ids=["filters", "penalties", "everything"])
def test_the_chain_on_float32_logits(options, rng):
    fast, ref = both(**options)
    logits = (rng.normal(size=(6, 4000)) * 3).astype(np.float32)
    history, lengths = history_for(6, 4000, rng)
    u = rng.random(6)
    assert_same_result(fast(logits, u, history, lengths), ref(logits, u, history, lengths))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), V=st.integers(1, 400), k=st.integers(0, 400), p=st.floats(1e-6, 1.0),
       min_p=st.sampled_from([0.0, 0.01, 0.3, 1.0]), t=st.sampled_from([0.0, 0.4, 1.0, 2.0]),
       rep=st.sampled_from([1.0, 0.7, 1.5]), freq=st.sampled_from([0.0, 0.75, -0.5]),
       last_n=st.sampled_from([-1, 0, 1, 5, 64]), edge=st.sampled_from([None, 0.0, np.nextafter(1.0, 0.0)]))
def test_any_settings_draw_the_reference_token(seed, V, k, p, min_p, t, rep, freq, last_n, edge):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-4, 5, size=(1, V)) * 0.75 if seed % 2 else rng.normal(size=(1, V)) * 3
    history = rng.integers(0, V, size=(1, 20))
    # Rows of ties make CDF boundaries land on round numbers: a u there (0.5, which hypothesis likes) would
    # test which way the two sides' sums round, so u is random or an end of [0, 1).
    u = rng.random() if edge is None else edge
    fast, ref = both(temperature=t, top_k=k, top_p=p, min_p=min_p, repetition_penalty=rep, frequency_penalty=freq,
                     penalty_last_n=last_n, logprobs=True, top_logprobs=min(V, 4))
    assert_same_result(fast(logits, [u], history), ref(logits, [u], history))


def test_parallel_rows_match_one_row_at_a_time(rng):
    sampler = sampling.Sampler(**CHAINS[5])
    logits = rng.normal(size=(32, 5000)) * 3
    history, lengths = history_for(32, 5000, rng)
    u = rng.random(32)
    together = sampler(logits, u, history, lengths)
    for b in range(32):
        alone = sampler(logits[b:b + 1], u[b:b + 1], history[b:b + 1], lengths[b:b + 1])
        assert alone.tokens[0] == together.tokens[b]
        np.testing.assert_array_equal(alone.top_ids[0], together.top_ids[b])
    with threadpool_limits(1, user_api="openmp"):
        np.testing.assert_array_equal(sampler(logits, u, history, lengths).tokens, together.tokens)


def test_calls_reuse_the_samplers_scratch_and_grow_it_when_needed(rng):
    """No call allocates kernel scratch: a call needing more (rows, vocabulary, window, top-n) grows the
    sampler's, and no result depends on what an earlier call left there."""
    sampler = sampling.Sampler(**CHAINS[5])
    before = _sampling.allocations()
    scratches = []
    for B, V in [(2, 300), (2, 300), (5, 3000), (1, 50), (5, 3000)]:
        logits, u = rng.normal(size=(B, V)) * 3, rng.random(B)
        history, lengths = history_for(B, V, rng)
        reused, fresh = (s(logits, u, history, lengths) for s in (sampler, sampling.Sampler(**CHAINS[5])))
        for name in ("tokens", "logprobs", "top_ids", "top_logprobs"):
            np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))
        scratches.append(sampler._scratch)
    assert _sampling.allocations() == before
    assert scratches[1] is scratches[0] and scratches[2].size > scratches[1].size
    assert scratches[3] is scratches[2] and scratches[4] is scratches[2]


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_greedy_with_penalties(Sampler):
    logits = np.array([[3.0, 2.9, 0.0, -1.0], [3.0, 2.9, 0.0, -1.0]])
    history = np.array([[0, 3, 3], [1, 1, 1]])
    sampler = Sampler(greedy=True, repetition_penalty=1.5)
    # row 0: 3 / 1.5 = 2 < 2.9; row 1: token 1 seen, 2.9 / 1.5 < 3
    np.testing.assert_array_equal(sampler(logits, None, history).tokens, [1, 0])
    # row 0: token 0 seen 3 times, 3 - 3 * 0.05 < 2.9; row 1: once, 3 - 0.05 > 2.9
    np.testing.assert_array_equal(Sampler(temperature=0.0, frequency_penalty=0.05)(
        logits, [0.1, 0.9], np.array([[0, 0, 0], [0, 3, 3]])).tokens, [1, 0])
    np.testing.assert_array_equal(sampler(logits, None).tokens, [0, 0])    # no history: no penalties


# ------------------------------------------------------------------------------------------- logprobs

@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_logprobs_are_the_raw_log_softmax(Sampler, rng):
    logits = rng.normal(size=(4, 500)) * 2
    history, lengths = history_for(4, 500, rng)
    u = rng.random(4)
    # bias, penalties and temperature change the draw, not the reported log-probabilities
    result = Sampler(temperature=0.5, top_k=10, repetition_penalty=1.5, logit_bias={3: 4.0}, logprobs=True,
                     top_logprobs=6)(logits, u, history, lengths)
    expected = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(result.logprobs, expected[np.arange(4), result.tokens], rtol=0, atol=1e-12)
    order = np.argsort(-logits, axis=-1)[:, :6]
    np.testing.assert_array_equal(result.top_ids, order)
    np.testing.assert_allclose(result.top_logprobs, np.take_along_axis(expected, order, axis=-1), rtol=0, atol=1e-12)
    assert result.top_ids.shape == (4, 6) and result.top_logprobs.shape == (4, 6)


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_top_logprobs_ties_go_to_the_lower_id(Sampler):
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0], [2.0, -np.inf, 0.0, -np.inf, 2.0, -np.inf]])
    result = Sampler(greedy=True, logprobs=True, top_logprobs=6)(logits, None)
    np.testing.assert_array_equal(result.top_ids, [[1, 2, 4, 0, 5, 3], [0, 4, 2, 1, 3, 5]])
    np.testing.assert_allclose(result.top_logprobs[0, :3], np.log(1 / (3 + 2 * np.exp(-2) + np.exp(-3))))
    assert np.isneginf(result.top_logprobs[1, 3:]).all()
    np.testing.assert_array_equal(result.tokens, [1, 0])


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_result_fields(Sampler, rng):
    logits = rng.normal(size=(3, 20))
    before = logits.copy()
    plain = Sampler()(logits, rng.random(3))
    assert plain.logprobs is None and plain.top_ids is None and plain.top_logprobs is None
    only = Sampler(logprobs=True)(logits, rng.random(3))
    assert only.logprobs.shape == (3,) and only.top_ids is None
    np.testing.assert_array_equal(logits, before)                    # logits are never modified


@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_edge_shapes(Sampler, rng):
    everything = dict(top_k=1, top_p=0.5, min_p=0.5, repetition_penalty=1.5, penalty_last_n=-1, logprobs=True)
    one_token = Sampler(**everything, top_logprobs=1)(np.zeros((3, 1)), [0.0, 0.5, 0.9], np.zeros((3, 0), int))
    np.testing.assert_array_equal(one_token.tokens, [0, 0, 0])
    np.testing.assert_array_equal(one_token.logprobs, [0.0, 0.0, 0.0])
    logits = rng.normal(size=(2, 7)).astype(np.float16)                    # worked as float32
    result = Sampler(**everything, top_logprobs=7)(logits, [0.3, 0.6], np.array([[1, 1], [2, 3]]), [2, 0])
    np.testing.assert_array_equal(np.sort(result.top_ids, axis=-1), np.tile(np.arange(7), (2, 1)))


def test_needs_history():
    assert not sampling.Sampler().needs_history
    assert not sampling.Sampler(repetition_penalty=1.3, penalty_last_n=0).needs_history
    for option in (dict(repetition_penalty=1.1), dict(frequency_penalty=-0.1), dict(presence_penalty=0.5)):
        assert sampling.Sampler(**option).needs_history
        assert reference.Sampler(**option).needs_history


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("options, error, match", [
    (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=np.inf), ValueError, "repetition_penalty"),
    (dict(frequency_penalty=np.nan), ValueError, "frequency_penalty"),
    (dict(presence_penalty=np.inf), ValueError, "presence_penalty"),
    (dict(presence_penalty="high"), TypeError, "presence_penalty"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(penalty_last_n=-2), ValueError, "penalty_last_n"),
    (dict(penalty_last_n=2.0), TypeError, "penalty_last_n"),
    (dict(logit_bias={-1: 1.0}), ValueError, "logit_bias token id"),
    (dict(logit_bias={1.5: 1.0}), TypeError, "logit_bias token id"),
    (dict(logit_bias={1: np.nan}), ValueError, r"logit_bias\[1\]"),
    (dict(logit_bias={1: np.inf}), ValueError, r"logit_bias\[1\]"),
    (dict(logit_bias=[(1, 2.0)]), TypeError, "logit_bias"),
    (dict(top_logprobs=-1), ValueError, "top_logprobs"),
    (dict(top_logprobs=2), ValueError, "top_logprobs"),           # without logprobs=True
    (dict(greedy="yes"), TypeError, "greedy"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
], ids=lambda v: None)
@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_bad_settings_raise(Sampler, options, error, match):
    with pytest.raises(error, match=match):
        Sampler(**options)


H = np.zeros((2, 4), dtype=np.int64)


@pytest.mark.parametrize("options, args, error, match", [
    (dict(logit_bias={5: 1.0}), (np.zeros((2, 5)), [0.1, 0.2]), ValueError, "logit_bias token id 5"),
    (dict(logprobs=True, top_logprobs=6), (np.zeros((2, 5)), [0.1, 0.2]), ValueError, "top_logprobs"),
    (dict(), (np.zeros(5), [0.1]), ValueError, r"shape \(B, V\)"),
    (dict(), (np.zeros((2, 5)), [0.1]), ValueError, "uniforms"),
    (dict(), (np.zeros((2, 5)), [0.1, 1.0]), ValueError, "uniforms"),
    (dict(), (np.zeros((2, 5)), None), TypeError, "uniforms must be given"),
    (dict(), (np.zeros((2, 5), dtype=np.int64), [0.1, 0.2]), TypeError, "logits"),
    (dict(), (np.array([[0.0, np.nan]] * 2), [0.1, 0.2]), ValueError, "NaN"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H[:1]), ValueError, "history"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H[0]), ValueError, "history"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H.astype(float)), TypeError, "history"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H, [4]), ValueError, "lengths"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H, [4, 5]), ValueError, "lengths"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H, [-1, 2]), ValueError, "lengths"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], None, [1, 2]), ValueError, "lengths"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H + 5), ValueError, r"history\[0, 0\] = 5"),
    (dict(presence_penalty=1.0), (np.zeros((2, 5)), [0.1, 0.2], H - 1, [0, 1]), ValueError, r"history\[1, 0\]"),
], ids=lambda v: None)
@pytest.mark.parametrize("Sampler", SAMPLERS)
def test_bad_calls_raise(Sampler, options, args, error, match):
    with pytest.raises(error, match=match):
        Sampler(**options)(*args)


def test_ids_outside_the_penalty_window_are_not_read():
    history = np.array([[-7, 99, 1, 2]])                       # only the last 2 are in the window
    for Sampler in SAMPLERS:
        Sampler(presence_penalty=1.0, penalty_last_n=2)(np.zeros((1, 5)), [0.3], history)
        with pytest.raises(ValueError, match=r"history\[0, 1\] = 99"):
            Sampler(presence_penalty=1.0, penalty_last_n=3)(np.zeros((1, 5)), [0.3], history)


@pytest.mark.parametrize("call, match", [
    (lambda api: api.apply_penalties(LOGITS, HISTORY, None, repetition_penalty=-2.0), "repetition_penalty"),
    (lambda api: api.apply_penalties(LOGITS, HISTORY, None, penalty_last_n=-3), "penalty_last_n"),
    (lambda api: api.apply_penalties(LOGITS, HISTORY[None], None), "history"),
    (lambda api: api.apply_penalties(LOGITS, HISTORY, 8), "lengths"),
    (lambda api: api.apply_penalties(LOGITS, HISTORY + 6, None), "outside the vocabulary"),
    (lambda api: api.min_p_filter(LOGITS, 2.0), "min_p"),
    (lambda api: api.min_p_filter(LOGITS, np.nan), "min_p"),
])
def test_bad_function_arguments_raise(api, call, match):
    with pytest.raises(ValueError, match=match):
        call(api)
