"""The compiled causal GQA flash-attention kernel against a materialised float64 softmax attention."""
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastlm
from fastlm import _attention
from fastlm.reference import softmax


def reference_attention(q, k_cache, v_cache, start_pos):
    """Textbook twin in float64: per batch row, softmax(q k^T / sqrt(dk) + causal mask) v over the cache."""
    B, L, h, dk = q.shape
    group = h // k_cache.shape[1]
    out = np.empty((B, L, h, dk))
    for b in range(B):
        n_keys = start_pos[b] + L                                              # positions 0..n_keys-1
        qb = q[b].astype(np.float64).transpose(1, 0, 2)                        # (h, L, dk)
        kb = np.repeat(k_cache[b, :, :n_keys].astype(np.float64), group, axis=0)  # (h, n_keys, dk)
        vb = np.repeat(v_cache[b, :, :n_keys].astype(np.float64), group, axis=0)
        scores = qb @ kb.transpose(0, 2, 1) / np.sqrt(dk)                      # (h, L, n_keys)
        future = np.arange(n_keys)[None, :] > (start_pos[b] + np.arange(L))[:, None]
        scores[:, future] = -np.inf
        out[b] = (softmax(scores, axis=-1) @ vb).transpose(1, 0, 2)
    return out


def make_inputs(rng, dtype, B, L, h, hkv, dk, T, start_pos):
    """Random q and caches; cache slots past each row's last position hold NaN, which must never be read."""
    q = rng.normal(size=(B, L, h, dk)).astype(dtype)
    k = rng.normal(size=(B, hkv, T, dk)).astype(dtype)
    v = rng.normal(size=(B, hkv, T, dk)).astype(dtype)
    start_pos = np.asarray(start_pos, dtype=np.int64)
    for b in range(B):
        k[b, :, start_pos[b] + L:] = np.nan
        v[b, :, start_pos[b] + L:] = np.nan
    return q, k, v, start_pos


def run(q, k, v, start_pos):
    out = np.full(q.shape, np.nan, dtype=q.dtype)
    _attention.attention(q, k, v, start_pos, out, 1.0 / np.sqrt(q.shape[-1]))
    assert out.dtype == q.dtype
    return out


