"""The sampling pipeline of the fast path: checks in Python, then work in the logits' own dtype.

Order: temperature -> top-k -> top-p -> softmax -> one uniform per row, inverse CDF over the vocabulary in
index order (the same draw as :func:`fastlm.reference.sample_token`, so both pick the same token for the
same uniforms).
"""
from __future__ import annotations

import numpy as np

from .validation import check_logits, check_temperature, check_top_k, check_top_p, make_rng


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax that keeps the input's floating dtype."""
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def temperature_scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature in the logits' dtype; temperature 0 returns them unchanged (a copy)."""
    logits, t = check_logits(logits), check_temperature(temperature)
    return logits.copy() if t == 0.0 else logits / logits.dtype.type(t)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """-inf outside the k largest logits of each row (ties at the k-th value survive)."""
    logits, k = check_logits(logits), check_top_k(k)
    V = logits.shape[-1]
    if k == 0 or k >= V:
        return logits.copy()
    kth_largest = np.partition(logits, V - k, axis=-1)[..., V - k, np.newaxis]   # O(V) selection
    return np.where(logits >= kth_largest, logits, logits.dtype.type(-np.inf))


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest highest-probability set whose mass reaches p; -inf elsewhere."""
    logits, p = check_logits(logits), check_top_p(p)
    if p == 1.0:
        return logits.copy()
    rows = np.atleast_2d(logits)
    probs = softmax(rows.astype(np.float64))
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    drop = np.empty(probs.shape, dtype=bool)
    np.put_along_axis(drop, order, np.cumsum(sorted_probs, axis=-1) - sorted_probs >= p, axis=-1)
    out = np.where(drop, rows.dtype.type(-np.inf), rows)
    return out.reshape(logits.shape)


def sample_token(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, rng=None):
    """Draw the next token from (V,) or (B, V) logits; see the module docstring for the order.

    ``greedy`` or ``temperature == 0`` is argmax. Returns (B,) int64, or an int for (V,) input.
    """
    logits = check_logits(logits)
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    rng = make_rng(rng)
    rows = np.atleast_2d(logits)
    if greedy or temperature == 0.0:
        tokens = np.argmax(rows, axis=-1).astype(np.int64)
    else:
        filtered = top_p_filter(top_k_filter(temperature_scale(rows, temperature), top_k), top_p)
        probs = softmax(filtered.astype(np.float64))
        cdf = np.cumsum(probs, axis=-1)
        targets = rng.random(rows.shape[0])[:, np.newaxis] * cdf[:, -1:]
        tokens = (cdf <= targets).sum(axis=-1)
        last_possible = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
        tokens = np.minimum(tokens, last_possible).astype(np.int64)
    return int(tokens[0]) if logits.ndim == 1 else tokens
