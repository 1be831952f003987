"""Argument checks shared by the reference and the fast path: public functions call these at the boundary,
so nothing malformed ever reaches a compiled kernel."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .errors import FastLMTypeError, FastLMValueError

INT64_MAX = np.iinfo(np.int64).max


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


def check_min_p(min_p) -> float:
    p = check_real("min_p", min_p)
    if not 0.0 <= p <= 1.0:
        raise FastLMValueError(f"min_p must lie in [0, 1] (0 means off), got {p}")
    return p


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise FastLMTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_penalties(repetition_penalty, frequency_penalty, presence_penalty,
                    penalty_last_n) -> tuple[float, float, float, int]:
    """The penalties' settings: repetition_penalty > 0 (1: off), the others finite (0: off), a window of
    penalty_last_n >= -1 tokens (0: off, -1: the whole history)."""
    repetition = check_real("repetition_penalty", repetition_penalty)
    if not 0.0 < repetition < math.inf:
        raise FastLMValueError(f"repetition_penalty must be finite and > 0 (1 means off), got {repetition}")
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if math.isinf(check_real(name, value)):
            raise FastLMValueError(f"{name} must be finite (0 means off), got {value}")
    last_n = check_int("penalty_last_n", penalty_last_n, -1)
    if last_n > INT64_MAX:
        last_n = -1                                          # longer than any history: all of it
    return repetition, float(frequency_penalty), float(presence_penalty), last_n


def check_logit_bias(logit_bias) -> Mapping[int, float]:
    """A read-only {token id: bias} in id order from a mapping (or None: empty); ids >= 0 (the upper bound,
    the vocabulary size, is checked against the logits), biases finite or -inf (a ban)."""
    if logit_bias is None:
        logit_bias = {}
    if not isinstance(logit_bias, Mapping):
        raise FastLMTypeError(f"logit_bias must be a mapping {{token id: bias}} or None, got "
                              f"{type(logit_bias).__name__}")
    checked = {}
    for token, bias in logit_bias.items():
        token = check_int("logit_bias token id", token)
        if token > INT64_MAX:
            raise FastLMValueError(f"logit_bias token id {token} is outside any vocabulary")
        bias = check_real(f"logit_bias[{token}]", bias)
        if bias == math.inf:
            raise FastLMValueError(f"logit_bias[{token}] is +inf: biases must be finite, or -inf to ban a token")
        checked[token] = bias
    return MappingProxyType(dict(sorted(checked.items())))


def check_uniforms(uniforms, rows: int) -> np.ndarray:
    """One uniform number in [0, 1) per row (a number for one row), as a (rows,) float64 array."""
    u = np.atleast_1d(np.asarray(uniforms))
    if u.dtype == np.bool_ or not np.issubdtype(u.dtype, np.number) or np.iscomplexobj(u):
        raise FastLMTypeError(f"uniforms must hold real numbers, got dtype {u.dtype}")
    u = np.ascontiguousarray(u, dtype=np.float64)
    if u.shape != (rows,):
        raise FastLMValueError(f"uniforms must have shape ({rows},), one per row, got {u.shape}")
    outside = ~((u >= 0.0) & (u < 1.0))                      # NaN included
    if outside.any():
        raise FastLMValueError(f"uniforms must lie in [0, 1), got {u[outside][0]}")
    return u


def _integers(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise FastLMTypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr


def check_history(history, lengths, logits_shape: tuple[int, ...],
                  penalty_last_n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The token history of logits (V,) or (B, V) as C-contiguous int64 (B, H) and lengths (B,): row b's tokens
    are history[b, :lengths[b]] (lengths None: all H). For (V,) logits, history is (H,) and lengths a number.
    The ids in each row's last penalty_last_n tokens (the penalty window; -1: all, 0: none) must lie in
    [0, V). (None, None) when history is None."""
    if history is None:
        if lengths is not None:
            raise FastLMValueError("lengths was given without a history")
        return None, None
    history = _integers("history", history)
    one_row = len(logits_shape) == 1
    if history.ndim != len(logits_shape) or (not one_row and history.shape[0] != logits_shape[0]):
        expected = "(H,) for logits (V,)" if one_row else f"({logits_shape[0]}, H), one row per row of logits"
        raise FastLMValueError(f"history must have shape {expected}, got {history.shape}")
    history = np.atleast_2d(history)
    B, H = history.shape
    if lengths is None:
        lengths = np.full(B, H, dtype=np.int64)
    lengths = np.atleast_1d(_integers("lengths", lengths))
    if lengths.shape != (B,):
        raise FastLMValueError(f"lengths must have shape ({B},), one per row of history, got {lengths.shape}")
    if (lengths < 0).any() or (lengths > H).any():
        bad = lengths[(lengths < 0) | (lengths > H)][0]
        raise FastLMValueError(f"lengths must lie in [0, {H}] (the width of history), got {bad}")
    # Where the whole buffer holds vocabulary ids (the usual case) the windows do too: no (B, H) temporaries.
    if penalty_last_n != 0 and history.size and (history.min() < 0 or history.max() >= logits_shape[-1]):
        start = np.zeros(B, dtype=np.int64) if penalty_last_n < 0 else np.maximum(lengths - penalty_last_n, 0)
        positions = np.arange(H)
        window = (positions >= start[:, np.newaxis]) & (positions < lengths[:, np.newaxis])
        outside = window & ((history < 0) | (history >= logits_shape[-1]))
        if outside.any():
            b, i = np.argwhere(outside)[0]
            raise FastLMValueError(f"history[{b}, {i}] = {history[b, i]} is outside the vocabulary "
                                   f"[0, {logits_shape[-1]})")
    return np.ascontiguousarray(history, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class SamplerSettings:
    """The settings of a sampler, checked once when it is made; :class:`fastlm.Sampler` and
    :class:`fastlm.reference.Sampler` extend this with the work, so both take and check the same arguments.
    See :class:`fastlm.Sampler` for what each one means."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] | None = None
    greedy: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self):
        repetition, frequency, presence, last_n = check_penalties(
            self.repetition_penalty, self.frequency_penalty, self.presence_penalty, self.penalty_last_n)
        checked = dict(
            temperature=check_temperature(self.temperature), top_k=check_top_k(self.top_k),
            top_p=check_top_p(self.top_p), min_p=check_min_p(self.min_p), repetition_penalty=repetition,
            frequency_penalty=frequency, presence_penalty=presence, penalty_last_n=last_n,
            logit_bias=check_logit_bias(self.logit_bias), greedy=check_bool("greedy", self.greedy),
            logprobs=check_bool("logprobs", self.logprobs),
            top_logprobs=check_int("top_logprobs", self.top_logprobs))
        if checked["top_logprobs"] and not checked["logprobs"]:
            raise FastLMValueError(f"top_logprobs={checked['top_logprobs']} needs logprobs=True")
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        # the bias as the kernels take it: ids (n,) int64 and biases (n,) float64
        object.__setattr__(self, "_bias_ids", np.fromiter(self.logit_bias.keys(), np.int64, len(self.logit_bias)))
        object.__setattr__(self, "_bias_values", np.fromiter(self.logit_bias.values(), np.float64,
                                                             len(self.logit_bias)))

    @property
    def needs_history(self) -> bool:
        """True when a penalty is on: then the sampler reads each row's recent tokens."""
        return self.penalty_last_n != 0 and (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                                             or self.presence_penalty != 0.0)

    @property
    def is_greedy(self) -> bool:
        """True when the sampler takes the argmax (greedy, or temperature 0) and uses no uniforms."""
        return self.greedy or self.temperature == 0.0

    def check_inputs(self, logits, uniforms, history, lengths):
        """A sampler call's arguments, checked: logits (B, V) of a floating dtype, uniforms (B,) float64 (None
        when greedy and not given), history (B, H) int64 and lengths (B,) int64 (both None without a
        history)."""
        logits = check_logits(logits)
        if logits.ndim != 2:
            raise FastLMValueError(f"logits must have shape (B, V), got {logits.shape}")
        B, V = logits.shape
        if self._bias_ids.size and self._bias_ids[-1] >= V:
            raise FastLMValueError(f"logit_bias token id {self._bias_ids[-1]} is outside the vocabulary [0, {V})")
        if self.top_logprobs > V:
            raise FastLMValueError(f"top_logprobs={self.top_logprobs} exceeds the vocabulary size {V}")
        if uniforms is None and not self.is_greedy:
            raise FastLMTypeError("uniforms must be given, one per row in [0, 1), unless the sampler is greedy")
        if uniforms is not None:
            uniforms = check_uniforms(uniforms, B)
        history, lengths = check_history(history, lengths, logits.shape,
                                         self.penalty_last_n if self.needs_history else 0)
        return logits, uniforms, history, lengths

    @staticmethod
    def no_logits_left(row: int) -> FastLMValueError:
        """The error for a row that logit bias and penalties leave with no finite maximum."""
        return FastLMValueError(f"logit_bias and penalties leave row {row} of logits without a finite maximum: "
                                f"every token banned, or a value overflowed")


def check_logits(logits) -> np.ndarray:
    """Logits of shape (V,) or (B, V), floating point, no NaN or +inf, at least one finite value per row."""
    arr = np.asarray(logits)
    if not np.issubdtype(arr.dtype, np.floating):
        raise FastLMTypeError(f"logits must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise FastLMValueError(f"logits must have shape (V,) or (B, V), got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.size == 0:
        raise FastLMValueError(f"logits must not be empty, got shape {arr.shape}")
    if math.isfinite(arr.min()) and math.isfinite(arr.max()):   # the usual case, without a (B, V) temporary
        return arr
    finite = np.isfinite(arr)
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


@dataclass
class SampleResult:
    """One sampling step over B rows."""
    tokens: np.ndarray                       # (B,) int64: the tokens drawn
    logprobs: np.ndarray | None = None       # (B,) float64: their log-probabilities under the raw logits
    top_ids: np.ndarray | None = None        # (B, n) int64: each row's n most probable raw tokens, best first
    top_logprobs: np.ndarray | None = None   # (B, n) float64: their log-probabilities


def row_uniforms(seed, rows: int, steps: int) -> np.ndarray:
    """(rows, steps) uniforms in [0, 1): row b's come from its own generator (see the module docstring)."""
    seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else [seed] * rows
    if len(seeds) != rows:
        raise FastLMValueError(f"seed holds {len(seeds)} seeds for {rows} rows")
    out = np.empty((rows, steps))
    for b, s in enumerate(seeds):
        out[b] = make_rng(s).random(steps)
    return out


def check_eos(eos_token_id, vocab_size: int) -> frozenset[int]:
    """None, one id or several ids, each in [0, V)."""
    if eos_token_id is None:
        return frozenset()
    ids = [eos_token_id] if np.ndim(eos_token_id) == 0 else list(eos_token_id)
    for i in ids:
        check_int("eos_token_id", i, 0)
        if i >= vocab_size:
            raise FastLMValueError(f"eos_token_id {i} is outside the vocabulary [0, {vocab_size})")
    return frozenset(int(i) for i in ids)
