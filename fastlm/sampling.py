"""The sampling pipeline of the fast path: arguments checked here, rows worked by the compiled kernels of
``fastlm._sampling`` (csrc/sampling.pyx, csrc/sampling_impl.h).

Order: logit bias -> penalties -> temperature -> top-k -> top-p -> min-p -> softmax -> one uniform per row,
inverse CDF over the vocabulary in index order: the same draw as :mod:`fastlm.reference`'s, so both pick the
same token for the same uniforms. :class:`Sampler` runs the whole chain; the functions below run its parts.
float32 and float64 logits are worked in their own dtype's memory (arithmetic in double); other floating
dtypes are converted to float32 (float16) or float64 (wider) first.
"""
from __future__ import annotations

import numpy as np

from . import _sampling
from .validation import (SampleResult, SamplerSettings, check_history, check_logits, check_min_p,
                         check_penalties, check_temperature, check_top_k, check_top_p, check_uniforms, make_rng)


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


def _filter(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    rows = _rows(logits)
    out = np.empty_like(rows)
    _sampling.filter_logits(rows, 1.0, top_k, top_p, out, min_p)
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
    return _filter(logits, top_p=p)


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep the tokens whose probability is at least min_p times the top one's; -inf elsewhere (min_p 0: off).
    The top token always survives."""
    logits, min_p = check_logits(logits), check_min_p(min_p)
    if min_p == 0.0:
        return logits.copy()
    return _filter(logits, min_p=min_p)


def apply_penalties(logits: np.ndarray, history, lengths, repetition_penalty: float = 1.0,
                    frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                    penalty_last_n: int = 64) -> np.ndarray:
    """llama.cpp's repetition, frequency and presence penalties: a new array, of the logits' dtype.

    Over the last ``penalty_last_n`` tokens of each row's history (-1: all of it, 0: none), every distinct
    token t, seen c times there, gets ``z * repetition_penalty if z <= 0 else z / repetition_penalty``, then
    ``- (c * frequency_penalty + presence_penalty)``, computed in double and rounded once. ``logits`` (V,) with
    ``history`` (H,) and ``lengths`` a number, or (B, V) with (B, H) and (B,): row b's tokens are
    ``history[b, :lengths[b]]``; ``lengths`` None means whole rows, ``history`` None no change.
    """
    logits = check_logits(logits)
    repetition, frequency, presence, last_n = check_penalties(repetition_penalty, frequency_penalty,
                                                              presence_penalty, penalty_last_n)
    history, lengths = check_history(history, lengths, logits.shape, last_n)
    rows = _rows(logits)
    if history is None:
        return rows.reshape(logits.shape).copy()
    out = np.empty_like(rows)
    _sampling.penalize(rows, history, lengths, repetition, frequency, presence, last_n, out)
    return out.reshape(logits.shape)


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
    tokens = _draw(rows, check_uniforms(uniforms, rows.shape[0]), temperature, top_k, top_p)
    return int(tokens[0]) if logits.ndim == 1 else tokens


class Sampler(SamplerSettings):
    """The full sampler: one call draws the next token of every row; settings are checked once, here.

    The chain, llama.cpp's (and Hugging Face's) order, per row of logits:

    1. ``logit_bias`` ({token id: bias}): added to the logits; a bias of -inf bans a token.
    2. penalties over the row's last ``penalty_last_n`` tokens (prompt included; -1: the whole history, 0:
       off): each distinct token t seen c times there gets ``z * repetition_penalty`` if ``z <= 0`` else
       ``z / repetition_penalty``, then ``z -= c * frequency_penalty + presence_penalty``. No ``history``:
       no penalties.
    3. ``greedy`` or ``temperature`` 0: the argmax of these logits, and steps 4 to 8 are skipped.
    4. temperature: logits / temperature.
    5. top-k: the ``top_k`` largest survive (ties with the k-th too; 0 or >= V: off).
    6. top-p: the smallest most-probable set whose mass reaches ``top_p`` (1: off).
    7. min-p: tokens whose probability is at least ``min_p`` times the top one's (0: off).
    8. softmax, then the draw: the first token, in index order, whose cumulative probability exceeds the
       row's uniform (inverse CDF), so fixed uniforms give reproducible tokens.

    With ``logprobs``, each chosen token's log-probability under the raw logits (the log-softmax of the
    logits as given: before bias, penalties, temperature and filters, as OpenAI and vLLM report it), and
    with ``top_logprobs`` = n > 0 the n most probable raw tokens with theirs (most probable first, ties by
    lower id). :class:`fastlm.reference.Sampler` is the same chain in plain NumPy.

    Call with ``logits`` (B, V) float32 or float64 (never modified), ``uniforms`` (B,) in [0, 1) (may be None
    when greedy), and for the penalties ``history`` (B, H) integer token buffer with ``lengths`` (B,): row b's
    tokens are ``history[b, :lengths[b]]`` (lengths None: whole rows). Returns a :class:`SampleResult`.

    The kernels' working memory is kept on the sampler from call to call (grown when a call needs more), so
    a decode loop allocates none: one Sampler must not be called from two threads at once.
    """

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "_scratch", np.empty(0))

    def __call__(self, logits, uniforms, history=None, lengths=None) -> SampleResult:
        logits, uniforms, history, lengths = self.check_inputs(logits, uniforms, history, lengths)
        rows = _rows(logits)
        B, V = rows.shape
        n = self.top_logprobs
        result = SampleResult(np.empty(B, dtype=np.int64), np.empty(B) if self.logprobs else None,
                              np.empty((B, n), dtype=np.int64) if n else None, np.empty((B, n)) if n else None)
        greedy = self.is_greedy
        top_k = self.top_k if self.top_k < V else 0
        last_n = self.penalty_last_n if self.needs_history else 0
        need = _sampling.step_scratch_size(B, V, top_k, 0 if history is None else history.shape[1], last_n, n)
        if self._scratch.size < need:
            object.__setattr__(self, "_scratch", np.empty(need))
        _sampling.sampler_step(rows, np.zeros(B) if greedy else uniforms, 0.0 if greedy else self.temperature,
                               top_k, self.top_p, self.min_p, self._bias_ids, self._bias_values,
                               self.repetition_penalty, self.frequency_penalty, self.presence_penalty, last_n,
                               history, lengths, result.tokens, result.logprobs, result.top_ids,
                               result.top_logprobs, self._scratch)
        failed = np.flatnonzero(result.tokens < 0)
        if failed.size:
            raise self.no_logits_left(failed[0])
        return result
