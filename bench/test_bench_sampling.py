"""sample_token: the compiled pipeline beside the NumPy reference, on float32 logits drawn like a real model's
(normal * 3) at SmolLM2's vocabulary (49,152) and Llama 3's (128,256), one row and eight.

Targets: temperature 0.8 + top-k 40 + top-p 0.95 at least 10x the reference and under 1 ms per row at
V = 128,256; top-p 0.95 alone (temperature 0.8, no top-k) at least 5x the reference.
"""
import numpy as np
import pytest

import fastlm
from fastlm import reference

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
