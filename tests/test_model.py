"""fastlm.CausalLM: parity with the reference, dtypes, generation and bad input."""
import numpy as np
import pytest

import fastlm
from fastlm import _attention, reference

from conftest import TINY


@pytest.fixture(scope="module")
def pair():
    """A reference model and fast float64 / float32 models holding the same weights."""
    kw = dict(TINY, seed=42)
    return reference.CausalLM(**kw), fastlm.CausalLM(**kw, dtype=np.float64), fastlm.CausalLM(**kw)


def test_same_seed_same_weights(pair):
    ref, f64, f32 = pair
    np.testing.assert_array_equal(f64.embedding, ref.embedding)
    q_dim, kv_dim = TINY["d_model"], TINY["num_kv_heads"] * TINY["d_model"] // TINY["num_heads"]
    np.testing.assert_array_equal(f64.blocks[1].w_qkv[q_dim:q_dim + kv_dim], ref.blocks[1].attention.wk)
    np.testing.assert_array_equal(f32.blocks[1].w_down, ref.blocks[1].ffn.w_down.astype(np.float32))
    assert f32.embedding.dtype == np.float32 and f64.embedding.dtype == np.float64


@pytest.mark.parametrize("tie", [False, True])
def test_forward_parity(tie, rng):
    kw = dict(TINY, tie_weights=tie, seed=3)
    ref, f64, f32 = reference.CausalLM(**kw), fastlm.CausalLM(**kw, dtype=np.float64), fastlm.CausalLM(**kw)
    ids = rng.integers(0, 97, size=(3, 17))
    expected = ref.forward(ids)
    out64, out32 = f64.forward(ids), f32.forward(ids)
    assert out64.dtype == np.float64 and out32.dtype == np.float32
    np.testing.assert_allclose(out64, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out32, expected, rtol=1e-4, atol=1e-4)


def test_parity_on_a_real_model_shape(rng):
    config = fastlm.ModelConfig.from_name("smollm2-135m", num_layers=2, vocab_size=1000, max_seq_len=64)
    ref = reference.CausalLM.from_config(config, seed=0)
    f32 = fastlm.CausalLM.from_config(config, seed=0)
    ids = rng.integers(0, 1000, size=(1, 40))
    np.testing.assert_allclose(f32.forward(ids), ref.forward(ids), rtol=1e-4, atol=1e-4)


def test_tied_output_is_a_view(pair):
    m = fastlm.CausalLM(**TINY, tie_weights=True, seed=0)
    assert m.output is m.embedding and m.output.shape == (97, 32)
    assert not np.shares_memory(pair[1].output, pair[1].embedding)


def test_causality_exact(pair, rng):
    _, f64, _ = pair
    a = rng.integers(0, 97, size=(2, 12))
    b = a.copy()
    b[:, 7] = (b[:, 7] + 5) % 97
    la, lb = f64.forward(a), f64.forward(b)
    np.testing.assert_allclose(la[:, :7], lb[:, :7], atol=1e-10)
    assert not np.allclose(la[:, 7], lb[:, 7])


def test_one_dimensional_ids_and_length_one(pair):
    _, _, f32 = pair
    assert f32.forward([5, 6, 7]).shape == (1, 3, 97)
    assert f32.forward(np.array([[4]], dtype=np.int32)).shape == (1, 1, 97)


@pytest.mark.parametrize("ids, error, match", [
    ([[1, 97]], ValueError, "outside the vocabulary"),
    ([[-1, 2]], ValueError, "outside the vocabulary"),
    (np.zeros((1, 25), dtype=int), ValueError, "exceeds max_seq_len"),
    (np.zeros((1, 0), dtype=int), ValueError, "at least one"),
    ([], ValueError, "empty"),
    (np.zeros((1, 2, 3), dtype=int), ValueError, "dimensions"),
    ([[1.0, 2.0]], TypeError, "integers"),
    ([[True, False]], TypeError, "integers"),
    ([["a", "b"]], TypeError, "integers"),
])
def test_forward_rejects_bad_ids(api, ids, error, match):
    model = api.CausalLM(**TINY, seed=0)
    with pytest.raises(error, match=match):
        model.forward(ids)


