"""Perplexity, llama.cpp style: chunks of n_ctx, the second half of each scored, exp(mean NLL) in float64."""
import math
from pathlib import Path

import numpy as np
import pytest

import fastlm
from fastlm import reference
from fastlm.errors import FastLMTypeError, FastLMValueError
from fastlm.perplexity import PerplexityResult, perplexity, token_nll

from conftest import TINY

TEXT = Path(__file__).parent / "data" / "english.txt"


def textbook_perplexity(model, tokens, n_ctx, bos=None):
    """The definition, spelled out: every scored token's probability from a float64 softmax."""
    nlls = []
    for c in range(len(tokens) // n_ctx):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        logits = np.asarray(model.forward([chunk])[0], dtype=np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            p = np.exp(logits[j] - logits[j].max())
            nlls.append(-math.log(p[chunk[j + 1]] / p.sum()))
    return math.exp(sum(nlls) / len(nlls)), len(nlls)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(7).integers(0, TINY["vocab_size"], 83).tolist()


@pytest.mark.parametrize("n_ctx", [24, 16, 9, 4])
def test_tiny_model_matches_the_textbook_computation(tokens, n_ctx):
    ref = reference.CausalLM(**TINY, seed=0)
    fast = fastlm.CausalLM(**TINY, seed=0)
    expected, n_scored = textbook_perplexity(ref, tokens, n_ctx)
    result = perplexity(ref, tokens, n_ctx)
    assert isinstance(result, PerplexityResult)
    assert result.n_chunks == len(tokens) // n_ctx and result.n_scored == n_scored
    assert result.n_scored == result.n_chunks * (n_ctx - 1 - n_ctx // 2) and result.n_ctx == n_ctx
    assert result.ppl == pytest.approx(expected, rel=1e-12)
    assert result.nll == pytest.approx(math.log(expected), rel=1e-12)
    assert perplexity(fast, tokens, n_ctx).ppl == pytest.approx(expected, rel=1e-4)   # float32 forward


def test_bos_replaces_the_first_token_of_each_chunk(tokens):
    ref = reference.CausalLM(**TINY, seed=0)
    expected, _ = textbook_perplexity(ref, tokens, 16, bos=5)
    assert perplexity(ref, tokens, 16, bos_token_id=5).ppl == pytest.approx(expected, rel=1e-12)
    assert perplexity(ref, tokens, 16).ppl != pytest.approx(expected, rel=1e-6)


def test_progress_reports_the_running_perplexity(tokens):
    seen = []
    result = perplexity(fastlm.CausalLM(**TINY, seed=1), tokens, 20, progress=lambda *a: seen.append(a))
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1][2] == pytest.approx(result.ppl, rel=1e-12)


class Uniform:
    """A model whose every prediction is uniform: its perplexity is exactly the vocabulary size."""
    vocab_size, max_seq_len = 50, 64

    def forward(self, ids):
        ids = np.asarray(ids)
        return np.full((*ids.shape, self.vocab_size), 1e30 if self.huge else 0.0, np.float32)

    huge = False


@pytest.mark.parametrize("huge", [False, True])
def test_uniform_predictions_give_the_vocabulary_size(huge):
    model = Uniform()
    model.huge = huge        # logits of 1e30 would overflow a naive softmax
    result = perplexity(model, list(range(50)) * 3, 32)
    assert result.ppl == pytest.approx(50, rel=1e-12) and result.n_chunks == 4 and result.n_scored == 4 * 15


def test_token_nll_is_stable():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]], np.float32)
    np.testing.assert_allclose(token_nll(logits, [0, 2]), [0.0, math.log(3)], atol=1e-12)
    assert token_nll(logits, [1, 0]).dtype == np.float64


def test_errors(tokens):
    model = fastlm.CausalLM(**TINY, seed=0)
    with pytest.raises(FastLMValueError, match=r"the text has 10 tokens.*n_ctx = 16.*--ctx 8"):
        perplexity(model, tokens[:10], 16)
    with pytest.raises(FastLMValueError, match="the text has 0 tokens"):
        perplexity(model, [], 16)
    with pytest.raises(FastLMValueError, match="between 4 and the model's max_seq_len 24"):
        perplexity(model, tokens, 25)
    with pytest.raises(FastLMValueError, match="between 4"):
        perplexity(model, tokens, 3)
    with pytest.raises(FastLMTypeError, match="n_ctx must be an integer"):
        perplexity(model, tokens, 8.0)
    with pytest.raises(FastLMValueError, match="token id 97 is outside the vocabulary"):
        perplexity(model, [1, 2, 97, 3] * 10, 8)
    with pytest.raises(FastLMTypeError, match="flat sequence"):
        perplexity(model, [[1, 2], [3, 4]], 4)
    with pytest.raises(FastLMValueError, match="bos_token_id"):
        perplexity(model, tokens, 8, bos_token_id=-1)


def test_real_model_perplexity_is_plausible(smollm2):
    text = TEXT.read_text(encoding="utf-8")
    assert 3000 <= len(text.encode()) <= 6000
    ids = smollm2.encode(text, add_special_tokens=False)
    result = perplexity(smollm2.model, ids, 128)
    assert result.n_chunks == len(ids) // 128 and result.n_scored == result.n_chunks * 63
    assert 10 < result.ppl < 40            # SmolLM2-135M on plain English prose (≈ 26.6 here)
