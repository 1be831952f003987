"""The real model (SmolLM2-135M-Instruct, its shipped Q4_1 file) computed on its blocks beside the same weights
dequantised to float32, in the same run: decode steps at B = 1 and 8, and a 128-token prefill."""
import numpy as np
import pytest

import fastlm
from fastlm.errors import FastLMError
from fastlm.weights import fetch_default_model

PROMPT = np.random.default_rng(0).integers(0, 49152, size=128)


@pytest.fixture(scope="module")
def models():
    try:
        path = fetch_default_model()
    except FastLMError as err:
        pytest.skip(f"real model unavailable: {err}")
    return {"quantized": fastlm.load(path).model, "float32": fastlm.load(path, dequantize=True).model}


def _decode(model, B):
    cache, ws = model.new_cache(B, 256), model.new_workspace(128)
    out = np.empty((B, model.vocab_size), np.float32)
    for row in range(B):
        model.prefill([PROMPT], cache, row, ws)
    tokens = np.arange(B)

    def step():
        cache.lengths[:] = len(PROMPT)          # decode at the same cache length every round
        model.decode(tokens, cache, 0, ws, out)
    return step


def _prefill(model):
    cache, ws = model.new_cache(1, 256), model.new_workspace(128)

    def run():
        cache.reset()
        model.prefill([PROMPT], cache, 0, ws)
    return run


@pytest.mark.parametrize("B", [1, 8])
def test_fastlm_decode_on_blocks(benchmark, models, B):
    benchmark.group = f"SmolLM2 Q4_1 decode step, B={B}"
    benchmark.pedantic(_decode(models["quantized"], B), rounds=30, iterations=1, warmup_rounds=3)
    benchmark.extra_info["tokens_per_s"] = B / benchmark.stats.stats.mean


@pytest.mark.parametrize("B", [1, 8])
def test_decode_float32_weights(benchmark, models, B):
    benchmark.group = f"SmolLM2 Q4_1 decode step, B={B}"
    benchmark.pedantic(_decode(models["float32"], B), rounds=30, iterations=1, warmup_rounds=3)


@pytest.mark.benchmark(group="SmolLM2 Q4_1 prefill, 128 tokens")
def test_fastlm_prefill_on_blocks(benchmark, models):
    benchmark.pedantic(_prefill(models["quantized"]), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = len(PROMPT) / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="SmolLM2 Q4_1 prefill, 128 tokens")
def test_prefill_float32_weights(benchmark, models):
    benchmark.pedantic(_prefill(models["float32"]), rounds=5, iterations=1, warmup_rounds=1)
