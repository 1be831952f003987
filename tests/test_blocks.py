"""The compiled pass through every block (fastlm._blocks): checks once per call, before any kernel runs."""
import numpy as np
import pytest

import fastlm
from fastlm import _attention

from conftest import TINY


@pytest.fixture(scope="module")
def model():
    return fastlm.CausalLM(**TINY, seed=0)


def arguments(model, B=2, L=3, T=8):
    """A valid set of run() arguments for B rows of L tokens into caches of T positions."""
    c = model.config
    ws = model.new_workspace(B * L, T).views(B, L)
    k, v = (np.zeros((c.num_layers, B, c.num_kv_heads, T, c.head_dim), np.float32) for _ in range(2))
    return dict(x=ws.x, buffers=ws.layer_buffers, k=k, v=v, start_pos=np.zeros(B, np.int64),
                scratch=ws.attn_scratch)


def run(model, a):
    model._compiled.run(a["x"], *a["buffers"], a["k"], a["v"], a["start_pos"], a["scratch"])


def test_valid_arguments_run(model):
    a = arguments(model)
    a["x"][:] = 0.5
    run(model, a)
    assert np.isfinite(a["x"]).all() and np.abs(a["k"]).sum() > 0


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(start_pos=np.array([0, 6])), "do not fit the cache"),
    (lambda a: a.update(start_pos=np.array([-1, 0])), "do not fit the cache"),
    (lambda a: a.update(start_pos=np.zeros(4, np.int64)), "not a positive multiple"),
    (lambda a: a.update(k=a["k"][:, :1].copy(), v=a["v"][:, :1].copy()), "k_cache has shape"),
    (lambda a: a.update(k=a["k"][:, :, :, ::2]), "must be C-contiguous"),
    (lambda a: a.update(v=np.zeros_like(a["v"][:, :, :, :6])), "differ in shape"),
    (lambda a: a.update(scratch=a["scratch"][:1]), "attn_scratch holds"),
    (lambda a: a.update(buffers=(a["buffers"][0][:5],) + a["buffers"][1:]), "xn holds"),
])
def test_bad_arguments_raise_before_any_kernel(model, change, message):
    a = arguments(model)
    change(a)
    before = a["x"].copy()
    with pytest.raises(ValueError, match=message):
        run(model, a)
    np.testing.assert_array_equal(a["x"], before)


def test_buffers_of_the_wrong_dtype_raise(model):
    a = arguments(model)
    with pytest.raises((TypeError, ValueError)):
        model._compiled.run(a["x"].astype(np.float64), *[b.astype(np.float64) for b in a["buffers"]],
                            a["k"].astype(np.float64), a["v"].astype(np.float64), a["start_pos"],
                            np.zeros(a["scratch"].size, np.float64))


def test_quantized_models_need_their_scratch(rng):
    import test_quantized_model as q
    m = fastlm.CausalLM.from_params(q.CONFIG, q.quantized_params(fastlm.weights.GGMLType.Q4_0))
    a = arguments(m)
    with pytest.raises(ValueError, match="qscratch must hold"):
        run(m, a)
