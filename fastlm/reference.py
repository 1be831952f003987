"""The textbook model: a decoder-only language model in plain NumPy float64, every family's block alike.

This module is the ground truth that every fast kernel in fastlm is tested against. It favours clarity over
speed: every layer is written out as its formula, the attention matrix is materialised, and generation
re-runs the whole sequence at every step. It depends on NumPy, :mod:`fastlm.config` and plain validation
only, never on the compiled kernels or the engine.

One block serves Llama, Mistral, Qwen, Phi and Gemma; the :class:`~fastlm.config.ModelConfig` switches say
which components it uses (see that module). Conventions shared with the fast path:

* Linear weights are stored ``(out_features, in_features)``, as in GGUF files and ``torch.nn.Linear``; a
  projection is ``x @ W.T`` (+ bias).
* RoPE rotates the first ``rope_dim`` values of each head, as interleaved pairs ``(x[2i], x[2i+1])``
  (llama-arch GGUF files, whose converter permuted the Q/K rows for it; the Hugging Face loader does the
  same permutation) or rotate-half pairs ``(x[i], x[i + rope_dim/2])`` ("neox": Qwen, Phi, Gemma).
* Query head ``j`` attends with key/value head ``j // (num_heads // num_kv_heads)`` (grouped-query attention).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .accounting import count_model_parameters, generation_flops, generation_flops_with_cache
from .config import ModelConfig, init_parameters, parameter_shapes
from .validation import (SampleResult, SamplerSettings, check_eos, check_history, check_int, check_logits,
                         check_min_p, check_penalties, check_temperature, check_token_ids, check_top_k,
                         check_top_p, make_rng, row_uniforms)

__all__ = [
    "RMSNorm", "apply_rope", "GroupedQueryAttention", "GatedFFN", "TransformerBlock", "CausalLM",
    "ModelConfig", "create_causal_mask", "softmax", "silu", "gelu_tanh", "softcap", "temperature_scale",
    "top_k_filter", "top_p_filter", "sample_token", "sample_from_uniforms", "min_p_filter", "apply_penalties",
    "log_softmax", "Sampler", "naive_generate", "init_parameters", "parameter_shapes",
    "count_model_parameters", "generation_flops", "generation_flops_with_cache",
]


# ------------------------------------------------------------------------------------------------- layers

class RMSNorm:
    """y = x / sqrt(mean(x^2) + eps) * (offset + weight), over the last axis (Gemma's weights: offset 1)."""

    def __init__(self, d_model: int, eps: float = 1e-6, weight: np.ndarray | None = None, offset: float = 0.0):
        self.eps = eps
        self.weight = np.ones(d_model) if weight is None else np.asarray(weight, dtype=np.float64)
        self.scale = offset + self.weight

    def forward(self, x: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x / rms * self.scale


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0, *, inv_freq: np.ndarray | None = None,
               style: str = "interleaved") -> np.ndarray:
    """Rotate the heads of ``x`` (B, H, L, head_dim): pair i of position p turns by p * inv_freq[i].

    ``inv_freq`` (r/2,) defaults to ``theta**(-2i/head_dim)``; only the first r values of a head rotate
    (partial rotary), the rest pass through. ``style`` "interleaved" pairs (x[2i], x[2i+1]); "neox" pairs
    (x[i], x[i + r/2]) (rotate-half).
    """
    head_dim = x.shape[-1]
    if inv_freq is None:
        inv_freq = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    r = 2 * len(inv_freq)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq  # (L, r/2)
    cos, sin = np.cos(angles), np.sin(angles)
    out = x.copy()
    if style == "interleaved":
        first, second = (slice(0, r, 2), slice(1, r, 2))
    else:
        first, second = (slice(0, r // 2), slice(r // 2, r))
    a, b = x[..., first], x[..., second]
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def create_causal_mask(seq_len: int, window: int = 0) -> np.ndarray:
    """Additive mask (1, 1, L, L): 0 where query i may see key j, -inf elsewhere. Causal: j <= i; with a
    sliding ``window`` W > 0 also i - j < W."""
    i, j = np.arange(seq_len)[:, None], np.arange(seq_len)[None, :]
    visible = (j <= i) & ((i - j < window) if window else True)
    return np.where(visible, 0.0, -np.inf)[np.newaxis, np.newaxis]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum: the max shift keeps exp from overflowing and does not change the result."""
    x = np.asarray(x)
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap): squashes x smoothly into (-cap, cap); cap 0 leaves x unchanged."""
    return cap * np.tanh(x / cap) if cap else x


class GroupedQueryAttention:
    """Multi-head attention in which groups of query heads share one key/value head.

    q, k, v = x @ W.T (+ bias); optionally RMSNorm over each head of q and k; RoPE on q and k; scores
    q . k * scale (soft-capped if asked) plus the mask; softmax; weighted values; output projection.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, rope_theta: float,
                 wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, wo: np.ndarray, *, head_dim: int | None = None,
                 biases: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 qk_norms: tuple[RMSNorm, RMSNorm] | None = None, inv_freq: np.ndarray | None = None,
                 rope_style: str = "interleaved", scale: float | None = None, softcap: float = 0.0):
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads if head_dim is None else head_dim
        self.wq, self.wk, self.wv, self.wo = wq, wk, wv, wo  # (h*dk, d), (hkv*dk, d), (hkv*dk, d), (d, h*dk)
        self.biases = biases if biases is not None else (0.0, 0.0, 0.0)
        self.qk_norms = qk_norms
        self.inv_freq = rope_theta ** (-np.arange(0, self.head_dim, 2) / self.head_dim) if inv_freq is None \
            else inv_freq
        self.rope_style = rope_style
        self.scale = 1.0 / np.sqrt(self.head_dim) if scale is None else scale
        self.softcap = softcap

    def _split_heads(self, x: np.ndarray, heads: int) -> np.ndarray:
        B, L, _ = x.shape
        return x.reshape(B, L, heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, heads, L, dk)

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        B, L, _ = x.shape
        positions = np.arange(L) if positions is None else positions
        bq, bk, bv = self.biases
        q = self._split_heads(x @ self.wq.T + bq, self.num_heads)
        k = self._split_heads(x @ self.wk.T + bk, self.num_kv_heads)
        v = self._split_heads(x @ self.wv.T + bv, self.num_kv_heads)
        if self.qk_norms is not None:
            q, k = self.qk_norms[0].forward(q), self.qk_norms[1].forward(k)
        q = apply_rope(q, positions, inv_freq=self.inv_freq, style=self.rope_style)
        k = apply_rope(k, positions, inv_freq=self.inv_freq, style=self.rope_style)
        group = self.num_heads // self.num_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head j reads kv head j // group
        scores = softcap(q @ k.transpose(0, 1, 3, 2) * self.scale, self.softcap)   # (B, h, L, L)
        if mask is not None:
            scores = scores + mask
        out = softmax(scores, axis=-1) @ v                                  # (B, h, L, dk)
        return out.transpose(0, 2, 1, 3).reshape(B, L, -1) @ self.wo.T


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


class GatedFFN:
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu_tanh."""

    def __init__(self, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, activation: str = "silu"):
        self.w_gate, self.w_up, self.w_down = w_gate, w_up, w_down  # (d_ff, d), (d_ff, d), (d, d_ff)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (self.act(x @ self.w_gate.T) * (x @ self.w_up.T)) @ self.w_down.T


class TransformerBlock:
    """Pre-norm decoder block: h = x + post(attn(norm(x))); out = h + post(ffn(norm(h))), where the post
    norms exist only with ``config.post_norms`` (Gemma 2/3)."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], index: int):
        c = config
        p = lambda name: params[f"blk.{index}.{name}"]  # noqa: E731
        norm = lambda name, d=c.d_model: RMSNorm(d, c.norm_eps, p(name), c.norm_offset)  # noqa: E731
        self.window = c.window(index)
        self.attn_norm, self.ffn_norm = norm("attn_norm"), norm("ffn_norm")
        self.attention = GroupedQueryAttention(
            c.d_model, c.num_heads, c.num_kv_heads, c.rope_theta, p("attn_q"), p("attn_k"), p("attn_v"),
            p("attn_output"), head_dim=c.head_dim,
            biases=(p("attn_q.bias"), p("attn_k.bias"), p("attn_v.bias")) if c.qkv_bias else None,
            qk_norms=(norm("attn_q_norm", c.head_dim), norm("attn_k_norm", c.head_dim)) if c.qk_norm else None,
            inv_freq=c.rope_inv_freq(index), rope_style=c.rope_style, scale=c.scores_scale,
            softcap=c.attn_softcap)
        self.ffn = GatedFFN(p("ffn_gate"), p("ffn_up"), p("ffn_down"), c.activation)
        self.post_attn_norm = norm("post_attention_norm") if c.post_norms else None
        self.post_ffn_norm = norm("post_ffw_norm") if c.post_norms else None

    def forward(self, x: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """x (B, L, d) at ``positions`` (default 0..L-1), under the causal mask of this layer's window."""
        mask = create_causal_mask(x.shape[1], self.window)
        a = self.attention.forward(self.attn_norm.forward(x), mask, positions)
        h = x + (self.post_attn_norm.forward(a) if self.post_attn_norm else a)
        f = self.ffn.forward(self.ffn_norm.forward(h))
        return h + (self.post_ffn_norm.forward(f) if self.post_ffn_norm else f)


# --------------------------------------------------------------------------------------------- the model

class CausalLM:
    """Token ids -> embedding (x sqrt(d_model) for Gemma) -> N transformer blocks -> final RMSNorm ->
    logits (soft-capped for Gemma 2), all in float64."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 d_ff: int, max_seq_len: int = 2048, tie_weights: bool = False, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, seed=None, **choices):
        config = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff, max_seq_len,
                             tie_weights, rope_theta, norm_eps, **choices)
        self._build(config, init_parameters(config, seed))

    @classmethod
    def from_config(cls, config: ModelConfig, seed=None) -> "CausalLM":
        model = cls.__new__(cls)
        model._build(config, init_parameters(config, seed))
        return model

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict[str, np.ndarray]) -> "CausalLM":
        """The textbook model holding given weights (names and shapes of :func:`parameter_shapes`)."""
        for name, shape in parameter_shapes(config).items():
            if name not in params or tuple(np.shape(params[name])) != shape:
                raise ValueError(f"tensor {name!r}: expected shape {shape}, got "
                                 f"{np.shape(params[name]) if name in params else 'nothing'}")
        model = cls.__new__(cls)
        model._build(config, {name: np.asarray(w, dtype=np.float64) for name, w in params.items()})
        return model

    def _build(self, config: ModelConfig, params: dict[str, np.ndarray]) -> None:
        self.config = config
        self.embedding = params["token_embd"]                                         # (V, d)
        self.embed_scale = np.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.blocks = [TransformerBlock(config, params, i) for i in range(config.num_layers)]
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, params["output_norm"], config.norm_offset)
        # W_out is (d, V): logits = x @ W_out. Tied, it is a view of the embedding, not a copy.
        self.W_out = self.embedding.T if config.tie_weights else params["output"].T

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def forward(self, token_ids) -> np.ndarray:
        """Logits (B, L, V) for integer ids of shape (L,) or (B, L)."""
        ids = check_token_ids(token_ids, self.vocab_size, self.max_seq_len)
        x = self.embedding[ids] * self.embed_scale                # (B, L, d): a table lookup
        positions = np.arange(ids.shape[1])
        for block in self.blocks:
            x = block.forward(x, positions)
        return softcap(self.final_norm.forward(x) @ self.W_out, self.config.final_softcap)   # (B, L, V)

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, eos_token_id: int | None = None,
                 seed=None) -> np.ndarray:
        """The naive loop (:func:`naive_generate`): re-run the whole sequence for every new token.

        Row b samples with uniforms from its own generator (see :mod:`fastlm.generation`), as fastlm does.
        """
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        return naive_generate(self.forward, sampler, self.config, prompt_tokens, max_new_tokens,
                              eos_token_id=eos_token_id, seed=seed)


def naive_generate(forward: Callable[[np.ndarray], np.ndarray], sampler, config: ModelConfig,
                   prompt_tokens, max_new_tokens: int, *, eos_token_id: int | None = None,
                   seed=None) -> np.ndarray:
    """Generate by re-running ``forward`` over the whole sequence for every new token (no KV cache).

    Only the last position's logits are sampled, by ``sampler(logits, uniforms)``. Generation stops after
    ``max_new_tokens``, when the sequence reaches ``config.max_seq_len``, or once every row has produced
    ``eos_token_id``; a row that has finished is padded with it. Returns the (B, L + n) int64 sequences,
    prompt included.
    """
    tokens = check_token_ids(prompt_tokens, config.vocab_size, config.max_seq_len)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
    eos = check_eos(eos_token_id, config.vocab_size)
    if len(eos) > 1:
        raise FastLMValueError("the naive loop pads finished rows with its eos id: give one eos_token_id")
    uniforms = row_uniforms(seed, tokens.shape[0], max_new_tokens)
    finished = np.zeros(tokens.shape[0], dtype=bool)
    for step in range(max_new_tokens):
        if tokens.shape[1] >= config.max_seq_len:
            break
        last_logits = forward(tokens)[:, -1, :]                  # (B, V): the only position we need
        next_tokens = sampler(last_logits, uniforms[:, step]).tokens
        if eos:
            (eos_id,) = eos
            next_tokens = np.where(finished, eos_id, next_tokens)
            finished |= next_tokens == eos_id
        tokens = np.concatenate([tokens, next_tokens[:, np.newaxis]], axis=1)
        if finished.all():
            break
    return tokens


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
