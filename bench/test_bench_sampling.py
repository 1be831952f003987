"""sample_token: the compiled pipeline beside the NumPy reference, on float32 logits drawn like a real model's
(normal * 3) at SmolLM2's vocabulary (49,152) and Llama 3's (128,256), one row and eight.

Targets: temperature 0.8 + top-k 40 + top-p 0.95 at least 10x the reference and under 1 ms per row at
V = 128,256; top-p 0.95 alone (temperature 0.8, no top-k) at least 5x the reference.

Then one decode step of the full Sampler with every option on (penalties over the last 64 of 200 tokens, top-k
40, top-p 0.95, min-p 0.05, log-probabilities with the top 5) at V = 49,152, one row and eight, beside
reference.Sampler. Target: well under 1 ms per row.
"""
import numpy as np
import pytest

import fastlm
from fastlm import reference, sampling

SETTINGS = {
    "t0.8 top-k 40 top-p 0.95": dict(temperature=0.8, top_k=40, top_p=0.95),
    "t0.8 top-p 0.95": dict(temperature=0.8, top_k=0, top_p=0.95),
}


@pytest.fixture(scope="module", params=[(1, 49152), (8, 49152), (1, 128256), (8, 128256)],
                ids=lambda bv: f"B={bv[0]} V={bv[1]}")
def logits(request):
    B, V = request.param
    return (np.random.default_rng(0).normal(size=(B, V)) * 3).astype(np.float32)


def run(benchmark, api, setting, logits):
    B, V = logits.shape
    benchmark.group = f"sample_token {setting} B={B} V={V}"
    tokens = benchmark(api.sample_token, logits, rng=np.random.default_rng(0), **SETTINGS[setting])
    assert tokens.shape == (B,)


@pytest.mark.parametrize("setting", SETTINGS)
def test_fastlm_sample_token(benchmark, setting, logits):
    run(benchmark, fastlm, setting, logits)
    # the same uniforms draw the same tokens
    options = SETTINGS[setting]
    np.testing.assert_array_equal(fastlm.sample_token(logits, rng=1, **options),
                                  reference.sample_token(logits, rng=1, **options))


@pytest.mark.parametrize("setting", SETTINGS)
def test_reference_sample_token(benchmark, setting, logits):
    run(benchmark, reference, setting, logits)


# ------------------------------------------------------------------------------------- the full Sampler

SAMPLER_OPTIONS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1,
                       frequency_penalty=0.1, presence_penalty=0.1, penalty_last_n=64, logprobs=True, top_logprobs=5)


@pytest.fixture(scope="module", params=[1, 8], ids=lambda B: f"B={B} V=49152")
def step(request):
    """A decode step's inputs: logits (B, V), uniforms (B,), a (B, 256) token buffer holding 200 tokens a row."""
    B, V = request.param, 49152
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(B, V)) * 3).astype(np.float32)
    history = rng.integers(0, 2000, size=(B, 256))          # a few thousand ids: tokens recur, as in text
    return logits, rng.random(B), history, np.full(B, 200)


def run_sampler(benchmark, api, step):
    B, V = step[0].shape
    benchmark.group = f"Sampler all options B={B} V={V}"
    result = benchmark(api.Sampler(**SAMPLER_OPTIONS), *step)
    assert result.tokens.shape == (B,) and result.top_ids.shape == (B, 5)


def test_fastlm_sampler(benchmark, step):
    run_sampler(benchmark, sampling, step)
    # the same uniforms draw the same tokens
    np.testing.assert_array_equal(sampling.Sampler(**SAMPLER_OPTIONS)(*step).tokens,
                                  reference.Sampler(**SAMPLER_OPTIONS)(*step).tokens)


def test_reference_sampler(benchmark, step):
    run_sampler(benchmark, reference, step)
