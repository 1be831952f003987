"""The textbook model: a decoder-only Llama-style language model in plain NumPy float64.

This module is the ground truth that every fast kernel in fastlm is tested against. It favours clarity over
speed: every layer is written out as its formula, the attention matrix is materialised, and generation
re-runs the whole sequence at every step.

Conventions shared with the fast path:

* Linear weights are stored ``(out_features, in_features)``, as in GGUF files and ``torch.nn.Linear``; a
  projection is ``x @ W.T``.
* RoPE rotates *interleaved pairs* ``(x[2i], x[2i+1])`` of each head by ``pos * theta**(-2i / head_dim)``
  (the llama2.c / GGUF convention). Hugging Face checkpoints use the rotate-half layout; their loader
  permutes the Q and K rows so both give identical results.
* Query head ``j`` attends with key/value head ``j // (num_heads // num_kv_heads)`` (grouped-query attention).
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .generation import naive_generate
from .sampling import SampleResult
from .validation import (SamplerSettings, check_history, check_logits, check_min_p, check_penalties,
                         check_temperature, check_token_ids, check_top_k, check_top_p, make_rng)
from .accounting import count_model_parameters, generation_flops, generation_flops_with_cache

__all__ = [
    "RMSNorm", "apply_rope", "GroupedQueryAttention", "SwiGLU", "TransformerBlock", "CausalLM",
    "ModelConfig", "create_causal_mask", "softmax", "temperature_scale", "top_k_filter", "top_p_filter",
    "sample_token", "sample_from_uniforms", "min_p_filter", "apply_penalties", "log_softmax", "Sampler",
    "init_parameters", "count_model_parameters", "generation_flops",
    "generation_flops_with_cache",
]


# --------------------------------------------------------------------------------------------- parameters

def _xavier(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Xavier-normal draw: std = sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, np.sqrt(2.0 / (shape[0] + shape[1])), size=shape)


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of ``config``, in GGUF names; linear weights are (out, in)."""
    c = config
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {"token_embd": (c.vocab_size, c.d_model)}
    for i in range(c.num_layers):
        shapes.update({
            f"blk.{i}.attn_norm": (c.d_model,), f"blk.{i}.attn_q": (q_dim, c.d_model),
            f"blk.{i}.attn_k": (kv_dim, c.d_model), f"blk.{i}.attn_v": (kv_dim, c.d_model),
            f"blk.{i}.attn_output": (c.d_model, q_dim), f"blk.{i}.ffn_norm": (c.d_model,),
            f"blk.{i}.ffn_gate": (c.d_ff, c.d_model), f"blk.{i}.ffn_up": (c.d_ff, c.d_model),
            f"blk.{i}.ffn_down": (c.d_model, c.d_ff),
        })
    shapes["output_norm"] = (c.d_model,)
    if not c.tie_weights:
        shapes["output"] = (c.vocab_size, c.d_model)
    return shapes


def init_parameters(config: ModelConfig, seed=None) -> dict[str, np.ndarray]:
    """Random float64 weights for ``config``, drawn in one fixed order from ``numpy.random.default_rng(seed)``.

    Both the reference and the fast model take their weights from here, so one seed gives both the same
    model. Keys follow GGUF tensor names; norms start at one.
    """
    rng = make_rng(seed)
    # Matrices are drawn in the order parameter_shapes lists them; norms start at one and draw nothing.
    return {name: np.ones(shape) if len(shape) == 1 else _xavier(rng, shape)
            for name, shape in parameter_shapes(config).items()}


# ------------------------------------------------------------------------------------------------- layers

