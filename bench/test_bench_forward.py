"""Full float32 forward of a SmolLM2-135M-shaped random model over 128 tokens: fastlm beside the float64
reference (the textbook) in the same run. Prefill tokens/s = 128 / mean time."""
import numpy as np
import pytest

import fastlm
from fastlm import reference

CONFIG = fastlm.ModelConfig.from_name("smollm2-135m", max_seq_len=512)
IDS = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=(1, 128))


@pytest.fixture(scope="module")
def fast_model():
    return fastlm.CausalLM.from_config(CONFIG, seed=0)


@pytest.mark.benchmark(group="forward smollm2-135m B=1 L=128")
def test_reference_forward(benchmark, baseline_blas):
    model = reference.CausalLM.from_config(CONFIG, seed=0)
    benchmark.pedantic(model.forward, args=(IDS,), rounds=2, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="forward smollm2-135m B=1 L=128")
def test_fastlm_forward(benchmark, fast_model):
    logits = benchmark.pedantic(fast_model.forward, args=(IDS,), rounds=10, iterations=1, warmup_rounds=1)
    assert logits.dtype == np.float32
    benchmark.extra_info["tokens_per_s"] = IDS.size / benchmark.stats.stats.mean