def test_bad_dtype_raises():
    with pytest.raises(TypeError, match="dtype"):
        fastlm.CausalLM(**TINY, dtype=np.float16)


# ------------------------------------------------------------------------------------------- generation

def test_greedy_generation_matches_reference(pair, rng):
    ref, f64, f32 = pair
    prompt = rng.integers(0, 97, size=(2, 5))
    expected = ref.generate(prompt, 8, greedy=True)
    assert expected.shape == (2, 13) and expected.dtype == np.int64
    np.testing.assert_array_equal(expected[:, :5], prompt)
    np.testing.assert_array_equal(f64.generate(prompt, 8, greedy=True), expected)
    np.testing.assert_array_equal(f32.generate(prompt, 8, temperature=0.0), expected)


def test_seeded_sampling_is_reproducible_and_matches_reference(pair):
    ref, f64, _ = pair
    kw = dict(temperature=0.9, top_k=20, top_p=0.9, seed=5)
    a = f64.generate([[1, 2, 3]], 10, **kw)
    np.testing.assert_array_equal(a, f64.generate([[1, 2, 3]], 10, **kw))
    np.testing.assert_array_equal(a, ref.generate([[1, 2, 3]], 10, **kw))
    assert not np.array_equal(a, f64.generate([[1, 2, 3]], 10, **{**kw, "seed": 6}))


def test_generation_stops_at_max_seq_len(api):
    model = api.CausalLM(**TINY, seed=0)
    out = model.generate(np.arange(20), 100, greedy=True)
    assert out.shape == (1, TINY["max_seq_len"])


def test_eos_stops_and_pads_finished_rows(pair):
    _, f64, _ = pair
    prompt = np.array([[3, 4], [10, 11]])
    free = f64.generate(prompt, 6, greedy=True)
    eos = int(free[0, 3])                               # row 0's second new token
    out = f64.generate(prompt, 6, greedy=True, eos_token_id=eos)
    row0 = list(free[0, 2:]).index(eos) + 2             # where row 0 first produces eos
    assert (out[0, row0:] == eos).all()
    np.testing.assert_array_equal(out[0, :row0 + 1], free[0, :row0 + 1])
    if eos not in free[1, 2:]:
        np.testing.assert_array_equal(out[1], free[1])  # row 1 runs on to max_new_tokens
    single = f64.generate(prompt[:1], 6, greedy=True, eos_token_id=eos)
    assert single.shape[1] == row0 + 1                   # every row finished: stop early


def test_zero_new_tokens_returns_the_prompt(api):
    model = api.CausalLM(**TINY, seed=0)
    np.testing.assert_array_equal(model.generate([[1, 2]], 0), [[1, 2]])


@pytest.mark.parametrize("kwargs, error", [
    (dict(max_new_tokens=-1), ValueError),
    (dict(max_new_tokens=2.0), TypeError),
    (dict(eos_token_id=97), ValueError),
    (dict(eos_token_id=-2), ValueError),
    (dict(temperature=-0.5), ValueError),
    (dict(top_p=2.0), ValueError),
    (dict(top_k=-1), ValueError),
    (dict(seed="x"), TypeError),
])
def test_generate_rejects_bad_arguments(api, kwargs, error):
    model = api.CausalLM(**TINY, seed=0)
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(error):
        model.generate([[1, 2]], **kwargs)


def test_workspace_grows_its_attention_scratch_once_when_threads_rise(rng):
    """A workspace sizes the attention scratch for the threads of its making; after set_num_threads raises
    them, the next call grows it, once, and no attention call allocates its own."""
    model = fastlm.CausalLM(**TINY, seed=0)
    before = fastlm.get_num_threads()
    try:
        fastlm.set_num_threads(1)
        cache, ws = model.new_cache(2), model.new_workspace(8)
        model.prefill(rng.integers(0, 97, size=(2, 5)), cache, 0, ws)
        first = ws.views(2, 1).attn_scratch
        fastlm.set_num_threads(4)
        allocations = _attention.allocations()
        model.decode([1, 2], cache, 0, ws)
        grown = ws.views(2, 1).attn_scratch
        model.decode([3, 4], cache, 0, ws)
        assert grown.size > first.size and ws.views(2, 1).attn_scratch is grown
        assert _attention.allocations() == allocations
    finally:
        fastlm.set_num_threads(before)


