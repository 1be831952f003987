"""Generation on a SmolLM2-135M-shaped random float32 model: the cached engine beside the naive loop, decode
throughput at B = 1 and 8, and the Python overhead of one decode step."""
import time

import numpy as np
import pytest

import fastlm
from fastlm import _gather, _layers, _linear

CONFIG = fastlm.ModelConfig.from_name("smollm2-135m", max_seq_len=512)
PROMPT = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=128)
NEW = 128


@pytest.fixture(scope="module")
def model():
    return fastlm.CausalLM.from_config(CONFIG, seed=0)


@pytest.mark.benchmark(group="generate p=128 n=128 B=1")
def test_naive_loop(benchmark, model):
    benchmark.pedantic(model.generate_batch, args=([PROMPT], NEW), kwargs=dict(greedy=True, use_cache=False),
                       rounds=1, iterations=1)


@pytest.mark.benchmark(group="generate p=128 n=128 B=1")
def test_fastlm_cached(benchmark, model):
    (r,) = benchmark.pedantic(model.generate_batch, args=([PROMPT], NEW), kwargs=dict(greedy=True),
                              rounds=3, iterations=1, warmup_rounds=1)
    assert len(r.tokens) == NEW


def _decode_setup(model, B):
    cache, ws = model.new_cache(B, 512), model.new_workspace(max(B, 512))
    out = np.empty((B, CONFIG.vocab_size), np.float32)
    model.prefill(np.tile(PROMPT, (B, 1)), cache, 0, ws)
    tokens = np.arange(B)

    def step():
        cache.lengths[:] = len(PROMPT)          # decode at the same cache length every round
        model.decode(tokens, cache, 0, ws, out)
    return step


@pytest.mark.parametrize("B", [1, 8])
def test_fastlm_decode_step(benchmark, model, B):
    benchmark.group = f"decode step at T=128, B={B}"
    benchmark.pedantic(_decode_setup(model, B), rounds=40, iterations=1, warmup_rounds=3)
    benchmark.extra_info["tokens_per_s"] = B / benchmark.stats.stats.mean


def test_fastlm_decode_python_overhead(benchmark, model, monkeypatch):
    """Time per decode step minus the time spent inside compiled code: the pass through the blocks (one call),
    the embedding gather and the output projection."""
    inside = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            fn(*args, **kwargs)
            inside[0] += time.perf_counter() - t
        return wrapper

    class TimedBlocks:
        run = staticmethod(timed(model._compiled.run))
    monkeypatch.setattr(model, "_compiled", TimedBlocks())
    for module, name in [(_linear, "linear"), (_layers, "rmsnorm"), (_gather, "embedding_gather")]:
        monkeypatch.setattr(module, name, timed(getattr(module, name)))
    step = _decode_setup(model, 1)
    benchmark.group = "decode step Python overhead, B=1"
    inside[0] = 0.0
    benchmark.pedantic(step, rounds=40, iterations=1)
    per_step = benchmark.stats.stats.mean
    kernels = inside[0] / 40
    benchmark.extra_info["overhead_ms"] = (per_step - kernels) * 1e3
    benchmark.extra_info["overhead_pct"] = 100 * (per_step - kernels) / per_step