class RMSNorm:
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last axis."""

    def __init__(self, d_model: int, eps: float = 1e-6, weight: np.ndarray | None = None):
        self.eps = eps
        self.weight = np.ones(d_model) if weight is None else np.asarray(weight, dtype=np.float64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x / rms * self.weight


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate interleaved pairs of ``x`` (B, H, L, head_dim) by angle ``position * theta**(-2i/head_dim)``."""
    head_dim = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, head_dim, 2) / head_dim)        # (head_dim/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq  # (L, head_dim/2)
    cos, sin = np.cos(angles), np.sin(angles)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def create_causal_mask(seq_len: int) -> np.ndarray:
    """Additive causal mask (1, 1, L, L): 0 where key j <= query i, -inf above the diagonal."""
    mask = np.zeros((seq_len, seq_len))
    mask[np.triu_indices(seq_len, k=1)] = -np.inf
    return mask[np.newaxis, np.newaxis]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum: the max shift keeps exp from overflowing and does not change the result."""
    x = np.asarray(x)
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


class GroupedQueryAttention:
    """Multi-head attention in which groups of query heads share one key/value head."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, rope_theta: float,
                 wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray):
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.rope_theta = rope_theta
        self.wq, self.wk, self.wv, self.wo = wq, wk, wv, wo  # (h*dk, d), (hkv*dk, d), (hkv*dk, d), (d, h*dk)

    def _split_heads(self, x: np.ndarray, heads: int) -> np.ndarray:
        B, L, _ = x.shape
        return x.reshape(B, L, heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, heads, L, dk)

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        B, L, _ = x.shape
        positions = np.arange(L) if positions is None else positions
        q = apply_rope(self._split_heads(x @ self.wq.T, self.num_heads), positions, self.rope_theta)
        k = apply_rope(self._split_heads(x @ self.wk.T, self.num_kv_heads), positions, self.rope_theta)
        v = self._split_heads(x @ self.wv.T, self.num_kv_heads)
        group = self.num_heads // self.num_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head j reads kv head j // group
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(self.head_dim)     # (B, h, L, L)
        if mask is not None:
            scores = scores + mask
        out = softmax(scores, axis=-1) @ v                                  # (B, h, L, dk)
        return out.transpose(0, 2, 1, 3).reshape(B, L, -1) @ self.wo.T


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class SwiGLU:
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray):
        self.w_gate, self.w_up, self.w_down = w_gate, w_up, w_down  # (d_ff, d), (d_ff, d), (d, d_ff)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (silu(x @ self.w_gate.T) * (x @ self.w_up.T)) @ self.w_down.T


class TransformerBlock:
    """Pre-norm decoder block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], index: int):
        p = lambda name: params[f"blk.{index}.{name}"]  # noqa: E731
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps, p("attn_norm"))
        self.attention = GroupedQueryAttention(config.d_model, config.num_heads, config.num_kv_heads,
                                               config.rope_theta, p("attn_q"), p("attn_k"), p("attn_v"),
                                               p("attn_output"))
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps, p("ffn_norm"))
        self.ffn = SwiGLU(p("ffn_gate"), p("ffn_up"), p("ffn_down"))

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        """``mask`` is added to the attention scores (None: no mask); ``positions`` default to 0..L-1."""
        h = x + self.attention.forward(self.attn_norm.forward(x), mask, positions)
        return h + self.ffn.forward(self.ffn_norm.forward(h))


# --------------------------------------------------------------------------------------------- the model

class CausalLM:
    """Token ids -> embedding -> N transformer blocks -> final RMSNorm -> logits, all in float64."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 d_ff: int, max_seq_len: int = 2048, tie_weights: bool = False, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, seed=None):
        config = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff, max_seq_len,
                             tie_weights, rope_theta, norm_eps)
        self._build(config, init_parameters(config, seed))

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> "CausalLM":
        """The textbook model holding given weights (names and shapes of :func:`parameter_shapes`)."""
        model = cls.__new__(cls)
        model._build(config, {name: np.asarray(w, dtype=np.float64) for name, w in params.items()})
        return model

    def _build(self, config: ModelConfig, params: dict[str, np.ndarray]) -> None:
        self.config = config
        self.embedding = params["token_embd"]                                         # (V, d)
        self.blocks = [TransformerBlock(config, params, i) for i in range(config.num_layers)]
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, params["output_norm"])
        # W_out is (d, V): logits = x @ W_out. Tied, it is a view of the embedding, not a copy.
        self.W_out = self.embedding.T if config.tie_weights else params["output"].T

    @classmethod
    def from_config(cls, config: ModelConfig, seed=None) -> "CausalLM":
        return cls(config.vocab_size, config.d_model, config.num_layers, config.num_heads,
                   config.num_kv_heads, config.d_ff, config.max_seq_len, config.tie_weights,
                   config.rope_theta, config.norm_eps, seed=seed)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def forward(self, token_ids) -> np.ndarray:
        """Logits (B, L, V) for integer ids of shape (L,) or (B, L)."""
        ids = check_token_ids(token_ids, self.vocab_size, self.max_seq_len)
        L = ids.shape[1]
        x = self.embedding[ids]                                  # (B, L, d): a table lookup
        mask, positions = create_causal_mask(L), np.arange(L)
        for block in self.blocks:
            x = block.forward(x, mask=mask, positions=positions)
        return self.final_norm.forward(x) @ self.W_out          # (B, L, V)

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, eos_token_id: int | None = None,
                 seed=None) -> np.ndarray:
        """The naive loop: re-run the whole sequence for every new token. Returns (B, L + n) int64.

        Row b samples with uniforms from its own generator (see :mod:`fastlm.generation`), as fastlm does.
        """
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        return naive_generate(self.forward, sampler, self.config, prompt_tokens, max_new_tokens,
                              eos_token_id=eos_token_id, seed=seed)