def test_workspace_must_cover_the_cache_length():
    model = fastlm.CausalLM(**TINY, seed=0)
    with pytest.raises(fastlm.FastLMValueError, match="max_keys"):
        model.prefill([[1, 2]], model.new_cache(1), 0, model.new_workspace(8, max_keys=10))
    model.prefill([[1, 2]], model.new_cache(1, 10), 0, model.new_workspace(8, max_keys=10))
    with pytest.raises(fastlm.FastLMValueError, match="max_keys"):
        model.new_workspace(8, max_keys=0)


# ------------------------------------------------------------------- buffers sized by use, not by the header

def test_rope_tables_grow_with_the_caches_calls_use(monkeypatch, rng):
    """The RoPE tables start short and grow (at least doubling, capped at max_seq_len) when a cache needs
    more positions; the grown model computes exactly what one built with full tables does."""
    full = fastlm.CausalLM(**TINY, seed=0)
    monkeypatch.setattr(fastlm.CausalLM, "rope_rows", 4)
    model = fastlm.CausalLM(**TINY, seed=0)
    assert model.blocks[0].rope_cos.shape[0] == 4 and full.blocks[0].rope_cos.shape[0] == TINY["max_seq_len"]
    old = model.compiled_for(4)
    ids = rng.integers(0, 97, size=(2, 9))
    cache, reference = model.new_cache(2, 10), full.new_cache(2, 10)
    np.testing.assert_array_equal(model.prefill(ids, cache), full.prefill(ids, reference))
    np.testing.assert_array_equal(model.decode([1, 2], cache), full.decode([1, 2], reference))
    assert model.blocks[0].rope_cos.shape[0] == 10 and model.compiled_for(10) is not old
    np.testing.assert_array_equal(model.blocks[1].rope_sin, full.blocks[1].rope_sin[:10])
    model.forward(ids[:, :6])                   # shorter: nothing grows
    assert model.blocks[0].rope_cos.shape[0] == 10
    np.testing.assert_array_equal(model.forward(rng.integers(0, 97, size=(1, 24)))[0, -1].shape, (97,))
    assert model.blocks[0].rope_cos.shape[0] == 24          # 2 x 10, capped at max_seq_len
    assert model.compiled_for(10 ** 9) is model.compiled_for(24)


def test_a_workspace_without_max_keys_grows_with_the_cache(rng):
    model = fastlm.CausalLM(**TINY, seed=0)
    ws = model.new_workspace(4)
    assert ws.max_keys == 4
    cache = model.new_cache(1, 20)
    expected = model.prefill([[5, 6, 7]], model.new_cache(1, 20), 0, model.new_workspace(4, max_keys=20))
    np.testing.assert_array_equal(model.prefill([[5, 6, 7]], cache, 0, ws), expected)
    assert ws.max_keys == 20


def test_a_huge_declared_context_costs_nothing_until_used(tmp_path):
    """A 9 KB GGUF may declare the longest context fastlm allows (2^24 positions): loading it, generating
    and opening a chat session allocate what the calls need, not tables or caches for 2^24 positions."""
    import tracemalloc
    from fastlm.config import MAX_SEQ_LEN
    from fastlm.weights.gguf_writer import GGUFValue, ValueType
    from fuzz.seeds import model_gguf
    path = tmp_path / "m.gguf"
    path.write_bytes(model_gguf("Q8_0", extra={"llama.context_length": GGUFValue(ValueType.UINT32, MAX_SEQ_LEN)}))
    tracemalloc.start()
    try:
        lm = fastlm.load(path)
        lm.generate("ab", 4, seed=0)
        session = lm.chat_session()
        session.send("ab", 4, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lm.model.max_seq_len == MAX_SEQ_LEN and peak < 16 << 20
    path.write_bytes(model_gguf("Q8_0", extra={"llama.context_length": GGUFValue(ValueType.UINT32, 2 ** 31)}))
    with pytest.raises(fastlm.ModelFormatError, match=r"llama\.context_length = 2147483648 is outside \[1, 16777216\]"):
        fastlm.load(path)
