"""The autoregressive loop shared by the reference and the fast model."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .config import ModelConfig
from .errors import FastLMValueError
from .validation import check_int, check_temperature, check_token_ids, check_top_k, check_top_p, make_rng


def naive_generate(forward: Callable[[np.ndarray], np.ndarray], sample: Callable, config: ModelConfig,
                   prompt_tokens, max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, greedy: bool = False, eos_token_id: int | None = None,
                   seed=None) -> np.ndarray:
    """Generate by re-running ``forward`` over the whole sequence for every new token (no KV cache).

    Only the last position's logits are sampled. Generation stops after ``max_new_tokens``, when the
    sequence reaches ``config.max_seq_len``, or once every row has produced ``eos_token_id``; a row that
    has finished is padded with ``eos_token_id``. The same ``seed`` gives the same tokens.
    Returns the (B, L + n) int64 sequences, prompt included.
    """
    tokens = check_token_ids(prompt_tokens, config.vocab_size, config.max_seq_len)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
    if eos_token_id is not None:
        eos_token_id = check_int("eos_token_id", eos_token_id, 0)
        if eos_token_id >= config.vocab_size:
            raise FastLMValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {config.vocab_size})")
    rng = make_rng(seed)
    # Check the sampling options before any forward pass is spent on them.
    check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    finished = np.zeros(tokens.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        if tokens.shape[1] >= config.max_seq_len:
            break
        last_logits = forward(tokens)[:, -1, :]                  # (B, V): the only position we need
        next_tokens = sample(last_logits, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=greedy, rng=rng)
        if eos_token_id is not None:
            next_tokens = np.where(finished, eos_token_id, next_tokens)
            finished |= next_tokens == eos_token_id
        tokens = np.concatenate([tokens, next_tokens[:, np.newaxis]], axis=1)
        if finished.all():
            break
    return tokens
