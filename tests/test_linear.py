"""The dense projection `linear` against NumPy's float64 matmul: every path (gemv at N = 1, the small-batch
kernels from N = 2 up to their cut-offs, 8 and 32, gemm beyond), both dtypes, the fused residual add, SIMD on
and off."""
import numpy as np
import pytest

import fastlm
from fastlm import _linear

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
NS = list(range(1, 21)) + [31, 32, 33, 64, 100]


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("k", [1, 7, 576, 1536])
@pytest.mark.parametrize("m", [1, 5, 3072])
def test_linear_every_path(dtype, simd, k, m, rng):
    # Weights scaled by 1 / sqrt(k) keep the outputs O(1), so that the tolerances mean the same at every k.
    w = (rng.normal(size=(m, k)) / np.sqrt(k)).astype(dtype)
    for n in NS:
        x = rng.normal(size=(n, k)).astype(dtype)
        expected = x.astype(np.float64) @ w.astype(np.float64).T
        out = np.full((n, m), np.nan, dtype)                      # beta = 0 must not read out
        _linear.linear(x, w, out)
        np.testing.assert_allclose(out, expected, **TOL[dtype], err_msg=f"N={n} beta=0")
        y0 = rng.normal(size=(n, m)).astype(dtype)
        acc = y0.copy()
        _linear.linear(x, w, acc, beta=1.0)                        # the fused residual add
        np.testing.assert_allclose(acc, y0 + expected, **TOL[dtype], err_msg=f"N={n} beta=1")


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_small_batch_slices_match_one_thread(threads, rng):
    """Rows split across threads (slices of 16 rows, the last one ragged) give the one-thread result bit for
    bit: each output depends only on its own row block."""
    before = fastlm.get_num_threads()
    x = rng.normal(size=(8, 576)).astype(np.float32)
    w = rng.normal(size=(1001, 576)).astype(np.float32)
    try:
        fastlm.set_num_threads(1)
        one = np.empty((8, 1001), np.float32)
        _linear.linear(x, w, one)
        fastlm.set_num_threads(threads)
        out = np.empty((8, 1001), np.float32)
        _linear.linear(x, w, out)
    finally:
        fastlm.set_num_threads(before)
    np.testing.assert_array_equal(out, one)


def test_set_simd_switches_linear():
    before = fastlm.simd_enabled()
    try:
        fastlm.set_simd(False)
        assert not _linear.simd_enabled()
        fastlm.set_simd(True)
        assert _linear.simd_enabled() == fastlm._attention.simd_enabled()     # both: "the CPU has AVX2/FMA"
    finally:
        fastlm.set_simd(before)


def test_linear_rejects_bad_operands(rng):
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    with pytest.raises(ValueError, match="shapes"):
        _linear.linear(x, w, np.empty((3, 4)))
    with pytest.raises(ValueError):
        _linear.linear(x, w.T, np.empty((3, 5)))            # a transposed view is not C-contiguous
    with pytest.raises(ValueError):
        _linear.linear(x.astype(np.float32), w, np.empty((3, 5)))
