"""The generation engine: KV cache against the naive loop, batching, stopping, streaming, seeds."""
import tracemalloc

import numpy as np
import pytest

import fastlm
from fastlm import _attention, _linear, reference

from conftest import TINY

W = TINY["max_seq_len"]  # 24


@pytest.fixture(scope="module")
def model():
    return fastlm.CausalLM(**TINY, seed=7, dtype=np.float64)


@pytest.fixture(scope="module")
def model32():
    return fastlm.CausalLM(**TINY, seed=7)


def prompts_ragged(rng, lengths=(5, 1, 9)):
    return [rng.integers(0, 97, size=n) for n in lengths]


# ------------------------------------------------------------------------------------- cache vs naive

@pytest.mark.parametrize("options", [dict(greedy=True), dict(temperature=0.9, top_k=20, top_p=0.9),
                                     dict(temperature=1.2, min_p=0.05, repetition_penalty=1.3)])
@pytest.mark.parametrize("lengths", [(5,), (1,), (5, 1, 9), (W - 1, 3)])
def test_cache_matches_naive(model, options, lengths, rng):
    prompts = prompts_ragged(rng, lengths)
    kw = dict(seed=11, **options)
    cached = model.generate_batch(prompts, 10, use_cache=True, **kw)
    naive = model.generate_batch(prompts, 10, use_cache=False, **kw)
    for c, n, p in zip(cached, naive, prompts):
        np.testing.assert_array_equal(c.tokens, n.tokens)
        assert c.finish_reason == n.finish_reason
        np.testing.assert_array_equal(c.prompt, p)


def test_float32_cache_matches_naive_greedy(model32, rng):
    prompts = prompts_ragged(rng)
    cached = model32.generate_batch(prompts, 12, greedy=True)
    naive = model32.generate_batch(prompts, 12, greedy=True, use_cache=False)
    for c, n in zip(cached, naive):
        np.testing.assert_array_equal(c.tokens, n.tokens)


def test_generate_matches_the_reference_loop(model, rng):
    ref = reference.CausalLM(**TINY, seed=7)
    prompt = rng.integers(0, 97, size=(2, 4))
    for kw in (dict(greedy=True), dict(temperature=0.8, top_k=10, seed=3)):
        np.testing.assert_array_equal(model.generate(prompt, 8, **kw), ref.generate(prompt, 8, **kw))


def test_prompt_ending_one_before_max_seq_len(model, rng):
    prompt = rng.integers(0, 97, size=W - 1)
    (result,) = model.generate_batch([prompt], 5, greedy=True)
    assert len(result.tokens) == 1 and result.finish_reason == "length"
    (full,) = model.generate_batch([np.append(prompt, 1)], 5, greedy=True)
    assert len(full.tokens) == 0 and full.finish_reason == "length"


def test_batched_rows_equal_rows_alone(model, rng):
    prompts = prompts_ragged(rng, (3, 7, 2, 6))
    batch = model.generate_batch(prompts, 9, temperature=0.8, top_p=0.9, seed=5)
    for p, r in zip(prompts, batch):
        (alone,) = model.generate_batch([p], 9, temperature=0.8, top_p=0.9, seed=5)
        np.testing.assert_array_equal(r.tokens, alone.tokens)


def test_seeds_per_row_are_independent_of_batch_composition(model, rng):
    a, b, c = prompts_ragged(rng, (4, 6, 3))
    first = model.generate_batch([a, b], 8, temperature=1.0, seed=[1, 2])
    second = model.generate_batch([c, b, a], 8, temperature=1.0, seed=[9, 2, 1])
    np.testing.assert_array_equal(first[0].tokens, second[2].tokens)
    np.testing.assert_array_equal(first[1].tokens, second[1].tokens)


# -------------------------------------------------------------------------------------- sliding window

def test_sliding_window_matches_naive_window_reencoding(model, rng):
    prompt = rng.integers(0, 97, size=W - 3)
    (cached,) = model.generate_batch([prompt], 12, greedy=True, sliding_window=True)
    assert len(cached.tokens) == 12 and cached.finish_reason == "length"
    # The textbook's truncated generation: forward over the last max_seq_len tokens every step.
    tokens = list(prompt)
    for _ in range(12):
        tokens.append(int(np.argmax(model.forward(tokens[-W:])[0, -1])))
    np.testing.assert_array_equal(cached.tokens, tokens[len(prompt):])
    (naive,) = model.generate_batch([prompt], 12, greedy=True, sliding_window=True, use_cache=False)
    np.testing.assert_array_equal(naive.tokens, cached.tokens)


def test_sliding_window_with_sampling_and_a_long_prompt(model, rng):
    prompts = [rng.integers(0, 97, size=W + 5), rng.integers(0, 97, size=3)]
    kw = dict(temperature=0.9, seed=4, sliding_window=True)
    cached = model.generate_batch(prompts, 30, **kw)
    naive = model.generate_batch(prompts, 30, use_cache=False, **kw)
    for c, n in zip(cached, naive):
        np.testing.assert_array_equal(c.tokens, n.tokens)
        assert len(c.tokens) == 30