# (B, L, h, hkv, dk, T, start_pos): prefill, chunked prefill, decode, odd sizes and the key-split path.
CASES = {
    "prefill": (1, 37, 4, 2, 64, 37, [0]),
    "prefill-multi-tile": (1, 300, 8, 2, 64, 300, [0]),
    "prefill-mha-dk128": (1, 150, 2, 2, 128, 160, [0]),
    "prefill-mqa": (2, 70, 6, 1, 48, 80, [0, 10]),
    "chunked-prefill": (3, 90, 8, 4, 64, 400, [0, 129, 310]),
    "chunked-prefill-odd-dk": (2, 13, 3, 3, 33, 200, [187, 64]),
    "decode": (4, 1, 16, 4, 64, 600, [0, 1, 255, 599]),
    "decode-long-split": (1, 1, 9, 3, 64, 2048, [2047]),
    "decode-one-kv-head-split": (1, 1, 4, 1, 128, 3000, [2500]),
    "short-chunk-split": (1, 5, 2, 1, 16, 1500, [1400]),
    "tiny": (1, 1, 1, 1, 1, 1, [0]),
    "dk-7": (2, 9, 6, 2, 7, 20, [3, 11]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float64_matches_reference(case, simd):
    B, L, h, hkv, dk, T, start = case
    q, k, v, start_pos = make_inputs(np.random.default_rng(0), np.float64, B, L, h, hkv, dk, T, start)
    np.testing.assert_allclose(run(q, k, v, start_pos), reference_attention(q, k, v, start_pos), rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_float32_matches_reference(case, simd):
    B, L, h, hkv, dk, T, start = case
    q, k, v, start_pos = make_inputs(np.random.default_rng(1), np.float32, B, L, h, hkv, dk, T, start)
    np.testing.assert_allclose(run(q, k, v, start_pos), reference_attention(q, k, v, start_pos), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes(seed, simd):
    rng = np.random.default_rng(100 + seed)
    hkv = int(rng.integers(1, 4))
    h = hkv * int(rng.choice([1, 2, 3, 4, 8]))
    B, L, dk = int(rng.integers(1, 4)), int(rng.choice([1, 2, 17, 64, 65, 150])), int(rng.integers(1, 80))
    T = L + int(rng.integers(0, 300))
    start = rng.integers(0, T - L + 1, size=B)
    for dtype, tol in ((np.float64, dict(rtol=0, atol=1e-10)), (np.float32, dict(rtol=1e-5, atol=1e-6))):
        q, k, v, start_pos = make_inputs(rng, dtype, B, L, h, hkv, dk, T, start)
        np.testing.assert_allclose(run(q, k, v, start_pos), reference_attention(q, k, v, start_pos), **tol,
                                   err_msg=f"B={B} L={L} h={h} hkv={hkv} dk={dk} T={T} start={start}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunks_and_decode_steps_equal_one_prefill(dtype, simd):
    """Prefill in chunks, then decode token by token: the same numbers as one prefill of everything."""
    rng = np.random.default_rng(2)
    q, k, v, start_pos = make_inputs(rng, dtype, 2, 100, 8, 2, 64, 100, [0, 0])
    full = run(q, k, v, start_pos)
    pieces = []
    for lo, hi in [(0, 40), (40, 97), (97, 98), (98, 99), (99, 100)]:
        pieces.append(run(np.ascontiguousarray(q[:, lo:hi]), k, v, np.full(2, lo, dtype=np.int64)))
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=tol, atol=tol)


def test_large_scores_do_not_overflow(simd):
    """Scores of several hundred: the running max keeps exp in range, as the max shift does in softmax."""
    q, k, v, start_pos = make_inputs(np.random.default_rng(3), np.float32, 1, 80, 2, 1, 16, 80, [0])
    q *= 40
    np.testing.assert_allclose(run(q, k, v, start_pos), reference_attention(q, k, v, start_pos), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("case", ["prefill-multi-tile", "decode-one-kv-head-split"])
def test_in_place_output(case):
    """out may be q: every work item reads its queries before it writes the same rows."""
    B, L, h, hkv, dk, T, start = CASES[case]
    q, k, v, start_pos = make_inputs(np.random.default_rng(6), np.float64, B, L, h, hkv, dk, T, start)
    expected = reference_attention(q, k, v, start_pos)
    _attention.attention(q, k, v, start_pos, q, 1.0 / np.sqrt(dk))
    np.testing.assert_allclose(q, expected, rtol=0, atol=1e-10)


def test_read_only_inputs_are_accepted():
    q, k, v, start_pos = make_inputs(np.random.default_rng(4), np.float32, 1, 3, 2, 1, 8, 5, [2])
    for a in (q, k, v, start_pos):
        a.flags.writeable = False
    np.testing.assert_allclose(run(q, k, v, start_pos), reference_attention(q, k, v, start_pos), rtol=1e-5,
                               atol=1e-6)


def test_empty_batch_or_length_is_a_no_op():
    out = np.empty((0, 3, 2, 8), dtype=np.float32)
    _attention.attention(out.copy(), np.empty((0, 1, 4, 8), np.float32), np.empty((0, 1, 4, 8), np.float32),
                         np.empty(0, np.int64), out, 0.5)
    out = np.empty((2, 0, 2, 8))
    _attention.attention(out.copy(), np.zeros((2, 1, 4, 8)), np.zeros((2, 1, 4, 8)), np.zeros(2, np.int64),
                         out, 0.5)


def test_set_simd_round_trip():
    before = _attention.simd_enabled()
    _attention.set_simd(False)
    assert _attention.simd_enabled() is False
    _attention.set_simd(True)
    assert isinstance(_attention.simd_enabled(), bool)
    _attention.set_simd(before)


def test_environment_variable_disables_simd():
    code = "from fastlm import _attention; print(_attention.simd_enabled())"
    env = dict(os.environ, FASTLM_SIMD="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_scratch_is_independent_of_sequence_length():
    """Memory is one query tile and one key tile per thread, never an (L, T) score matrix."""
    h, hkv, dk = 16, 4, 64
    per_thread = _attention.scratch_elements(8192, h, hkv, dk)
    assert per_thread == _attention.scratch_elements(512, h, hkv, dk)
    assert per_thread < 32 * 1024                      # 128 KiB of float32: a few tiles of (64 rows, dk)

    rng = np.random.default_rng(5)
    peaks = {}
    for L in (256, 1024):
        q, k, v, start_pos = make_inputs(rng, np.float32, 1, L, h, hkv, dk, L, [0])
        out = np.empty_like(q)
        tracemalloc.start()
        _attention.attention(q, k, v, start_pos, out, 0.125)
        peaks[L] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert abs(peaks[1024] - peaks[256]) < 1024            # Python objects aside, the same buffers
    assert peaks[1024] < 1024 * 1024 * 4 // 16            # a sixteenth of one head's (L, L) float32 scores


@pytest.fixture
def threads():
    """Set the OpenMP thread count for a test (more threads than cores is fine); restore it afterwards."""
    before = fastlm.get_num_threads()
    yield fastlm.set_num_threads
    fastlm.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 3, 8])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_given_scratch_gives_identical_results(case, n_threads, threads):
    """A scratch of exactly scratch_size() elements, at any alignment, and with earlier contents: the same
    bits as a call that allocates its own, and no allocation."""
    threads(n_threads)
    B, L, h, hkv, dk, T, start = case
    for dtype in (np.float32, np.float64):
        q, k, v, start_pos = make_inputs(np.random.default_rng(7), dtype, B, L, h, hkv, dk, T, start)
        expected = run(q, k, v, start_pos)
        size = _attention.scratch_size(B, L, h, hkv, dk, T, n_threads)
        before = _attention.allocations()
        for offset in (0, 1, 3):
            scratch = np.full(size + offset, np.nan, dtype)[offset:]
            out = np.full(q.shape, np.nan, dtype)
            _attention.attention(q, k, v, start_pos, out, 1.0 / np.sqrt(dk), scratch=scratch)
            np.testing.assert_array_equal(out, expected)
        assert _attention.allocations() == before


def test_allocations_count_calls_without_scratch():
    q, k, v, start_pos = make_inputs(np.random.default_rng(8), np.float32, 1, 2, 2, 1, 8, 4, [1])
    before = _attention.allocations()
    run(q, k, v, start_pos)
    assert _attention.allocations() == before + 1


def test_scratch_size_is_the_worst_case_over_start_pos():
    """Key splitting grows with the longest key range, so T (every row at T - L) is the worst case."""
    h, hkv, dk = 9, 3, 64
    sizes = [_attention.scratch_size(1, 1, h, hkv, dk, T, 4) for T in (1, 256, 511, 512, 2048, 8192)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert _attention.scratch_size(0, 5, h, hkv, dk, 100, 4) == _attention.scratch_size(3, 0, h, hkv, dk, 100, 4) == 0


@pytest.mark.parametrize("h, hkv, dk", [(9, 3, 64), (4, 4, 16), (8, 1, 32)])
@pytest.mark.parametrize("n_threads", [1, 2, 5])
def test_max_scratch_size_covers_every_call_within_the_tokens(h, hkv, dk, n_threads):
    for tokens in (1, 7, 40):
        for T in (64, 600, 3000):
            most = _attention.max_scratch_size(tokens, h, hkv, dk, T, n_threads)
            for B in range(1, tokens + 1):
                for L in range(1, tokens // B + 1):
                    assert _attention.scratch_size(B, L, h, hkv, dk, T, n_threads) <= most, (tokens, T, B, L)


@pytest.mark.parametrize("args, error", [
    ((1, 1, 4, 3, 8, 10, 1), ValueError),            # heads not a multiple
    ((1, 1, 4, 2, 0, 10, 1), ValueError),            # head_dim
    ((1, 1, 4, 2, 8, 10, 0), ValueError),            # num_threads
    ((-1, 1, 4, 2, 8, 10, 1), ValueError),           # B
    ((1, 1.5, 4, 2, 8, 10, 1), TypeError),           # L
])
def test_scratch_size_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        _attention.scratch_size(*args)


# --------------------------------------------------------------------------------------------- bad input

def good_args(dtype=np.float32):
    q = np.zeros((2, 3, 4, 8), dtype)
    k = np.zeros((2, 2, 10, 8), dtype)
    return dict(q=q, k_cache=k, v_cache=k.copy(), start_pos=np.array([0, 7]), out=np.empty_like(q), scale=0.5)


def good_scratch_size():
    """scratch_size() for good_args() on the current threads."""
    return _attention.scratch_size(2, 3, 4, 2, 8, 10, _attention.num_threads())


def test_good_args_run():
    _attention.attention(**good_args())
    _attention.attention(**good_args(), scratch=np.empty(good_scratch_size(), np.float32))


def overlap_q_and_out(args):
    """q and out one element row apart in the same buffer: neither the same array nor disjoint."""
    buf = np.zeros(192 + 8, np.float32)
    args.update(q=buf[:192].reshape(2, 3, 4, 8), out=buf[8:].reshape(2, 3, 4, 8))


BAD = {
    "q-not-array": (lambda a: a.update(q=a["q"].tolist()), TypeError, "q"),
    "q-int-dtype": (lambda a: a.update(q=a["q"].astype(np.int32)), TypeError, "q"),
    "q-3d": (lambda a: a.update(q=a["q"][0]), ValueError, "q"),
    "k-dtype": (lambda a: a.update(k_cache=a["k_cache"].astype(np.float64)), TypeError, "k_cache"),
    "v-dtype": (lambda a: a.update(v_cache=a["v_cache"].astype(np.float16)), TypeError, "v_cache"),
    "out-dtype": (lambda a: a.update(out=a["out"].astype(np.float64)), TypeError, "out"),
    "start-pos-int32": (lambda a: a.update(start_pos=a["start_pos"].astype(np.int32)), TypeError,
                        "start_pos"),
    "k-batch": (lambda a: a.update(k_cache=a["k_cache"][:1].copy()), ValueError, "k_cache"),
    "k-head-dim": (lambda a: a.update(k_cache=np.zeros((2, 2, 10, 6), np.float32)), ValueError, "k_cache"),
    "v-shape": (lambda a: a.update(v_cache=np.zeros((2, 2, 9, 8), np.float32)), ValueError, "v_cache"),
    "out-shape": (lambda a: a.update(out=np.empty((2, 3, 4, 4), np.float32)), ValueError, "out"),
    "start-pos-length": (lambda a: a.update(start_pos=np.array([0])), ValueError, "start_pos"),
    "start-pos-negative": (lambda a: a.update(start_pos=np.array([0, -1])), ValueError, "start_pos"),
    "start-pos-past-cache": (lambda a: a.update(start_pos=np.array([0, 8])), ValueError, "start_pos"),
    "heads-not-multiple": (lambda a: a.update(k_cache=np.zeros((2, 3, 10, 8), np.float32),
                                              v_cache=np.zeros((2, 3, 10, 8), np.float32)), ValueError,
                           "heads"),
    "zero-head-dim": (lambda a: a.update(q=np.zeros((2, 3, 4, 0), np.float32)), ValueError, "head_dim"),
    "q-not-contiguous": (lambda a: a.update(q=np.zeros((2, 3, 4, 16), np.float32)[..., ::2]), ValueError,
                         "q"),
    "k-not-contiguous": (lambda a: a.update(k_cache=np.zeros((2, 2, 10, 8), np.float32, order="F")),
                         ValueError, "k_cache"),
    "v-transposed": (lambda a: a.update(v_cache=np.zeros((2, 10, 2, 8), np.float32).transpose(0, 2, 1, 3)),
                     ValueError, "v_cache"),
    "out-not-contiguous": (lambda a: a.update(out=np.empty((2, 6, 4, 8), np.float32)[:, ::2]), ValueError,
                           "out"),
    "start-pos-strided": (lambda a: a.update(start_pos=np.array([0, 9, 7, 1])[::2]), ValueError,
                          "start_pos"),
    "out-read-only": (lambda a: a["out"].setflags(write=False), ValueError, "out"),
    "out-is-the-cache": (lambda a: a.update(out=a["k_cache"].reshape(-1)[:192].reshape(2, 3, 4, 8)), ValueError,
                         "out"),
    "out-overlaps-q": (overlap_q_and_out, ValueError, "out"),
    "scale-nan": (lambda a: a.update(scale=float("nan")), ValueError, "scale"),
    "scratch-too-small": (lambda a: a.update(scratch=np.empty(good_scratch_size() - 1, np.float32)), ValueError,
                          "scratch"),
    "scratch-dtype": (lambda a: a.update(scratch=np.empty(good_scratch_size())), TypeError, "scratch"),
    "scratch-2d": (lambda a: a.update(scratch=np.empty((1, good_scratch_size()), np.float32)), ValueError,
                   "scratch"),
    "scratch-not-contiguous": (lambda a: a.update(scratch=np.empty(2 * good_scratch_size(), np.float32)[::2]),
                               ValueError, "scratch"),
    "scratch-not-array": (lambda a: a.update(scratch=[0.0] * good_scratch_size()), TypeError, "scratch"),
    "scratch-read-only": (lambda a: a.update(scratch=np.empty(good_scratch_size(), np.float32)) or
                          a["scratch"].setflags(write=False), ValueError, "scratch"),
    "scratch-is-out": (lambda a: a.update(scratch=np.empty(good_scratch_size() + 192, np.float32)) or
                       a.update(out=a["scratch"][:192].reshape(2, 3, 4, 8)), ValueError, "scratch"),
}


@pytest.mark.parametrize("spoil, error, name", BAD.values(), ids=BAD.keys())
def test_bad_input_raises(spoil, error, name):
    args = good_args()
    spoil(args)
    with pytest.raises(error, match=name):
        _attention.attention(**args)


# ------------------------------------------------------------------------------ sliding windows, soft-caps

def windowed_reference(q, k_cache, v_cache, start_pos, window, softcap):
    """Textbook twin with the family options: query at P sees keys P - W < j <= P; scores soft-capped."""
    B, L, h, dk = q.shape
    group = h // k_cache.shape[1]
    out = np.empty((B, L, h, dk))
    for b in range(B):
        n_keys = start_pos[b] + L
        qb = q[b].astype(np.float64).transpose(1, 0, 2)
        kb = np.repeat(np.nan_to_num(k_cache[b, :, :n_keys].astype(np.float64)), group, axis=0)
        vb = np.repeat(np.nan_to_num(v_cache[b, :, :n_keys].astype(np.float64)), group, axis=0)
        scores = qb @ kb.transpose(0, 2, 1) / np.sqrt(dk)
        if softcap:
            scores = softcap * np.tanh(scores / softcap)
        query, key = (start_pos[b] + np.arange(L))[:, None], np.arange(n_keys)[None, :]
        scores[:, (key > query) | (query - key >= window if window else False)] = -np.inf
        out[b] = (softmax(scores, axis=-1) @ vb).transpose(1, 0, 2)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case, window, softcap", [
    ("prefill-multi-tile", 16, 0.0), ("prefill-multi-tile", 100, 5.0), ("chunked-prefill", 70, 0.0),
    ("chunked-prefill-odd-dk", 1, 0.0), ("decode", 16, 0.0), ("decode-long-split", 300, 0.0),
    ("decode", 0, 3.0), ("prefill-mqa", 64, 50.0)])
def test_sliding_window_and_softcap(case, window, softcap, dtype, simd):
    """Keys before a query's window hold NaN: they must never be read (decode costs O(window), not
    O(position)), and the result equals the masked textbook attention."""
    B, L, h, hkv, dk, T, start_pos = CASES[case]
    q, k, v, pos = make_inputs(np.random.default_rng(7), dtype, B, L, h, hkv, dk, T, start_pos)
    if window:
        for b in range(B):                      # every key older than the first query's window
            k[b, :, :max(0, pos[b] - window + 1)] = np.nan
            v[b, :, :max(0, pos[b] - window + 1)] = np.nan
    out = np.empty_like(q)
    _attention.attention(q, k, v, pos, out, 1.0 / np.sqrt(dk), window=window, softcap=softcap)
    np.testing.assert_allclose(out, windowed_reference(q, k, v, pos, window, softcap),
                               rtol=0, atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("window, softcap", [(-1, 0.0), (1.5, 0.0), (True, 0.0), (0, -1.0), (0, np.inf)])
def test_bad_window_or_softcap(window, softcap):
    q, k, v, pos = make_inputs(np.random.default_rng(0), np.float32, 1, 2, 2, 1, 8, 4, [0])
    with pytest.raises(fastlm.FastLMValueError):
        _attention.attention(q, k, v, pos, np.empty_like(q), 0.3, window=window, softcap=softcap)
