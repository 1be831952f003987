"""Dense projection out = x @ W.T, float32, at the batch sizes of decode (N = 1, 4, 8, 16): fastlm's `linear`
beside NumPy's matmul on all of BLAS's threads.

Shapes: 3072 x 576 (SmolLM2-135M's fused gate/up projection) and 49152 x 576 (its output projection). A
decode step reads every weight of the model once, far more than the last-level cache holds, so each call
here reads its weights from memory too: the smaller matrix is cycled through enough copies to overflow the
cache, as the model's 30 layers do.
"""
import itertools

import numpy as np
import pytest

from fastlm import _linear

# Warm-up calls first: OpenMP's threads start, and BLAS's threads, woken by the baseline, go back to sleep.
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=20)

SHAPES = [(3072, 576), (49152, 576)]
NS = [1, 4, 8, 16]
COLD_BYTES = 256 << 20          # total size of the copies of one matrix: several times any L3


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{m}x{k}" for m, k in SHAPES])
def weights(request):
    m, k = request.param
    rng = np.random.default_rng(0)
    copies = max(1, COLD_BYTES // (m * k * 4))
    return [(rng.normal(size=(m, k)) / np.sqrt(k)).astype(np.float32) for _ in range(copies)]


@pytest.fixture(params=NS, ids=[f"N={n}" for n in NS])
def case(request, weights, benchmark):
    n = request.param
    m, k = weights[0].shape
    benchmark.group = f"linear {m}x{k} N={n} float32"
    x = np.random.default_rng(1).normal(size=(n, k)).astype(np.float32)
    return x, itertools.cycle(weights), np.empty((n, m), np.float32)


def test_numpy_matmul(benchmark, case, baseline_blas):
    x, ws, out = case
    benchmark(lambda: np.matmul(x, next(ws).T, out=out))


def test_fastlm_linear(benchmark, case):
    x, ws, out = case
    benchmark(lambda: _linear.linear(x, next(ws), out))
    w = next(ws)
    _linear.linear(x, w, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