# ------------------------------------------------------------------------------------------ stopping

def test_eos_ids_stop_rows_and_pad_the_array(model, rng):
    prompts = rng.integers(0, 97, size=(3, 4))
    free = model.generate(prompts, 10, greedy=True)
    eos = int(free[0, 6])
    out = model.generate(prompts, 10, greedy=True, eos_token_id=eos)
    results = model.generate_batch(prompts, 10, greedy=True, eos_token_id=[eos, 96])
    first = list(free[0, 4:]).index(eos)
    assert results[0].finish_reason == "eos" and len(results[0].tokens) == first + 1
    np.testing.assert_array_equal(out[0, : 4 + first + 1], free[0, : 4 + first + 1])
    assert (out[0, 4 + first:] == eos).all()


def test_stop_sequences(model, rng):
    prompt = rng.integers(0, 97, size=5)
    (free,) = model.generate_batch([prompt], 10, greedy=True)
    stop = free.tokens[3:5].tolist()
    (r,) = model.generate_batch([prompt], 10, greedy=True, stop_sequences=[[96, 96, 96], stop])
    assert r.finish_reason == "stop"
    np.testing.assert_array_equal(r.tokens, free.tokens[: 3 + len(stop)][: len(r.tokens)])
    assert r.tokens[-2:].tolist() == stop


def test_max_new_tokens_and_zero(model, rng):
    (r,) = model.generate_batch([rng.integers(0, 97, size=3)], 4, greedy=True)
    assert len(r.tokens) == 4 and r.finish_reason == "length"
    (z,) = model.generate_batch([[1, 2]], 0)
    assert len(z.tokens) == 0


def test_finished_rows_leave_the_batch(model, rng, monkeypatch):
    prompts = prompts_ragged(rng, (4, 4, 4))
    free = model.generate_batch(prompts, 8, greedy=True)
    eos = int(free[1].tokens[1])                 # row 1 stops after two tokens (maybe others too)
    batch_sizes = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda tokens, *a, **k: batch_sizes.append(len(tokens)) or decode(tokens, *a, **k))
    results = model.generate_batch(prompts, 8, greedy=True, eos_token_id=eos)
    live = [sum(len(r.tokens) > step for r in results) for step in range(1, 8)]
    assert batch_sizes == [n for n in live if n]
    assert batch_sizes[-1] < 3


# -------------------------------------------------------------------------------------------- streaming

def test_stream_yields_the_same_tokens_step_by_step(model, rng):
    prompts = prompts_ragged(rng, (3, 6))
    events = list(model.stream(prompts, 6, temperature=0.7, seed=2, logprobs=True))
    batch = model.generate_batch(prompts, 6, temperature=0.7, seed=2, logprobs=True)
    for row, r in enumerate(batch):
        mine = [e for e in events if e.row == row]
        assert [e.token for e in mine] == r.tokens.tolist()
        np.testing.assert_allclose([e.logprob for e in mine], r.logprobs)
        assert [e.finish_reason for e in mine] == [None] * (len(mine) - 1) + [r.finish_reason]


def test_logprobs_are_the_model_log_softmax(model, rng):
    prompt = rng.integers(0, 97, size=4)
    (r,) = model.generate_batch([prompt], 3, greedy=True, logprobs=True, top_logprobs=2)
    seq = np.concatenate([prompt, r.tokens])
    logits = model.forward(seq)[0, len(prompt) - 1: -1]
    expected = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(r.logprobs, expected[np.arange(3), r.tokens], atol=1e-9)
    assert [t[0][0] for t in r.top_logprobs] == r.tokens.tolist()      # greedy picks the top token


# -------------------------------------------------------------------------------------- the decode step

