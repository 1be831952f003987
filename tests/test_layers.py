"""The per-token layer kernels against their reference twins (the projection: test_linear.py)."""
import numpy as np
import pytest

from fastlm import _layers, reference

TOL = {np.float64: dict(rtol=0, atol=1e-10), np.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("N, d", [(1, 8), (5, 64), (300, 576)])
def test_rmsnorm(dtype, N, d, rng):
    x = rng.normal(size=(N, d))
    w = rng.normal(size=d)
    expected = reference.RMSNorm(d, 1e-5, w).forward(x)
    out = np.empty((N, d), dtype)
    _layers.rmsnorm(x.astype(dtype), w.astype(dtype), 1e-5, out)
    np.testing.assert_allclose(out, expected, **TOL[dtype])
    inplace = x.astype(dtype)
    _layers.rmsnorm(inplace, w.astype(dtype), 1e-5, inplace)            # out may alias x
    np.testing.assert_allclose(inplace, expected, **TOL[dtype])


@pytest.mark.parametrize("B, L, h, hkv, dk", [(1, 1, 1, 1, 2), (2, 7, 4, 2, 64), (1, 130, 9, 3, 64), (3, 5, 4, 4, 128)])
def test_rope_qkv_against_reference(dtype, B, L, h, hkv, dk, rng):
    theta, T = 10000.0, L + 6
    start_pos = rng.integers(0, T - L + 1, size=B)
    qkv = rng.normal(size=(B, L, (h + 2 * hkv) * dk))
    inv_freq = theta ** (-np.arange(0, dk, 2) / dk)
    angles = np.arange(T)[:, None] * inv_freq
    q = np.empty((B, L, h, dk), dtype)
    k_cache, v_cache = np.zeros((B, hkv, T, dk), dtype), np.zeros((B, hkv, T, dk), dtype)
    _layers.rope_qkv(qkv.astype(dtype), np.cos(angles).astype(dtype), np.sin(angles).astype(dtype),
                     start_pos, q, k_cache, v_cache)
    for b in range(B):
        pos = start_pos[b] + np.arange(L)
        heads = lambda lo, n: qkv[b, :, lo * dk:(lo + n) * dk].reshape(L, n, dk).transpose(1, 0, 2)[None]  # noqa: E731
        exp_q = reference.apply_rope(heads(0, h), pos, theta)[0].transpose(1, 0, 2)
        exp_k = reference.apply_rope(heads(h, hkv), pos, theta)[0]
        np.testing.assert_allclose(q[b], exp_q, **TOL[dtype])
        np.testing.assert_allclose(k_cache[b, :, pos], exp_k.transpose(1, 0, 2), **TOL[dtype])
        np.testing.assert_allclose(v_cache[b, :, pos], heads(h + hkv, hkv)[0].transpose(1, 0, 2), **TOL[dtype])
        untouched = np.setdiff1d(np.arange(T), pos)
        assert not k_cache[b, :, untouched].any() and not v_cache[b, :, untouched].any()


def test_rope_qkv_rejects_positions_past_the_cache(rng):
    qkv = np.zeros((1, 4, 3 * 8))
    tables = np.zeros((10, 4))
    caches = [np.zeros((1, 1, 6, 8)) for _ in range(2)]
    with pytest.raises(ValueError, match="start_pos"):
        _layers.rope_qkv(qkv, tables, tables, np.array([3]), np.empty((1, 4, 1, 8)), *caches)
    with pytest.raises(ValueError, match="shapes"):
        _layers.rope_qkv(qkv, tables, tables, np.array([0]), np.empty((1, 4, 2, 8)), *caches)


@pytest.mark.parametrize("N, f", [(1, 3), (17, 1536)])
def test_swiglu(dtype, N, f, rng):
    gate_up = rng.normal(size=(N, 2 * f)) * 4
    out = np.empty((N, f), dtype)
    _layers.swiglu(gate_up.astype(dtype), out)
    np.testing.assert_allclose(out, reference.silu(gate_up[:, :f]) * gate_up[:, f:], **TOL[dtype])
    with pytest.raises(ValueError):
        _layers.swiglu(gate_up.astype(dtype), np.empty((N, f + 1), dtype))
