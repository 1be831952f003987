import pytest

from fastlm import count_model_parameters, generation_flops, generation_flops_with_cache

LLAMA3_8B = dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, d_ff=14336)
SMALL = dict(vocab_size=100, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=24)


def test_llama2_7b_tied():
    counts = count_model_parameters(32000, 4096, 32, 32, 32, 11008, tie_weights=True)
    assert counts["total"] / 1e9 == pytest.approx(6.607, abs=0.001)
    assert counts["output_projection"] == 0 and counts["final_norm"] == 4096
    assert counts["embedding"] == 32000 * 4096


def test_llama3_8b_untied():
    counts = count_model_parameters(**LLAMA3_8B)
    assert counts["total"] == 8_030_261_248
    assert counts["per_block"] == 218_112_000 and counts["blocks"] == 32 * 218_112_000
    assert counts["total"] == (counts["embedding"] + counts["blocks"] + counts["final_norm"]
                               + counts["output_projection"])


def test_naive_generation_flops():
    r = generation_flops(prompt_len=7, num_new_tokens=5, **SMALL)
    steps = r["per_step"]
    assert len(steps) == 5 and sum(steps) == r["total"]
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert r["token_steps"] == 5 * 7 + 5 * 6 // 2


def test_flops_counted_by_hand():
    # one layer, one head, d = 2, d_ff = 3, V = 5; a single step over s = 2 tokens
    r = generation_flops(1, 1, vocab_size=5, d_model=2, num_layers=1, num_heads=1, num_kv_heads=1, d_ff=3)
    projections = 2 * 2 * (2 * 2 * 4)          # 2 tokens x four 2x2 matrices
    attention = 2 * 2 * 1 * 4 * 2              # scores + values, s^2 = 4 pairs, head_dim 2
    ffn = 2 * 2 * 3 * 2 * 3
    logits = 2 * 2 * 2 * 5
    assert r["total"] == projections + attention + ffn + logits


def test_cached_generation_flops():
    kw = dict(prompt_len=50, num_new_tokens=100, **SMALL)
    naive, cached = generation_flops(**kw), generation_flops_with_cache(**kw)
    assert cached["token_steps"] == 150
    assert len(cached["per_step"]) == 100
    assert cached["total"] == cached["prefill"] + sum(cached["per_step"])
    assert naive["total"] > 10 * cached["total"]
    assert all(b > a for a, b in zip(cached["per_step"], cached["per_step"][1:]))


@pytest.mark.parametrize("fn", [generation_flops, generation_flops_with_cache])
def test_bad_lengths_raise(fn):
    with pytest.raises(ValueError):
        fn(-1, 3, **SMALL)
    with pytest.raises(TypeError):
        fn(2, 1.5, **SMALL)
    with pytest.raises(ValueError):
        fn(2, 3, **{**SMALL, "num_kv_heads": 3})