def test_decode_step_allocates_no_buffers():
    """With a workspace and an output buffer, a decode step allocates no activations, logits or kernel
    scratch, and neither does a call of a Sampler with every option on."""
    model = fastlm.CausalLM(vocab_size=5000, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=4096,
                            max_seq_len=64, seed=0)
    cache, ws, out = model.new_cache(8, 20), model.new_workspace(64), np.empty((8, 5000), np.float32)
    sampler = fastlm.Sampler(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                             frequency_penalty=0.1, presence_penalty=0.1, logit_bias={3: 1.0, 7: -np.inf},
                             logprobs=True, top_logprobs=3)
    model.prefill(np.ones((8, 3), np.int64), cache, 0, ws)
    tokens, uniforms = np.arange(8), np.linspace(0.0, 0.9, 8)
    history, lengths = np.ones((8, 20), np.int64), np.full(8, 3)

    def step():
        model.decode(tokens, cache, 0, ws, out)
        sampler(out, uniforms, history, lengths)
    step()                                                      # warm the per-shape views and the sampler
    kernel_allocations = _attention.allocations(), fastlm._sampling.allocations()
    tracemalloc.start()
    for _ in range(5):
        step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The kernels count the calls that allocate their own scratch (the sampler's, malloc'd, is invisible
    # to tracemalloc): none did, so the workspace and the sampler passed theirs.
    assert (_attention.allocations(), fastlm._sampling.allocations()) == kernel_allocations
    # What is left is the Python objects of a call (array views and results, the kernels' memoryviews,
    # NumPy's reduction buffers), about 4 KB; the smallest scratch, one attention tile, is 16 KB.
    assert peak < 8 * 1024


def test_chunked_prefill_matches_one_pass(model, rng, monkeypatch):
    ids = rng.integers(0, 97, size=(2, 17))
    full = model.forward(ids)[:, -1]
    monkeypatch.setattr(model, "prefill_chunk", 4)
    cache = model.new_cache(2)
    np.testing.assert_allclose(model.prefill(ids, cache), full, atol=1e-12)
    assert cache.lengths.tolist() == [17, 17]


def test_generation_flops_with_cache_counts_what_the_engine_does(model, rng, monkeypatch):
    """Count the multiply-adds of every pass through the blocks and of every output projection during a
    cached generation, from the shapes each call actually gets."""
    flops = []
    c = model.config
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    per_token = c.d_model * (q_dim + 2 * kv_dim) + q_dim * c.d_model + 3 * c.d_model * c.d_ff

    class CountingBlocks:
        def __init__(self, compiled):
            self.compiled = compiled

        def run(self, x, *buffers):
            start_pos = buffers[8]
            L = x.shape[0] // len(start_pos)
            keys = sum(int(s) + i + 1 for s in start_pos for i in range(L))
            flops.append(c.num_layers * (2 * x.shape[0] * per_token + 2 * 2 * q_dim * keys))
            return self.compiled.run(x, *buffers)

    monkeypatch.setattr(model, "_compiled", CountingBlocks(model._compiled))
    linear = _linear.linear
    monkeypatch.setattr(_linear, "linear", lambda x, w, out, beta=0.0: (
        flops.append(2 * x.shape[0] * x.shape[1] * w.shape[0]), linear(x, w, out, beta))[1])
    p, n = 6, 5
    (r,) = model.generate_batch([rng.integers(0, 97, size=p)], n, greedy=True)
    assert len(r.tokens) == n
    expected = fastlm.generation_flops_with_cache(p, n, c.vocab_size, c.d_model, c.num_layers, c.num_heads,
                                                  c.num_kv_heads, c.d_ff)
    # The engine never runs the last new token through the model: nothing needs its logits.
    assert sum(flops) == expected["total"] - expected["per_step"][-1]


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error", [
    (dict(eos_token_id=97), ValueError),
    (dict(eos_token_id=[3, -1]), ValueError),
    (dict(stop_sequences=[[]]), ValueError),
    (dict(stop_sequences=[[1, 200]]), ValueError),
    (dict(repetition_penalty=-1.0), ValueError),
    (dict(min_p=1.5), ValueError),
    (dict(seed=[1, 2, 3]), ValueError),
    (dict(max_new_tokens=-1), ValueError),
    (dict(sampler=fastlm.Sampler(), temperature=0.5), ValueError),
])
def test_bad_generation_arguments(model, kwargs, error):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(error):
        model.generate_batch([[1, 2], [3]], **kwargs)


@pytest.mark.parametrize("prompts", [[], [[]], [[1, 97]], [[0.5]]])
def test_bad_prompts(model, prompts):
    with pytest.raises((ValueError, TypeError)):
        model.generate_batch(prompts, 3)


def test_cache_misuse_raises(model, model32):
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match="max_len"):
        model.prefill(np.ones((1, 9), np.int64), cache)
    with pytest.raises(ValueError, match="rows"):
        model.prefill(np.ones((2, 2), np.int64), cache, first_row=1)
    with pytest.raises(TypeError, match="KVCache"):
        model32.prefill(np.ones((1, 2), np.int64), cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, W + 1)


def test_a_prompt_cache_grows_as_the_conversation_does(rng):
    """A PromptCache allocates positions as calls need them (at least doubling, up to its max_len), keeping
    the cached ones: each turn gives the tokens of a call without the cache."""
    from fastlm.generation import PromptCache
    model = fastlm.CausalLM(**TINY, seed=0)
    model.prefill_chunk = 4                           # the cache's first allocation
    cache = PromptCache(model)
    assert cache.kv.max_len == 4 and cache.max_len == TINY["max_seq_len"]
    history = rng.integers(0, 97, size=3)
    for turn in range(3):
        (got,) = model.generate_batch([history], 3, greedy=True, prompt_cache=cache)
        (expected,) = model.generate_batch([history], 3, greedy=True)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        history = np.concatenate([history, got.tokens, rng.integers(0, 97, size=2)])
    assert cache.reused > 0 and cache.kv.max_len == 16   # 4 -> 8 -> 16 for the 13 + 3 positions of turn 3
    with pytest.raises(fastlm.FastLMValueError, match="exceed the prompt cache's 24 positions"):
        model.generate_batch([history], 20, prompt_cache=cache)
