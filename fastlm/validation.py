"""Argument checks shared by the reference and the fast path: public functions call these at the boundary,
so nothing malformed ever reaches a compiled kernel."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import FastLMTypeError, FastLMValueError


def check_token_ids(token_ids, vocab_size: int, max_seq_len: int) -> np.ndarray:
    """Return ``token_ids`` as a C-contiguous (B, L) int64 array, or raise naming what is wrong."""
    ids = np.asarray(token_ids)
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        if ids.size == 0 and ids.dtype == np.float64:  # np.asarray([]) is float64: report the length instead
            raise FastLMValueError("token_ids is empty: the sequence length must be at least 1")
        raise FastLMTypeError(f"token_ids must hold integers, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[np.newaxis, :]
    if ids.ndim != 2:
        raise FastLMValueError(f"token_ids must have shape (L,) or (B, L), got {ids.ndim} dimensions {ids.shape}")
    B, L = ids.shape
    if B == 0 or L == 0:
        raise FastLMValueError(f"token_ids must hold at least one token per row and one row, got shape {ids.shape}")
    if L > max_seq_len:
        raise FastLMValueError(f"sequence length {L} exceeds max_seq_len {max_seq_len}")
    lo, hi = ids.min(), ids.max()
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise FastLMValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(ids, dtype=np.int64)


def check_int(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FastLMTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise FastLMValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FastLMTypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise FastLMValueError(f"{name} must not be NaN")
    return value


def check_temperature(temperature) -> float:
    t = check_real("temperature", temperature)
    if t < 0 or math.isinf(t):
        raise FastLMValueError(f"temperature must be finite and >= 0 (0 means greedy), got {t}")
    return t


def check_top_k(top_k) -> int:
    return check_int("top_k", top_k, 0)


def check_top_p(top_p) -> float:
    p = check_real("top_p", top_p)
    if not 0.0 < p <= 1.0:
        raise FastLMValueError(f"top_p must lie in (0, 1], got {p}")
    return p


def check_logits(logits) -> np.ndarray:
    """Logits of shape (V,) or (B, V), floating point, no NaN or +inf, at least one finite value per row."""
    arr = np.asarray(logits)
    if not np.issubdtype(arr.dtype, np.floating):
        raise FastLMTypeError(f"logits must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise FastLMValueError(f"logits must have shape (V,) or (B, V), got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.size == 0:
        raise FastLMValueError(f"logits must not be empty, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if finite.all():                       # the usual case: one pass and done
        return arr
    if np.isnan(arr).any():
        raise FastLMValueError("logits contain NaN")
    if np.isposinf(arr).any():
        raise FastLMValueError("logits contain +inf")
    if not finite.any(axis=-1).all():
        raise FastLMValueError("every row of logits needs at least one finite value (a row is all -inf)")
    return arr


def make_rng(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an integer seed or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        if rng is not None and rng < 0:
            raise FastLMValueError(f"seed must be >= 0, got {rng}")
        return np.random.default_rng(rng)
    raise FastLMTypeError(f"rng must be a numpy.random.Generator, an integer seed or None, got {type(rng).__name__}")
