"""Perplexity of a model on a token sequence, computed as llama.cpp's ``llama-perplexity`` does.

The tokens are cut into consecutive, non-overlapping chunks of ``n_ctx`` tokens (a remainder shorter than a
chunk is dropped). Each chunk is one forward pass from position 0; only the second half of each chunk is
scored, so every scored token sees at least ``n_ctx / 2`` tokens of context: the logits at positions
``n_ctx // 2 .. n_ctx - 2`` are scored against the tokens that follow them. With ``bos_token_id`` set (for
vocabularies that add a BOS token) the first token of each chunk is replaced by BOS, as llama.cpp does.

Every negative log-likelihood is computed in float64 with a max-shifted log-softmax, and
``ppl = exp(mean NLL)`` over all scored tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import FastLMTypeError, FastLMValueError

__all__ = ["PerplexityResult", "perplexity", "token_nll"]


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll)``: ``nll`` is the mean negative log-likelihood (nats) of the ``n_scored`` tokens
    scored in ``n_chunks`` chunks of ``n_ctx`` tokens."""

    ppl: float
    nll: float
    n_scored: int
    n_chunks: int
    n_ctx: int


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The negative log-likelihood (float64) of each ``targets[i]`` under ``logits[i]`` ((n, V) array)."""
    x = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    shifted = x - x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    return log_z - shifted[np.arange(len(targets)), targets]


def perplexity(model, tokens: Sequence[int], n_ctx: int = 512, bos_token_id: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """The perplexity of ``model`` (anything with ``forward(ids (1, L)) -> logits (1, L, V)``, ``vocab_size``
    and ``max_seq_len``) on ``tokens``, in chunks of ``n_ctx`` tokens (see the module doc).

    ``progress(chunk, n_chunks, running_ppl)`` is called after each chunk (``chunk`` counts from 1).
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)):
        raise FastLMTypeError(f"n_ctx must be an integer, got {type(n_ctx).__name__}")
    n_ctx = int(n_ctx)
    max_len = int(model.max_seq_len)
    if not 4 <= n_ctx <= max_len:
        raise FastLMValueError(f"n_ctx must be between 4 and the model's max_seq_len {max_len}, got {n_ctx}")
    ids = np.asarray(tokens)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise FastLMTypeError(f"tokens must be a flat sequence of integer token ids, got shape {ids.shape} "
                              f"of {ids.dtype}")
    ids = ids.astype(np.int64)
    vocab = int(model.vocab_size)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)][0]
        raise FastLMValueError(f"token id {bad} is outside the vocabulary [0, {vocab})")
    if bos_token_id is not None and not 0 <= bos_token_id < vocab:
        raise FastLMValueError(f"bos_token_id {bos_token_id} is outside the vocabulary [0, {vocab})")
    n_chunks = ids.size // n_ctx
    if n_chunks == 0:
        hint = (f"use a smaller context, e.g. --ctx {2 ** int(math.log2(ids.size))}" if ids.size >= 4
                else "give a longer text")
        raise FastLMValueError(f"the text has {ids.size} tokens, fewer than one chunk of n_ctx = {n_ctx}; {hint}")

    first = n_ctx // 2
    total, count = 0.0, 0
    for c in range(n_chunks):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx].copy()
        if bos_token_id is not None:
            chunk[0] = bos_token_id
        logits = np.asarray(model.forward(chunk[None, :]))
        if logits.shape != (1, n_ctx, vocab):
            raise FastLMValueError(f"model.forward returned logits of shape {logits.shape}, expected "
                                   f"{(1, n_ctx, vocab)}")
        nll = token_nll(logits[0, first:n_ctx - 1], chunk[first + 1:])
        total += float(nll.sum())
        count += nll.size
        if progress is not None:
            progress(c + 1, n_chunks, math.exp(total / count))
    mean = total / count
    return PerplexityResult(math.exp(mean), mean, count, n_chunks, n_ctx)
