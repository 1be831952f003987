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


@pytest.mark.parametrize("style", ["interleaved", "neox"])
@pytest.mark.parametrize("B, L, h, hkv, dk, rope_dim, extras", [
    (1, 1, 1, 1, 2, 2, False), (2, 7, 4, 2, 64, 64, False), (1, 130, 9, 3, 64, 64, True),
    (3, 5, 4, 4, 128, 128, False), (2, 6, 3, 1, 8, 6, True), (1, 9, 4, 2, 12, 4, True)])
def test_rope_qkv_against_reference(dtype, B, L, h, hkv, dk, rope_dim, extras, style, rng):
    """Heads split from the fused projection, with (extras) a bias and q/k RMSNorms, rotated over their
    first rope_dim values in either pairing."""
    theta, T = 10000.0, L + 6
    start_pos = rng.integers(0, T - L + 1, size=B)
    qkv = rng.normal(size=(B, L, (h + 2 * hkv) * dk))
    bias = rng.normal(size=(h + 2 * hkv) * dk) if extras else None
    q_norm, k_norm = (rng.normal(size=dk), rng.normal(size=dk)) if extras else (None, None)
    inv_freq = theta ** (-np.arange(0, rope_dim, 2) / rope_dim)
    angles = np.arange(T)[:, None] * inv_freq
    q = np.empty((B, L, h, dk), dtype)
    k_cache, v_cache = np.zeros((B, hkv, T, dk), dtype), np.zeros((B, hkv, T, dk), dtype)
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    _layers.rope_qkv(qkv.astype(dtype), np.cos(angles).astype(dtype), np.sin(angles).astype(dtype),
                     start_pos, q, k_cache, v_cache, neox=style == "neox", bias=cast(bias), q_norm=cast(q_norm),
                     k_norm=cast(k_norm), eps=1e-6)
    biased = qkv + (0 if bias is None else bias)
    for b in range(B):
        pos = start_pos[b] + np.arange(L)
        heads = lambda lo, n: biased[b, :, lo * dk:(lo + n) * dk].reshape(L, n, dk).transpose(1, 0, 2)[None]  # noqa: E731
        norm = lambda x, w: x if w is None else reference.RMSNorm(dk, 1e-6, w).forward(x)  # noqa: E731
        rope = lambda x: reference.apply_rope(x, pos, inv_freq=inv_freq, style=style)  # noqa: E731
        exp_q = rope(norm(heads(0, h), q_norm))[0].transpose(1, 0, 2)
        exp_k = rope(norm(heads(h, hkv), k_norm))[0]
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


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("N, f", [(1, 3), (2, 13), (17, 1536)])
def test_gated(dtype, N, f, activation, rng, simd):
    gate_up = rng.normal(size=(N, 2 * f)) * 4
    out = np.empty((N, f), dtype)
    _layers.gated(gate_up.astype(dtype), out, gelu=activation == "gelu_tanh")
    act = reference.ACTIVATIONS[activation]
    np.testing.assert_allclose(out, act(gate_up[:, :f]) * gate_up[:, f:], **TOL[dtype])
    with pytest.raises(ValueError):
        _layers.gated(gate_up.astype(dtype), np.empty((N, f + 1), dtype))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_extremes(activation, simd):
    """Far tails, zeros and non-finite gates, on every lane of the SIMD kernel and its masked tail: the
    exponential never overflows into NaN where the activation has a limit, and NaN stays NaN."""
    gate = np.array([-1e4, -200.0, -88.0, -30.0, -1e-30, -0.0, 0.0, 1e-30, 30.0, 88.0, 200.0, 1e4, 1e30, -1e30,
                     np.inf, np.nan, -3.5], np.float32)
    up = np.linspace(-2, 3, gate.size).astype(np.float32)
    out = np.empty((1, gate.size), np.float32)
    _layers.gated(np.concatenate([gate, up])[None], out, gelu=activation == "gelu_tanh")
    with np.errstate(over="ignore", invalid="ignore"):
        want = reference.ACTIVATIONS[activation](gate.astype(np.float64)) * up
    finite = np.isfinite(want)
    np.testing.assert_allclose(out[0, finite], want[finite], rtol=2e-6, atol=1e-30)
    assert np.isnan(out[0, 15]) and out[0, 14] == np.inf * up[14]


def test_rope_qkv_rejects_wrong_vectors(rng):
    qkv, tables = np.zeros((1, 2, 3 * 8)), np.zeros((4, 4))
    caches = [np.zeros((1, 1, 4, 8)) for _ in range(2)]
    with pytest.raises(ValueError, match="bias has 8 values, expected 24"):
        _layers.rope_qkv(qkv, tables, tables, np.array([0]), np.empty((1, 2, 1, 8)), *caches, bias=np.zeros(8))
    with pytest.raises(ValueError, match="q_norm has 4 values, expected 8"):
        _layers.rope_qkv(qkv, tables, tables, np.array([0]), np.empty((1, 2, 1, 8)), *caches, q_norm=np.zeros(4))
