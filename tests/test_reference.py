"""The textbook layers: each checked against its defining property."""
import numpy as np
import pytest

from fastlm import ModelConfig, reference
from fastlm.reference import GroupedQueryAttention, RMSNorm, apply_rope, create_causal_mask

from conftest import TINY


def test_causal_mask():
    mask = create_causal_mask(4)
    assert mask.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0] == 0, np.tril(np.ones((4, 4), dtype=bool)))
    assert np.isneginf(mask[0, 0][np.triu_indices(4, 1)]).all()


def test_rmsnorm(rng):
    x = rng.normal(size=(2, 3, 8))
    weight = rng.normal(size=8)
    y = RMSNorm(8, eps=1e-6, weight=weight).forward(x)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * weight
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    unit = RMSNorm(8, eps=0.0 + 1e-12).forward(x)
    np.testing.assert_allclose(np.sqrt((unit ** 2).mean(-1)), 1.0, rtol=1e-9)


def test_rope_preserves_norms_and_encodes_relative_position(rng):
    q, k = rng.normal(size=(1, 1, 1, 16)), rng.normal(size=(1, 1, 1, 16))
    rot = lambda x, pos: apply_rope(x, np.array([pos]), 10000.0)[0, 0, 0]  # noqa: E731
    np.testing.assert_allclose(np.linalg.norm(rot(q, 7)), np.linalg.norm(q), rtol=1e-12)
    # the score between a query at m and a key at n depends on m - n only
    np.testing.assert_allclose(rot(q, 5) @ rot(k, 2), rot(q, 13) @ rot(k, 10), rtol=1e-10)
    np.testing.assert_allclose(rot(q, 0), q[0, 0, 0])


def test_rope_rotates_interleaved_pairs():
    x = np.zeros((1, 1, 1, 4))
    x[..., 0] = 1.0                         # pair (0, 1) at frequency 1: rotates by the position itself
    out = apply_rope(x, np.array([np.pi / 2]), 10000.0)[0, 0, 0]
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 0.0], atol=1e-12)


def test_gqa_equals_mha_with_repeated_kv_heads(rng):
    d, h, hkv, dk = 16, 4, 2, 4
    wq, wk, wv, wo = (rng.normal(size=s) for s in [(h * dk, d), (hkv * dk, d), (hkv * dk, d), (d, h * dk)])
    x = rng.normal(size=(2, 5, d))
    gqa = GroupedQueryAttention(d, h, hkv, 10000.0, wq, wk, wv, wo)
    # The same model as full multi-head attention: each KV head's rows copied for its 2 query heads.
    rep = lambda w: np.repeat(w.reshape(hkv, dk, d), h // hkv, axis=0).reshape(h * dk, d)  # noqa: E731
    mha = GroupedQueryAttention(d, h, h, 10000.0, wq, rep(wk), rep(wv), wo)
    mask = create_causal_mask(5)
    np.testing.assert_allclose(gqa.forward(x, mask), mha.forward(x, mask), rtol=1e-12)


def test_attention_first_position_sees_only_itself(rng):
    d, h = 8, 2
    ws = [rng.normal(size=(d, d)) for _ in range(4)]
    attn = GroupedQueryAttention(d, h, h, 10000.0, *ws)
    x = rng.normal(size=(1, 3, d))
    out = attn.forward(x, create_causal_mask(3))
    v0 = (x[0, 0] @ ws[2].T)                               # softmax over a single key is 1
    np.testing.assert_allclose(out[0, 0], v0 @ ws[3].T, rtol=1e-10)


def test_model_weights_and_shapes():
    m = reference.CausalLM(**TINY, seed=0)
    assert m.embedding.shape == (97, 32) and m.W_out.shape == (32, 97)
    assert len(m.blocks) == 2 and isinstance(m.final_norm, RMSNorm)
    assert m.config == ModelConfig(**TINY)
    assert not np.shares_memory(m.W_out, m.embedding)
    tied = reference.CausalLM(**TINY, tie_weights=True, seed=0)
    assert np.shares_memory(tied.W_out, tied.embedding)
    np.testing.assert_array_equal(tied.W_out, tied.embedding.T)


def test_xavier_initialisation_std():
    m = reference.CausalLM(vocab_size=3000, d_model=200, num_layers=1, num_heads=4, num_kv_heads=4, d_ff=8,
                           seed=0)
    assert m.embedding.std() == pytest.approx(np.sqrt(2 / 3200), rel=0.02)
    assert m.embedding.dtype == np.float64


def test_seed_determines_weights():
    a, b, c = (reference.CausalLM(**TINY, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert not np.array_equal(a.embedding, c.embedding)


def test_forward_shape_and_batch_independence(rng):
    m = reference.CausalLM(**TINY, seed=0)
    ids = rng.integers(0, 97, size=(3, 6))
    logits = m.forward(ids)
    assert logits.shape == (3, 6, 97) and logits.dtype == np.float64
    np.testing.assert_allclose(m.forward(ids[1]), logits[1:2], atol=1e-12)


def test_causality(rng):
    m = reference.CausalLM(**TINY, seed=0)
    seq1 = rng.integers(0, 97, size=(1, 8))
    seq2 = seq1.copy()
    seq2[0, 5] = (seq2[0, 5] + 1) % 97
    a, b = m.forward(seq1), m.forward(seq2)
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-10)
    assert not np.allclose(a[0, 5], b[0, 5])


def test_from_config_and_presets():
    config = ModelConfig.from_name("smollm2-135m", num_layers=1, vocab_size=100, max_seq_len=16)
    assert (config.d_model, config.num_heads, config.num_kv_heads, config.d_ff) == (576, 9, 3, 1536)
    assert config.tie_weights and config.rope_theta == 100000.0 and config.head_dim == 64
    m = reference.CausalLM.from_config(config, seed=0)
    assert m.forward([1, 2, 3]).shape == (1, 3, 100)
    assert ModelConfig.from_name("llama3-8b").num_kv_heads == 8
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_name("gpt-5")


@pytest.mark.parametrize("bad", [
    dict(num_heads=5), dict(num_kv_heads=3), dict(vocab_size=0), dict(d_model=-4), dict(num_layers=1.5),
    dict(rope_theta=0.0), dict(norm_eps=-1.0), dict(max_seq_len=0),
])
def test_bad_config_raises(bad):
    with pytest.raises((ValueError, TypeError)):
        ModelConfig(**{**TINY, **bad})