# ----------------------------------------------------------------------------------------------- sampling

def temperature_scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature; temperature 0 returns the logits unchanged (greedy is the caller's job)."""
    logits, t = check_logits(logits), check_temperature(temperature)
    return logits.copy() if t == 0.0 else logits / t


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """-inf outside the k largest logits of each row; ties with the k-th largest survive."""
    logits, k = check_logits(logits), check_top_k(k)
    V = logits.shape[-1]
    if k == 0 or k >= V:
        return logits.copy()
    kth_largest = np.sort(logits, axis=-1)[..., V - k, np.newaxis]
    return np.where(logits >= kth_largest, logits, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest highest-probability set whose mass reaches p (nucleus); -inf elsewhere.

    A token is dropped when the tokens ranked above it already hold mass >= p, so the token that crosses p
    is kept and the top token always survives.
    """
    logits, p = check_logits(logits), check_top_p(p)
    if p == 1.0:
        return logits.copy()
    probs = softmax(logits, axis=-1)
    order = np.argsort(-probs, axis=-1, kind="stable")            # most probable first
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    drop = np.zeros(probs.shape, dtype=bool)
    np.put_along_axis(drop, order, mass_before >= p, axis=-1)
    return np.where(drop, -np.inf, logits)


def sample_from_uniforms(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: for each row, the first index whose cumulative probability exceeds u * total."""
    cdf = np.cumsum(probs, axis=-1)
    targets = np.asarray(uniforms)[:, np.newaxis] * cdf[:, -1:]
    tokens = (cdf <= targets).sum(axis=-1)          # count of entries at or below the target
    # u * total can round up to total itself: fall back to the last token that has any probability.
    last_possible = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(tokens, last_possible).astype(np.int64)


def sample_token(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, rng=None):
    """Draw the next token: temperature -> top-k -> top-p -> softmax -> one uniform per row (inverse CDF).

    ``greedy`` or ``temperature == 0`` returns the argmax. Returns (B,) int64 for (B, V) logits, an int for
    (V,). ``rng`` is a ``numpy.random.Generator``, a seed or None.
    """
    logits = check_logits(logits)
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    rng = make_rng(rng)
    rows = np.atleast_2d(logits).astype(np.float64)
    if greedy or temperature == 0.0:
        tokens = np.argmax(rows, axis=-1).astype(np.int64)
    else:
        filtered = top_p_filter(top_k_filter(temperature_scale(rows, temperature), top_k), top_p)
        tokens = sample_from_uniforms(softmax(filtered, axis=-1), rng.random(rows.shape[0]))
    return int(tokens[0]) if logits.ndim == 1 else tokens


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep the tokens whose probability is at least min_p times the most probable one's; -inf elsewhere.

    min_p 0 is off; the top token always survives.
    """
    logits, min_p = check_logits(logits), check_min_p(min_p)
    if min_p == 0.0:
        return logits.copy()
    probs = softmax(logits, axis=-1)
    return np.where(probs >= min_p * probs.max(axis=-1, keepdims=True), logits, -np.inf)


def _penalize(rows: np.ndarray, history: np.ndarray, lengths: np.ndarray, repetition: float, frequency: float,
              presence: float, last_n: int) -> None:
    """The penalties of :func:`apply_penalties` on float64 rows (B, V), in place."""
    for b, length in enumerate(lengths):
        start = 0 if last_n == -1 else max(length - last_n, 0)
        tokens, counts = np.unique(history[b, start:length], return_counts=True)
        z = rows[b, tokens]
        z = np.where(z <= 0, z * repetition, z / repetition)
        rows[b, tokens] = z - (counts * frequency + presence)


def apply_penalties(logits: np.ndarray, history, lengths, repetition_penalty: float = 1.0,
                    frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                    penalty_last_n: int = 64) -> np.ndarray:
    """llama.cpp's repetition, frequency and presence penalties, as a new float64 array.

    Over the last ``penalty_last_n`` tokens of each row's history (-1: all of it, 0: none), every distinct
    token t, seen c times there, gets ``z * repetition_penalty if z <= 0 else z / repetition_penalty`` (once,
    whatever c), then ``- (c * frequency_penalty + presence_penalty)``. ``logits`` (V,) with ``history`` (H,)
    and ``lengths`` a number, or (B, V) with (B, H) and (B,): row b's tokens are ``history[b, :lengths[b]]``;
    ``lengths`` None means whole rows, ``history`` None no change.
    """
    logits = check_logits(logits)
    penalties = check_penalties(repetition_penalty, frequency_penalty, presence_penalty, penalty_last_n)
    history, lengths = check_history(history, lengths, logits.shape, penalties[-1])
    rows = np.atleast_2d(logits).astype(np.float64)
    if history is not None:
        _penalize(rows, history, lengths, *penalties)
    return rows.reshape(logits.shape)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) = (x - max) - log(sum(exp(x - max))), without forming the probabilities."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


class Sampler(SamplerSettings):
    """:class:`fastlm.Sampler`'s chain, written out step by step in float64 (see it for the settings):

    logit bias -> penalties -> (greedy: argmax) -> temperature -> top-k -> top-p -> min-p -> softmax ->
    inverse-CDF draw with each row's uniform; log-probabilities from the log-softmax of the raw logits.
    """

    def __call__(self, logits, uniforms, history=None, lengths=None) -> SampleResult:
        logits, uniforms, history, lengths = self.check_inputs(logits, uniforms, history, lengths)
        raw = logits.astype(np.float64)
        adjusted = raw.copy()
        adjusted[:, self._bias_ids] += self._bias_values
        if history is not None and self.needs_history:
            _penalize(adjusted, history, lengths, self.repetition_penalty, self.frequency_penalty,
                      self.presence_penalty, self.penalty_last_n)
        valid = np.isfinite(adjusted.max(axis=-1))        # NaN, +inf and all -inf rows are not
        if not valid.all():
            raise self.no_logits_left(np.flatnonzero(~valid)[0])
        if self.is_greedy:
            tokens = np.argmax(adjusted, axis=-1)
        else:
            filtered = temperature_scale(adjusted, self.temperature)
            filtered = top_p_filter(top_k_filter(filtered, self.top_k), self.top_p)
            filtered = min_p_filter(filtered, self.min_p)
            tokens = sample_from_uniforms(softmax(filtered, axis=-1), uniforms)
        result = SampleResult(tokens.astype(np.int64))
        if self.logprobs:
            logprobs = log_softmax(raw)
            result.logprobs = logprobs[np.arange(len(tokens)), tokens]
            if self.top_logprobs:
                order = np.argsort(-logprobs, axis=-1, kind="stable")[:, :self.top_logprobs]  # ties: lower id 1st
                result.top_ids, result.top_logprobs = order, np.take_along_axis(logprobs, order, axis=-1)
        return result
