"""The sampling pipeline of the fast path: arguments checked here, rows worked by the compiled kernels of
``fastlm._sampling`` (csrc/sampling.pyx, csrc/sampling_impl.h).

Order: temperature -> top-k -> top-p -> softmax -> one uniform per row, inverse CDF over the vocabulary in
index order: the same draw as :func:`fastlm.reference.sample_token`, so both pick the same token for the same
uniforms. float32 and float64 logits are worked in their own dtype's memory (arithmetic in double); other
floating dtypes are converted to float32 (float16) or float64 (wider) first.
"""
from __future__ import annotations

import numpy as np

from . import _sampling
from .errors import FastLMTypeError, FastLMValueError
from .validation import check_logits, check_temperature, check_top_k, check_top_p, make_rng


def _kernel_dtype(dtype: np.dtype) -> np.dtype:
    if dtype in (np.float32, np.float64):
        return dtype
    if np.issubdtype(dtype, np.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _rows(logits: np.ndarray) -> np.ndarray:
    """Checked logits as the kernels take them: C-contiguous (B, V) float32 or float64 (may be the input)."""
    return np.ascontiguousarray(np.atleast_2d(logits), dtype=_kernel_dtype(logits.dtype))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``, in float32 or float64 like the input (integers: float64)."""
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, -1)
    rows = np.ascontiguousarray(moved, dtype=_kernel_dtype(x.dtype)).reshape(-1, moved.shape[-1])
    out = np.empty_like(rows)
    _sampling.softmax(rows, out)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def temperature_scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature; temperature 0 returns them unchanged (a copy)."""
    logits, t = check_logits(logits), check_temperature(temperature)
    if t == 0.0:
        return logits.copy()
    rows = _rows(logits)
    out = np.empty_like(rows)
    _sampling.scale(rows, t, out)
    return out.reshape(logits.shape)


def _filter(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    rows = _rows(logits)
    out = np.empty_like(rows)
    _sampling.filter_logits(rows, 1.0, top_k, top_p, out)
    return out.reshape(logits.shape)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """-inf outside the k largest logits of each row (ties at the k-th value survive)."""
    logits, k = check_logits(logits), check_top_k(k)
    if k == 0 or k >= logits.shape[-1]:
        return logits.copy()
    return _filter(logits, k, 1.0)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest highest-probability set whose mass reaches p; -inf elsewhere."""
    logits, p = check_logits(logits), check_top_p(p)
    if p == 1.0:
        return logits.copy()
    return _filter(logits, 0, p)


def _draw(rows: np.ndarray, uniforms: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    tokens = np.empty(rows.shape[0], dtype=np.int64)
    top_k = 0 if top_k >= rows.shape[1] else top_k            # k >= V is off (and may not fit in int64)
    _sampling.sample(rows, uniforms, temperature, top_k, top_p, tokens)
    return tokens


def sample_token(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, rng=None):
    """Draw the next token from (V,) or (B, V) logits; see the module docstring for the order.

    ``greedy`` or ``temperature == 0`` is argmax. Returns (B,) int64, or an int for (V,) input. ``rng`` is a
    ``numpy.random.Generator``, a seed or None.
    """
    logits = check_logits(logits)
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    rng = make_rng(rng)
    rows = _rows(logits)
    if greedy or temperature == 0.0:
        temperature, uniforms = 0.0, np.zeros(rows.shape[0])    # argmax: draws no uniforms, like the reference
    else:
        uniforms = rng.random(rows.shape[0])
    tokens = _draw(rows, uniforms, temperature, top_k, top_p)
    return int(tokens[0]) if logits.ndim == 1 else tokens


def sample_with_uniforms(logits: np.ndarray, uniforms, temperature: float = 1.0, top_k: int = 0,
                         top_p: float = 1.0):
    """:func:`sample_token` with the uniforms given: one per row, in [0, 1) (a number for (V,) logits);
    ``temperature == 0`` is argmax.

    The reference's equivalent is ``reference.sample_from_uniforms(reference.softmax(filtered), uniforms)``
    with ``filtered`` the logits through temperature, top-k and top-p.
    """
    logits = check_logits(logits)
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    rows = _rows(logits)
    u = np.atleast_1d(np.asarray(uniforms))
    if u.dtype == np.bool_ or not np.issubdtype(u.dtype, np.number) or np.iscomplexobj(u):
        raise FastLMTypeError(f"uniforms must hold real numbers, got dtype {u.dtype}")
    u = np.ascontiguousarray(u, dtype=np.float64)
    if u.shape != (rows.shape[0],):
        raise FastLMValueError(f"uniforms must have shape ({rows.shape[0]},), one per row, got {u.shape}")
    outside = ~((u >= 0.0) & (u < 1.0))                      # NaN included
    if outside.any():
        raise FastLMValueError(f"uniforms must lie in [0, 1), got {u[outside][0]}")
    tokens = _draw(rows, u, temperature, top_k, top_p)
    return int(tokens[0]) if logits.ndim == 1 else tokens
